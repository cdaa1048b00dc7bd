"""Pair discovery: which raw recording goes with which hand-edited version.

Two layouts are accepted, because that is how musicians keep such files:

1. ``DATA/raw/NAME.ext`` <-> ``DATA/edited/NAME.ext`` (any audio extension on either side);
2. ``NAME_raw.ext`` <-> ``NAME_edit.ext`` (or ``_edited``) side by side in ``DATA``.

The edited side may also be a DAW project over the raw recording (``PROJECT_SUFFIXES``:
``NAME.rpp``, ``NAME.otio``, ``NAME.plan.json``; alignment/projects.py reads them). A
project and an audio file of one name: the project wins (it says exactly what was done;
a corrected plan saved beside an older rendered edit is the newer word), with a warning.

Files that match nothing are listed in one warning; finding no pair at all is an error,
since every training stage needs at least one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from datasets.errors import EditorError

__all__ = ["Pair", "find_pairs", "AUDIO_EXTENSIONS", "PROJECT_SUFFIXES", "project_name"]

log = logging.getLogger(__name__)

#: What libsndfile reads (datasets.audio.load_audio), lower case with the dot.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".w64")

#: DAW projects accepted as the edited side (lower case, with the dot; longest first).
PROJECT_SUFFIXES = (".plan.json", ".rpp", ".otio")

_RAW_SUFFIXES = ("_raw",)
_EDIT_SUFFIXES = ("_edit", "_edited")


@dataclass(frozen=True)
class Pair:
    """One raw recording and its hand-edited version."""

    name: str
    raw: Path
    edited: Path


def _audio_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith("."))


def project_name(path: str | os.PathLike) -> str | None:
    """NAME of a project file (``NAME.rpp``, ``NAME.otio``, ``NAME.plan.json``), else None."""
    name = Path(path).name
    low = name.lower()
    for s in PROJECT_SUFFIXES:
        if low.endswith(s) and len(name) > len(s):
            return name[: -len(s)]
    return None


def _project_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and project_name(p) and not p.name.startswith("."))


def _by_stem(files: list[Path], where: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in files:
        stem = project_name(p) or p.stem
        if stem in out:
            old = out[stem]
            if (project_name(old) is None) != (project_name(p) is None):  # an audio edit and a project
                proj, audio = (old, p) if project_name(old) else (p, old)
                log.warning("%s: '%s' has a project and an audio edit; using the project %s, ignoring %s",
                            where, stem, proj.name, audio.name)
                out[stem] = proj
                continue
            raise EditorError(f"{where}: two files named '{stem}' ({old.name}, {p.name}); keep one")
        out[stem] = p
    return out


def _strip(stem: str, suffixes: tuple[str, ...]) -> str | None:
    low = stem.lower()
    for s in suffixes:
        if low.endswith(s):
            return stem[: -len(s)]
    return None


def find_pairs(data_dir: str | os.PathLike) -> list[Pair]:
    """Return the pairs under ``data_dir``, sorted by name.

    Raises ``EditorError`` when the folder is missing or holds no pair.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise EditorError(f"{root}: data folder not found (expected {root}/raw/NAME.wav and {root}/edited/NAME.wav)")
    pairs: dict[str, Pair] = {}
    unmatched: list[Path] = []

    # Layout 1: raw/ and edited/ folders.
    raw = _by_stem(_audio_files(root / "raw"), root / "raw")
    edited = _by_stem(_audio_files(root / "edited") + _project_files(root / "edited"), root / "edited")
    for name in sorted(set(raw) | set(edited)):
        if name in raw and name in edited:
            pairs[name] = Pair(name=name, raw=raw[name], edited=edited[name])
        else:
            unmatched.append(raw.get(name) or edited[name])

    # Layout 2: NAME_raw.ext beside NAME_edit.ext.
    side_raw: dict[str, Path] = {}
    side_edit: dict[str, Path] = {}
    for p in _audio_files(root) + _project_files(root):
        proj = project_name(p)
        if proj is None and (n := _strip(p.stem, _RAW_SUFFIXES)) is not None:
            side_raw[n] = p
        elif (n := _strip(proj or p.stem, _EDIT_SUFFIXES)) is not None:
            if n in side_edit:
                side_edit[n] = _by_stem([side_edit[n], p], root)[proj or p.stem]
            else:
                side_edit[n] = p
        else:
            unmatched.append(p)
    for name in sorted(set(side_raw) | set(side_edit)):
        if name in side_raw and name in side_edit:
            if name in pairs:
                raise EditorError(f"{root}: pair '{name}' exists in both layouts; keep one")
            pairs[name] = Pair(name=name, raw=side_raw[name], edited=side_edit[name])
        else:
            unmatched.append(side_raw.get(name) or side_edit[name])

    if unmatched:
        log.warning(
            "%s: %d file(s) without a partner, ignored: %s",
            root,
            len(unmatched),
            ", ".join(str(p.relative_to(root)) for p in unmatched),
        )
    if not pairs:
        raise EditorError(
            f"{root}: no raw/edited pairs found (expected {root}/raw/NAME.ext with {root}/edited/NAME.ext, "
            f"or NAME_raw.ext beside NAME_edit.ext)"
        )
    return [pairs[k] for k in sorted(pairs)]
