"""Audio I/O: one loader and one atomic writer for every stage.

Why one module: the renderer needs the native rate and channels (a musician's file must
come back at its own quality), while analysis (beats, features, alignment) wants one
mono rate so that frame indices mean the same thing everywhere. ``load_audio`` returns
both, from a single decode.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from datasets.atomic import atomic_path
from datasets.errors import AudioError

__all__ = [
    "ANALYSIS_SR",
    "Audio",
    "check_audio",
    "load_audio",
    "write_audio",
    "to_mono",
    "resample",
    "audio_hash",
    "MIN_SECONDS_WITHOUT_TEMPO",
]

log = logging.getLogger(__name__)

#: Analysis rate. 22050 Hz keeps everything below 11 kHz, which is all that beat
#: tracking, chroma and MFCCs look at, at half the cost of 44.1 kHz.
ANALYSIS_SR = 22050

#: Shortest usable recording when no tempo can be found (the issue's rule); when a
#: tempo is found the limit is two bars (checked in datasets.beats).
MIN_SECONDS_WITHOUT_TEMPO = 3.0

#: Peak below which a file is treated as digital silence (-90 dBFS).
SILENCE_PEAK = 10 ** (-90 / 20)


@dataclass(frozen=True)
class Audio:
    """A decoded recording.

    y : np.ndarray [shape=(channels, samples), float32] at the native rate ``sr``
    y_mono : np.ndarray [shape=(samples_a,), float32] mono copy at ``ANALYSIS_SR``
    sha256 : hash of the decoded native samples + rate (cache key, plan provenance)
    """

    path: str
    y: np.ndarray
    sr: int
    y_mono: np.ndarray
    sha256: str
    is_silent: bool

    @property
    def channels(self) -> int:
        return int(self.y.shape[0])

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.y.shape[1] / self.sr


def to_mono(y: np.ndarray) -> np.ndarray:
    """Average channels: [shape=(channels, n)] or (n,) -> (n,) float32."""
    y = np.asarray(y, dtype=np.float32)
    return y if y.ndim == 1 else y.mean(axis=0).astype(np.float32)


def resample(y: np.ndarray, *, sr_in: int, sr_out: int) -> np.ndarray:
    """soxr high-quality resampling along the last axis (time)."""
    if sr_in == sr_out:
        return np.ascontiguousarray(y, dtype=np.float32)
    if y.ndim == 1:
        return soxr.resample(y, sr_in, sr_out, quality="HQ").astype(np.float32)
    # soxr wants (frames, channels)
    return soxr.resample(y.T, sr_in, sr_out, quality="HQ").T.astype(np.float32, copy=False)


def audio_hash(y: np.ndarray, sr: int) -> str:
    """Content hash of decoded samples: the same music in two containers hashes alike."""
    h = hashlib.sha256()
    h.update(str(int(sr)).encode())
    h.update(np.ascontiguousarray(y, dtype=np.float32))  # the buffer itself: no 2nd copy of the song
    return h.hexdigest()


def check_audio(path: str | os.PathLike):
    """The checks that need no decoding: the file exists, is a file, is not empty and
    libsndfile reads its header with at least one frame. Returns ``soundfile.info``.

    Why apart from ``load_audio``: a command checks its input with it before it imports
    anything heavy (torch, a checkpoint), so a typo in a path is one line in well under a
    second (issue 17). Raises ``AudioError`` naming the file and the problem.
    """
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: file not found")
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, expected an audio file")
    try:
        size = p.stat().st_size
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise AudioError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise AudioError(f"{p}: file is empty (0 bytes)")
    try:
        info = sf.info(str(p))
    except Exception as exc:  # libsndfile's message says which format problem
        raise AudioError(f"{p}: not a readable audio file ({_short(exc)})") from None
    if info.frames == 0:
        raise AudioError(f"{p}: contains no audio samples")
    return info


def load_audio(path: str | os.PathLike, *, min_seconds: float = 0.0) -> Audio:
    """Decode any format libsndfile reads (wav, flac, ogg, opus, mp3).

    Raises ``AudioError`` with one line naming the file and the problem for a missing
    file, a directory, an empty or non-audio file, a truncated file, NaN/inf samples,
    or audio shorter than ``min_seconds``. Silence only warns here: the stage that
    needs beats raises.
    """
    p = Path(path)
    info = check_audio(p)
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"{p}: audio data is corrupt or truncated ({_short(exc)})") from None
    # libsndfile reads a truncated WAV without complaint (it trusts the file size), so
    # compare the size the header declares for the data chunk with what is on disk.
    declared = _wav_declared_data_bytes(p) if info.format in ("WAV", "WAVEX") else None
    if declared is not None and declared[0] > declared[1]:
        raise AudioError(f"{p}: file is truncated (header declares {declared[0]} data bytes, found {declared[1]})")
    # Compressed streams (ogg, mp3) report their frame count approximately.
    if info.format in ("WAV", "WAVEX", "AIFF", "FLAC", "W64", "RF64") and len(data) < info.frames:
        raise AudioError(f"{p}: file is truncated (header says {info.frames} frames, found {len(data)})")
    if len(data) == 0:
        raise AudioError(f"{p}: contains no audio samples")
    # min and max are NaN or infinite exactly when some sample is (no temporary arrays:
    # a 3-minute stereo song is 63 MB, and each copy adds to the peak memory)
    lo, hi = float(data.min()), float(data.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise AudioError(f"{p}: contains NaN or infinite samples")
    y = np.ascontiguousarray(data.T)  # (channels, samples): time on the last axis
    del data
    duration = y.shape[1] / sr
    if duration < min_seconds:
        raise AudioError(f"{p}: too short ({duration:.2f} s, need at least {min_seconds:.1f} s)")
    peak = max(-lo, hi)  # = max |sample|
    silent = peak < SILENCE_PEAK
    if silent:
        log.warning("%s: the recording is silent (peak %.1e); beats cannot be found in it", p, peak)
    y_mono = resample(to_mono(y), sr_in=sr, sr_out=ANALYSIS_SR)
    return Audio(path=str(p), y=y, sr=int(sr), y_mono=y_mono, sha256=audio_hash(y, sr), is_silent=silent)


def write_audio(path: str | os.PathLike, *, y: np.ndarray, sr: int, subtype: str | None = None) -> Path:
    """Write audio atomically (temp file in the same folder + rename).

    y : np.ndarray [shape=(channels, n) or (n,)]; the format follows the extension
    (.wav, .flac, .ogg). A killed process never leaves a half-written file behind.
    """
    p = Path(path)
    y = np.asarray(y, dtype=np.float32)
    frames = y.T if y.ndim == 2 else y
    fmt = p.suffix.lstrip(".").upper() or "WAV"
    if fmt not in sf.available_formats():
        raise AudioError(f"{p}: cannot write audio format '{fmt.lower()}'")
    if subtype is None and fmt == "WAV":
        subtype = "FLOAT"  # keep the renderer's float output bit-exact
    with atomic_path(p) as tmp:
        sf.write(tmp, frames, sr, format=fmt, subtype=subtype)
    return p


def _wav_declared_data_bytes(p: Path) -> tuple[int, int] | None:
    """(declared, present) byte counts of a RIFF/WAVE file's data chunk, or None."""
    import struct

    with open(p, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = p.stat().st_size
        while True:
            ch = f.read(8)
            if len(ch) < 8:
                return None
            cid, clen = ch[:4], struct.unpack("<I", ch[4:])[0]
            if cid == b"data":
                if clen == 0xFFFFFFFF:  # streamed WAV with an unknown length
                    return None
                return clen, size - f.tell()
            f.seek(clen + (clen & 1), 1)


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
