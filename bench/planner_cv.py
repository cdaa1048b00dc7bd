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
until the keep ratio is filled), at four keep ratios:

- ``true``: the editor's own keep ratio of the song (order only: is the right material
  ranked first?);
- ``mean``: the training songs' mean keep ratio (what a run without the answer gets);
- ``sec``: the training songs' mean kept raw seconds over the song's duration, capped at
  their largest keep ratio (an editor who aims at an output length, chorus75 / tight60);
- ``learned``: ``mean`` or ``sec``, whichever unit varied less (coefficient of
  variation) across the fold's training songs (agent/planner_rank.py ``fit_budget``, the
  choice the rank planner records in its state); the choice per fold is printed.

Scores, in raw seconds against the editor's aligned plan (bench/style_metrics.py):
raw-usage IoU and phrase keep/cut accuracy on the editor's own phrases (its
``*.truth.json`` beside the edit; the label grid's 4-bar phrases where none exists).
Reference rows in the same run: ``keep everything`` (the floor) and ``labels`` (the
aligned labels' own kept bars through the same decoding: the ceiling of any planner on
this grid).

Time: ~0.3 s per song to load (features from the cache), 0.5-2 s per MLP fit, 3-7 s per
attention fit and 0.4-1 s per rank fit on one core; the default run (5 editors x 35 songs
x 2 folds, three kinds) took 2.3 min at load ~4-5. Held-out IoU at the true keep, MLP /
attention / rank: loud70 0.850 / 0.884 / 0.946, chorus75 0.698 / 0.718 / 0.833,
sections8 0.727 / 0.691 / 0.707, firstdown 0.809 / 0.823 / 0.866, tight60 0.722 / 0.648 /
0.818 (keep everything 0.70 / 0.57 / 0.60 / 0.64 / 0.53, labels 0.98-0.99; seed-to-seed
spread of the MLP and attention kinds ~0.03; the rank fit is deterministic). The seconds
budget: labels 0.953 vs 0.918 (mean ratio) on chorus75 and 0.960 vs 0.903 on tight60, rank
0.815 vs 0.803 and 0.799 vs 0.763; it costs the ratio editors 0.01-0.02 (loud70 0.919 vs
0.928), and the learned unit picks the ratio for them.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import style_metrics as sm  # noqa: E402

__all__ = ["CvSong", "load_editor", "score_plan", "run_kind", "train_budgets", "main"]

#: The budgets a held-out plan is decoded at (``run_kind``'s columns, IoU then phrase accuracy).
BUDGETS = ("true", "mean", "sec", "learned")
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
    """Held-out scores of one planner kind [shape=(n_songs, 8)]: IoU at the true keep, at
    the mean keep ratio, at the mean kept seconds, at the learned one of the two
    (``train_budgets``), then phrase accuracy at the same four (rows in ``songs`` order);
    and the mean fit time (s). ``kind="labels"`` decodes the aligned labels."""
    from agent.planner import Planner, PlannerConfig, bar_targets, song_inputs

    inputs = [song_inputs(s.values, s.grid, "mlp" if kind == "labels" else kind) for s in songs]
    targets = [bar_targets(s.plan, b) for s, (_, b) in zip(songs, inputs)]
    rows = np.full((len(songs), 2 * len(BUDGETS)), np.nan)
    fit_s = []
    for held in folds:
        test = [i for i, s in enumerate(songs) if s.name in held]
        train = [i for i in range(len(songs)) if i not in test]
        learned, ratio, seconds = train_budgets([songs[i] for i in train])
        if kind != "labels":
            t0 = time.perf_counter()
            planner = Planner.fit([(inputs[i][0], targets[i]) for i in train], PlannerConfig(kind=kind, seed=seed))
            fit_s.append(time.perf_counter() - t0)
        for i in test:
            X, bounds = inputs[i]
            probs = targets[i] if kind == "labels" else planner.predict(X)
            s = songs[i]
            keeps = (s.keep, ratio.keep_ratio(s.duration), seconds.keep_ratio(s.duration), learned.keep_ratio(s.duration))
            sc = [score_plan(_decode(probs, bounds, s, k), s) for k in keeps]
            rows[i] = [iou for iou, _ in sc] + [acc for _, acc in sc]
    return rows, float(np.mean(fit_s)) if fit_s else 0.0


