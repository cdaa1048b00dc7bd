"""Delivery realism: what happens to an edit between the DAW and the training folder.

A musician's edited file is rarely the renderer's bit-exact output: it was bounced with
a master gain, through a bus compressor, exported to MP3 and later decoded and resampled
(48 kHz video projects are common). ``deliver`` applies that chain so that alignment is
tested against the artifacts it will meet:

1. overall gain, +-3 dB;
2. mild compression (pedalboard ``Compressor``: threshold -20..-14 dB, ratio 1.5..3,
   10-30 ms attack, 150 ms release), then a peak guard so nothing clips;
3. MP3 at 128-320 kbit/s with LAME (``lameenc``), decoded again with libsndfile
   (>= 1.1 reads MP3). The decoder keeps the encoder delay (LAME's 576 + the decoder's
   529 samples at the encoding rate) and the last frame's padding, as most libraries
   do; the delay is recorded (``DeliveryResult.offset_s``), not removed;
4. resampling to 48 kHz (soxr HQ).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np

from datasets.audio import resample
from datasets.errors import AudioError, ParameterError

__all__ = ["DeliveryParams", "DeliveryResult", "sample_delivery", "deliver", "MP3_DELAY_SAMPLES"]

#: LAME's encoder delay (576) + the mpg123 decoder delay (529): where the content starts
#: in the decoded stream, in samples at the encoding rate (measured in the tests).
MP3_DELAY_SAMPLES = 1105


@dataclass(frozen=True)
class DeliveryParams:
    """One export chain (see the module docstring for the ranges)."""

    gain_db: float = 0.0
    threshold_db: float = -18.0
    ratio: float = 2.0
    attack_ms: float = 15.0
    release_ms: float = 150.0
    mp3_kbps: int = 192
    sr_out: int = 48000

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DeliveryResult:
    """y : np.ndarray [shape=(channels, n), float32] at ``sr``; offset_s : how late the
    content starts in ``y`` compared with the input (the MP3 delay)."""

    y: np.ndarray
    sr: int
    offset_s: float
    params: DeliveryParams
    guard_gain_db: float

    def to_dict(self) -> dict:
        return {**self.params.to_dict(), "offset_s": self.offset_s, "guard_gain_db": self.guard_gain_db, "sr": self.sr}


def sample_delivery(rng: np.random.Generator) -> DeliveryParams:
    """Draw an export chain: gain +-3 dB, mild compression, 128-320 kbit/s, 48 kHz."""
    return DeliveryParams(
        gain_db=round(float(rng.uniform(-3.0, 3.0)), 2),
        threshold_db=round(float(rng.uniform(-20.0, -14.0)), 1),
        ratio=round(float(rng.uniform(1.5, 3.0)), 2),
        attack_ms=round(float(rng.uniform(10.0, 30.0)), 1),
        release_ms=150.0,
        mp3_kbps=int(rng.choice([128, 160, 192, 256, 320])),
        sr_out=48000,
    )


def _mp3_roundtrip(y: np.ndarray, sr: int, kbps: int) -> np.ndarray:
    import lameenc
    import soundfile as sf

    if y.shape[0] not in (1, 2):
        raise ParameterError(f"MP3 takes 1 or 2 channels, got {y.shape[0]}")
    enc = lameenc.Encoder()
    enc.set_bit_rate(int(kbps))
    enc.set_in_sample_rate(int(sr))
    enc.set_channels(int(y.shape[0]))
    enc.set_quality(2)  # 2 = high quality, the setting DAWs use for export
    pcm = np.round(np.clip(y, -1.0, 1.0) * 32767.0).astype("<i2").T.tobytes()  # interleaved int16
    data = bytes(enc.encode(pcm) + enc.flush())
    try:
        out, sr2 = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile < 1.1 has no MP3 decoder
        raise AudioError(f"cannot decode MP3 with libsndfile {sf.__libsndfile_version__} ({exc})") from None
    if sr2 != sr:
        raise AudioError(f"MP3 decoded at {sr2} Hz, encoded at {sr} Hz")
    return np.ascontiguousarray(out.T)


def deliver(*, y: np.ndarray, sr: int, params: DeliveryParams) -> DeliveryResult:
    """Apply the export chain to ``y`` [shape=(channels, n)] at ``sr``."""
    from pedalboard import Compressor, Pedalboard

    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 1:
        y = y[None, :]
    x = y * np.float32(10 ** (params.gain_db / 20))
    board = Pedalboard(
        [Compressor(threshold_db=params.threshold_db, ratio=params.ratio, attack_ms=params.attack_ms, release_ms=params.release_ms)]
    )
    x = board(x, sr)
    peak = float(np.abs(x).max()) if x.size else 0.0
    guard = 0.0
    if peak > 0.98:  # an exported master does not clip: the limiter's job, done as a gain
        g = 0.98 / peak
        x = x * np.float32(g)
        guard = 20 * np.log10(g)
    x = _mp3_roundtrip(x, sr, params.mp3_kbps)
    offset = MP3_DELAY_SAMPLES / sr
    if params.sr_out != sr:
        x = resample(x, sr_in=sr, sr_out=params.sr_out)
    return DeliveryResult(y=x.astype(np.float32), sr=int(params.sr_out), offset_s=offset, params=params, guard_gain_db=round(guard, 3))
