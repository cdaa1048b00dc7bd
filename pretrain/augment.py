"""Audio augmentations that leave timing unchanged, so an aligned plan stays valid.

Users have few raw/edited pairs; each pair yields several training songs by changing
how the raw *sounds* but not *when* anything happens: pitch shift (+-2 semitones,
duration preserved), added noise at a chosen SNR, gain, and an EQ tilt (low shelf up /
high shelf down, or the reverse). The beat grid, the plan and the oracle actions of the
original pair apply unchanged to the augmented audio.

Augmented audio gets its own identity: ``sha256 = sha256(original sha256 | spec)``, so
its features are cached like any other recording's (datasets.features keys the cache
by the audio hash) and the cache key includes the augmentation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from datasets.audio import ANALYSIS_SR, Audio, resample, to_mono
from datasets.errors import ParameterError

__all__ = ["Augmentation", "augment_audio", "random_augmentations", "IDENTITY"]

# Shelf corner frequencies of the tilt: the tilt pivots between bass and presence.
_TILT_LOW_HZ = 250.0
_TILT_HIGH_HZ = 4000.0


@dataclass(frozen=True)
class Augmentation:
    """One timing-preserving transform (identity by default).

    pitch_semitones : float in [-2, 2], pitch shift with duration preserved (pedalboard)
    snr_db : float or None, add white noise at this signal-to-noise ratio (dB)
    gain_db : float, level change in dB (peak-limited to full scale)
    tilt_db : float, EQ tilt: +x = low shelf +x/2 dB and high shelf -x/2 dB (darker)
    seed : int, seeds the noise (the same spec gives the same samples)
    """

    pitch_semitones: float = 0.0
    snr_db: float | None = None
    gain_db: float = 0.0
    tilt_db: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if abs(self.pitch_semitones) > 2.0:
            raise ParameterError(f"augmentation pitch_semitones={self.pitch_semitones} outside [-2, 2]")
        if self.snr_db is not None and not 0.0 <= self.snr_db <= 80.0:
            raise ParameterError(f"augmentation snr_db={self.snr_db} outside [0, 80]")
        if abs(self.gain_db) > 24.0 or abs(self.tilt_db) > 12.0:
            raise ParameterError(f"augmentation gain_db={self.gain_db} / tilt_db={self.tilt_db} too large")

    @property
    def is_identity(self) -> bool:
        return self.pitch_semitones == 0.0 and self.snr_db is None and self.gain_db == 0.0 and self.tilt_db == 0.0

    def key(self) -> str:
        """Stable text of the spec (part of the augmented audio's hash / cache key)."""
        if self.is_identity:
            return "none"
        snr = "none" if self.snr_db is None else f"{self.snr_db:.3f}"
        return f"pitch{self.pitch_semitones:+.3f}_snr{snr}_gain{self.gain_db:+.3f}_tilt{self.tilt_db:+.3f}_seed{self.seed}"


IDENTITY = Augmentation()


def _apply(y: np.ndarray, sr: int, aug: Augmentation) -> np.ndarray:
    """y [channels, n] float32 -> augmented [channels, n] float32, same length."""
    import pedalboard

    fx = []
    if aug.pitch_semitones != 0.0:
        fx.append(pedalboard.PitchShift(semitones=float(aug.pitch_semitones)))
    if aug.tilt_db != 0.0:
        fx.append(pedalboard.LowShelfFilter(cutoff_frequency_hz=_TILT_LOW_HZ, gain_db=aug.tilt_db / 2))
        fx.append(pedalboard.HighShelfFilter(cutoff_frequency_hz=_TILT_HIGH_HZ, gain_db=-aug.tilt_db / 2))
    out = np.ascontiguousarray(y, dtype=np.float32)
    if fx:
        # pedalboard compensates its plugins' latency, so onsets stay where they were.
        out = pedalboard.Pedalboard(fx)(out, sr)
        out = np.ascontiguousarray(out[:, : y.shape[1]], dtype=np.float32)
        if out.shape[1] < y.shape[1]:
            out = np.pad(out, ((0, 0), (0, y.shape[1] - out.shape[1])))
    if aug.snr_db is not None:
        rng = np.random.default_rng(aug.seed)
        p_sig = float(np.mean(out.astype(np.float64) ** 2))
        noise = rng.standard_normal(out.shape).astype(np.float32)
        out = out + noise * np.float32(np.sqrt(p_sig / 10 ** (aug.snr_db / 10)))
    if aug.gain_db != 0.0:
        out = out * np.float32(10 ** (aug.gain_db / 20))
    peak = float(np.abs(out).max()) if out.size else 0.0
    if peak > 1.0:  # keep a valid float signal; a clipped file is not what a DAW exports
        out = out / np.float32(peak)
    return out.astype(np.float32, copy=False)


def augment_audio(audio: Audio, aug: Augmentation) -> Audio:
    """The augmented recording (same rate, channels and length; new hash and path tag)."""
    if aug.is_identity:
        return audio
    y = _apply(audio.y, audio.sr, aug)
    sha = hashlib.sha256(f"{audio.sha256}|{aug.key()}".encode()).hexdigest()
    y_mono = resample(to_mono(y), sr_in=audio.sr, sr_out=ANALYSIS_SR)
    return replace(audio, path=f"{audio.path}#aug={aug.key()}", y=y, y_mono=y_mono, sha256=sha, is_silent=audio.is_silent)


def random_augmentations(n: int, *, seed: int = 0) -> list[Augmentation]:
    """n random transforms: pitch in {-2, -1, +1, +2} st, SNR 20-40 dB, gain +-6 dB, tilt
    +-4 dB; each draws every transform (a pair then yields n different songs)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        out.append(
            Augmentation(
                pitch_semitones=float(rng.choice([-2.0, -1.0, 1.0, 2.0])),
                snr_db=float(np.round(rng.uniform(20.0, 40.0), 1)),
                gain_db=float(np.round(rng.uniform(-6.0, 6.0), 1)),
                tilt_db=float(np.round(rng.uniform(-4.0, 4.0), 1)),
                seed=int(seed * 1000 + i),
            )
        )
    return out
