"""Planner-only cross-validation: which planner design plans held-out songs like the editor?

    EDITOR_CACHE_DIR=/work/bench_out/cache python bench/planner_cv.py --labels /tmp/h9/labels
    python bench/planner_cv.py --labels runs/bench/style/runs --editors loud70 chorus75 --kinds mlp

``--labels`` holds one folder of aligned labels per editor (``LABELS/EDITOR/*.json``, as
``alignment.run`` writes them; e.g. bench/style.py's ``runs/EDITOR/labels``). Per editor,
k-fold by song with bench/style.py's split (``folds_of``: seeded permutation dealt
round-robin); each planner kind (agent/planner.py ``PlannerConfig.kind``) is fitted on the
training songs' labels and predicts every held-out song on its label grid (the editor's
own phase, so the grid prediction's loss is not counted here). The per-bar probabilities
go through ``beat_prior`` and the env's budget (bench/style_ladder.py: bars in score order
until the keep ratio is filled), at two keep ratios:

- ``true``: the editor's own keep ratio of the song (order only: is the right material
  ranked first?);
- ``mean``: the training songs' mean keep ratio (what a run without the answer gets).

Scores, in raw seconds against the editor's aligned plan (bench/style_metrics.py):
raw-usage IoU and phrase keep/cut accuracy on the editor's own phrases (its
``*.truth.json`` beside the edit; the label grid's 4-bar phrases where none exists).
Reference rows in the same run: ``keep everything`` (the floor) and ``labels`` (the
aligned labels' own kept bars through the same decoding: the ceiling of any planner on
this grid).

Time: ~0.3 s per song to load (features from the cache), 0.5-2 s per MLP fit and 3-7 s
per attention fit on one core; the default run (5 editors x 35 songs x 2 folds, both
kinds) took 2.3 min at load ~2.5 (cdfee0f). Held-out IoU at the true keep, MLP /
attention: loud70 0.850 / 0.884, chorus75 0.698 / 0.718, sections8 0.727 / 0.691,
firstdown 0.809 / 0.823, tight60 0.722 / 0.648 (keep everything 0.70 / 0.57 / 0.60 /
0.64 / 0.53, labels 0.98-0.99; seed-to-seed spread of one kind ~0.03).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import style_metrics as sm  # noqa: E402

__all__ = ["CvSong", "load_editor", "score_plan", "run_kind", "main"]

#: Files of a labels folder that are not songs.
NOT_SONGS = ("index", "train", "skipped", "editor_grid")


@dataclass(frozen=True, eq=False)
class CvSong:
    """One labelled song: features on the label grid, the aligned plan, the editor's phrases."""

    name: str
    values: np.ndarray  # [n_beats, 121] on grid
    grid: object  # datasets.beats.BeatGrid (the label's: the editor's phase)
    plan: object  # envs.plan.EditPlan (aligned)
    duration: float  # raw seconds
    truth_spans: list  # raw seconds of the aligned plan, in playing order
    phrases: np.ndarray  # the editor's phrase boundaries (s) [m + 1]
    phrases_from_truth: bool
    keep: float  # fraction of the raw the editor plays


