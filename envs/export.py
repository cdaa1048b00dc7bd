"""Export an EditPlan for people and DAWs: JSON, Audacity labels, a Reaper project, OTIO.

Every format places the (merged) segments where ``envs.render`` puts them
(``envs.layout.layout``), so a file opened in a DAW lines up with the rendered audio:

- JSON: ``EditPlan.to_dict()`` plus ``"output"``: the sample rate, crossfade, output
  duration, each output segment's span and each join. ``EditPlan.from_json`` reads it
  back (it ignores the extra key), so the file is also what ``python -m envs.render``
  takes.
- Audacity: a label track (``start<TAB>end<TAB>label``, seconds), one label per output
  segment with its raw beats and ops; File > Import > Labels.
- Reaper (.rpp): one track, one item per segment referencing the raw file. POSITION and
  LENGTH include the crossfade handles, SOFFS is the source offset, FADEIN/FADEOUT are
  the join crossfades (or the segment's fades, whichever is longer), VOLPAN the gain,
  PLAYRATE the time factor (pitch preserved), reversed items use a reversed SECTION source
  (``MODE 2``, as Reaper scripts write it). EQ, distortion and reverb have no item-level
  field: they are written in the item's name so the musician can add the plug-ins.
- OpenTimelineIO (.otio, when ``opentimelineio`` is installed): one audio track of clips
  with ``SMPTE_Dissolve`` transitions at joins, ``LinearTimeWarp`` for time factor and
  reverse, and the ops in each clip's metadata.

All files are written atomically (temp file + rename). CLI:
``python -m envs.export RAW PLAN.json OUT_DIR [--stem NAME] [--crossfade-ms 10]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

from datasets.atomic import atomic_write_text
from envs.plan import EditPlan, Ops
from envs.layout import DEFAULT_CROSSFADE_MS, Layout, Piece, layout

__all__ = [
    "ops_label",
    "output_timeline",
    "plan_json",
    "audacity_labels",
    "reaper_project",
    "otio_timeline",
    "write_json",
    "write_audacity_labels",
    "write_reaper_project",
    "write_otio",
    "export_all",
    "main",
    "HAVE_OTIO",
]

try:  # optional: pip install opentimelineio==0.18.1
    import opentimelineio as _otio

    HAVE_OTIO = True
except ImportError:  # pragma: no cover - depends on the environment
    _otio = None
    HAVE_OTIO = False

#: Reaper source chunk type per file extension (Reaper decodes these natively).
_REAPER_SOURCE = {".wav": "WAVE", ".aif": "WAVE", ".aiff": "WAVE", ".flac": "FLAC", ".ogg": "VORBIS",
                  ".mp3": "MP3", ".opus": "OPUS"}


def ops_label(ops: Ops) -> str:
    """Short human-readable list of a segment's ops ("" for none)."""
    parts = []
    if ops.gain_db:
        parts.append(f"gain {ops.gain_db:+.1f} dB")
    if ops.fade_in_s:
        parts.append(f"fade in {ops.fade_in_s:.2f} s")
    if ops.fade_out_s:
        parts.append(f"fade out {ops.fade_out_s:.2f} s")
    if ops.eq_low_db:
        parts.append(f"low shelf {ops.eq_low_db:+.1f} dB")
    if ops.eq_high_db:
        parts.append(f"high shelf {ops.eq_high_db:+.1f} dB")
    if ops.distortion:
        parts.append(f"distortion {ops.distortion:.0f} dB drive")
    if ops.reverb:
        parts.append(f"reverb {ops.reverb:.2f} wet")
    if ops.time_factor != 1.0:
        parts.append(f"time x{ops.time_factor:g}")
    if ops.reversed:
        parts.append("reversed")
    return ", ".join(parts)


