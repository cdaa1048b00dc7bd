"""Does the product hear the editor's bar lines on a song it has not seen? (the grid only)

    python bench/grid_cv.py --runs runs/bench/style/runs --editors loud70 chorus75

For each editor's aligned pairs (``RUNS/EDITOR/labels``, as bench/style.py leaves them,
with the editor's ground truth beside each edit), 2-fold by song with bench/style.py's
split: the grid rankers (alignment/grid.py: the pulse ranker, then the phase ranker) are
fitted on the training songs' labels exactly as ``make align`` fits them, and predict the
held-out songs' grids from the audio alone, as ``python -m agent.infer`` does. Printed
per editor, the fraction of the editor's downbeats within 70 ms of a downbeat of:

- the tracker's own grid (what the product heard before the editor's grid: the baseline);
- the predicted grid (pulse + phase), and with the phase ranker alone (tracker's pulse);
- the grid the pair's own cut points say (the labels' grid: what training sees; a ceiling
  for prediction from cuts).

A few minutes on one core once the features are cached (``EDITOR_CACHE_DIR``); no
training of the policy, so it is the quick check of a change to the grid rankers.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignment.grid_model import TempoModel, editor_grid_features, fit_grid_model  # noqa: E402
from bench.style import folds_of  # noqa: E402
from bench.style_editors import TRUTH_SUFFIX  # noqa: E402
from bench.style_metrics import downbeat_agreement  # noqa: E402
from datasets.audio import load_audio  # noqa: E402
from datasets.beats import BeatGrid  # noqa: E402
from datasets.errors import ParameterError  # noqa: E402
from datasets.features import extract_features  # noqa: E402

COLUMNS = ("tracker's grid", "phase ranker only", "pulse + phase (product)", "pair's own cuts (labels)")


def _downbeats(grid: BeatGrid) -> np.ndarray:
    return grid.times[grid.beat_in_bar == 0]


def _label_files(label_dir: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(label_dir.glob("*.json")):
        rec = json.loads(p.read_text())
        if isinstance(rec, dict) and rec.get("editor_grid") and rec.get("raw_path"):
            out[p.stem] = p
    return out


def _truth(rec: dict) -> dict:
    edited = Path(rec["edited_path"])
    return json.loads((edited.parent / (edited.stem + TRUTH_SUFFIX)).read_text())


def run_editor(label_dir: Path, *, folds: int, seed: int, stems: str) -> dict:
    files = _label_files(label_dir)
    if not files:
        raise ParameterError(f"{label_dir}: no label files with the editor's grid (run bench/style.py or make align first)")
    scores: dict[str, list[float]] = {c: [] for c in COLUMNS}
    pulses = {"right": 0, "songs": 0}
    for held in folds_of(sorted(files), folds, seed):
        model = fit_grid_model([files[n] for n in files if n not in held], stems=stems)
        phase_only = replace(model, tempo=TempoModel())
        for name in held:
            rec = json.loads(files[name].read_text())
            editor = np.asarray(_truth(rec)["downbeats"], dtype=np.float64)
            audio = load_audio(rec["raw_path"])
            feats = extract_features(audio, stems=stems)
            got, phase = editor_grid_features(audio, feats, model, stems=stems)
            alone, _ = editor_grid_features(audio, feats, phase_only, stems=stems)
            labels_grid = BeatGrid.from_dict(rec["plan"]["grid"])
            for col, grid in zip(COLUMNS, (feats.grid, alone.grid, got.grid, labels_grid)):
                scores[col].append(downbeat_agreement(editor, _downbeats(grid)))
            truth_pulse = tuple(rec["editor_grid"].get("tempo_ties", [[1.0, 0.0]]))
            pulses["songs"] += 1
            pulses["right"] += any(abs(phase.beat_ratio - t[0]) < 1e-4 and abs(phase.beat_offset - t[1]) < 1e-4
                                   for t in truth_pulse)
    return {"songs": len(files), "agreement": {c: float(np.mean(v)) for c, v in scores.items()},
            "songs_at_0.9": {c: int(np.sum(np.asarray(v) >= 0.9)) for c, v in scores.items()},
            "pulse_in_evidence": pulses}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=None,
                    help="bench/style.py's runs folder, EDITOR/labels inside (default runs/bench/style/runs; "
                         "skipped when that does not exist, as under make bench before bench/style.py ran)")
    ap.add_argument("--editors", nargs="+", default=["loud70", "chorus75", "sections8", "firstdown", "tight60"])
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="bench/style.py's fold split")
    ap.add_argument("--stems", default="auto", help="as bench/style.py (the feature cache is keyed by it)")
    args = ap.parse_args(argv)
    if args.runs is None:
        args.runs = "runs/bench/style/runs"
        if not Path(args.runs).is_dir():
            print(f"skipped: no {args.runs} (run bench/style.py first, or pass --runs)")
            return 0
    t0 = time.perf_counter()
    rows = {}
    try:
        for ed in args.editors:
            rows[ed] = run_editor(Path(args.runs) / ed / "labels", folds=args.folds, seed=args.seed, stems=args.stems)
    except (ParameterError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"held-out downbeat agreement with the editor (fraction of its downbeats within 70 ms; "
          f"{args.folds}-fold by song; in brackets: songs at >= 0.9)\n")
    print("| editor | songs | " + " | ".join(COLUMNS) + " | pulse in the cuts' evidence |")
    print("|---|---|" + "---|" * (len(COLUMNS) + 1))
    for ed, r in rows.items():
        cells = [f"{r['agreement'][c]:.3f} ({r['songs_at_0.9'][c]})" for c in COLUMNS]
        p = r["pulse_in_evidence"]
        print(f"| {ed} | {r['songs']} | " + " | ".join(cells) + f" | {p['right']}/{p['songs']} |")
    print(f"\n{time.perf_counter() - t0:.0f} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
