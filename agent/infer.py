"""Edit a new recording the way the trained policy learned to.

    python -m agent.infer song.wav                       # newest checkpoint under runs/
    python -m agent.infer song.wav --checkpoint runs/demo/checkpoints/ppo_last.pt
    python -m agent.infer song.wav --target-duration 150 --out edits/song
    python -m agent.infer song.wav --output song_edit.wav --sample --seed 3

Steps: load audio -> beats + features (cached) -> the policy walks the song in the
editing environment with masks (greedy unless --sample) -> EditPlan -> (optional)
bar-level fit to --target-duration or --keep-ratio (agent/duration.py) -> a fade when
the edit stops before the song does -> render at the input's native rate and channels ->
NAME_edited.wav, NAME.plan.json, NAME.labels.txt, NAME.rpp, NAME.edit.png and
NAME.report.html.

Everything is checked before anything is written (input, checkpoint, output folder; no
output may be an input, datasets.safety), each output is written atomically, and the set
is written under the output folder's lock, so a bad input leaves no partial files and
concurrent runs into one folder leave one run's consistent set.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from agent.edit import edit_song  # no torch import at start-up
from datasets.atomic import locked_folder
from datasets.errors import EditorError, ParameterError
from datasets.safety import refuse_overwrite

__all__ = ["newest_checkpoint", "output_paths", "main"]

log = logging.getLogger("agent.infer")


def newest_checkpoint(root: str | os.PathLike = "runs") -> Path:
    """The most recently written policy checkpoint under ``root`` (fine-tuned or BC)."""
    found = [p for p in Path(root).glob("*/checkpoints/*.pt") if p.is_file()]
    if not found:
        raise EditorError(f"no checkpoint under {root}/*/checkpoints/; train one first (make demo, or make pretrain)")
    return max(found, key=lambda p: p.stat().st_mtime)


def _number(what: str, *, lo: float | None = None, hi: float | None = None, above: float | None = None):
    """argparse type of a float flag: refuses nan/inf and values out of range with one line
    (``--target-duration inf`` once gave a 0.34 s edit)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number ({what})") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number ({what})")
        if (lo is not None and v < lo) or (hi is not None and v > hi) or (above is not None and v <= above):
            rng = f"> {above:g}" if above is not None else f"in [{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({what} {rng})")
        return v

    return parse


