"""Frame features for alignment: what survives mastering, codecs and level changes.

One frame every ``HOP`` samples at 22050 Hz (23.2 ms). Each frame is a log-mel
spectrum (48 bands, 60 Hz - 8 kHz) with three normalisations, each for a reason:

1. a floor 60 dB under the frame's loudest band (and 80 dB under the file's), so
   silence and the top octave of a quiet frame do not produce large random values;
2. the per-band median over the file is subtracted (cepstral mean normalisation):
   a static EQ or a mastering curve is a per-band dB offset and cancels;
3. each frame has its mean removed and is scaled to unit length: a gain change,
   a fade or a compressor is a per-frame dB offset and cancels, and the dot product
   of two frames is their correlation in [-1, 1].

Frames quieter than 45 dB under the loudest frame are flagged silent: their
normalised spectrum is noise and must not vote for any alignment.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["HOP", "N_FFT", "SR", "FrameFeatures", "frame_features", "frame_times"]

#: Analysis rate (datasets.audio.ANALYSIS_SR); every Audio has a mono copy at it.
SR = 22050
#: 512 samples = 23.2 ms: fine enough for 50 ms mapping accuracy before sample
#: refinement, coarse enough that a 3-minute pair has ~7800 frames per side.
HOP = 512
#: 93 ms window: resolves the 60 Hz band and is robust to a few ms of misalignment.
N_FFT = 2048
N_MELS = 48
FMIN, FMAX = 60.0, 8000.0
FLOOR_DB = 80.0
SILENT_DB = 45.0
#: Dynamic range kept in each frame (dB under its loudest band) for matching.
FRAME_RANGE_DB = 60.0


@dataclass(frozen=True)
class FrameFeatures:
    """Per-frame alignment features of one signal.

    feat : np.ndarray [shape=(n_frames, N_MELS), float32] unit-norm rows (zero rows
        for silent frames)
    logmel : np.ndarray [shape=(n_frames, N_MELS), float32] log-mel in dB (floored,
        not normalised), used for EQ estimates and the fidelity score
    energy_db : np.ndarray [shape=(n_frames,), float32] frame power in dB (absolute)
    silent : np.ndarray [shape=(n_frames,), bool]
    base : np.ndarray [shape=(N_MELS,)] the per-band offsets that were subtracted
    """

    feat: np.ndarray
    logmel: np.ndarray
    energy_db: np.ndarray
    silent: np.ndarray
    base: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.feat.shape[0])


def frame_times(n: int) -> np.ndarray:
    """Centre time (s) of frames 0..n-1 [shape=(n,)]."""
    return np.arange(n) * HOP / SR


@lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    from datasets.dsp import mel_filters  # librosa.filters.mel, without librosa's import cost

    return mel_filters(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX).astype(np.float32)


def _power_spectrogram(y: np.ndarray) -> np.ndarray:
    """|STFT|^2, centred frames [shape=(n_frames, N_FFT//2+1), float32]."""
    y = np.asarray(y, dtype=np.float32)
    pad = N_FFT // 2
    yp = np.pad(y, (pad, pad + HOP))
    n_frames = 1 + len(y) // HOP
    idx = np.lib.stride_tricks.sliding_window_view(yp, N_FFT)[::HOP][:n_frames]
    win = np.hanning(N_FFT + 1)[:-1].astype(np.float32)
    import scipy.fft

    # single-precision FFT in blocks: 3x faster than numpy's double one, and the
    # block keeps the windowed copy in cache-sized pieces
    out = np.empty((n_frames, N_FFT // 2 + 1), dtype=np.float32)
    for a in range(0, n_frames, 1024):
        spec = scipy.fft.rfft(idx[a : a + 1024] * win, axis=1)
        out[a : a + 1024] = spec.real**2 + spec.imag**2
    return out


def frame_features(*, y: np.ndarray, sr: int = SR, base: np.ndarray | None = None) -> FrameFeatures:
    """Alignment features of a mono signal at 22050 Hz.

    y : np.ndarray [shape=(n,)] mono audio at ``sr`` (must be ``SR``)
    base : per-band dB offsets to subtract [shape=(N_MELS,)]; default the file's own
        per-band median. Two files compared must use the same base up to their static
        EQ difference: an edit keeps a different share of loud and quiet passages,
        so its own median would differ from the raw's by more than any mastering EQ.
    """
    assert sr == SR, f"alignment features need {SR} Hz mono audio, got {sr}"
    power = _power_spectrogram(y)
    mel = power @ _mel_basis().T  # (frames, N_MELS)
    energy = power.sum(axis=1)
    top = float(energy.max()) if len(energy) else 0.0
    energy_db = 10.0 * np.log10(energy + 1e-12).astype(np.float32)
    if top <= 1e-12:
        z = np.zeros_like(mel)
        return FrameFeatures(z, z, energy_db, np.ones(len(mel), dtype=bool), np.zeros(N_MELS, np.float32))
    ref_db = 10.0 * np.log10(top)
    silent = energy_db < ref_db - SILENT_DB
    mel_ref = float(mel.max())
    logmel = 10.0 * np.log10(np.maximum(mel, mel_ref * 10 ** (-FLOOR_DB / 10))).astype(np.float32)
    loud = ~silent
    if base is None:
        lm0 = np.maximum(logmel, logmel.max(axis=1, keepdims=True) - FRAME_RANGE_DB)
        base = np.median(lm0[loud], axis=0) if loud.any() else np.zeros(N_MELS, np.float32)
    # the floor for matching is relative to each frame's loudest band, so that a fade
    # or a quiet passage does not push the high bands into a file-wide floor
    lm = np.maximum(logmel, logmel.max(axis=1, keepdims=True) - FRAME_RANGE_DB)
    f = lm - base
    f = f - f.mean(axis=1, keepdims=True)
    f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-6
    f[silent] = 0.0
    return FrameFeatures(f.astype(np.float32), logmel, energy_db, silent, np.asarray(base, np.float32))
