"""Frame features for alignment: what survives mastering, codecs and level changes.

One frame every ``HOP`` samples at 22050 Hz (23.2 ms). Each frame is a log-mel
spectrum (48 bands, 60 Hz - 8 kHz) with three normalisations, each for a reason:

1. a floor 80 dB under the file's loudest frame, so silence does not produce
   large random log values;
2. the per-band median over the file is subtracted (cepstral mean normalisation):
   a static EQ or a mastering curve is a per-band dB offset and cancels;
3. each frame has its mean removed and is scaled to unit length: a gain change,
   a fade or a compressor is a per-frame dB offset and cancels, and the dot product
   of two frames is their correlation in [-1, 1].

Frames quieter than 60 dB under the loudest frame are flagged silent: their
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
SILENT_DB = 60.0


@dataclass(frozen=True)
class FrameFeatures:
    """Per-frame alignment features of one signal.

    feat : np.ndarray [shape=(n_frames, N_MELS), float32] unit-norm rows (zero rows
        for silent frames)
    logmel : np.ndarray [shape=(n_frames, N_MELS), float32] log-mel in dB (floored,
        not normalised), used for EQ estimates and the fidelity score
    energy_db : np.ndarray [shape=(n_frames,), float32] frame power in dB (absolute)
    silent : np.ndarray [shape=(n_frames,), bool]
    """

    feat: np.ndarray
    logmel: np.ndarray
    energy_db: np.ndarray
    silent: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.feat.shape[0])


def frame_times(n: int) -> np.ndarray:
    """Centre time (s) of frames 0..n-1 [shape=(n,)]."""
    return np.arange(n) * HOP / SR


@lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX).astype(np.float32)


def _power_spectrogram(y: np.ndarray) -> np.ndarray:
    """|STFT|^2, centred frames [shape=(n_frames, N_FFT//2+1), float32]."""
    y = np.asarray(y, dtype=np.float32)
    pad = N_FFT // 2
    yp = np.pad(y, (pad, pad + HOP))
    n_frames = 1 + len(y) // HOP
    idx = np.lib.stride_tricks.sliding_window_view(yp, N_FFT)[::HOP][:n_frames]
    win = np.hanning(N_FFT + 1)[:-1].astype(np.float32)
    spec = np.fft.rfft(idx * win, axis=1)
    return (spec.real**2 + spec.imag**2).astype(np.float32)


def frame_features(*, y: np.ndarray, sr: int = SR) -> FrameFeatures:
    """Alignment features of a mono signal at 22050 Hz.

    y : np.ndarray [shape=(n,)] mono audio at ``sr`` (must be ``SR``)
    """
    assert sr == SR, f"alignment features need {SR} Hz mono audio, got {sr}"
    power = _power_spectrogram(y)
    mel = power @ _mel_basis().T  # (frames, N_MELS)
    energy = power.sum(axis=1)
    top = float(energy.max()) if len(energy) else 0.0
    energy_db = 10.0 * np.log10(energy + 1e-12).astype(np.float32)
    if top <= 1e-12:
        z = np.zeros_like(mel)
        return FrameFeatures(z, z, energy_db, np.ones(len(mel), dtype=bool))
    ref_db = 10.0 * np.log10(top)
    silent = energy_db < ref_db - SILENT_DB
    mel_ref = float(mel.max())
    logmel = 10.0 * np.log10(np.maximum(mel, mel_ref * 10 ** (-FLOOR_DB / 10))).astype(np.float32)
    loud = ~silent
    base = np.median(logmel[loud], axis=0) if loud.any() else np.zeros(N_MELS, np.float32)
    f = logmel - base
    f = f - f.mean(axis=1, keepdims=True)
    f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-6
    f[silent] = 0.0
    return FrameFeatures(f.astype(np.float32), logmel, energy_db, silent)
