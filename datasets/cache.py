"""On-disk cache of computed arrays (beat features, stem frame features).

One entry is one ``.npz`` file named by a key that hashes everything its content depends
on: the audio content hash (``Audio.sha256``), a hash of the computation's config, and
``CODE_VERSION`` (bump it whenever a change in code changes the numbers, so stale
entries are never read). Folder: ``runs/cache/features/`` under the working directory,
or ``$EDITOR_CACHE_DIR``.

Why so careful: a half-written or bit-rotten cache file that is silently used poisons
every later stage (training sees wrong features, inference sees others). So:

- writes are atomic (temp file in the same folder + ``os.replace``); a killed process
  leaves at most a stray ``.tmp`` file, never a truncated entry;
- every entry stores a sha256 checksum over its arrays; on load, any failure (unreadable
  zip, missing keys, wrong shapes or dtypes, checksum mismatch) is reported with a
  warning naming the file, the file is deleted, and the caller recomputes. A bad entry
  is never used and never crashes the program.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from datasets.atomic import atomic_path

__all__ = ["CODE_VERSION", "cache_dir", "make_key", "load_arrays", "save_arrays", "config_hash"]

log = logging.getLogger(__name__)

#: Bump when a code change changes cached numbers (feature definitions, stem method, the
#: beat tracker: entries computed without a given grid hold the tracked grid).
#: features-3: track_beats tempo prior 120, half-beat doubling, kick/bass downbeat accent.
CODE_VERSION = "features-3"

#: Default cache folder, relative to the working directory (runs/ is git-ignored).
DEFAULT_DIR = Path("runs") / "cache" / "features"

_CHECKSUM_KEY = "__checksum__"


def cache_dir() -> Path:
    """The cache folder: ``$EDITOR_CACHE_DIR`` if set, else ``runs/cache/features``."""
    env = os.environ.get("EDITOR_CACHE_DIR")
    return Path(env) if env else DEFAULT_DIR


def config_hash(config: Mapping) -> str:
    """Stable short hash of a JSON-serialisable config mapping (keys sorted)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_key(kind: str, *, audio_sha256: str, config: Mapping) -> str:
    """Cache key: ``kind`` + audio hash + config hash + ``CODE_VERSION``.

    kind : short name of what is stored ("features", "stemframes"); part of the file name
    """
    h = hashlib.sha256()
    for part in (kind, audio_sha256, config_hash(config), CODE_VERSION):
        h.update(part.encode())
        h.update(b"\0")
    return f"{kind}-{h.hexdigest()[:32]}"


def _path(key: str, folder: Path | None) -> Path:
    return (folder if folder is not None else cache_dir()) / f"{key}.npz"


def _checksum(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_arrays(key: str, arrays: Mapping[str, np.ndarray], *, folder: Path | None = None) -> Path:
    """Write ``arrays`` atomically as ``KEY.npz`` with a checksum entry.

    Arrays must be numeric or unicode (no object arrays: entries load with
    ``allow_pickle=False``). Returns the path. A failure to write (read-only disk,
    full disk) only warns: the cache is an optimisation, never a requirement.
    """
    path = _path(key, folder)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    assert _CHECKSUM_KEY not in arrays
    payload = dict(arrays)
    payload[_CHECKSUM_KEY] = np.asarray(_checksum(arrays))
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no ".npz"
            np.savez(f, **payload)
    except OSError as exc:
        log.warning("feature cache: cannot write %s (%s); continuing without caching", path, exc)
    return path


def load_arrays(
    key: str,
    *,
    validate: Callable[[Mapping[str, np.ndarray]], str | None] | None = None,
    required: tuple[str, ...] = (),
    folder: Path | None = None,
) -> dict[str, np.ndarray] | None:
    """Load entry ``key``; None when absent or bad (a bad file is reported and deleted).

    required : keys that must be present
    validate : extra check on the loaded arrays (shapes, names); returns a problem
        description, or None when the entry is good
    """
    path = _path(key, folder)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError, EOFError, ...
        return _reject(path, f"unreadable ({type(exc).__name__}: {exc})")
    stored = arrays.pop(_CHECKSUM_KEY, None)
    missing = [k for k in required if k not in arrays]
    if stored is None:
        missing.append(_CHECKSUM_KEY)
    if missing:
        return _reject(path, f"missing entries {missing}")
    if str(stored) != _checksum(arrays):
        return _reject(path, "checksum mismatch")
    if validate is not None:
        problem = validate(arrays)
        if problem:
            return _reject(path, problem)
    return arrays


def _reject(path: Path, why: str) -> None:
    log.warning("feature cache: %s is corrupt (%s); deleting it and recomputing", path, why)
    try:
        path.unlink()
    except OSError as exc:
        log.warning("feature cache: cannot delete %s (%s)", path, exc)
    return None
