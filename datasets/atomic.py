"""Atomic file writes: every output and checkpoint goes through here.

A killed process must never leave a half-written file under the final name (the quality
bar: "nothing half-written"). Write to a temp file in the same folder (so the rename is
atomic on one filesystem), then ``os.replace`` it over the target.

``mkstemp`` creates its file with mode 0600; the temp file is given the mode a plain
``open()`` would have given (0666 masked by the user's umask) before it is renamed, so a
collaborator, or a DAW running as another user, can open the edit and the checkpoints.

:func:`locked_folder` makes a *set* of files consistent: two runs that write the same
names into one folder at once each hold the folder's lock while they write their set, so
the last run wins as a whole set instead of file by file.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "file_mode", "locked_folder"]


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 & ~umask."""
    try:  # Linux >= 4.7 reports the umask without changing it (os.umask is process-wide)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it to ``path`` when the block succeeds,
    delete it when the block raises. ``suffix`` helps writers that pick a format by name."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0600 would lock other users out
    finally:
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


@contextmanager
def locked_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``folder`` (created if missing) for the block.

    Writers of a set of files (an edit's audio, plan, labels, project, image and report)
    write the whole set under it, so concurrent runs into one folder serialise their
    writes and the set on disk always comes from one run. The lock is on the folder
    itself, so no lock file is left behind; it is released when the block ends or the
    process dies.
    """
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        os.close(fd)  # closing the only descriptor releases the lock
