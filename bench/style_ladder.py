"""Where style is lost: the planner, the predicted grid and the policy, on held-out songs.

    python bench/style_ladder.py --run runs/bench/style/runs/loud70-f0 \\
        --labels runs/bench/style/runs/loud70/labels [--checkpoint ppo_last.pt]

``--run`` is a trained run (its ``labels/index.json`` names the training songs); every
other song of ``--labels`` (the aligned pairs of all songs, e.g. bench/style.py's per-editor
run) is held out. For each held-out song, the raw-usage IoU (10 ms, raw seconds) against
the editor's aligned plan of:

- the planner's budgeted plan (bars in the planner's order up to the style's keep ratio),
  on the grid the checkpoint predicts for the song, and on the editor's own grid (the
  phase its aligned cut points say);
- the policy's greedy edit (``agent.infer.edit_song``), on both grids;
- the policy's edit against its own budgeted plan (how closely it follows it).

The gap between "editor's grid" and "predicted grid" is the grid prediction's loss, the
gap between planner and policy the policy's, and the planner's own gap to 1.0 the plan's.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignment.label_index import read_index  # noqa: E402

COLUMNS = ("planner, predicted grid", "planner, editor's grid", "policy, predicted grid", "policy, editor's grid",
           "policy vs its plan")


def _usage_iou(a: list[tuple[float, float]], b: list[tuple[float, float]], duration: float, res: float = 0.01) -> float:
    """IoU of the raw time two lists of (start, end) seconds use, at ``res`` seconds."""
    n = int(duration / res) + 1
    ua, ub = np.zeros(n, bool), np.zeros(n, bool)
    for s, e in a:
        ua[int(s / res) : int(e / res)] = True
    for s, e in b:
        ub[int(s / res) : int(e / res)] = True
    return float((ua & ub).sum() / max((ua | ub).sum(), 1))


def _budget_spans(prior: np.ndarray, grid, keep: float) -> list[tuple[float, float]]:
    from envs.context import PLAN_CHANNELS, plan_channels

    kept = plan_channels(prior, grid, target_keep=keep)[:, PLAN_CHANNELS.index("plan_budget_keep")] > 0.5
    return [(float(grid.bounds[i]), float(grid.bounds[i + 1])) for i in np.flatnonzero(kept)]


def song_row(policy, planner, ckpt_extra: dict, rec: dict, *, stems: str) -> tuple[float, ...]:
    """The ladder's columns for one held-out song (``rec``: its label JSON)."""
    from agent.edit import edit_song
    from alignment.grid_model import editor_grid_features
    from datasets.audio import load_audio
    from datasets.features import extract_features
    from envs.env import AudioEditEnv, Song
    from envs.plan import EditPlan

    truth = EditPlan.from_dict(rec["plan"])
    truth_spans = [truth.segment_seconds(s) for s in truth.segments]
    keep = float(ckpt_extra["target_keep"])
    audio = load_audio(rec["raw_path"])
    predicted, _ = editor_grid_features(audio, extract_features(audio, stems=stems), ckpt_extra.get("editor_grid"), stems=stems)
    editors = extract_features(audio, grid=truth.grid, stems=stems)
    out = {}
    for which, feats in (("predicted", predicted), ("editor", editors)):
        prior = planner.prior(feats.values, feats.grid)
        plan_spans = _budget_spans(prior, feats.grid, keep)
        env = AudioEditEnv([Song.from_features(feats, audio=audio, plan_prior=prior)], target_keep=keep)
        edit = edit_song(policy, env).plan
        edit_spans = [edit.segment_seconds(s) for s in edit.segments]
        out[which] = (_usage_iou(plan_spans, truth_spans, audio.duration), _usage_iou(edit_spans, truth_spans, audio.duration),
                      _usage_iou(edit_spans, plan_spans, audio.duration))
    return (out["predicted"][0], out["editor"][0], out["predicted"][1], out["editor"][1], out["predicted"][2])


def main(argv: list[str] | None = None) -> int:
    import torch

    from agent.checkpoint import load_checkpoint, policy_from_checkpoint
    from agent.planner import Planner
    from datasets.errors import EditorError

    ap = argparse.ArgumentParser(prog="python bench/style_ladder.py", description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench/style/runs/loud70-f0",
                    help="trained run folder (labels/index.json, checkpoints/); default: bench/style.py's loud70 fold 0")
    ap.add_argument("--labels", default="runs/bench/style/runs/loud70/labels",
                    help="aligned labels of every song (the held-out ones included)")
    ap.add_argument("--checkpoint", default="bc_best.pt", help="file in RUN/checkpoints (bc_best.pt or ppo_last.pt)")
    ap.add_argument("--stems", default="dsp")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    run = Path(args.run)
    if not (run / "checkpoints" / args.checkpoint).is_file() and args.run == ap.get_default("run"):
        # make bench runs every script: without bench/style.py's runs there is nothing to read
        print(f"style_ladder: skipped, no {run}/checkpoints/{args.checkpoint} (run bench/style.py first)")
        return 0
    try:
        ck = load_checkpoint(run / "checkpoints" / args.checkpoint)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    policy = policy_from_checkpoint(ck).eval()
    planner = Planner.from_state(ck["extra"].get("planner"))
    if planner is None:
        print(f"error: {args.checkpoint} carries no planner (trained with --no-planner or before it)", file=sys.stderr)
        return 2
    train = set(read_index(run))
    rows = []
    for f in sorted(Path(args.labels).glob("*.json")):
        if f.stem in ("index", "train", "skipped", "editor_grid") or f.stem in train:
            continue
        row = song_row(policy, planner, ck["extra"], json.loads(f.read_text()), stems=args.stems)
        rows.append(row)
        print(f"{f.stem[:28]:<28} " + " ".join(f"{v:.3f}" for v in row), flush=True)
    if not rows:
        print(f"error: {args.labels}: no held-out song (every label is in {run}/labels/index.json)", file=sys.stderr)
        return 2
    print(f"\n{len(rows)} held-out songs, {args.checkpoint}, mean raw-usage IoU against the editor:\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    print("| " + " | ".join(f"{v:.3f}" for v in np.mean(rows, axis=0)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
