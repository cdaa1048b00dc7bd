"""The librosa 0.11 analysis functions the pipeline uses, in numpy + scipy.fft, bit for bit.

Why: a fresh process that imports librosa pays ~1.3 s of CPU before any audio is
touched (scipy.signal, numba, and the numba gufuncs librosa builds at import), and
``librosa.beat`` ~2 s more (its ``__beat_local_score`` is declared ``cache=False``, so
numba compiles it at every import). The computations themselves take ~0.1 s on a
3-minute song. Every function here is librosa's algorithm written with the same
floating-point operations in the same order (the FFTs are scipy.fft's, as librosa's
default), so the numbers are identical: ``tests/datasets/test_dsp.py`` checks each one
against librosa on real recordings, and is the place that fails if a librosa upgrade
(requirements pin 0.11.0) changes anything. Where librosa runs a numba kernel, the
comment says which and how its arithmetic is reproduced (numba promotes
``float32 op int`` to float64 where numpy keeps float32; numba's ``np.mean`` adds
sequentially where numpy adds pairwise).

All signals are mono [shape=(n,)], spectrograms [shape=(bins, frames)] (time last).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from datasets.errors import ParameterError

__all__ = [
    "hann",
    "stft",
    "power_to_db",
    "mel_filters",
    "chroma_filters",
    "normalize",
    "onset_strength",
    "estimate_tuning",
    "spectral_contrast",
    "mfcc",
    "tonnetz",
    "peak_pick",
    "frames_to_time",
    "time_to_frames",
    "sync",
    "tempo",
    "beat_track",
    "fftconvolve_valid",
]

#: Columns per scipy.fft call in ``stft`` (each column's FFT is independent of the
#: batch; 512 keeps the float64 temporaries at ~8 MB).
_STFT_BLOCK = 512


def hann(n: int) -> np.ndarray:
    """Periodic Hann window [shape=(n,), float64], computed as
    ``scipy.signal.get_window("hann", n, fftbins=True)`` does (general_cosine)."""
    fac = np.linspace(-np.pi, np.pi, n + 1)
    w = np.zeros(n + 1)
    for k, a in enumerate((0.5, 0.5)):
        w += a * np.cos(k * fac)
    return w[:n]


def stft(y: np.ndarray, *, n_fft: int = 2048, hop_length: int = 512) -> np.ndarray:
    """``librosa.stft(y, n_fft=, hop_length=)``: Hann window, centred frames, zero padding.

    y : np.ndarray [shape=(n,), float32]
    Returns np.ndarray [shape=(1 + n_fft // 2, 1 + n // hop_length), complex64]
    """
    import scipy.fft

    y = np.asarray(y)
    if y.ndim != 1 or len(y) < 1:
        raise ParameterError(f"stft needs a non-empty mono signal, got shape {y.shape}")
    win = hann(n_fft)[:, None]
    yp = np.pad(y, (n_fft // 2, n_fft // 2))
    n_frames = 1 + (len(yp) - n_fft) // hop_length
    frames = np.lib.stride_tricks.as_strided(
        yp, shape=(n_fft, n_frames), strides=(yp.strides[0], yp.strides[0] * hop_length), writeable=False
    )
    # Fortran order, as librosa allocates it: the spectrogram's layout decides the
    # summation order of later matrix products (BLAS), hence their last bits
    out = np.empty((1 + n_fft // 2, n_frames), dtype=np.complex64 if y.dtype != np.float64 else np.complex128, order="F")
    for a in range(0, n_frames, _STFT_BLOCK):
        b = min(a + _STFT_BLOCK, n_frames)
        out[:, a:b] = scipy.fft.rfft(win * frames[:, a:b], axis=-2)
    return out


def power_to_db(S: np.ndarray, *, ref: float = 1.0, amin: float = 1e-10, top_db: float | None = 80.0) -> np.ndarray:
    """``librosa.power_to_db`` with a scalar ``ref``."""
    S = np.asarray(S)
    log_spec = 10.0 * np.log10(np.maximum(amin, S))
    log_spec -= 10.0 * np.log10(np.maximum(amin, np.abs(ref)))
    if top_db is not None:
        log_spec = np.maximum(log_spec, log_spec.max() - top_db)
    return log_spec


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (``librosa.hz_to_mel``, htk=False)."""
    f = np.asanyarray(f)
    f_sp = 200.0 / 3
    mels = (f - 0.0) / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, (1000.0 - 0.0) / f_sp, np.log(6.4) / 27.0
    if f.ndim:
        log_t = f >= min_log_hz
        mels[log_t] = min_log_mel + np.log(f[log_t] / min_log_hz) / logstep
    elif f >= min_log_hz:
        mels = min_log_mel + np.log(f / min_log_hz) / logstep
    return mels


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asanyarray(m)
    f_sp = 200.0 / 3
    freqs = 0.0 + f_sp * m
    min_log_hz, min_log_mel, logstep = 1000.0, (1000.0 - 0.0) / f_sp, np.log(6.4) / 27.0
    if m.ndim:
        log_t = m >= min_log_mel
        freqs[log_t] = min_log_hz * np.exp(logstep * (m[log_t] - min_log_mel))
    elif m >= min_log_mel:
        freqs = min_log_hz * np.exp(logstep * (m - min_log_mel))
    return freqs


@lru_cache(maxsize=16)
def mel_filters(*, sr: float, n_fft: int, n_mels: int = 128, fmin: float = 0.0, fmax: float | None = None,
                norm: str | None = "slaney") -> np.ndarray:
    """``librosa.filters.mel`` (htk=False) [shape=(n_mels, 1 + n_fft // 2), float32].
    Cached: treat the result as read-only."""
    if fmax is None:
        fmax = float(sr) / 2
    weights = np.zeros((n_mels, int(1 + n_fft // 2)), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    if norm == "slaney":
        enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
        weights *= enorm[:, np.newaxis]
    elif norm is not None:
        raise ParameterError(f"unsupported mel norm {norm!r}")
    weights.setflags(write=False)
    return weights


def normalize(S: np.ndarray, *, norm: float = np.inf, axis: int = 0) -> np.ndarray:
    """``librosa.util.normalize(S, norm=, axis=)`` (threshold = tiny, fill=None): norms
    below the dtype's smallest normal number leave their slice as it is."""
    S = np.asarray(S)
    if not np.all(np.isfinite(S)):
        raise ParameterError("normalize: input must be finite")
    mag = np.abs(S).astype(float)
    if norm == np.inf:
        length = np.max(mag, axis=axis, keepdims=True)
    elif norm > 0:
        length = np.sum(mag**norm, axis=axis, keepdims=True) ** (1.0 / norm)
    else:
        raise ParameterError(f"unsupported norm {norm!r}")
    dtype = S.dtype if np.issubdtype(S.dtype, np.floating) or np.issubdtype(S.dtype, np.complexfloating) else np.float32
    length[length < np.finfo(dtype).tiny] = 1.0
    out = np.empty_like(S)
    out[:] = S / length
    return out


@lru_cache(maxsize=16)
def chroma_filters(*, sr: float, n_fft: int, tuning: float = 0.0, n_chroma: int = 12) -> np.ndarray:
    """``librosa.filters.chroma`` (ctroct 5, octwidth 2, norm 2, base_c) [shape=(12, bins),
    float32]. Cached: treat the result as read-only."""
    frequencies = np.linspace(0, sr, n_fft, endpoint=False)[1:]
    a440 = 440.0 * 2.0 ** (tuning / n_chroma)
    frqbins = n_chroma * np.log2(np.asanyarray(frequencies) / (float(a440) / 16))
    frqbins = np.concatenate(([frqbins[0] - 1.5 * n_chroma], frqbins))
    binwidthbins = np.concatenate((np.maximum(frqbins[1:] - frqbins[:-1], 1.0), [1]))
    D = np.subtract.outer(frqbins, np.arange(0, n_chroma, dtype="d")).T
    n_chroma2 = np.round(float(n_chroma) / 2)
    D = np.remainder(D + n_chroma2 + 10 * n_chroma, n_chroma) - n_chroma2
    wts = np.exp(-0.5 * (2 * D / np.tile(binwidthbins, (n_chroma, 1))) ** 2)
    wts = normalize(wts, norm=2, axis=0)
    wts *= np.tile(np.exp(-0.5 * (((frqbins / n_chroma - 5.0) / 2) ** 2)), (n_chroma, 1))
    wts = np.roll(wts, -3 * (n_chroma // 12), axis=0)
    out = np.ascontiguousarray(wts[:, : int(1 + n_fft / 2)], dtype=np.float32)
    out.setflags(write=False)
    return out


def onset_strength(*, S: np.ndarray, aggregate=np.median, lag: int = 1, n_fft: int = 2048, hop_length: int = 512) -> np.ndarray:
    """``librosa.onset.onset_strength(S=S, aggregate=)`` (max_size 1, centred, no detrend).

    S : np.ndarray [shape=(bands, frames)] log-power spectrogram (dB)
    Returns np.ndarray [shape=(frames,)]
    """
    S = np.atleast_2d(S)
    env = np.maximum(0.0, S[..., lag:] - S[..., :-lag])
    agg = np.empty((1, env.shape[-1]), dtype=env.dtype)
    agg[0] = aggregate(env, axis=-2)
    pad = lag + n_fft // (2 * hop_length)
    return np.pad(agg, [(0, 0), (int(pad), 0)], mode="constant")[..., : S.shape[-1]][0]


def _localmax(x: np.ndarray, axis: int) -> np.ndarray:
    """``librosa.util.localmax``: x[i] > x[i-1] and x[i] >= x[i+1]; the first element is
    never a maximum (the numba stencil's border), the last one when it beats its
    neighbour."""
    x = np.moveaxis(np.asarray(x), axis, -1)
    out = np.zeros(x.shape, dtype=bool)
    out[..., 1:-1] = (x[..., 1:-1] > x[..., :-2]) & (x[..., 1:-1] >= x[..., 2:])
    out[..., -1] = x[..., -1] > x[..., -2]
    return np.moveaxis(out, -1, axis)


def _parabolic_shift(x: np.ndarray) -> np.ndarray:
    """librosa.core.pitch._parabolic_interpolation along axis 0 (its numba stencil:
    ``a = x[1] + x[-1] - 2 * x[0]`` and ``b = (x[1] - x[-1]) / 2`` are float64 for
    float32 input, since numba promotes ``int * float32``; 0 on the borders)."""
    x = np.asarray(x)
    s = (x[2:] + x[:-2]).astype(np.float64)
    a = s - 2 * x[1:-1].astype(np.float64)
    b = (x[2:] - x[:-2]).astype(np.float64) / 2
    use = np.abs(b) < np.abs(a)
    inner = np.zeros(a.shape)
    np.divide(-b, a, out=inner, where=use)
    out = np.zeros_like(x)
    out[1:-1] = inner
    return out


def estimate_tuning(*, S: np.ndarray, sr: float, n_fft: int, resolution: float = 0.01, bins_per_octave: int = 12) -> float:
    """``librosa.estimate_tuning(S=S, sr=, n_fft=)``: piptrack's peaks (150 Hz - 4 kHz,
    threshold 0.1 of the frame max), their magnitude-weighted histogram of deviation from
    the equal-tempered grid. Returns 0.0 (librosa warns) when there is no peak."""
    S = np.abs(S)
    fmin, fmax = np.maximum(150.0, 0), np.minimum(4000.0, float(sr) / 2)
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    pitches = np.zeros_like(S)
    mags = np.zeros_like(S)
    freq_mask = ((fmin <= fft_freqs) & (fft_freqs < fmax))[:, None]
    ref_value = np.expand_dims(0.1 * np.max(S, axis=-2), -2)
    idx = np.nonzero(freq_mask & _localmax(S * (S > ref_value), axis=-2))
    # piptrack computes the gradient and the parabolic shift everywhere and uses them at
    # the peaks only: the same element-wise formulas, at the peaks (~20x less work)
    rows, cols = idx
    inner = (rows > 0) & (rows < S.shape[0] - 1)
    x0, xm, xp = S[rows, cols], S[np.maximum(rows - 1, 0), cols], S[np.minimum(rows + 1, S.shape[0] - 1), cols]
    shift = np.where(inner, _parabolic_shift(np.stack([xm, x0, xp]))[1], 0).astype(S.dtype)
    # np.gradient: centred difference inside, one-sided at the borders
    avg = np.where(inner, (xp - xm) / 2.0, np.where(rows == 0, xp - x0, x0 - xm)).astype(S.dtype)
    pitches[idx] = (rows + shift) * float(sr) / n_fft
    mags[idx] = x0 + 0.5 * avg * shift
    pitch_mask = pitches > 0
    threshold = np.median(mags[pitch_mask]) if pitch_mask.any() else 0.0
    freqs = np.atleast_1d(pitches[(mags >= threshold) & pitch_mask])
    freqs = freqs[freqs > 0]
    if not np.any(freqs):
        return 0.0
    residual = np.mod(bins_per_octave * np.log2(freqs / (440.0 / 16)), 1.0)
    residual[residual >= 0.5] -= 1.0
    bins = np.linspace(-0.5, 0.5, int(np.ceil(1.0 / resolution)) + 1)
    counts, tuning = np.histogram(residual, bins)
    return tuning[np.argmax(counts)]


def spectral_contrast(*, S: np.ndarray, sr: float, n_fft: int, fmin: float = 200.0, n_bands: int = 6,
                      quantile: float = 0.02) -> np.ndarray:
    """``librosa.feature.spectral_contrast(S=S, ...)`` [shape=(n_bands + 1, frames)], dB."""
    freq = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    octa = np.zeros(n_bands + 2)
    octa[1:] = fmin * (2.0 ** np.arange(0, n_bands + 1))
    shape = list(S.shape)
    shape[-2] = n_bands + 1
    valley = np.zeros(shape)
    peak = np.zeros_like(valley)
    for k, (f_low, f_high) in enumerate(zip(octa[:-1], octa[1:])):
        current_band = np.logical_and(freq >= f_low, freq <= f_high)
        idx = np.flatnonzero(current_band)
        if k > 0:
            current_band[idx[0] - 1] = True
        if k == n_bands:
            current_band[idx[-1] + 1 :] = True
        sub_band = S[..., current_band, :]
        if k < n_bands:
            sub_band = sub_band[..., :-1, :]
        n = int(np.maximum(np.rint(quantile * np.sum(current_band)), 1))
        sortedr = np.sort(sub_band, axis=-2)
        valley[..., k, :] = np.mean(sortedr[..., :n, :], axis=-2)
        peak[..., k, :] = np.mean(sortedr[..., -n:, :], axis=-2)
    return power_to_db(peak) - power_to_db(valley)


def mfcc(*, S: np.ndarray, n_mfcc: int = 13) -> np.ndarray:
    """``librosa.feature.mfcc(S=S, n_mfcc=)``: DCT-II (ortho) of a log-mel spectrogram."""
    import scipy.fft

    return scipy.fft.dct(S, axis=-2, type=2, norm="ortho")[..., :n_mfcc, :]


def tonnetz(*, chroma: np.ndarray) -> np.ndarray:
    """``librosa.feature.tonnetz(chroma=)`` [shape=(6, frames)]."""
    dim_map = np.linspace(0, 12, num=chroma.shape[-2], endpoint=False)
    scale = np.asarray([7.0 / 6, 7.0 / 6, 3.0 / 2, 3.0 / 2, 2.0 / 3, 2.0 / 3])
    V = np.multiply.outer(scale, dim_map)
    V[::2] -= 0.5
    R = np.array([1, 1, 1, 1, 0.5, 0.5])
    phi = R[:, np.newaxis] * np.cos(np.pi * V)
    return np.einsum("pc,...ci->...pi", phi, normalize(chroma, norm=1, axis=-2), optimize=True)


def _seq_mean(x: np.ndarray) -> float:
    """numba's ``np.mean`` of a float32 slice: a float32 running sum, divided in float64."""
    return float(np.cumsum(x, dtype=x.dtype)[-1]) / len(x)


def peak_pick(x: np.ndarray, *, pre_max: int, post_max: int, pre_avg: int, post_avg: int, delta: float,
              wait: int) -> np.ndarray:
    """``librosa.util.peak_pick`` (sparse): frames that are the max of
    [n - pre_max, n + post_max), at least ``delta`` above the mean of
    [n - pre_avg, n + post_avg), and more than ``wait`` frames after the last peak."""
    x = np.asarray(x)
    n_x = len(x)
    delta = float(np.float32(delta))  # the numba kernel's float32 argument
    # every candidate is a local max of its window (vectorised), then the numba kernel's
    # left-to-right walk: a peak skips the next `wait` frames
    pad = np.pad(x, (pre_max, post_max), constant_values=-np.inf)
    win_max = np.lib.stride_tricks.sliding_window_view(pad, pre_max + post_max)[:n_x].max(axis=1)
    peaks = np.zeros(n_x, dtype=bool)
    peaks[0] = x[0] >= np.max(x[: min(post_max, n_x)]) and x[0] >= _seq_mean(x[: min(post_avg, n_x)]) + delta
    n = wait + 1 if peaks[0] else 1
    cand = np.flatnonzero(x == win_max)
    k = int(np.searchsorted(cand, n))
    while k < len(cand):
        n = int(cand[k])
        if x[n] >= _seq_mean(x[max(0, n - pre_avg) : min(n + post_avg, n_x)]) + delta:
            peaks[n] = True
            n += wait + 1
            k = int(np.searchsorted(cand, n, side="left"))
        else:
            k += 1
    return np.flatnonzero(peaks)


def frames_to_time(frames, *, sr: float, hop_length: int = 512):
    """``librosa.frames_to_time``: seconds of frame starts."""
    return (np.asanyarray(frames) * hop_length + 0).astype(int) / float(sr)


def time_to_frames(times, *, sr: float, hop_length: int = 512):
    """``librosa.time_to_frames``: the frame holding each time (floor)."""
    samples = (np.asanyarray(times) * sr).astype(int)
    return np.asarray(np.floor((samples - 0) // hop_length), dtype=int)


def sync(data: np.ndarray, idx: np.ndarray, *, aggregate=np.mean) -> np.ndarray:
    """``librosa.util.sync(data, idx, aggregate=)`` along the last axis, padded with 0
    and the end: column j aggregates frames [b[j], b[j+1]) of the sorted, unique
    boundaries b = {0, idx..., n}."""
    n = data.shape[-1]
    frames = np.asarray(idx)
    if np.any(frames < 0):
        raise ParameterError("sync: negative frame index")
    frames = np.clip(frames, 0, n)
    frames = np.concatenate((np.asarray([0, n]), frames))
    b = np.unique(frames[(frames >= 0) & (frames <= n)]).astype(int)
    out = np.empty(data.shape[:-1] + (len(b) - 1,), order="F" if np.isfortran(data) else "C", dtype=data.dtype)
    for i, (s, e) in enumerate(zip(b, b[1:])):
        out[..., i] = aggregate(data[..., s:e], axis=-1)
    return out


def tempo(*, onset_envelope: np.ndarray, sr: float, hop_length: int = 512, start_bpm: float = 120.0,
          std_bpm: float = 1.0, ac_size: float = 8.0, max_tempo: float = 320.0) -> np.ndarray:
    """``librosa.feature.tempo(onset_envelope=, ...)`` (aggregate mean, log-normal prior):
    the autocorrelation tempogram's peak under the prior [shape=(1,), BPM]."""
    import scipy.fft

    win_length = int(time_to_frames(ac_size, sr=sr, hop_length=hop_length))
    # tempogram: windowed autocorrelation of the centred onset envelope, inf-normalised
    n = onset_envelope.shape[-1]
    env = np.pad(onset_envelope, (int(win_length // 2),) * 2, mode="linear_ramp", end_values=[0, 0])
    odf_frame = np.lib.stride_tricks.sliding_window_view(env, win_length).T[:, :n]
    frames = hann(win_length)[:, None] * odf_frame
    n_pad = scipy.fft.next_fast_len(2 * frames.shape[-2] - 1, real=True)
    spec = scipy.fft.rfft(frames, n=n_pad, axis=-2)
    del frames  # (the arrays here are [~700, frames] float64: ~40 MB each for 3 minutes)
    powspec = spec.real**2 + spec.imag**2  # librosa.util.abs2's numba kernel: x.real**2 + x.imag**2
    del spec
    autocorr = scipy.fft.irfft(powspec, n=n_pad, axis=-2)[:win_length]
    del powspec
    tg = normalize(autocorr, norm=np.inf, axis=-2)
    del autocorr
    tg = np.mean(tg, axis=-1, keepdims=True)
    bpms = np.zeros(int(win_length), dtype=np.float64)
    bpms[0] = np.inf
    bpms[1:] = 60.0 * sr / (hop_length * np.arange(1.0, win_length))
    logprior = -0.5 * ((np.log2(bpms) - np.log2(start_bpm)) / std_bpm) ** 2
    logprior[: int(np.argmax(bpms < max_tempo))] = -np.inf
    best_period = np.argmax(np.log1p(1e6 * tg) + logprior[:, None], axis=-2)
    return np.take(bpms, best_period)


def _beat_local_score(onsets: np.ndarray, fpb: float) -> np.ndarray:
    """librosa.beat's ``__beat_local_score`` (static tempo): a same-mode convolution with
    a Gaussian of +-fpb frames, summed in float64 in the kernel's order (k ascending,
    and k < i + K // 2: the kernel's own bounds)."""
    # libm's exp, as the numba kernel calls it (numpy's SIMD exp differs in the last bit)
    window = np.array([math.exp(-0.5 * (v * v)) for v in np.arange(-fpb, fpb + 1) * 32.0 / fpb])
    K, N = len(window), len(onsets)
    half = K // 2
    env = onsets.astype(np.float64)
    out = np.zeros(N)
    for k in range(K):
        lo, hi = max(0, k - half + 1), min(N - 1, k - half + N - 1)
        if lo <= hi:
            out[lo : hi + 1] += window[k] * env[lo + half - k : hi + half - k + 1]
    return out


def _beat_track_dp(localscore: np.ndarray, fpb: float, tightness: float) -> tuple[np.ndarray, np.ndarray]:
    """librosa.beat's ``__beat_track_dp``: for each frame the best previous beat
    between round(fpb / 2) and 2 fpb frames back, scored cumscore - tightness *
    (log(gap) - log(fpb))^2 (the first best, nearest first, wins).

    A frame's predecessors are all at least round(fpb / 2) frames back, so the frames of
    one such block depend only on frames before it: each block is one array operation."""
    n = len(localscore)
    tight = float(np.float32(tightness))  # the kernel's float32 argument
    d_min, d_max = int(np.round(fpb / 2)), int(2 * fpb)
    lf = math.log(fpb)
    gaps = np.arange(d_min, d_max + 1)
    pen = np.array([tight * ((math.log(d) - lf) * (math.log(d) - lf)) for d in gaps])
    backlink = np.full(n, -1, dtype=np.int32)
    cumscore = np.array(localscore, dtype=np.float64)  # frames without a predecessor keep their own score
    loc = np.full(n, -1, dtype=np.int64)
    step = max(d_min, 1)
    for i0 in range(d_min, n, step):
        i = np.arange(i0, min(i0 + step, n))
        src = i[:, None] - gaps[None, :]  # (block, gaps): candidate predecessors, nearest first
        valid = src >= 0
        scores = np.where(valid, cumscore[np.maximum(src, 0)] - pen[None, :], -np.inf)
        j = np.argmax(scores, axis=1)
        best = scores[np.arange(len(i)), j]
        has = valid[:, 0]  # the nearest gap is valid whenever any is
        cumscore[i[has]] = localscore[i[has]] + best[has]
        loc[i[has]] = src[has, j[has]]
    # the first beat: frames before the first one scoring >= 1 % of the max get no back-link
    above = np.flatnonzero(localscore >= 0.01 * localscore.max())
    first = int(above[0]) if len(above) else n
    backlink[first:] = loc[first:]
    return backlink, cumscore


def _trim_beats(localscore: np.ndarray, beats: np.ndarray, trim: bool) -> np.ndarray:
    """librosa.beat's ``__trim_beats``: frames at either end whose local score is below
    half the RMS of the smoothed beat scores lose their beat."""
    out = beats.copy()
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(5) / 4)  # numba's np.hanning(5)
    smooth = np.convolve(localscore[beats], w)[len(w) // 2 : len(localscore) + len(w) // 2]
    threshold = 0.5 * ((smooth**2).mean() ** 0.5) if trim else 0.0
    n = 0
    while n < len(localscore) and localscore[n] <= threshold:
        out[n] = False
        n += 1
    n = len(localscore) - 1
    while n >= 0 and localscore[n] <= threshold:
        out[n] = False
        n -= 1
    return out


def beat_track(*, onset_envelope: np.ndarray, sr: float, hop_length: int = 512, start_bpm: float = 120.0,
               tightness: float = 100, trim: bool = True) -> tuple[np.ndarray | float, np.ndarray]:
    """``librosa.beat.beat_track(onset_envelope=, ...)`` (Ellis 2007): tempo from the
    tempogram, then the dynamic program over frames. Returns (tempo [shape=(1,)] BPM,
    beat frames [shape=(n_beats,), int])."""
    if not onset_envelope.any():
        return 0.0, np.array([], dtype=int)
    bpm = tempo(onset_envelope=onset_envelope, sr=sr, hop_length=hop_length, start_bpm=start_bpm)
    fpb = float(np.round(float(sr) / hop_length * 60.0 / bpm)[0])
    norm = onset_envelope.std(ddof=1, axis=-1, keepdims=True)
    onsets = onset_envelope / (norm + np.finfo(onset_envelope.dtype).tiny)
    localscore = _beat_local_score(onsets, fpb)
    backlink, cumscore = _beat_track_dp(localscore, fpb, tightness)
    # the last beat: the last local max of cumscore above half the local maxima's median
    lmax = _localmax(cumscore, axis=-1)
    threshold = 0.5 * np.ma.getdata(np.ma.median(np.ma.masked_array(data=cumscore, mask=~lmax), axis=-1))
    tail = len(cumscore) - 1
    for n in range(len(cumscore) - 1, -1, -1):
        if lmax[n] and cumscore[n] >= threshold:
            tail = n
            break
    beats = np.zeros(len(onset_envelope), dtype=bool)
    n = tail
    while n >= 0:
        beats[n] = True
        n = backlink[n]
    return bpm, np.flatnonzero(_trim_beats(localscore, beats, trim))


def fftconvolve_valid(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``scipy.signal.fftconvolve(a, b, mode="valid")`` for 1-D real signals with
    len(a) >= len(b), the same FFTs (scipy.fft's, single precision for float32 input),
    without importing scipy.signal (~0.5 s in a fresh process).

    Returns np.ndarray [shape=(len(a) - len(b) + 1,)]
    """
    import scipy.fft

    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 1 or b.ndim != 1 or len(b) < 1 or len(a) < len(b):
        raise ParameterError(f"fftconvolve_valid needs 1-D signals with len(a) >= len(b) >= 1, got {a.shape}, {b.shape}")
    if len(b) == 1:  # scipy convolves along no axis then: a plain product
        return a * b
    shape = len(a) + len(b) - 1
    fshape = [scipy.fft.next_fast_len(shape, True)]
    full = scipy.fft.irfftn(scipy.fft.rfftn(a, fshape, axes=[0]) * scipy.fft.rfftn(b, fshape, axes=[0]), fshape, axes=[0])[:shape]
    n = len(a) - len(b) + 1
    start = (shape - n) // 2
    return full[start : start + n].copy()
