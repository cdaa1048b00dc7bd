"""Label every pair of a data folder: ``python -m alignment.run --data DIR --run NAME --jobs 2``.

For each pair (datasets.pairs.find_pairs) writes ``runs/NAME/labels/PAIR.json`` (the
record of alignment.labels.PairLabels.to_dict) and then ``runs/NAME/labels/index.json``
(pair -> label file, raw path, keep ratio, confidence, fidelity) and
``runs/NAME/labels/train.json`` (every pair's beat plan, grid and actions in one file,
what pretraining reads). Pairs whose label is newer than both audio files and was
made by this label format are skipped. A pair that fails is reported and skipped;
no pair at all exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from alignment.__main__ import write_json
from alignment.grid import GRID_MODEL_FILE, fit_grid_model
from alignment.labels import LABEL_FORMAT_VERSION
from datasets.errors import EditorError
from datasets.safety import refuse_overwrite
from datasets.procs import pool_kwargs

__all__ = ["main", "label_one", "up_to_date"]

log = logging.getLogger(__name__)


def up_to_date(label: Path, raw: Path, edited: Path) -> bool:
    """True when ``label`` exists, is newer than both audio files and has this format."""
    if not label.exists():
        return False
    if label.stat().st_mtime < max(raw.stat().st_mtime, edited.stat().st_mtime):
        return False
    try:
        rec = json.loads(label.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return rec.get("format_version") == LABEL_FORMAT_VERSION


def label_one(name: str, raw: str, edited: str, out: str) -> dict:
    """Worker: label one pair and write its JSON; returns the index entry (or an error)."""
    # one BLAS thread per worker: the pool already uses the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from alignment.labels import label_pair

    t0 = time.perf_counter()
    try:
        lab = label_pair(raw, edited)
    except EditorError as exc:
        return {"name": name, "error": str(exc)}
    rec = lab.to_dict()
    rec["name"] = name
    write_json(out, rec)
    return _entry(name, out, rec, time.perf_counter() - t0)


def _entry(name: str, out: str, rec: dict, seconds: float) -> dict:
    return {
        "name": name,
        "label": str(out),
        "raw_path": rec["raw_path"],
        "edited_path": rec["edited_path"],
        "segments": len(rec["segments"]),
        "keep_ratio": rec["keep_ratio"],
        "confidence": rec["confidence"],
        "fidelity": rec["fidelity"],
        "actions_exact": rec.get("actions_exact"),
        "seconds": seconds,
    }


def get_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m alignment.run", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="training_data", help="folder with raw/ and edited/ (datasets.pairs)")
    ap.add_argument("--run", default="default", help="run name: output in runs/RUN/labels/")
    ap.add_argument("--runs-dir", default="runs", help="where runs live")
    ap.add_argument("--jobs", type=int, default=2, help="pairs labelled in parallel")
    ap.add_argument("--force", action="store_true", help="relabel pairs whose label is up to date")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from tqdm import tqdm

    from datasets.pairs import find_pairs

    try:
        pairs = find_pairs(args.data)
        if not pairs:
            raise EditorError(f"{args.data}: no raw/edited pairs found")
        # the data folder is never written: labels go to a folder that neither is, lies in,
        # nor holds the data or any of its audio files
        inputs = [args.data, *(f for p in pairs for f in (p.raw, p.edited))]
        refuse_overwrite([], inputs, folders=[Path(args.runs_dir) / args.run / "labels"])
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.runs_dir) / args.run / "labels"
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict] = {}
    todo = []
    for p in pairs:
        out = out_dir / f"{p.name}.json"
        if not args.force and up_to_date(out, Path(p.raw), Path(p.edited)):
            rec = json.loads(out.read_text())
            entries[p.name] = _entry(p.name, str(out), rec, 0.0) | {"skipped": True}
        else:
            todo.append((p.name, str(p.raw), str(p.edited), str(out)))
    failed: dict[str, str] = {}
    jobs = max(1, int(args.jobs))
    with tqdm(total=len(todo), desc="align", unit="pair", disable=not todo) as bar:
        if jobs == 1 or len(todo) <= 1:
            for t in todo:
                try:
                    r = label_one(*t)
                except Exception as exc:  # a crash in one pair must not stop the others
                    r = {"name": t[0], "error": f"{type(exc).__name__}: {exc}"}
                _collect(r, entries, failed, bar)
        else:
            # workers die with this process (a killed `make align` leaves no orphans)
            with ProcessPoolExecutor(max_workers=jobs, **pool_kwargs()) as pool:
                futs = {pool.submit(label_one, *t): t[0] for t in todo}
                for f in as_completed(futs):
                    try:
                        r = f.result()
                    except Exception as exc:  # a crash in one pair must not stop the others
                        r = {"name": futs[f], "error": f"{type(exc).__name__}: {exc}"}
                    _collect(r, entries, failed, bar)
    index = {n: entries[n] for n in sorted(entries)}
    write_json(out_dir / "index.json", index)
    fit_grid_model([e["label"] for e in index.values()], out=out_dir / GRID_MODEL_FILE)
    _write_train(out_dir, index)
    _print_table(index, failed)
    if not index:
        print(f"error: no pair could be labelled ({len(failed)} failed)", file=sys.stderr)
        return 2
    return 0


def _collect(r: dict, entries: dict, failed: dict, bar) -> None:
    if "error" in r:
        failed[r["name"]] = r["error"]
        log.warning("pair %s skipped: %s", r["name"], r["error"])
    else:
        entries[r["name"]] = r
    bar.update(1)


def _write_train(out_dir: Path, index: dict) -> None:
    """One file with every pair's grid, beat plan, actions and confidences."""
    episodes = []
    for name, e in index.items():
        rec = json.loads(Path(e["label"]).read_text())
        episodes.append(
            {
                "name": name,
                "raw_path": rec["raw_path"],
                "raw_sha256": rec["raw_sha256"],
                "plan": rec["plan"],
                "actions": rec["actions"],
                "raw_beat_confidence": rec["raw_beat_confidence"],
                "confidence": rec["confidence"],
            }
        )
    write_json(out_dir / "train.json", {"format_version": LABEL_FORMAT_VERSION, "episodes": episodes})


def _print_table(index: dict, failed: dict) -> None:
    print(f"{'pair':<28} {'segs':>5} {'keep':>6} {'conf':>6} {'fid dB':>7} {'sec':>6}")
    for n, e in index.items():
        sec = "cached" if e.get("skipped") else f"{e['seconds']:.1f}"
        print(f"{n[:28]:<28} {e['segments']:>5} {e['keep_ratio']:>6.3f} {e['confidence']:>6.3f} {e['fidelity']:>7.2f} {sec:>6}")
    for n, err in failed.items():
        print(f"{n[:28]:<28} FAILED: {err}")


if __name__ == "__main__":
    sys.exit(main())