def _segment_label(i: int, piece: Piece, plan: EditPlan) -> str:
    s = piece.segment
    t0, t1 = plan.segment_seconds(s)
    base = f"seg {i}: beats {s.raw_start}-{s.raw_end} (raw {t0:.3f}-{t1:.3f} s)"
    extra = ops_label(s.ops)
    return f"{base} {extra}" if extra else base


def output_timeline(plan: EditPlan, *, sr: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS) -> dict:
    """Where every output segment and join lands, JSON-ready (seconds and samples)."""
    lay = layout(plan, sr, crossfade_ms)
    segs = []
    for i, p in enumerate(lay.pieces):
        segs.append(
            {
                "index": i,
                "raw_start_beat": p.segment.raw_start,
                "raw_end_beat": p.segment.raw_end,
                "raw_start_sample": p.raw_start,
                "raw_end_sample": p.raw_end,
                "out_start_sample": p.out_start,
                "out_end_sample": p.out_end,
                "out_start_s": p.out_start / sr,
                "out_end_s": p.out_end / sr,
                "ops": asdict(p.ops),
                "label": _segment_label(i, p, plan),
            }
        )
    joins = [
        {"index": j.index, "kind": j.kind, "position_sample": j.position, "position_s": j.position / sr,
         "start_sample": j.start, "end_sample": j.end, "removed_samples": j.removed}
        for j in lay.joins
    ]
    return {"sr": int(sr), "crossfade_ms": float(crossfade_ms), "duration_s": lay.duration, "n_samples": lay.n_out,
            "segments": segs, "joins": joins}


def plan_json(plan: EditPlan, *, sr: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS) -> str:
    """EditPlan JSON plus its output timeline under ``"output"``."""
    d = plan.to_dict()
    d["output"] = output_timeline(plan, sr=sr, crossfade_ms=crossfade_ms)
    return json.dumps(d, indent=1)


def audacity_labels(plan: EditPlan, *, sr: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS) -> str:
    """Audacity label track: one ``start\\tend\\tlabel`` line per output segment (seconds)."""
    lay = layout(plan, sr, crossfade_ms)
    lines = [
        f"{p.out_start / sr:.6f}\t{p.out_end / sr:.6f}\t{_segment_label(i, p, plan)}" for i, p in enumerate(lay.pieces)
    ]
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    """Reaper string token: double quotes unless the text contains them."""
    return f"'{text}'" if '"' in text else f'"{text}"'


def _fade_len(lay: Layout, i: int, side: str) -> float:
    """Item fade in seconds at one side: the join's window, or the segment's fade if longer."""
    piece = lay.pieces[i]
    w = 0
    if side == "in" and i > 0:
        j = lay.joins[i - 1]
        w = j.end - j.start
        fade = piece.ops.fade_in_s
    elif side == "out" and i + 1 < len(lay.pieces):
        j = lay.joins[i]
        w = j.end - j.start
        fade = piece.ops.fade_out_s
    else:
        fade = piece.ops.fade_in_s if side == "in" else piece.ops.fade_out_s
    return max(w / lay.sr, fade)


