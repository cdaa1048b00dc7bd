"""The same-path guard: no command ever writes to a path that is one of its inputs.

A user who types ``python -m agent.infer song.wav --output song.wav`` (or renders a plan
over its own raw file) must get a one-line refusal, not an edit written over the only
copy of the recording. Every CLI that writes calls :func:`refuse_overwrite` with the
files (and folders) it is about to write and the files (and folders) it reads, before
any expensive work, whatever its flags.

Two paths are "the same" when they resolve to the same place (``..``, symlinks) or,
when both exist, name the same inode (``os.path.samefile``: hard links, a
case-insensitive filesystem). A folder *contains* a path when the path resolves inside
it. The rules:

- an output file must not be an input file, nor lie inside an input folder (a data
  folder is never written), nor be an existing folder (``--output some_dir/``);
- an output folder (one the command creates files in, or cleans) must not be, contain,
  or lie inside an input;
- two outputs must not be the same file (the second would replace the first).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from datasets.errors import ParameterError

__all__ = ["refuse_overwrite"]

PathLike = str | os.PathLike


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): the resolved paths decided
        return False


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies under it (resolved, or by inode for the folder)."""
    p, f = path.resolve(), folder.resolve()
    if p == f or f in p.parents:
        return True
    return any(_same(parent, folder) for parent in p.parents if parent.exists()) if folder.is_dir() else False


def refuse_overwrite(
    outputs: Iterable[PathLike], inputs: Iterable[PathLike], *, folders: Iterable[PathLike] = ()
) -> None:
    """Raise ``ParameterError`` (one line naming both paths) when writing ``outputs``
    (files) or into ``folders`` could replace or land inside one of ``inputs``.

    outputs : files the command will write (existing or not).
    inputs : files and folders the command reads; a folder input is never written into.
    folders : folders the command writes into as a whole (creates, replaces or deletes
        files there); no input may be one of them, inside one, or contain one.
    """
    outs = [Path(o) for o in outputs if o is not None]
    ins = [Path(i) for i in inputs if i is not None]
    dirs = [Path(d) for d in folders if d is not None]
    for k, o in enumerate(outs):
        if o.is_dir():
            raise ParameterError(f"{o}: is a folder, not a file; name the file to write")
        for other in outs[:k]:
            if _same(o, other):
                raise ParameterError(f"{o}: named for two outputs (also {other}); give each its own file")
        for i in ins:
            if _same(o, i):
                raise ParameterError(f"{o}: refusing to write over the input {i}; choose another output path")
            if i.is_dir() and _inside(o, i):
                raise ParameterError(f"{o}: refusing to write inside the input folder {i}; choose another output path")
    for d in dirs:
        for i in ins:
            if _inside(d, i):  # d is the input, or lies inside an input folder
                raise ParameterError(f"{d}: refusing to write into the input folder {i}; choose another output folder")
            if _inside(i, d):
                raise ParameterError(f"{d}: output folder holds the input {i}; choose another output folder")