def _grid_phrases(grid, bars: int = 4) -> np.ndarray:
    b = np.asarray(grid.bar)
    starts = np.r_[0, np.flatnonzero(b[1:] != b[:-1]) + 1]
    ph = starts[np.r_[0, np.flatnonzero(np.diff(b[starts] // bars)) + 1]]
    return np.r_[grid.bounds[ph], grid.duration]


def load_editor(folder: Path, *, stems: str) -> list[CvSong]:
    """Every labelled song of one editor's labels folder (sorted by name)."""
    from bench.style_editors import TRUTH_SUFFIX
    from datasets.audio import load_audio
    from datasets.errors import ParameterError
    from datasets.features import extract_features
    from envs.plan import EditPlan

    files = sorted(f for f in folder.glob("*.json") if f.stem not in NOT_SONGS)
    if not files:
        raise ParameterError(f"{folder}: no label files (*.json)")
    out = []
    for f in files:
        rec = json.loads(f.read_text())
        plan = EditPlan.from_dict(rec["plan"])
        audio = load_audio(rec["raw_path"])
        values = extract_features(audio, grid=plan.grid, stems=stems).values
        spans = sm.spans_of_plan(plan)
        truth = Path(str(Path(rec["edited_path"]).with_suffix(""))  + TRUTH_SUFFIX) if rec.get("edited_path") else None
        has_truth = truth is not None and truth.is_file()
        phrases = np.asarray(json.loads(truth.read_text())["phrases"], dtype=np.float64) if has_truth else _grid_phrases(plan.grid)
        out.append(CvSong(f.stem, values, plan.grid, plan, audio.duration, spans, phrases, has_truth,
                          sm.keep_ratio(spans, audio.duration)))
    return out


def score_plan(spans: list, song: CvSong) -> tuple[float, float]:
    """(raw-usage IoU, phrase accuracy) of ``spans`` against the editor's aligned plan."""
    return (sm.raw_iou(spans, song.truth_spans, song.duration),
            sm.phrase_accuracy(spans, song.truth_spans, song.phrases, song.duration))


def _decode(probs: np.ndarray, bounds: np.ndarray, song: CvSong, keep: float) -> list:
    from agent.planner import beat_prior
    from bench.style_ladder import _budget_spans

    return _budget_spans(beat_prior(probs, bounds, song.grid), song.grid, keep)


def run_kind(songs: list[CvSong], folds: list[list[str]], kind: str, *, seed: int = 0) -> tuple[np.ndarray, float]:
    """Held-out scores of one planner kind [shape=(n_songs, 4)]: IoU at the true keep, at
    the mean keep, phrase accuracy at the true keep, at the mean keep (rows in ``songs``
    order); and the mean fit time (s). ``kind="labels"`` decodes the aligned labels."""
    from agent.planner import Planner, PlannerConfig, bar_targets, song_inputs

    inputs = [song_inputs(s.values, s.grid, "mlp" if kind == "labels" else kind) for s in songs]
    targets = [bar_targets(s.plan, b) for s, (_, b) in zip(songs, inputs)]
    rows = np.full((len(songs), 4), np.nan)
    fit_s = []
    for held in folds:
        test = [i for i, s in enumerate(songs) if s.name in held]
        train = [i for i in range(len(songs)) if i not in test]
        mean_keep = float(np.mean([songs[i].keep for i in train]))
        if kind != "labels":
            t0 = time.perf_counter()
            planner = Planner.fit([(inputs[i][0], targets[i]) for i in train], PlannerConfig(kind=kind, seed=seed))
            fit_s.append(time.perf_counter() - t0)
        for i in test:
            X, bounds = inputs[i]
            probs = targets[i] if kind == "labels" else planner.predict(X)
            a = score_plan(_decode(probs, bounds, songs[i], songs[i].keep), songs[i])
            b = score_plan(_decode(probs, bounds, songs[i], mean_keep), songs[i])
            rows[i] = (a[0], b[0], a[1], b[1])
    return rows, float(np.mean(fit_s)) if fit_s else 0.0


def main(argv: list[str] | None = None) -> int:
    import torch

    from agent.planner import KINDS
    from bench.style import folds_of
    from datasets.errors import EditorError

    ap = argparse.ArgumentParser(prog="python bench/planner_cv.py", description=__doc__.splitlines()[0])
    ap.add_argument("--labels", required=True, help="folder of per-editor label folders (LABELS/EDITOR/*.json)")
    ap.add_argument("--editors", nargs="+", default=["loud70", "chorus75", "sections8", "firstdown", "tight60"])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--folds", type=int, default=2, help="k-fold by song (bench/style.py's split)")
    ap.add_argument("--seed", type=int, default=0, help="fold split and planner seed")
    ap.add_argument("--stems", default="dsp", help="stem features of the cached beat features (bench/style_ladder.py's)")
    ap.add_argument("--json", default=None, help="also write the per-song scores here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    kinds = ["keep everything", "labels", *args.kinds]
    table, per_song = [], {}
    try:
        if args.folds < 2:
            raise EditorError(f"--folds {args.folds}: need at least 2 (every song held out once)")
        for ed in args.editors:
            folder = Path(args.labels) / ed
            if not folder.is_dir():
                raise EditorError(f"{folder}: no such labels folder")
            t0 = time.perf_counter()
            songs = load_editor(folder, stems=args.stems)
            folds = folds_of([s.name for s in songs], args.folds, args.seed)
            print(f"{ed}: {len(songs)} songs loaded in {time.perf_counter() - t0:.0f} s "
                  f"({sum(s.phrases_from_truth for s in songs)} with the editor's phrases); "
                  f"held out per fold: {' | '.join(', '.join(f) for f in folds)}", flush=True)
            per_song[ed] = {"songs": [s.name for s in songs], "folds": folds}
            for kind in kinds:
                if kind == "keep everything":
                    scores = [score_plan(sm.keep_everything(s.duration), s) for s in songs]
                    rows = np.array([(iou, iou, acc, acc) for iou, acc in scores])  # no keep ratio to decode at
                    fit_s = 0.0
                else:
                    rows, fit_s = run_kind(songs, folds, kind, seed=args.seed)
                m = rows.mean(0)
                table.append((ed, kind, *m, fit_s))
                per_song[ed][kind] = rows.tolist()
                print(f"  {kind:<16} IoU true {m[0]:.3f} mean {m[1]:.3f}  phrase acc true {m[2]:.3f} mean {m[3]:.3f}"
                      f"  (fit {fit_s:.1f} s)", flush=True)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t_start
    print(f"\nheld-out planner plans on the editor's grid, {args.folds}-fold by song (seed {args.seed}), "
          f"budgeted at the editor's keep of the song (true) and the training mean (mean); wall {wall / 60:.1f} min\n")
    print("| editor | planner | IoU true | IoU mean | phrase acc true | phrase acc mean | fit s |")
    print("|---|---|---|---|---|---|---|")
    for ed, kind, a, b, c, d, f in table:
        print(f"| {ed} | {kind} | {a:.3f} | {b:.3f} | {c:.3f} | {d:.3f} | {f:.1f} |")
    if args.json:
        from datasets.atomic import atomic_write_json

        atomic_write_json(Path(args.json), {"table": table, "per_song": per_song, "wall_s": wall, "args": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
