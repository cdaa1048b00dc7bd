"""Level, fades and EQ of one aligned segment, and the re-assembly distance.

The edited/raw power ratio along a segment is flat (the gain) except where a fade
ramps it; fitting the renderer's fade curve (``fade_curve``) to the ramp at each end
gives the fade length. Frames where the raw is near silent say nothing and are
skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alignment.features import SR, frame_features

__all__ = ["Levels", "measure", "fade_curve", "reconstruction_distance", "ENV_HOP"]

#: 5.8 ms envelope hop: a 100 ms fade spans ~17 points.
ENV_HOP = 128
_ENV_WIN = 512
#: Fades shorter than this are not reported: a join crossfade (<= 50 ms) dips the
#: level briefly at both sides of every join and must not read as a fade.
MIN_FADE_S = 0.12
#: EQ bands (Ops: low shelf below ~200 Hz, high shelf above ~4 kHz).
LOW_HZ, HIGH_HZ = 200.0, 4000.0


@dataclass(frozen=True)
class Levels:
    gain_db: float
    fade_in_s: float
    fade_out_s: float
    eq_low_db: float
    eq_high_db: float


def fade_curve(x: np.ndarray) -> np.ndarray:
    """Fade-in gain at fraction ``x`` in [0, 1] of the fade: equal-power (sin), the
    curve of envs.render; a fade-out is the same curve mirrored in time."""
    return np.sin(0.5 * np.pi * np.clip(x, 0.0, 1.0))


def _fade_fraction(g: np.ndarray) -> np.ndarray:
    """Inverse of ``fade_curve``: fraction of the fade where the gain is ``g``."""
    return np.arcsin(np.clip(g, 0.0, 1.0)) / (0.5 * np.pi)


def _envelope(y: np.ndarray) -> np.ndarray:
    """Power every ENV_HOP samples, mean over a centred ENV_WIN window [shape=(n//ENV_HOP+1,)]."""
    y2 = np.asarray(y, dtype=np.float64) ** 2
    c = np.r_[0.0, np.cumsum(y2)]
    centres = np.arange(0, len(y) + 1, ENV_HOP)
    lo = np.clip(centres - _ENV_WIN // 2, 0, len(y))
    hi = np.clip(centres + _ENV_WIN // 2, 0, len(y))
    return (c[hi] - c[lo]) / np.maximum(hi - lo, 1)


def _raw_span(y_raw: np.ndarray, r0: float, r1: float, n_out: int, reversed: bool) -> np.ndarray:
    """Raw samples [r0, r1) mapped onto ``n_out`` edited samples (stretch = resampling
    of the index, enough for envelopes and spectra)."""
    a, b = int(round(r0 * SR)), int(round(r1 * SR))
    x = y_raw[max(a, 0) : max(min(b, len(y_raw)), 0)]
    if reversed:
        x = x[::-1]
    if len(x) == 0:
        return np.zeros(n_out, np.float32)
    if len(x) != n_out:
        idx = np.minimum((np.arange(n_out) * (len(x) / n_out)).astype(np.int64), len(x) - 1)
        x = x[idx]
    return x


def measure(
    *, y_edit: np.ndarray, y_raw: np.ndarray, edit_span: tuple[float, float], raw_span: tuple[float, float], reversed: bool = False
) -> Levels:
    """Gain (dB), fades (s) and low/high band change (dB) of one segment.

    y_edit, y_raw : mono signals at 22050 Hz [shape=(n,)]
    edit_span, raw_span : seconds
    """
    e0, e1 = edit_span
    a, b = int(round(e0 * SR)), int(round(e1 * SR))
    e = y_edit[a:b]
    n = len(e)
    if n < _ENV_WIN:
        return Levels(0.0, 0.0, 0.0, 0.0, 0.0)
    x = _raw_span(y_raw, raw_span[0], raw_span[1], n, reversed)
    pe, px = _envelope(e), _envelope(x)
    ok = px > px.max() * 10 ** (-50 / 10)
    ratio = 10 * np.log10((pe + 1e-12) / (px + 1e-12))
    if ok.sum() < 4:
        return Levels(0.0, 0.0, 0.0, 0.0, 0.0)
    r = ratio[ok]
    # Gain: median over the frames near the top of the ratio (fades pull the ratio
    # down over up to ~70 % of a segment; compression and codec noise scatter +-1 dB).
    top = np.percentile(r, 80)
    gain_db = float(np.median(r[r >= top - 3.0]))
    amp = np.where(ok, 10 ** ((ratio - gain_db) / 20), np.nan)
    t = np.arange(len(amp)) * ENV_HOP / SR
    dur = n / SR
    fade_in = _fit_fade(t, amp, dur)
    fade_out = _fit_fade(t, amp[::-1], dur)
    if fade_in + fade_out > dur:
        s = dur / (fade_in + fade_out)
        fade_in, fade_out = fade_in * s, fade_out * s
    lo, hi = _band_change(e, x, gain_db)
    return Levels(round(gain_db, 2), round(fade_in, 3), round(fade_out, 3), lo, hi)


def _fit_fade(t: np.ndarray, amp: np.ndarray, dur: float) -> float:
    """Fade length (s) at the start of ``amp`` (edited/raw amplitude / gain, nan = no
    information): where the ratio first stays near 1, refined by least squares of
    t = L * fraction(amp) over the ramp."""
    valid = np.isfinite(amp)
    if valid.sum() < 8:
        return 0.0
    a = np.where(valid, amp, 1.0)
    # smooth over ~30 ms: codec and compressor ripple
    k = 5
    sm = np.convolve(np.pad(a, (k // 2, k // 2), mode="edge"), np.ones(k) / k, mode="valid")
    above = np.nonzero(sm >= 0.89)[0]  # -1 dB
    if len(above) == 0:
        return 0.0
    end = int(above[0])
    if t[end] < MIN_FADE_S:
        return 0.0
    # Fit on the quiet part of the ramp (amplitude 0.02-0.7): a mastering compressor
    # flattens the loud part of a fade, and below 0.02 the raw's noise floor decides.
    seg = slice(0, end + 1)
    aa = a[seg]
    use = valid[seg] & (aa >= 0.02) & (aa <= 0.7)
    if use.sum() < 4:
        use = valid[seg]
    u = _fade_fraction(aa)[use]
    tt = t[seg][use]
    if len(u) < 4 or float(np.dot(u, u)) <= 0:
        return 0.0
    length = float(np.dot(tt, u) / np.dot(u, u))
    length = min(max(length, 0.0), dur)
    return length if length >= MIN_FADE_S else 0.0


def _band_change(e: np.ndarray, x: np.ndarray, gain_db: float) -> tuple[float, float]:
    """Low/high band level change relative to the overall gain (dB), mean spectra over
    up to 4 s of the segment's middle."""
    n = len(e)
    half = min(n // 2, 2 * SR)
    mid = n // 2
    es, xs = e[mid - half : mid + half], x[mid - half : mid + half]
    if len(es) < 2048:
        return 0.0, 0.0
    nfft = 2048
    m = (len(es) // nfft) * nfft
    win = np.hanning(nfft)
    pe = (np.abs(np.fft.rfft(es[:m].reshape(-1, nfft) * win, axis=1)) ** 2).mean(axis=0)
    px = (np.abs(np.fft.rfft(xs[:m].reshape(-1, nfft) * win, axis=1)) ** 2).mean(axis=0)
    f = np.fft.rfftfreq(nfft, 1 / SR)
    out = []
    for band in ((f >= 30) & (f < LOW_HZ), (f >= HIGH_HZ) & (f < 10000)):
        if px[band].sum() <= px.sum() * 1e-6:
            out.append(0.0)
            continue
        d = 10 * np.log10((pe[band].sum() + 1e-12) / (px[band].sum() + 1e-12)) - gain_db
        out.append(round(float(d), 2))
    return out[0], out[1]


def reconstruction_distance(*, y_edit: np.ndarray, y_raw: np.ndarray, segments, effects) -> float:
    """Log-mel distance (dB) between the edited file and the raw re-assembled from
    ``segments`` (gains, fades, reversal; stretch by index resampling), over the
    edited file's loud frames. 0 = identical; ~1-2 dB = an MP3 of the same edit."""
    rec = np.zeros(len(y_edit), dtype=np.float32)
    xf = int(0.01 * SR)
    for s, fx in zip(segments, effects):
        a, b = int(round(s.edit_start * SR)), int(round(s.edit_end * SR))
        b = min(b, len(rec))
        n = b - a
        if n <= 0:
            continue
        x = _raw_span(y_raw, s.raw_start, s.raw_end, n, fx.reversed).astype(np.float32) * 10 ** (s.gain_db / 20)
        t = np.arange(n) / SR
        if s.fade_in_s > 0:
            x *= fade_curve(t / s.fade_in_s)
        if s.fade_out_s > 0:
            x *= fade_curve((n / SR - t) / s.fade_out_s)
        w = np.ones(n, np.float32)
        k = min(xf, n // 2)
        if k > 0:
            w[:k] = np.linspace(0, 1, k)
            w[-k:] = np.linspace(1, 0, k)
        rec[a:b] += x * w
    fe = frame_features(y=y_edit)
    fr = frame_features(y=rec)
    loud = ~fe.silent
    if not loud.any():
        return float("inf")
    # both floored at 80 dB under the *edited* file's loudest band
    floor = float(fe.logmel.max()) - 80.0
    d = np.abs(np.maximum(fe.logmel, floor) - np.maximum(fr.logmel, floor))[loud]
    return float(d.mean())


#: Gain-step search: envelope frames of 1024 samples (46 ms) every 512.
_STEP_WIN, _STEP_HOP = 1024, 512
#: A level step is a change of at least this much between two flat stretches...
MIN_STEP_DB = 1.0
#: ...each at least this long and this flat (std of the dB ratio): a fade is no step.
MIN_STEP_SIDE_S = 0.4
MAX_SIDE_STD_DB = 1.5


def gain_steps(*, y_edit: np.ndarray, y_raw: np.ndarray, edit_span: tuple[float, float], offset_s: float) -> list[float]:
    """Edited times (s) inside a contiguous segment where its level steps.

    A gain change on a span that continues the raw leaves the frame features (gain
    invariant) untouched, so it shows only in the edited/raw power ratio: a piecewise
    constant fit by binary segmentation, keeping splits between two flat sides that
    differ by >= MIN_STEP_DB.
    """
    e0, e1 = edit_span
    a, b = int(round(e0 * SR)), min(int(round(e1 * SR)), len(y_edit))
    ra = a + int(round(offset_s * SR))
    if ra < 0 or ra + (b - a) > len(y_raw) or b - a < 2 * int(MIN_STEP_SIDE_S * SR):
        return []
    e = y_edit[a:b].astype(np.float64)
    x = y_raw[ra : ra + (b - a)].astype(np.float64)

    def env(z: np.ndarray) -> np.ndarray:
        c = np.r_[0.0, np.cumsum(z * z)]
        st = np.arange(0, len(z) - _STEP_WIN + 1, _STEP_HOP)
        return (c[st + _STEP_WIN] - c[st]) / _STEP_WIN

    pe, px = env(e), env(x)
    if len(pe) < 4:
        return []
    ok = px > px.max() * 1e-4
    r = 10 * np.log10((pe + 1e-12) / (px + 1e-12))
    t = (np.arange(len(r)) * _STEP_HOP + _STEP_WIN / 2) / SR
    r, t = r[ok], t[ok]
    w = max(3, int(MIN_STEP_SIDE_S * SR / _STEP_HOP))
    if len(r) < 2 * w + 1:
        return []
    # sliding windows of w frames left of k (frames k-w..k-2, the frame at k-1 straddles
    # the step) and right of k (k+1..k+w-1): level, spread, and drift (a ramp is a fade)
    win = np.lib.stride_tricks.sliding_window_view(r, w - 1)  # win[i] = r[i : i+w-1]
    med = np.median(win, axis=1)
    std = win.std(axis=1)
    xs = np.arange(w - 1) - (w - 2) / 2
    slope = (win @ xs) / float(xs @ xs)
    drift = np.abs(slope) * (w - 1)
    ks = np.arange(w, len(r) - w + 1)
    li, ri = ks - w, ks + 1
    diff = med[ri] - med[li]
    flat = (std[li] <= MAX_SIDE_STD_DB) & (std[ri] <= MAX_SIDE_STD_DB) & (drift[li] < 0.75) & (drift[ri] < 0.75)
    cand = flat & (np.abs(diff) >= MIN_STEP_DB)
    out: list[float] = []
    score = np.where(cand, np.abs(diff), 0.0)
    while score.max() > 0:
        j = int(np.argmax(score))
        k = int(ks[j])
        out.append(float(0.5 * (t[k - 1] + t[k])) + e0)
        score[max(0, j - w) : j + w + 1] = 0.0
    return sorted(out)
