"""Align one raw/edited pair: ``python -m alignment RAW EDITED --json OUT.json [--plot OUT.png]``.

Prints the segments (seconds), the beat plan's keep ratio, confidence and fidelity;
``--json`` writes the label record (alignment.labels.PairLabels.to_dict), ``--plot``
draws edited time against raw time with each segment as a line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from datasets.atomic import atomic_path, atomic_write_json
from datasets.errors import EditorError, ParameterError

__all__ = ["main", "write_json", "plot_alignment"]


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write JSON atomically (temp file in the same folder + rename)."""
    return atomic_write_json(path, data)


def plot_alignment(path: str | os.PathLike, record: dict, *, title: str = "") -> Path:
    """PNG of edited time (x) against raw time (y): one line per segment (reversed
    segments run downwards), unmatched spans shaded, beat-plan joins marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    effects = record.get("segment_effects") or [{}] * len(record["segments"])
    for k, (s, fx) in enumerate(zip(record["segments"], effects)):
        ys = (s["raw_end"], s["raw_start"]) if fx.get("reversed") else (s["raw_start"], s["raw_end"])
        color = "tab:red" if fx.get("reversed") else ("tab:purple" if fx.get("time_factor", 1.0) != 1.0 else "tab:blue")
        ax.plot((s["edit_start"], s["edit_end"]), ys, color=color, lw=2.5, alpha=0.4 + 0.6 * s["confidence"])
        label = f"{s['gain_db']:+.1f} dB" if abs(s["gain_db"]) >= 0.75 else ""
        if s["fade_in_s"] > 0 or s["fade_out_s"] > 0:
            label += f" fade {s['fade_in_s']:.1f}/{s['fade_out_s']:.1f}s"
        if label:
            ax.annotate(label, ((s["edit_start"] + s["edit_end"]) / 2, (ys[0] + ys[1]) / 2), fontsize=7)
    for a, b in record.get("unmatched", []):
        ax.axvspan(a, b, color="0.85", zorder=0)
    ax.set_xlabel("edited time (s)")
    ax.set_ylabel("raw time (s)")
    ax.set_xlim(0, record.get("edit_duration", None) or None)
    ax.set_ylim(0, record.get("raw_duration", None) or None)
    ax.grid(alpha=0.3)
    ax.set_title(
        (title + "\n" if title else "")
        + f"{len(record['segments'])} segments, confidence {record['confidence']:.2f}, fidelity {record['fidelity']:.2f} dB",
        fontsize=9,
    )
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def get_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m alignment", description=__doc__.splitlines()[0])
    ap.add_argument("raw", help="raw recording (any format libsndfile reads)")
    ap.add_argument("edited", help="the hand-edited version of it, or a project of the edit (NAME.rpp, NAME.otio, "
                                   "NAME.plan.json: read exactly, alignment/projects.py)")
    ap.add_argument("--json", dest="json_out", help="write the label record here")
    ap.add_argument("--plot", help="write a PNG of edited time vs raw time here")
    ap.add_argument("--no-actions", action="store_true", help="skip the oracle actions")
    ap.add_argument("--no-fidelity", action="store_true", help="skip rendering the plan back")
    ap.add_argument(
        "--min-confidence", type=float, default=None,
        help="refuse the pair below this alignment confidence (default: alignment.labels.MIN_CONFIDENCE, calibrated)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from datasets.audio import check_audio

    from datasets.pairs import project_name

    project = project_name(args.edited) is not None
    try:  # the inputs first, before the aligner is imported: a typo is one line at once
        check_audio(args.raw)
        if not project:
            check_audio(args.edited)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from alignment.labels import MIN_CONFIDENCE, label_pair
    from datasets.safety import refuse_overwrite

    try:
        # before the alignment runs: a folder as --json, or an output over an input
        refuse_overwrite([args.json_out, args.plot], [args.raw, args.edited])
        min_conf = MIN_CONFIDENCE if args.min_confidence is None else args.min_confidence
        if not 0.0 <= min_conf <= 1.0:  # also refuses nan
            raise ParameterError(f"--min-confidence must be in [0, 1], got {min_conf}")
        if project:
            from alignment.projects import label_project

            labels = label_project(args.raw, args.edited, with_actions=not args.no_actions)
        else:
            from datasets.audio import load_audio
            from datasets.features import beat_grid_of

            # The raw's beats alone: label_pair's default computes (and caches) all its
            # features for training, ~0.9 s CPU this one pair does not need (issue 17).
            labels = label_pair(
                args.raw, args.edited, grid=beat_grid_of(load_audio(args.raw)), with_actions=not args.no_actions,
                with_fidelity=not args.no_fidelity, min_confidence=min_conf,
            )
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rec = labels.to_dict()
    print(f"{'edit s':>16} {'raw s':>16} {'gain dB':>8} {'fades s':>11} {'conf':>5}")
    for s in rec["segments"]:
        print(
            f"{s['edit_start']:7.2f}-{s['edit_end']:7.2f}  {s['raw_start']:7.2f}-{s['raw_end']:7.2f}  {s['gain_db']:+7.2f}"
            f"  {s['fade_in_s']:4.1f}/{s['fade_out_s']:4.1f}  {s['confidence']:5.2f}"
        )
    n_act = "-" if rec["actions"] is None else len(rec["actions"])
    print(
        f"confidence {rec['confidence']:.3f}  fidelity {rec['fidelity']:.2f} dB  keep ratio {rec['keep_ratio']:.3f}  "
        f"beat segments {len(rec['plan']['segments'])}  actions {n_act} (exact {rec['actions_exact']})  "
        f"reproduced {'-' if labels.loss is None else format(labels.loss.reproduced, '.3f')}  "
        f"{rec['seconds']:.1f} s"
    )
    loss = labels.loss
    if loss is not None and (loss.lost_s > 0 or loss.extra_s > 0.05):
        # what the action vocabulary could not say (a reversed song's first beat, a repeat
        # past the output cap): one line, with make align's verdict
        print(f"warning: {args.edited}: {loss.line()}", file=sys.stderr)
    for note in labels.project_notes:  # what of a DAW project the labels leave out
        print(f"note: {args.edited}: {note}", file=sys.stderr)
    try:
        if args.json_out:
            write_json(args.json_out, rec)
        if args.plot:
            plot_alignment(args.plot, rec, title=f"{Path(args.edited).name} vs {Path(args.raw).name}")
    except OSError as exc:  # a read-only or missing folder: one line, not a traceback
        print(f"error: {exc.filename or args.json_out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