def get_parser() -> argparse.ArgumentParser:
    from agent.duration import KEEP_RATIO_RANGE

    p = argparse.ArgumentParser(prog="python -m agent.infer", description="Edit a raw recording with a trained policy.")
    p.add_argument("input", help="raw recording (wav, flac, ogg, opus, mp3)")
    p.add_argument("--checkpoint", help="policy checkpoint (.pt); default: the newest under --newest-in")
    p.add_argument("--newest-in", default="runs", help="folder searched for the newest checkpoint (default: runs)")
    p.add_argument("--out", help="output folder (default: runs/infer/<song name>)")
    p.add_argument("--output", help="file name of the edited audio (the spec's flag); its folder is the output folder")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--target-duration", type=_number("seconds", above=0), metavar="SEC",
                        help="wanted length of the edit in seconds, > 0 (lands within a bar; longer than the song: clamped, with a warning)")
    lo, hi = KEEP_RATIO_RANGE
    length.add_argument("--keep-ratio", type=_number("fraction of the raw", lo=lo, hi=hi), metavar="R",
                        help=f"fraction of the raw to keep, {lo:g}-{hi:g} (lands within a bar); default: the training style")
    p.add_argument("--sample", action="store_true", help="sample actions instead of the greedy choice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("wav", "flac"), default="wav", help="edited audio format")
    p.add_argument("--crossfade-ms", type=_number("milliseconds", lo=0.0), default=10.0, help="equal-power crossfade at each join")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--no-cache", action="store_true", help="recompute features instead of reading the cache")
    p.add_argument("--no-end-fade", action="store_true", help="keep a dead stop when the edit ends before the song does")
    return p


def output_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Every file one edit writes, by kind (the keys of ``envs.export.export_all`` plus
    audio, png and report). They are named after the song, or after ``--output``'s file
    name when given, so edits of several songs, or several edits of one song, can share a
    folder without replacing each other's files. Checked, not created."""
    import soundfile as sf

    from envs.export import HAVE_OTIO

    src = Path(args.input)
    if args.output:
        audio = Path(args.output)
        out_dir, stem = audio.parent, audio.stem
        fmt = audio.suffix.lstrip(".").upper() or "WAV"
        if fmt not in sf.available_formats():
            raise ParameterError(f"{audio}: cannot write audio format '{fmt.lower()}' (use .wav or .flac)")
    else:
        out_dir = Path(args.out) if args.out else Path("runs") / "infer" / src.stem
        stem = src.stem
        audio = out_dir / f"{stem}_edited.{args.format}"
    if out_dir.exists() and not out_dir.is_dir():
        raise ParameterError(f"{out_dir}: is a file, not a folder; name a folder for the outputs")
    paths = {
        "audio": audio,
        "json": out_dir / f"{stem}.plan.json",
        "audacity": out_dir / f"{stem}.labels.txt",
        "reaper": out_dir / f"{stem}.rpp",
    }
    if HAVE_OTIO:
        paths["otio"] = out_dir / f"{stem}.otio"
    paths["png"] = out_dir / f"{stem}.edit.png"
    paths["report"] = out_dir / f"{stem}.report.html"
    return paths


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EditorError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from None


def _looks_collapsed(types: list[int], keep_ratio: float) -> bool:
    """One action type over 90 % of 10+ steps, unless it is KEEP in an edit that still
    cuts something: an editor who keeps 70 % bar by bar is mostly KEEP BAR by design
    (the warning fired on such edits of the style benchmark)."""
    if len(types) < 10:
        return False
    kind, n = Counter(types).most_common(1)[0]
    return n > 0.9 * len(types) and not (kind == 0 and keep_ratio < 0.95)


def _distribution(values: list[int], names: list[str]) -> str:
    c = Counter(values)
    n = max(1, len(values))
    return ", ".join(f"{names[k]} {100 * v / n:.0f}%" for k, v in c.most_common())


def run(args: argparse.Namespace) -> dict:
    """Do the edit; returns the summary (also printed)."""
    from datasets.audio import check_audio

    # 0. The song first, before torch and the rest are imported (~3 s): a missing or
    # unreadable input is one line in well under a second (issue 17).
    check_audio(args.input)
    import torch

    from agent.checkpoint import load_checkpoint, policy_from_checkpoint
    from agent.device import pick_device
    from agent.duration import LengthRequest, fit_length, policy_target_keep, trained_keep_range
    from agent.ending import soften_ending
    from agent.report import output_timeline, plot_edit, write_report_html
    from datasets.audio import load_audio, write_audio
    from agent.planner import Planner
    from alignment.grid_model import editor_grid_features
    from datasets.features import extract_features, feature_index
    from envs.actions import Amount, ActionType, Size
    from envs.env import AudioEditEnv, Song
    from envs.export import export_all
    from envs.quality import detect_clicks
    from envs.layout import output_duration
    from envs.render import render
    from envs.reward import KEEP_RATIO_MIN

    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = now - t0
        return now

    # 1. Check everything before writing anything.
    src = Path(args.input)
    length = LengthRequest(target_s=args.target_duration, keep_ratio=args.keep_ratio)  # checks both
    ckpt_path = Path(args.checkpoint) if args.checkpoint else newest_checkpoint(args.newest_in)
    outputs = output_paths(args)
    # Never write over the recording or the checkpoint, whatever the flags, and refuse a
    # folder given as --output, before the checkpoint loads and the song is analysed.
    refuse_overwrite(outputs.values(), [src, ckpt_path])
    out_dir = outputs["audio"].parent
    _check_writable(out_dir)
    t = time.perf_counter()
    ckpt = load_checkpoint(ckpt_path)
    device = pick_device(args.device)
    policy = policy_from_checkpoint(ckpt, device=device)
    t = lap("checkpoint", t)
    audio = load_audio(src)
    t = lap("load", t)

    # 2. Beats and features: the same pipeline (and stem method) the policy trained on.
    method = (ckpt.get("extra") or {}).get("stem_method") or "auto"  # "dsp" or "demucs:<model>"
    stems, _, stem_model = method.partition(":")
    feats = extract_features(audio, stems=stems, stem_model=stem_model or None, use_cache=not args.no_cache)
    # ... on the trained editor's phase of the grid (where they hear bars and phrases)
    feats, grid_phase = editor_grid_features(
        audio, feats, (ckpt.get("extra") or {}).get("editor_grid"),
        stems=stems, stem_model=stem_model or None, use_cache=not args.no_cache,
    )
    t = lap("beats+features", t)

    # 3. The policy edits the song in the environment, masks on.
    # The policy aims at a keep ratio inside its training range; the bar-level fit below
    # lands the plan on what was asked (agent/duration.py).
    keep = policy_target_keep(length, duration_s=audio.duration, style_keep=(ckpt.get("extra") or {}).get("target_keep"),
                              trained=trained_keep_range(policy))
    if torch.device(device).type == "cpu":  # one 64-beat window per step: more threads only spin on a busy CPU (~100x slower)
        torch.set_num_threads(1)
    planner = Planner.from_state((ckpt.get("extra") or {}).get("planner"))
    prior = None if planner is None else planner.prior(feats.values, feats.grid)
    song = Song.from_features(feats, audio=audio, name=src.stem, plan_prior=prior)
    env = AudioEditEnv([song], target_keep=keep)
    policy.eval()
    result = edit_song(policy, env, deterministic=not args.sample, seed=args.seed)
    plan, length_note = fit_length(
        result.plan,
        length,
        style_keep=env.target_keep,
        energy=feats.values[:, feature_index("rms_db")],
        output_seconds=lambda p: output_duration(p, audio.sr, args.crossfade_ms),
        floor_keep=KEEP_RATIO_MIN,
    )
    if length_note:
        log.warning("warning: %s", length_note)
    if not args.no_end_fade:
        plan = soften_ending(plan)
    t = lap("policy", t)

    # 4. Render at the input's native rate and channels.
    rendered = render(y=audio.y, sr=audio.sr, plan=plan, crossfade_ms=args.crossfade_ms)
    clicks = detect_clicks(y=rendered.y, sr=audio.sr, positions=rendered.cut_positions)
    t = lap("render", t)

    # 5. Outputs: each file atomic, and the whole set written under the folder's lock, so
    # runs into one folder at once leave one run's set (the last one), never a mix.
    types = [a[0] for a in result.actions]
    summary = {
        "input": str(src),
        "checkpoint": str(ckpt_path),
        "device": str(device),
        "duration in": f"{audio.duration:.1f} s",
        "duration out": f"{rendered.duration:.1f} s",
        "keep ratio": f"{plan.keep_ratio:.2f}",
        "tempo / meter": f"{feats.grid.tempo:.1f} BPM, {feats.grid.beats_per_bar}/4",
        "editor's grid": f"downbeat shift {grid_phase.downbeat_shift} beats, bar offset {grid_phase.bar_offset}",
        "actions": str(len(result.actions)),
        "types": _distribution(types, [x.name for x in ActionType]),
        "sizes": _distribution([a[1] for a in result.actions], [x.name for x in Size]),
        "amounts": _distribution([a[2] for a in result.actions], [x.name for x in Amount]),
        "joins": str(len(rendered.cut_positions)),
        "clicks detected": str(len(clicks)),
        "safety gain": f"{rendered.safety_gain_db:.1f} dB",
        "episode reward": f"{result.reward:.3f}",
    }
    if args.target_duration is not None:
        summary["target duration"] = f"{args.target_duration:.1f} s"
    edited_path = outputs["audio"]
    with locked_folder(out_dir):
        write_audio(edited_path, y=rendered.y, sr=audio.sr)
        stem = outputs["json"].name.removesuffix(".plan.json")
        files = export_all(plan, raw_path=src.resolve(), sr=audio.sr, out_dir=out_dir, stem=stem, crossfade_ms=args.crossfade_ms)
        assert set(files.values()) <= set(outputs.values()), (files, outputs)  # the names checked in step 1
        png = plot_edit(plan, y=audio.y, sr=audio.sr, path=outputs["png"], title=f"{src.name}: edit", crossfade_ms=args.crossfade_ms)
        # names the plan the page describes: the page and NAME.plan.json beside it agree
        summary["edit id"] = hashlib.sha256(files["json"].read_bytes()).hexdigest()[:12]
        report = write_report_html(
            path=outputs["report"],
            raw_audio=src,
            edited_audio=edited_path,
            png=png,
            plan=plan,
            summary=summary,
            timeline=output_timeline(plan, sr=audio.sr, crossfade_ms=args.crossfade_ms),
        )
    t = lap("exports", t)
    timings["total"] = time.perf_counter() - t_start
    summary["outputs"] = ", ".join(str(p) for p in [edited_path, *files.values(), png, report])
    summary["time"] = ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
    if _looks_collapsed(types, plan.keep_ratio):
        log.warning("one action type makes over 90%% of the edit (%s): the policy may have collapsed", summary["types"])
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = get_parser().parse_args(argv)
    try:
        summary = run(args)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    width = max(len(k) for k in summary)
    for k, v in summary.items():
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
