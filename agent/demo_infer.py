"""The last stage of ``make demo``: edit a song the policy never trained on, and a real
recording when ../shared/data/music is there, then say where to look.

    python -m agent.demo_infer --run demo

The held-out song is one of the pretraining run's validation songs (the checkpoint
records them by audio hash), so the demo shows generalisation, not memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.infer import main as infer_main
from alignment.label_index import read_label_records
from datasets.errors import EditorError

__all__ = ["main"]

REAL_SONG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "music" / "race1-jt.ogg"


def _checkpoint(run_dir: Path) -> Path:
    for name in ("ppo_last.pt", "bc_best.pt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    raise EditorError(f"{run_dir}/checkpoints/: no ppo_last.pt or bc_best.pt; run make pretrain RUN={run_dir.name}")


def _held_out_song(run_dir: Path) -> Path:
    import torch

    bc = run_dir / "checkpoints" / "bc_best.pt"
    val = set(torch.load(bc, weights_only=True).get("extra", {}).get("val_songs", [])) if bc.is_file() else set()
    records = list(read_label_records(run_dir))
    for _name, _entry, label in records:
        if label.get("raw_sha256") in val:
            return Path(label["raw_path"])
    return Path(records[-1][2]["raw_path"])  # no split recorded: the last pair


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent.demo_infer", description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="demo", help="run name under runs/")
    ap.add_argument("--runs-dir", default="runs")
    args = ap.parse_args(argv)
    run_dir = Path(args.runs_dir) / args.run
    try:
        ckpt = _checkpoint(run_dir)
        songs = [_held_out_song(run_dir)]
    except (EditorError, OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if REAL_SONG.is_file():
        songs.append(REAL_SONG)
    reports = []
    for song in songs:
        out = run_dir / "outputs" / song.stem
        print(f"\n== editing {song} with {ckpt}")
        rc = infer_main([str(song), "--checkpoint", str(ckpt), "--out", str(out)])
        if rc != 0:
            return rc
        reports.append(out / f"{song.stem}.report.html")
    print("\nDemo done. Open these pages in a browser to listen and look:")
    for r in reports:
        print(f"  {r.resolve()}")
    print(f"TensorBoard: .venv/bin/tensorboard --logdir {run_dir / 'tb'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