def reaper_project(
    plan: EditPlan, *, raw_path: str | os.PathLike, sr: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS
) -> str:
    """A Reaper project (.rpp text): one item per output segment over the raw file."""
    lay = layout(plan, sr, crossfade_ms)
    raw = Path(raw_path).resolve()
    src = _REAPER_SOURCE.get(raw.suffix.lower(), "WAVE")
    out = [
        '<REAPER_PROJECT 0.1 "6.0" 0',
        f"  SAMPLERATE {int(sr)} 0 0",
        "  <TRACK",
        f"    NAME {_q('edit of ' + raw.name)}",
    ]
    for i, p in enumerate(lay.pieces):
        ops = p.ops
        tf = ops.time_factor
        # the item covers the core plus the crossfade handles (rendered audio lines up)
        pos = (p.out_start - p.head) / sr
        length = (p.head + p.length + p.tail) / sr
        rh = math.ceil(p.head * tf) if tf != 1.0 else p.head
        rt = math.ceil(p.tail * tf) if tf != 1.0 else p.tail
        name = _segment_label(i, p, plan)
        out += [
            "    <ITEM",
            f"      POSITION {pos:.9f}",
            f"      LENGTH {length:.9f}",
            "      LOOP 0",
            f"      FADEIN 1 {_fade_len(lay, i, 'in'):.9f} 0 1 0 0 0",
            f"      FADEOUT 1 {_fade_len(lay, i, 'out'):.9f} 0 1 0 0 0",
            f"      VOLPAN {10 ** (ops.gain_db / 20):.6f} 0 1 -1",
            f"      NAME {_q(name)}",
            f"      PLAYRATE {tf:.6f} 1 0 -1 0 0.0025",
        ]
        file_line = f"FILE {_q(str(raw))}"
        if ops.reversed:
            lo, hi = p.raw_start - rt, p.raw_end + rh
            out += [
                "      SOFFS 0",
                "      <SOURCE SECTION",
                f"        LENGTH {(hi - lo) / sr:.9f}",
                "        MODE 2",
                f"        STARTPOS {lo / sr:.9f}",
                "        OVERLAP 0",
                f"        <SOURCE {src}",
                f"          {file_line}",
                "        >",
                "      >",
            ]
        else:
            out += [
                f"      SOFFS {(p.raw_start - rh) / sr:.9f}",
                f"      <SOURCE {src}",
                f"        {file_line}",
                "      >",
            ]
        out.append("    >")
    out += ["  >", ">"]
    return "\n".join(out) + "\n"


