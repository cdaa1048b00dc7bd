"""Label every pair of a data folder: ``python -m alignment.run --data DIR --run NAME --jobs 2``.

Pairs are labelled on ``--jobs`` local processes, or as Ray tasks with ``--backend ray``
or ``RAY_ADDRESS`` set (datasets.parallel: the same labels, byte for byte). A killed
batch resumes: finished labels are up to date (below) and are not redone.

For each pair (datasets.pairs.find_pairs) writes ``runs/NAME/labels/PAIR.json`` (the
record of alignment.labels.PairLabels.to_dict) and then ``runs/NAME/labels/index.json``
(pair -> label file, raw path, keep ratio, confidence, fidelity): what pretraining and
fine-tuning read. Pairs whose label is newer than both audio files and was
made by this label format are not aligned again. A pair that fails is reported and
skipped; no pair at all exits with status 2.

The edited side may be a DAW project over the raw (``NAME.rpp``, ``NAME.otio``,
``NAME.plan.json``; alignment/projects.py): its items are read, not aligned, and label
with confidence 1.0 ("from project" in the table); a project over another file, or
none, is a failed pair with one line naming the file.

Verdicts (the rule, alignment.labels): a pair trains when its alignment confidence is
at least ``--min-confidence`` (below it the edit is not recognisably of that raw: the
pair is refused and no label is written) and its labels reproduce at least
``--min-reproduced`` of the edited duration (``LabelLoss.reproduced``: what the action
vocabulary could not express, e.g. a repeat past the executor's 1.5x output cap, is
lost). Other pairs are skipped: left out of index.json, so training
never sees them, listed in ``runs/NAME/labels/skipped.json`` (pair -> reason, message,
numbers) and at the end of the printed table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from alignment.__main__ import write_json
from alignment.grid_model import GRID_MODEL_FILE, fit_grid_model
from alignment.labels import LABEL_FORMAT_VERSION, MIN_CONFIDENCE, MIN_REPRODUCED, RefusedPair
from datasets.errors import EditorError, ParameterError
from datasets.parallel import add_backend_args, run_items
from datasets.safety import refuse_overwrite

__all__ = ["main", "label_one", "up_to_date"]

log = logging.getLogger(__name__)


def up_to_date(label: Path, raw: Path, edited: Path, *, editor_grid: bool = True) -> bool:
    """True when ``label`` exists, is newer than both audio files and has this format
    (and was labelled on the editor's grid, or not, as asked)."""
    if not label.exists():
        return False
    if label.stat().st_mtime < max(raw.stat().st_mtime, edited.stat().st_mtime):
        return False
    try:
        rec = json.loads(label.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return rec.get("format_version") == LABEL_FORMAT_VERSION and (rec.get("editor_grid") is not None) == editor_grid


def label_one(name: str, raw: str, edited: str, out: str, min_confidence: float = MIN_CONFIDENCE,
              editor_grid: bool = True) -> dict:
    """Worker: label one pair and write its JSON; returns the index entry, a refusal
    (``"refused"``: confidence below ``min_confidence``, nothing written) or an error."""
    # one BLAS thread per worker: the pool already uses the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from alignment.labels import label_pair
    from alignment.projects import is_project, label_project

    t0 = time.perf_counter()
    try:
        if is_project(edited):
            lab = label_project(raw, edited, editor_grid=editor_grid)
        else:
            lab = label_pair(raw, edited, min_confidence=min_confidence, editor_grid=editor_grid)
    except RefusedPair as exc:
        return {"name": name, "refused": str(exc), "confidence": exc.confidence, "raw_path": raw, "edited_path": edited}
    except EditorError as exc:
        return {"name": name, "error": str(exc)}
    rec = lab.to_dict()
    rec["name"] = name
    write_json(out, rec)
    return _entry(name, out, rec, time.perf_counter() - t0)


def _entry(name: str, out: str, rec: dict, seconds: float) -> dict:
    loss = rec.get("loss") or {}
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
        "reproduced": loss.get("reproduced"),
        "lost_s": loss.get("lost_s"),
        "loss": loss.get("summary"),
        "seconds": seconds,
        # "audio" (aligned), or the project kind read exactly (confidence 1.0)
        "edited_kind": rec.get("edited_kind", "audio"),
        "project_notes": rec.get("project_notes", []),
    }


def get_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m alignment.run", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="training_data", help="folder with raw/ and edited/ (datasets.pairs)")
    ap.add_argument("--run", default="default", help="run name: output in runs/RUN/labels/")
    ap.add_argument("--runs-dir", default="runs", help="where runs live")
    add_backend_args(ap, jobs_default=2)
    ap.add_argument("--force", action="store_true", help="relabel pairs whose label is up to date")
    ap.add_argument(
        "--min-confidence", type=float, default=MIN_CONFIDENCE,
        help=f"refuse pairs aligning below this confidence (default {MIN_CONFIDENCE}, calibrated; see alignment/labels.py)",
    )
    ap.add_argument(
        "--min-reproduced", type=float, default=MIN_REPRODUCED,
        help=f"train a pair only when its labels reproduce this share of the edit (default {MIN_REPRODUCED})",
    )
    ap.add_argument(
        "--no-editor-grid", dest="editor_grid", action="store_false",
        help="label on the beat tracker's own bar/phrase phase instead of the one the edits' cut points agree with "
             "(alignment/grid.py; for comparisons)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from tqdm import tqdm

    from datasets.pairs import find_pairs

    try:
        for flag, v in (("--min-confidence", args.min_confidence), ("--min-reproduced", args.min_reproduced)):
            if not 0.0 <= v <= 1.0:  # also refuses nan
                raise ParameterError(f"{flag} must be in [0, 1], got {v}")
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
        if not args.force and up_to_date(out, Path(p.raw), Path(p.edited), editor_grid=args.editor_grid):
            rec = json.loads(out.read_text())
            entries[p.name] = _entry(p.name, str(out), rec, 0.0) | {"skipped": True}
        else:
            todo.append((p.name, str(p.raw), str(p.edited), str(out), args.min_confidence, args.editor_grid))
    failed: dict[str, str] = {}
    try:
        outcomes = run_items(label_one, todo, jobs=args.jobs, backend=args.backend)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tqdm(total=len(todo), desc="align", unit="pair", disable=not todo) as bar:
        # a crash in one pair (an exception, a dead worker) is that pair's error; the others finish
        for o in outcomes:
            _collect(o.value if o.ok else {"name": o.name, "error": o.error}, entries, failed, bar)
    index, skipped = _verdicts(entries, failed, min_confidence=args.min_confidence, min_reproduced=args.min_reproduced)
    write_json(out_dir / "index.json", index)
    write_json(out_dir / "skipped.json", skipped)
    fit_grid_model([e["label"] for e in index.values()], out=out_dir / GRID_MODEL_FILE)
    # labels/train.json (all labels in one file) was written up to now and read by
    # nothing; a stale copy would disagree with index.json
    (out_dir / "train.json").unlink(missing_ok=True)
    _print_table(index, skipped)
    if not index:
        print(f"error: no pair could be labelled ({len(skipped)} skipped, {len(failed)} of them failed)", file=sys.stderr)
        return 2
    return 0


def _collect(r: dict, entries: dict, failed: dict, bar) -> None:
    if "error" in r:
        failed[r["name"]] = r["error"]
        log.warning("pair %s skipped: %s", r["name"], r["error"])
    else:
        entries[r["name"]] = r
    bar.update(1)


def _verdicts(entries: dict, failed: dict, *, min_confidence: float, min_reproduced: float) -> tuple[dict, dict]:
    """(index of the pairs that train, skipped pairs -> reason), by the module's rule.

    Cached labels go through the same rule, so a stricter threshold applies to them too.
    """
    index: dict[str, dict] = {}
    skipped: dict[str, dict] = {}
    for n in sorted(entries):
        e = entries[n]
        paths = {"raw_path": e.get("raw_path"), "edited_path": e.get("edited_path")}
        if "refused" in e:
            skipped[n] = {"reason": "refused", "message": e["refused"], "confidence": e["confidence"], **paths}
        elif e["confidence"] < min_confidence:
            msg = f"alignment confidence {e['confidence']:.2f} < {min_confidence:.2f}"
            skipped[n] = {"reason": "refused", "message": msg, "confidence": e["confidence"], "label": e["label"], **paths}
        elif e.get("reproduced") is not None and e["reproduced"] < min_reproduced:
            msg = f"{e['loss']} (< {100 * min_reproduced:.0f} % reproduced)"
            skipped[n] = {"reason": "labels lose the edit", "message": msg, "reproduced": e["reproduced"], "label": e["label"], **paths}
        else:
            index[n] = e
    for n in sorted(failed):
        skipped[n] = {"reason": "failed", "message": failed[n]}
    return index, skipped


def _print_table(index: dict, skipped: dict) -> None:
    """The pairs that train (``repr``: share of the edit the labels reproduce), then
    those whose labels lose some of the edit but still train, then the skipped ones."""
    print(f"{'pair':<28} {'segs':>5} {'keep':>6} {'conf':>6} {'repr':>6} {'fid dB':>7} {'sec':>6}  from")
    for n, e in index.items():
        sec = "cached" if e.get("skipped") else f"{e['seconds']:.1f}"
        rep = "-" if e.get("reproduced") is None else f"{e['reproduced']:.3f}"
        kind = e.get("edited_kind", "audio")
        src = "audio (aligned)" if kind == "audio" else f"project (.{kind})"
        fid = f"{e['fidelity']:>7.2f}" if kind == "audio" else f"{'-':>7}"
        print(
            f"{n[:28]:<28} {e['segments']:>5} {e['keep_ratio']:>6.3f} {e['confidence']:>6.3f} {rep:>6} {fid} {sec:>6}  {src}"
        )
    notes = {n: e["project_notes"] for n, e in index.items() if e.get("project_notes")}
    if notes:
        print(f"projects: what the labels leave out ({len(notes)}):")
        for n, ns in notes.items():
            print(f"  {n}: " + "; ".join(ns[:3]) + (f" and {len(ns) - 3} more" if len(ns) > 3 else ""))
    lossy = {n: e for n, e in index.items() if (e.get("lost_s") or 0.0) > 0.0}
    if lossy:
        print(f"trains, but the labels lose part of the edit ({len(lossy)}):")
        for n, e in lossy.items():
            print(f"  {n}: {e['loss']}")
    if skipped:
        print(f"skipped, not trained on ({len(skipped)}; listed in skipped.json beside index.json):")
        for n, s in skipped.items():
            print(f"  {n}: {s['reason']}: {s['message']}")


if __name__ == "__main__":
    sys.exit(main())
