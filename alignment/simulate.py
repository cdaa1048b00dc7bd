"""Edited files with known ground truth, for tests and the alignment benchmark.

``assemble`` plays raw spans (seconds, any order, repeats allowed) with gain, fades,
reversal or a pitch-keeping stretch, joined by equal-power crossfades centred on each
join, and returns the exact truth (where each span lands in the edited file).
``deliver`` does what an export does: mastering (a low/high shelf tilt, compression,
level), MP3 encoding (lameenc; the decoder's delay and padding stay in) and a new
sample rate.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from alignment.levels import fade_curve
from datasets.audio import resample

__all__ = ["Span", "TruthSegment", "assemble", "deliver", "mp3_roundtrip"]


@dataclass(frozen=True)
class Span:
    """A raw span to play (seconds) and how."""

    raw_start: float
    raw_end: float
    gain_db: float = 0.0
    fade_in_s: float = 0.0
    fade_out_s: float = 0.0
    reversed: bool = False
    time_factor: float = 1.0  # 2.0 = plays twice as fast


@dataclass(frozen=True)
class TruthSegment:
    edit_start: float
    edit_end: float
    raw_start: float
    raw_end: float
    gain_db: float
    fade_in_s: float
    fade_out_s: float
    reversed: bool = False
    time_factor: float = 1.0


def _stretch(x: np.ndarray, sr: int, factor: float) -> np.ndarray:
    if factor == 1.0:
        return x
    import pedalboard

    y = pedalboard.time_stretch(x[None, :].astype(np.float32), sr, stretch_factor=float(factor))
    return np.asarray(y[0], dtype=np.float32)


def assemble(*, y: np.ndarray, sr: int, spans: list[Span], crossfade_ms: float = 10.0) -> tuple[np.ndarray, list[TruthSegment]]:
    """Edited signal and its truth.

    y : np.ndarray [shape=(n,)] mono raw audio
    spans : played in order; joins get an equal-power crossfade of ``crossfade_ms``
        centred on the join (each span is read crossfade/2 beyond its ends)
    Returns (edited [shape=(m,)], truth segments in edited time).
    """
    half = int(round(crossfade_ms / 2000 * sr))
    pieces: list[np.ndarray] = []
    truth: list[TruthSegment] = []
    t_edit = 0
    for k, sp in enumerate(spans):
        a, b = int(round(sp.raw_start * sr)), int(round(sp.raw_end * sr))
        lo, hi = max(0, a - half), min(len(y), b + half)
        x = y[lo:hi].astype(np.float32).copy()
        pre, post = a - lo, hi - b
        if sp.reversed:
            x = x[::-1].copy()
            pre, post = post, pre
        if sp.time_factor != 1.0:
            x = _stretch(x, sr, sp.time_factor)
            pre, post = int(round(pre / sp.time_factor)), int(round(post / sp.time_factor))
        n = len(x) - pre - post
        t = (np.arange(len(x)) - pre) / sr
        g = np.full(len(x), 10 ** (sp.gain_db / 20), dtype=np.float32)
        if sp.fade_in_s > 0:
            g *= fade_curve(t / sp.fade_in_s)
        if sp.fade_out_s > 0:
            g *= fade_curve((n / sr - t) / sp.fade_out_s)
        x *= g
        truth.append(
            TruthSegment(t_edit / sr, (t_edit + n) / sr, sp.raw_start, sp.raw_end, sp.gain_db, sp.fade_in_s, sp.fade_out_s, sp.reversed, sp.time_factor)
        )
        pieces.append((t_edit - pre, x, pre, post))  # type: ignore[arg-type]
        t_edit += n
    out = np.zeros(t_edit + half + 1, dtype=np.float32)
    for k, (start, x, pre, post) in enumerate(pieces):  # type: ignore[misc]
        w = np.ones(len(x), dtype=np.float32)
        if k > 0 and pre > 0:
            w[: 2 * pre] = np.sin(0.5 * np.pi * np.linspace(0, 1, 2 * pre))[: len(w[: 2 * pre])]
        elif pre > 0:
            w[:pre] = 0.0
        if k < len(pieces) - 1 and post > 0:
            w[-2 * post :] *= np.cos(0.5 * np.pi * np.linspace(0, 1, 2 * post))
        elif post > 0:
            w[-post:] = 0.0
        s0 = start
        x = x * w
        if s0 < 0:
            x = x[-s0:]
            s0 = 0
        e = min(len(out), s0 + len(x))
        out[s0:e] += x[: e - s0]
    return out[:t_edit], truth


def mp3_roundtrip(*, y: np.ndarray, sr: int, kbps: int = 160) -> np.ndarray:
    """Encode mono/stereo audio to MP3 with lameenc and decode it with libsndfile.

    The decoded signal keeps the codec's delay at the start and padding at the end,
    as a real MP3 export does. Returns [shape=(n',)] mono float32.
    """
    import lameenc

    x = np.clip(np.asarray(y, dtype=np.float32), -1, 1)
    enc = lameenc.Encoder()
    enc.set_bit_rate(kbps)
    enc.set_in_sample_rate(sr)
    enc.set_channels(1)
    enc.set_quality(2)
    data = enc.encode((x * 32767).astype(np.int16).tobytes()) + enc.flush()
    with tempfile.NamedTemporaryFile(suffix=".mp3") as f:
        f.write(bytes(data))
        f.flush()
        dec, sr2 = sf.read(f.name, dtype="float32", always_2d=True)
    dec = dec.mean(axis=1)
    if sr2 != sr:
        dec = resample(dec, sr_in=sr2, sr_out=sr)
    return dec.astype(np.float32)


def deliver(
    *, y: np.ndarray, sr: int, gain_db: float = 3.0, compress: bool = True, tilt_db: float = 2.0, mp3: bool = True, sr_out: int = 48000
) -> tuple[np.ndarray, int]:
    """Mastering + export: shelves (+tilt_db high, -tilt_db low), a compressor, a
    level change, MP3, and resampling to ``sr_out``. Returns (y [shape=(n',)], sr_out)."""
    import pedalboard as pb

    board = pb.Pedalboard(
        [pb.LowShelfFilter(cutoff_frequency_hz=150, gain_db=-tilt_db), pb.HighShelfFilter(cutoff_frequency_hz=5000, gain_db=tilt_db)]
        + ([pb.Compressor(threshold_db=-18, ratio=3, attack_ms=5, release_ms=80)] if compress else [])
        + [pb.Gain(gain_db=gain_db), pb.Limiter(threshold_db=-0.5)]
    )
    x = board(np.asarray(y, dtype=np.float32)[None, :], sr)[0]
    if mp3:
        x = mp3_roundtrip(y=x, sr=sr)
    x = resample(x, sr_in=sr, sr_out=sr_out)
    return x.astype(np.float32), sr_out


def codec_delay(*, ref: np.ndarray, y: np.ndarray, sr: int, max_s: float = 0.2) -> float:
    """Seconds by which ``y`` (an encoded/processed copy of ``ref``, same rate) lags
    ``ref``: the MP3 encoder + decoder delay that a truth timeline must be shifted by.
    Cross-correlation of the first 10 s within +-max_s."""
    from scipy.signal import fftconvolve

    n = min(len(ref), len(y), int(10 * sr))
    m = int(max_s * sr)
    a = np.asarray(ref[:n], dtype=np.float64)
    b = np.pad(np.asarray(y[:n], dtype=np.float64), (m, m))
    corr = fftconvolve(b, a[::-1], mode="valid")  # lag -m..m
    return (int(np.argmax(corr)) - m) / sr