def otio_timeline(
    plan: EditPlan, *, raw_path: str | os.PathLike, sr: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS
):
    """An ``opentimelineio.schema.Timeline`` of the edit (needs opentimelineio).

    Clips are placed back to back at their output spans (an "overlap" join trims the
    earlier clip by the overlap and dissolves into the later one over it); times are in
    samples at rate ``sr``. OTIO does not apply effects to durations, so a time-stretched
    clip's source range has its output length and a LinearTimeWarp says the speed.
    """
    if not HAVE_OTIO:
        from datasets.errors import ParameterError

        raise ParameterError("opentimelineio is not installed (pip install opentimelineio==0.18.1)")
    otio = _otio
    lay = layout(plan, sr, crossfade_ms)
    raw = Path(raw_path).resolve()
    rt = otio.opentime.RationalTime
    ref_range = otio.opentime.TimeRange(rt(0, sr), rt(lay.n_raw, sr))
    track = otio.schema.Track(name="edit", kind=otio.schema.TrackKind.Audio)
    for i, p in enumerate(lay.pieces):
        dur = p.length
        if i + 1 < len(lay.pieces) and lay.joins[i].kind == "overlap":
            dur -= lay.joins[i].removed
        clip = otio.schema.Clip(
            name=_segment_label(i, p, plan),
            media_reference=otio.schema.ExternalReference(target_url=raw.as_uri(), available_range=ref_range),
            source_range=otio.opentime.TimeRange(rt(p.raw_start, sr), rt(dur, sr)),
            metadata={"editor": {"ops": asdict(p.ops), "raw_start_beat": p.segment.raw_start,
                                 "raw_end_beat": p.segment.raw_end}},
        )
        if p.ops.time_factor != 1.0 or p.ops.reversed:
            scalar = p.ops.time_factor * (-1.0 if p.ops.reversed else 1.0)
            clip.effects.append(otio.schema.LinearTimeWarp(name="time", time_scalar=scalar))
        if i > 0:
            j = lay.joins[i - 1]
            if j.kind != "contiguous":
                w = j.end - j.start
                before, after = (0, w) if j.kind == "overlap" else (w // 2, w - w // 2)
                track.append(
                    otio.schema.Transition(
                        name=j.kind, transition_type=otio.schema.TransitionTypes.SMPTE_Dissolve,
                        in_offset=rt(before, sr), out_offset=rt(after, sr),
                    )
                )
        track.append(clip)
    tl = otio.schema.Timeline(name=f"edit of {raw.name}", metadata={"editor": {"source_sha256": plan.source_sha256}})
    tl.tracks.append(track)
    return tl


# -- atomic writers -----------------------------------------------------------------------
def _write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_text(path, text)


def write_json(path, plan: EditPlan, *, sr: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS) -> Path:
    return _write_text(path, plan_json(plan, sr=sr, crossfade_ms=crossfade_ms))


def write_audacity_labels(path, plan: EditPlan, *, sr: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS) -> Path:
    return _write_text(path, audacity_labels(plan, sr=sr, crossfade_ms=crossfade_ms))


def write_reaper_project(path, plan: EditPlan, *, raw_path, sr: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS) -> Path:
    return _write_text(path, reaper_project(plan, raw_path=raw_path, sr=sr, crossfade_ms=crossfade_ms))


def write_otio(path, plan: EditPlan, *, raw_path, sr: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS) -> Path:
    tl = otio_timeline(plan, raw_path=raw_path, sr=sr, crossfade_ms=crossfade_ms)
    return _write_text(path, _otio.adapters.write_to_string(tl, "otio_json"))


def export_all(
    plan: EditPlan, *, raw_path, sr: int, out_dir, stem: str, crossfade_ms: float = DEFAULT_CROSSFADE_MS
) -> dict[str, Path]:
    """Write STEM.plan.json, STEM.labels.txt, STEM.rpp (and STEM.otio) in ``out_dir``."""
    d = Path(out_dir)
    files = {
        "json": write_json(d / f"{stem}.plan.json", plan, sr=sr, crossfade_ms=crossfade_ms),
        "audacity": write_audacity_labels(d / f"{stem}.labels.txt", plan, sr=sr, crossfade_ms=crossfade_ms),
        "reaper": write_reaper_project(d / f"{stem}.rpp", plan, raw_path=raw_path, sr=sr, crossfade_ms=crossfade_ms),
    }
    if HAVE_OTIO:
        files["otio"] = write_otio(d / f"{stem}.otio", plan, raw_path=raw_path, sr=sr, crossfade_ms=crossfade_ms)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m envs.export",
        description="Write a plan as JSON, Audacity labels, a Reaper project (and OTIO) next to each other.",
    )
    ap.add_argument("raw", help="the raw recording the plan edits (the DAW projects reference it)")
    ap.add_argument("plan", help="plan JSON")
    ap.add_argument("out_dir", help="folder for the exported files")
    ap.add_argument("--stem", default=None, help="file name stem (default: the raw file's)")
    ap.add_argument("--crossfade-ms", type=float, default=DEFAULT_CROSSFADE_MS)
    args = ap.parse_args(argv)
    from datasets.audio import load_audio
    from datasets.errors import EditorError, ParameterError
    from datasets.safety import refuse_overwrite

    try:
        stem = args.stem or Path(args.raw).stem
        names = [f"{stem}.plan.json", f"{stem}.labels.txt", f"{stem}.rpp"] + ([f"{stem}.otio"] if HAVE_OTIO else [])
        # re-exporting NAME.plan.json into its own folder would rewrite the plan it reads
        refuse_overwrite([Path(args.out_dir) / n for n in names], [args.raw, args.plan])
        audio = load_audio(args.raw)
        p = Path(args.plan)
        if not p.is_file():
            raise ParameterError(f"{p}: plan file not found")
        plan = EditPlan.from_json(p.read_text()).validate(source_sha256=audio.sha256)
        files = export_all(plan, raw_path=args.raw, sr=audio.sr, out_dir=args.out_dir,
                           stem=stem, crossfade_ms=args.crossfade_ms)
    except (EditorError, KeyError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    for kind, path in files.items():
        print(f"{kind:<9} {path}")
    if not HAVE_OTIO:
        print("otio      skipped (pip install opentimelineio==0.18.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
