"""Atomic file writes: every output and checkpoint goes through here.

A killed process must never leave a half-written file under the final name (the quality
bar: "nothing half-written"). Write to a temp file in the same folder (so the rename is
atomic on one filesystem), then ``os.replace`` it over the target.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json"]


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it to ``path`` when the block succeeds,
    delete it when the block raises. ``suffix`` helps writers that pick a format by name."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, p)
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone already after a successful replace


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text (``\\n`` line ends) atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """Write JSON (indent 1) atomically; returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=1))
