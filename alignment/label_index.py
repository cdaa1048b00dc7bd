"""The one reader of ``make align``'s output, so its file format has one owner.

``alignment.run`` writes ``runs/RUN/labels/index.json`` (``{pair name: entry}``, an entry
naming its ``label`` file and carrying ``keep_ratio``) and one ``NAME.json`` per pair
(``alignment.labels.PairLabels.to_dict``). Behaviour cloning, fine-tuning, the d3rlpy
export and the demo read the labels here; the environment is handed numbers (the target
keep ratio), never a path under ``runs/``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datasets.errors import ParameterError

__all__ = ["LABELS_DIR", "INDEX_FILE", "labels_dir", "index_path", "read_index", "label_file", "read_label_records",
           "keep_ratios"]

LABELS_DIR = "labels"
INDEX_FILE = "index.json"


def labels_dir(run_dir: str | Path) -> Path:
    """``RUN/labels``: where ``make align`` writes a run's labels."""
    return Path(run_dir) / LABELS_DIR


def index_path(run_dir: str | Path) -> Path:
    return labels_dir(run_dir) / INDEX_FILE


def read_index(run_dir: str | Path) -> dict[str, dict]:
    """``{pair name: entry}`` of a run, sorted by name.

    Raises ParameterError (one line naming the file) when the index is missing, not JSON,
    not a mapping, or lists no pair.
    """
    path = index_path(run_dir)
    if not path.is_file():
        raise ParameterError(f"{path}: no label index; run `make align` first")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ParameterError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(index, dict) or not index:
        raise ParameterError(f"{path}: lists no labelled pair")
    return {name: index[name] for name in sorted(index)}


def label_file(run_dir: str | Path, name: str, entry: dict) -> Path:
    """The pair's label record: the entry's ``label`` path, else ``labels/NAME.json`` (a
    run folder that was moved or copied keeps working)."""
    named = entry.get("label") if isinstance(entry, dict) else None
    if named and Path(named).is_file():
        return Path(named)
    return labels_dir(run_dir) / f"{name}.json"


def _read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ParameterError(f"{path}: unreadable label record ({exc})") from None


def read_label_records(run_dir: str | Path) -> Iterator[tuple[str, dict, dict]]:
    """(name, index entry, label record) for every pair of the run, by name."""
    for name, entry in read_index(run_dir).items():
        yield name, entry, _read_record(label_file(run_dir, name, entry))


def keep_ratios(run_dir: str | Path) -> np.ndarray:
    """The keep ratio of every aligned pair of the run (empty when there is no index):
    the user's typical edit length, from which the target keep ratio is set."""
    if not index_path(run_dir).is_file():
        return np.zeros(0)
    out = []
    for name, entry in read_index(run_dir).items():
        if "keep_ratio" in entry:  # make align writes it: no record to open
            out.append(float(entry["keep_ratio"]))
            continue
        plan = _read_record(label_file(run_dir, name, entry)).get("plan", {})
        if "keep_ratio" in plan:
            out.append(float(plan["keep_ratio"]))
    return np.asarray(out, dtype=np.float64)