def train_budgets(train: list[CvSong]):
    """The training songs' budget: the one ``agent.planner_rank.fit_budget`` learns, then
    as a mean keep ratio and as mean kept raw seconds (capped at their largest ratio), the
    two units it chooses from."""
    from dataclasses import replace

    from agent.planner_rank import fit_budget

    dur = np.array([s.duration for s in train])
    kept = np.array([s.keep for s in train]) * dur
    b = fit_budget(kept, dur)
    return b, replace(b, unit="ratio", value=float((kept / dur).mean())), replace(b, unit="seconds", value=float(kept.mean()))


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
    table, per_song, budgets = [], {}, []
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
            for f, held in enumerate(folds):
                b, _, _ = train_budgets([s for s in songs if s.name not in held])
                budgets.append((ed, f, b))
                print(f"  fold {f} budget: CV of the kept ratio {b.cv_ratio:.3f}, of the kept seconds {b.cv_seconds:.3f}"
                      f" -> {b.unit}", flush=True)
            for kind in kinds:
                if kind == "keep everything":
                    scores = [score_plan(sm.keep_everything(s.duration), s) for s in songs]
                    rows = np.array([(iou,) * len(BUDGETS) + (acc,) * len(BUDGETS) for iou, acc in scores])  # no keep to decode at
                    fit_s = 0.0
                else:
                    rows, fit_s = run_kind(songs, folds, kind, seed=args.seed)
                m = rows.mean(0)
                table.append((ed, kind, *m, fit_s))
                per_song[ed][kind] = rows.tolist()
                n = len(BUDGETS)
                print(f"  {kind:<16} IoU {' '.join(f'{b} {v:.3f}' for b, v in zip(BUDGETS, m[:n]))}  phrase acc "
                      f"{' '.join(f'{b} {v:.3f}' for b, v in zip(BUDGETS, m[n:]))}  (fit {fit_s:.1f} s)", flush=True)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t_start
    print(f"\nheld-out planner plans on the editor's grid, {args.folds}-fold by song (seed {args.seed}), "
          f"budgeted at the editor's keep of the song (true), the training songs' mean keep ratio (mean) and their "
          f"mean kept raw seconds, capped at their largest ratio (sec), and the one of the two learned from them (learned); "
          f"wall {wall / 60:.1f} min\n")
    print("| editor | planner | " + " | ".join(f"IoU {b}" for b in BUDGETS) + " | " + " | ".join(f"phrase acc {b}" for b in BUDGETS)
          + " | fit s |")
    print("|---|---|" + "---|" * (2 * len(BUDGETS) + 1))
    for ed, kind, *m, f in table:
        print(f"| {ed} | {kind} | " + " | ".join(f"{v:.3f}" for v in m) + f" | {f:.1f} |")
    print("\nbudget unit learned from the training songs (agent/planner_rank.py fit_budget: the lower coefficient of variation)\n")
    print("| editor | fold | CV kept ratio | CV kept seconds | unit |")
    print("|---|---|---|---|---|")
    for ed, f, b in budgets:
        print(f"| {ed} | {f} | {b.cv_ratio:.3f} | {b.cv_seconds:.3f} | {b.unit} |")
    if args.json:
        from datasets.atomic import atomic_write_json

        atomic_write_json(Path(args.json), {"table": table, "per_song": per_song, "wall_s": wall, "args": vars(args),
                                            "budgets": [(ed, f, asdict(b)) for ed, f, b in budgets]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
