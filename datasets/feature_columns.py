"""The 121 per-beat feature columns: their names, meanings and units, and how each group
is computed from the one STFT of datasets/features.py's pipeline.

Every column has a NAME; code asks for ``feature_index("rms")`` or
``features.column("chroma_C")``, never for a bare number. ``FEATURE_NAMES`` below is the
one place the columns are defined (datasets.features re-exports it). The functions with a
leading underscore are the pipeline's steps, called by datasets/features.py alone.

Columns (index: name -- meaning; units). Linear energies are of the float signal
(full-scale sine = 0.707 RMS); "dB" is 20*log10 of amplitude, floored at -100 dB.

Spectral (0-22)
  0 onset_strength      mean onset strength (log-mel spectral flux, the beat tracker's)
  1 onset_strength_max  max onset strength in the beat
  2 rms                 RMS of the samples in the beat
  3 rms_db              20*log10(rms)
  4 rms_std             std of the frame RMS within the beat (dynamics inside the beat)
  5 peak                max |sample| in the beat
  6 crest_db            peak / rms in dB (transient-ness)
  7 spectral_centroid   Hz
  8 spectral_rolloff    Hz below which 85 % of the magnitude lies
  9 spectral_bandwidth  Hz (magnitude-weighted std of frequency around the centroid)
 10 spectral_flatness   0 (tonal) .. 1 (noise), on the power spectrum
 11 spectral_flux       L2 change of the unit-sum magnitude spectrum between frames
 12 zero_crossing_rate  fraction of sign changes per sample
 13-19 contrast_0..6    spectral contrast (dB) of 7 octave bands from 200 Hz (librosa)
 20 energy_low          fraction of the beat's power below 250 Hz
 21 energy_mid          fraction between 250 Hz and 4 kHz
 22 energy_high         fraction above 4 kHz
Timbre (23-48)
 23-35 mfcc_0..12       MFCCs of the log-mel spectrogram (128 mel bands, DCT-II ortho)
 36-48 mfcc_delta_0..12 change of each MFCC per beat (centred difference over the
                        neighbouring beats, one-sided at the ends)
Harmony (49-60)
 49-60 chroma_C..chroma_B  pitch-class energy (per-frame max-normalised, beat mean)
Rhythm (61-75)
 61 tempo_bpm           the song's median tempo
 62 local_tempo_bpm     60 / median beat length over the 5 beats around this one
 63 beat_duration_s     length of this beat (first/last may be partial)
 64 ibi_ratio           this beat's length / the previous beat's (1 for the first)
 65 beat_in_bar         0 on downbeats .. beats_per_bar-1
 66 bar_phase           beat_in_bar / beats_per_bar, in [0, 1)
 67 bar_phase_sin       sin(2 pi bar_phase)
 68 bar_phase_cos       cos(2 pi bar_phase)
 69 is_downbeat         1 on the first beat of a bar
 70 beats_per_bar       meter (3 or 4)
 71 phrase_phase        position in the 4-bar phrase, in [0, 1)
 72 phrase_phase_sin
 73 phrase_phase_cos
 74 is_phrase_start     1 on the first beat of a phrase
 75 beat_salience       onset strength at the beat's start (first 3 frames, max) / the
                        song's mean onset strength: how strongly the beat is played
Stems (76-87): drums, bass, vocals, other x (rms, centroid Hz, energy ratio); the
  energy ratio is the stem's share of the four stems' power in the beat. Method
  (demucs or the DSP fallback) is recorded in ``BeatFeatures.stem_method``.
 76 stem_drums_rms .. 87 stem_other_energy_ratio
Tonal (88-95)
 88-93 tonnetz_0..5     tonal centroid (fifths, minor thirds, major thirds; x, y)
 94 key_clarity         max correlation of the beat's chroma with the 24
                        Krumhansl-Kessler key profiles
 95 chroma_change       1 - cosine similarity of chroma with the previous beat
Bands (96-102): mean power per band in dB (full-scale sine at the band ~ 0 dB)
 96 band_sub_db (20-60 Hz)  97 band_bass_db (60-250)  98 band_lowmid_db (250-500)
 99 band_mid_db (500-2k)  100 band_highmid_db (2k-4k)  101 band_presence_db (4k-6k)
102 band_brilliance_db (6k-11025)
Structure (103-120)
103 song_position       beat centre / duration, in [0, 1]
104 time_s              beat start (s)
105 time_to_end_s       duration - beat end (s)
106 song_duration_s
107 phrase_index        index of the 4-bar phrase
108 loudness_rel_song_db   rms_db - the song's median rms_db
109 loudness_rel_local_db  rms_db - mean rms_db of the beats within one bar around
110 energy_slope_db     mean rms_db of the next bar - of the previous bar (builds/drops)
111 mfcc_novelty        cosine distance of mfcc_1..12 to the previous beat
112 structure_novelty   Foote checkerboard novelty (2-bar kernel) on the beat
                        self-similarity of z-scored MFCC + chroma: section boundaries
113 repetition          max similarity of the 1-bar context starting here to any other
                        bar-long context at least one bar away (loops, choruses)
114 similarity_prev_bar     cosine similarity to the beat one bar earlier (0 if none)
115 similarity_prev_phrase  ... one phrase (4 bars) earlier (0 if none)
116 is_silent_beat      1 when rms_db < -60
117 onset_density       detected onsets per second in the beat
118 beat_fraction       beat length / the song's median beat length (partial beats < 1)
119 segment_energy_db   mean rms_db over the beat's phrase
120 timbre_distance_to_song  cosine distance of mfcc_1..12 to the song's mean
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from datasets import cache as _cache
from datasets import dsp as _dsp
from datasets import stems as _stems
from datasets.audio import ANALYSIS_SR, Audio
from datasets.beats import BARS_PER_PHRASE, HOP_LENGTH, BeatGrid
from datasets.errors import ParameterError

__all__ = ["PITCH_CLASSES", "FEATURE_GROUPS", "FEATURE_NAMES", "N_FEATURES", "BANDS_HZ", "DB_FLOOR", "feature_index",
           "FeatureConfig"]

log = logging.getLogger("datasets.features")


PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "spectral": (
        "onset_strength", "onset_strength_max", "rms", "rms_db", "rms_std", "peak", "crest_db",
        "spectral_centroid", "spectral_rolloff", "spectral_bandwidth", "spectral_flatness",
        "spectral_flux", "zero_crossing_rate",
        *(f"contrast_{i}" for i in range(7)),
        "energy_low", "energy_mid", "energy_high",
    ),
    "mfcc": tuple(f"mfcc_{i}" for i in range(13)),
    "mfcc_delta": tuple(f"mfcc_delta_{i}" for i in range(13)),
    "chroma": tuple(f"chroma_{p}" for p in PITCH_CLASSES),
    "rhythm": (
        "tempo_bpm", "local_tempo_bpm", "beat_duration_s", "ibi_ratio", "beat_in_bar", "bar_phase",
        "bar_phase_sin", "bar_phase_cos", "is_downbeat", "beats_per_bar", "phrase_phase",
        "phrase_phase_sin", "phrase_phase_cos", "is_phrase_start", "beat_salience",
    ),
    "stems": tuple(
        f"stem_{s}_{k}" for s in _stems.STEM_NAMES for k in ("rms", "centroid", "energy_ratio")
    ),
    "tonal": (*(f"tonnetz_{i}" for i in range(6)), "key_clarity", "chroma_change"),
    "bands": (
        "band_sub_db", "band_bass_db", "band_lowmid_db", "band_mid_db", "band_highmid_db",
        "band_presence_db", "band_brilliance_db",
    ),
    "structure": (
        "song_position", "time_s", "time_to_end_s", "song_duration_s", "phrase_index",
        "loudness_rel_song_db", "loudness_rel_local_db", "energy_slope_db", "mfcc_novelty",
        "structure_novelty", "repetition", "similarity_prev_bar", "similarity_prev_phrase",
        "is_silent_beat", "onset_density", "beat_fraction", "segment_energy_db",
        "timbre_distance_to_song",
    ),
}

#: The 121 column names, in column order (see the module docstring for meanings).
FEATURE_NAMES: tuple[str, ...] = tuple(n for g in FEATURE_GROUPS.values() for n in g)
N_FEATURES = 121
assert len(FEATURE_NAMES) == N_FEATURES and len(set(FEATURE_NAMES)) == N_FEATURES, len(FEATURE_NAMES)
_INDEX = {n: i for i, n in enumerate(FEATURE_NAMES)}

#: Band edges (Hz) of the band_*_db columns.
BANDS_HZ = ((20, 60), (60, 250), (250, 500), (500, 2000), (2000, 4000), (4000, 6000), (6000, ANALYSIS_SR / 2 + 1))
DB_FLOOR = -100.0


def feature_index(name: str) -> int:
    """Column of feature ``name``; ParameterError for an unknown name."""
    try:
        return _INDEX[name]
    except KeyError:
        raise ParameterError(f"unknown feature name {name!r} (see datasets.features.FEATURE_NAMES)") from None


@dataclass(frozen=True)
class FeatureConfig:
    """Analysis settings; their hash is part of every cache key."""

    sr: int = ANALYSIS_SR
    n_fft: int = _stems.N_FFT  # 93 ms: resolves semitones above ~130 Hz for chroma
    hop_length: int = HOP_LENGTH  # the beat tracker's hop, so frames line up
    n_mels: int = 128  # librosa's default, which the onset envelope also uses
    rolloff: float = 0.85
    n_contrast_bands: int = 6  # 6 bands + the residual = 7 contrast rows
    silent_db: float = -60.0


# =========================================================================== analysis
@dataclass(frozen=True)
class _Analysis:
    """Frame-level quantities from the one STFT (all [.., frames] at hop 512)."""

    S: np.ndarray  # magnitude (1 + n_fft/2, frames)
    power: np.ndarray  # S**2
    freqs: np.ndarray  # (bins,) Hz
    mel_db: np.ndarray  # (n_mels, frames)
    onset_env: np.ndarray  # (frames,)
    chroma: np.ndarray  # (12, frames)


def _mel_basis(cfg: FeatureConfig) -> np.ndarray:
    return _dsp.mel_filters(sr=cfg.sr, n_fft=cfg.n_fft, n_mels=cfg.n_mels)


def _chroma_basis(cfg: FeatureConfig, tuning: float) -> np.ndarray:
    return _dsp.chroma_filters(sr=cfg.sr, n_fft=cfg.n_fft, tuning=round(tuning, 2))


def _analyse(y: np.ndarray, cfg: FeatureConfig) -> _Analysis:
    """The one STFT and what derives from it.

    The onset envelope is computed exactly as ``datasets.beats.onset_envelope`` does
    (librosa.onset.onset_strength: 128-band mel power -> dB -> flux, median over bands)
    but from this STFT; the chroma as librosa.feature.chroma_stft, with the tuning
    estimated on every 4th frame when the song is longer than ~46 s (4x cheaper; on
    ../shared/data/music it moved the estimate by at most 0.03 semitone, while on a 6 s
    clip it moved by 0.18, hence all frames for short songs). The librosa functions run
    as datasets.dsp's bit-identical copies (no librosa/numba import in a fresh process).
    """
    D = _dsp.stft(y, n_fft=cfg.n_fft, hop_length=cfg.hop_length)
    S = np.abs(D)
    del D
    power = S * S
    mel = _mel_basis(cfg) @ power
    mel_db = _dsp.power_to_db(mel)
    onset_env = _dsp.onset_strength(S=mel_db, aggregate=np.median, n_fft=cfg.n_fft, hop_length=cfg.hop_length)
    # Pure tones or silence leave piptrack no peaks: tuning 0 is then the answer.
    step = 4 if power.shape[1] > 2000 else 1
    tuning = float(_dsp.estimate_tuning(S=power[:, ::step], sr=cfg.sr, n_fft=cfg.n_fft))
    tuning = tuning if np.isfinite(tuning) else 0.0
    raw = _chroma_basis(cfg, tuning) @ power
    chroma = _dsp.normalize(raw, norm=np.inf, axis=0)
    freqs = np.linspace(0, cfg.sr / 2, S.shape[0])
    return _Analysis(S=S, power=power, freqs=freqs, mel_db=mel_db, onset_env=onset_env, chroma=chroma)


class _BeatFrames:
    """Beat-synchronous reductions of frame features (means via cumulative sums)."""

    def __init__(self, grid: BeatGrid, n_frames: int, cfg: FeatureConfig):
        # Frame f is centred at f * hop / sr; it belongs to the beat holding its centre.
        fb = np.ceil(grid.bounds * cfg.sr / cfg.hop_length - 1e-9).astype(np.int64)
        fb = np.clip(fb, 0, n_frames)
        start, end = fb[:-1].copy(), fb[1:].copy()
        short = end <= start
        if short.any():  # beat shorter than a frame: the frame nearest its middle
            mid = 0.5 * (grid.bounds[:-1] + grid.bounds[1:])
            near = np.clip(np.round(mid * cfg.sr / cfg.hop_length).astype(np.int64), 0, n_frames - 1)
            start[short], end[short] = near[short], near[short] + 1
        self.start, self.end = start, end
        self.count = (end - start).astype(np.float64)

    def sum(self, X: np.ndarray) -> np.ndarray:
        """X [shape=(..., frames)] -> [shape=(..., n_beats)] sums over each beat's frames."""
        X = np.asarray(X, dtype=np.float64)
        cs = np.concatenate([np.zeros(X.shape[:-1] + (1,)), np.cumsum(X, axis=-1)], axis=-1)
        return cs[..., self.end] - cs[..., self.start]

    def mean(self, X: np.ndarray) -> np.ndarray:
        return self.sum(X) / self.count

    def std(self, x: np.ndarray) -> np.ndarray:
        m = self.mean(x)
        return np.sqrt(np.maximum(self.mean(np.asarray(x, np.float64) ** 2) - m * m, 0.0))

    def max(self, x: np.ndarray) -> np.ndarray:
        return np.array([x[s:e].max() for s, e in zip(self.start, self.end)], dtype=np.float64)


def _db(a: np.ndarray) -> np.ndarray:
    """Amplitude -> dB, floored at DB_FLOOR."""
    return np.maximum(20.0 * np.log10(np.maximum(a, 1e-12)), DB_FLOOR)


def _frame_rms(power: np.ndarray, n_fft: int) -> np.ndarray:
    """Frame RMS from a power spectrogram |X|^2 (Parseval, as librosa.feature.rms(S=))."""
    p = 2.0 * power.sum(axis=0, dtype=np.float64) - power[0] - (power[-1] if n_fft % 2 == 0 else 0.0)
    return np.sqrt(np.maximum(p, 0.0) / n_fft**2)


def _moments(S: np.ndarray, freqs: np.ndarray, order: int = 2) -> np.ndarray:
    """Magnitude sum and frequency moments sum(S), sum(f S), ... per frame
    [shape=(order + 1, frames), float64], from one float32 matrix product (converting the
    spectrogram itself to float64 would cost more than the product)."""
    W = np.stack([freqs**k for k in range(order + 1)]).astype(np.float32)
    return (W @ S).astype(np.float64)


def _centroid(S: np.ndarray, freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centroid Hz, magnitude sum) per frame; centroid 0 where the frame is silent."""
    tot, first = _moments(S, freqs, order=1)
    return np.where(tot > 0, first / np.where(tot > 0, tot, 1.0), 0.0), tot


def _zero_crossing_rate(y: np.ndarray, n_frames: int, cfg: FeatureConfig) -> np.ndarray:
    """Fraction of sign changes per sample in the n_fft-long window centred on each frame
    (librosa's definition: |y| <= 1e-10 counts as 0, and 0 as positive), from one
    cumulative sum instead of a framed copy of the signal."""
    neg = y < -1e-10
    cs = np.zeros(len(y), dtype=np.int32)  # [0, running count of sign changes]: exact counts
    np.cumsum(neg[1:] != neg[:-1], dtype=np.int32, out=cs[1:])
    centre = np.arange(n_frames) * cfg.hop_length
    lo = np.clip(centre - cfg.n_fft // 2, 0, len(cs) - 1)
    hi = np.clip(centre + cfg.n_fft // 2, 0, len(cs) - 1)
    return (cs[hi] - cs[lo]) / float(cfg.n_fft)


# =========================================================================== features
def _spectral(a: _Analysis, y: np.ndarray, grid: BeatGrid, bf: _BeatFrames, cfg: FeatureConfig) -> dict:
    S, power, freqs = a.S, a.power, a.freqs
    out: dict[str, np.ndarray] = {}
    out["onset_strength"] = bf.mean(a.onset_env)
    out["onset_strength_max"] = bf.max(a.onset_env)
    # Loudness on the samples themselves: exact, and independent of frame alignment.
    sb = np.clip(np.round(grid.bounds * cfg.sr).astype(np.int64), 0, len(y))
    sb[-1] = len(y)
    s0, s1 = sb[:-1], np.maximum(sb[1:], sb[:-1] + 1)
    s0 = np.minimum(s0, len(y) - 1)
    s1 = np.minimum(np.maximum(s1, s0 + 1), len(y))
    # [0, running sum of float64 y^2], built in one array (a 3-minute song: 32 MB, not 128)
    cs = np.empty(len(y) + 1)
    cs[0] = 0.0
    np.square(y, dtype=np.float64, out=cs[1:])
    np.cumsum(cs[1:], out=cs[1:])
    rms = np.sqrt(np.maximum(cs[s1] - cs[s0], 0.0) / (s1 - s0))
    peak = np.maximum.reduceat(np.abs(y), s0) if len(y) else np.zeros(len(s0))
    # reduceat over [s0[i], s0[i+1]) equals [s0, s1) because beats tile the signal.
    out["rms"] = rms
    out["rms_db"] = _db(rms)
    out["rms_std"] = bf.std(_frame_rms(power, cfg.n_fft))
    out["peak"] = peak.astype(np.float64)
    out["crest_db"] = np.where(rms > 1e-9, _db(peak) - _db(rms), 0.0)

    # Centroid and bandwidth from the first two moments of one matrix product.
    tot, first, second = _moments(S, freqs, order=2)
    safe = np.where(tot > 0, tot, 1.0)
    centroid = np.where(tot > 0, first / safe, 0.0)
    bandwidth = np.sqrt(np.maximum(second / safe - centroid * centroid, 0.0))
    cum = np.cumsum(S, axis=0)
    idx = np.minimum((cum < (cfg.rolloff * tot[None, :]).astype(np.float32)).sum(axis=0), len(freqs) - 1)
    rolloff = np.where(tot > 0, freqs[idx], 0.0)
    pw = np.maximum(power, np.float32(1e-10))  # librosa's amin for flatness
    pw_mean = np.mean(pw, axis=0, dtype=np.float64)
    flatness = np.exp(np.mean(np.log(pw, out=pw), axis=0, dtype=np.float64)) / pw_mean  # log in place
    del pw
    # Flux of unit-sum spectra u_t = S_t / sum(S_t): |u_t - u_t-1|^2 expanded into norms and
    # one dot product per frame pair, so no (bins, frames) temporaries are built.
    norm2 = power.sum(axis=0, dtype=np.float64) / (safe * safe)
    cross = np.einsum("ft,ft->t", S[:, 1:], S[:, :-1]).astype(np.float64) / (safe[1:] * safe[:-1])
    flux = np.r_[0.0, np.sqrt(np.maximum(norm2[1:] + norm2[:-1] - 2.0 * cross, 0.0))]
    zcr = _zero_crossing_rate(y, S.shape[1], cfg)
    # Contrast: the sorted-quantile peak/valley per octave band (librosa's definition).
    contrast = _dsp.spectral_contrast(S=S, sr=cfg.sr, n_fft=cfg.n_fft, n_bands=cfg.n_contrast_bands)
    out["spectral_centroid"] = bf.mean(centroid)
    out["spectral_rolloff"] = bf.mean(rolloff)
    out["spectral_bandwidth"] = bf.mean(bandwidth)
    out["spectral_flatness"] = bf.mean(flatness)
    out["spectral_flux"] = bf.mean(flux)
    out["zero_crossing_rate"] = bf.mean(zcr)
    for i, row in enumerate(bf.mean(contrast)):
        out[f"contrast_{i}"] = row

    # Band powers: one matrix product with 0/1 band masks over the bins.
    edges3 = ((0.0, 250.0), (250.0, 4000.0), (4000.0, cfg.sr / 2 + 1))
    masks = np.array([(freqs >= lo) & (freqs < hi) for lo, hi in (*edges3, *BANDS_HZ)], dtype=np.float64)
    band_pow = bf.sum(masks @ power)  # (10, n_beats), summed over frames
    total = band_pow[:3].sum(axis=0)
    for name, row in zip(("energy_low", "energy_mid", "energy_high"), band_pow[:3]):
        out[name] = np.where(total > 0, row / np.where(total > 0, total, 1.0), 0.0)
    # Scale so a full-scale sine (peak 1) in a band reads about 0 dB: |X| = n_fft/4
    # for a Hann window, i.e. power (n_fft/4)^2 per frame.
    ref = (cfg.n_fft / 4.0) ** 2
    mean_pow = band_pow[3:] / bf.count / ref
    for name, row in zip(FEATURE_GROUPS["bands"], mean_pow):
        out[name] = np.maximum(10.0 * np.log10(np.maximum(row, 1e-30)), DB_FLOOR)
    return out


def _timbre_harmony(a: _Analysis, bf: _BeatFrames) -> dict:
    out: dict[str, np.ndarray] = {}
    mfcc_frames = _dsp.mfcc(S=a.mel_db, n_mfcc=13)
    mfcc = bf.mean(mfcc_frames)  # (13, n_beats)
    delta = np.gradient(mfcc, axis=1) if mfcc.shape[1] > 1 else np.zeros_like(mfcc)
    chroma = bf.mean(a.chroma)  # (12, n_beats)
    for i in range(13):
        out[f"mfcc_{i}"] = mfcc[i]
        out[f"mfcc_delta_{i}"] = delta[i]
    for i, p in enumerate(PITCH_CLASSES):
        out[f"chroma_{p}"] = chroma[i]
    tonnetz = _dsp.tonnetz(chroma=chroma) if chroma.any() else np.zeros((6, chroma.shape[1]))
    for i in range(6):
        out[f"tonnetz_{i}"] = np.nan_to_num(tonnetz[i])
    out["key_clarity"] = _key_clarity(chroma)
    out["chroma_change"] = np.r_[0.0, 1.0 - _cos_rows(chroma[:, 1:].T, chroma[:, :-1].T)]
    return out


#: Krumhansl-Kessler key profiles (major, minor), starting at the tonic.
_KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def _key_clarity(chroma: np.ndarray) -> np.ndarray:
    """Max Pearson correlation of each beat's chroma with the 24 key profiles."""
    prof = np.stack([np.roll(p, k) for p in (_KK_MAJOR, _KK_MINOR) for k in range(12)])  # (24, 12)
    prof = (prof - prof.mean(1, keepdims=True)) / prof.std(1, keepdims=True)
    c = chroma - chroma.mean(0, keepdims=True)
    sd = c.std(0)
    r = (prof @ c) / 12.0 / np.where(sd > 1e-9, sd, 1.0)
    return np.where(sd > 1e-9, r.max(0), 0.0)


def _cos_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity; 0 where either row is zero."""
    na, nb = np.linalg.norm(A, axis=-1), np.linalg.norm(B, axis=-1)
    d = na * nb
    return np.where(d > 1e-12, np.sum(A * B, axis=-1) / np.where(d > 1e-12, d, 1.0), 0.0)


def _rhythm(a: _Analysis, grid: BeatGrid, bf: _BeatFrames) -> dict:
    n, bpb = grid.n_beats, grid.beats_per_bar
    d = np.diff(grid.bounds)
    # Partial first/last beats would fake a tempo change: use the neighbour's length.
    d_full = d.copy()
    if n >= 3:
        d_full[0], d_full[-1] = d[1], d[-2]
    local = np.array([np.median(d_full[max(0, i - 2) : i + 3]) for i in range(n)])
    phase = grid.beat_in_bar / bpb
    phrase_pos = (np.mod(grid.bar, BARS_PER_PHRASE) * bpb + grid.beat_in_bar) / (BARS_PER_PHRASE * bpb)
    env_mean = float(a.onset_env.mean()) if len(a.onset_env) else 0.0
    head = np.array([a.onset_env[s : min(s + 3, len(a.onset_env))].max() for s in bf.start])
    return {
        "tempo_bpm": np.full(n, grid.tempo),
        "local_tempo_bpm": 60.0 / local,
        "beat_duration_s": d,
        "ibi_ratio": np.r_[1.0, d_full[1:] / d_full[:-1]],
        "beat_in_bar": grid.beat_in_bar.astype(np.float64),
        "bar_phase": phase,
        "bar_phase_sin": np.sin(2 * np.pi * phase),
        "bar_phase_cos": np.cos(2 * np.pi * phase),
        "is_downbeat": grid.is_downbeat.astype(np.float64),
        "beats_per_bar": np.full(n, float(bpb)),
        "phrase_phase": phrase_pos,
        "phrase_phase_sin": np.sin(2 * np.pi * phrase_pos),
        "phrase_phase_cos": np.cos(2 * np.pi * phrase_pos),
        "is_phrase_start": (grid.is_downbeat & (np.mod(grid.bar, BARS_PER_PHRASE) == 0)).astype(np.float64),
        "beat_salience": head / env_mean if env_mean > 0 else np.zeros(n),
    }


def _structure(a: _Analysis, grid: BeatGrid, bf: _BeatFrames, f: dict, cfg: FeatureConfig) -> dict:
    n, bpb = grid.n_beats, grid.beats_per_bar
    b, dur = grid.bounds, grid.duration
    d = np.diff(b)
    rms_db = f["rms_db"]
    mfcc = np.stack([f[f"mfcc_{i}"] for i in range(1, 13)], axis=1)  # (n, 12), no loudness
    chroma = np.stack([f[f"chroma_{p}"] for p in PITCH_CLASSES], axis=1)
    # z-scored timbre + harmony per beat for self-similarity
    X = np.concatenate([mfcc, chroma], axis=1)
    X = (X - X.mean(0)) / np.where(X.std(0) > 1e-9, X.std(0), 1.0)
    Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-9)
    # Nothing below builds the full (n, n) similarity matrix: an hour-long rehearsal has
    # ~8000 beats, and 8000^2 doubles are half a gigabyte per matrix.

    def window_mean(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
        cs = np.r_[0.0, np.cumsum(x)]
        i = np.arange(n)
        s, e = np.clip(i + lo, 0, n), np.clip(i + hi, 0, n)
        cnt = e - s
        return np.where(cnt > 0, (cs[e] - cs[s]) / np.maximum(cnt, 1), np.nan)

    local = window_mean(rms_db, -bpb, bpb + 1)
    nxt, prv = window_mean(rms_db, 1, bpb + 1), window_mean(rms_db, -bpb, 0)
    slope = np.where(np.isnan(nxt) | np.isnan(prv), 0.0, np.nan_to_num(nxt) - np.nan_to_num(prv))

    # Foote novelty: Gaussian-tapered checkerboard kernel of half-width L beats, applied
    # along the diagonal of the self-similarity (beats outside the song count as 0).
    L = 2 * bpb
    g = np.exp(-0.5 * ((np.arange(-L, L) + 0.5) / (0.5 * L)) ** 2)
    sign = np.sign(np.arange(-L, L) + 0.5)
    K = np.outer(g * sign, g * sign)
    K /= np.abs(K).sum()
    Xp = np.pad(Xn, ((L, L), (0, 0)))
    novelty = np.array([np.sum((Xp[i : i + 2 * L] @ Xp[i : i + 2 * L].T) * K) for i in range(n)])

    # Repetition: bar-long contexts (beats i .. i+bpb-1, zero-padded at the end), compared
    # with every context at least one bar away, in row blocks.
    ctx = np.concatenate([np.pad(Xn, ((0, bpb), (0, 0)))[k : k + n] for k in range(bpb)], axis=1)
    ctx = ctx / np.maximum(np.linalg.norm(ctx, axis=1, keepdims=True), 1e-9)
    repetition = np.zeros(n)
    cols = np.arange(n)
    for r0 in range(0, n, 512):
        rows = np.arange(r0, min(n, r0 + 512))
        sim = ctx[rows] @ ctx.T
        far = np.abs(rows[:, None] - cols[None, :]) >= bpb
        has = far.any(1)
        repetition[rows] = np.where(has, np.where(far, sim, -1.0).max(1), 0.0)

    def lag_sim(lag: int) -> np.ndarray:
        out = np.zeros(n)
        if lag < n:
            out[lag:] = np.einsum("ij,ij->i", Xn[lag:], Xn[:-lag])
        return out

    env = a.onset_env
    peaks = _dsp.peak_pick(
        env, pre_max=3, post_max=3, pre_avg=3, post_avg=5, delta=0.07 * (env.max() if len(env) else 0), wait=3
    ) if len(env) > 10 and env.max() > 0 else np.array([], dtype=int)
    counts = np.histogram(_dsp.frames_to_time(peaks, sr=cfg.sr, hop_length=cfg.hop_length), bins=b)[0]
    phrase = grid.phrase
    seg = np.zeros(n)
    for p in np.unique(phrase):
        sel = phrase == p
        seg[sel] = rms_db[sel].mean()
    mean_mfcc = mfcc.mean(0, keepdims=True)
    return {
        "song_position": 0.5 * (b[:-1] + b[1:]) / dur,
        "time_s": b[:-1].copy(),
        "time_to_end_s": dur - b[1:],
        "song_duration_s": np.full(n, dur),
        "phrase_index": phrase.astype(np.float64),
        "loudness_rel_song_db": rms_db - np.median(rms_db),
        "loudness_rel_local_db": rms_db - local,
        "energy_slope_db": slope,
        "mfcc_novelty": np.r_[0.0, 1.0 - _cos_rows(mfcc[1:], mfcc[:-1])],
        "structure_novelty": novelty,
        "repetition": repetition,
        "similarity_prev_bar": lag_sim(bpb),
        "similarity_prev_phrase": lag_sim(BARS_PER_PHRASE * bpb),
        "is_silent_beat": (rms_db < cfg.silent_db).astype(np.float64),
        "onset_density": counts / d,
        "beat_fraction": d / np.median(d),
        "segment_energy_db": seg,
        "timbre_distance_to_song": 1.0 - _cos_rows(mfcc, np.repeat(mean_mfcc, n, axis=0)),
    }


# =========================================================================== stems
def _stem_frame_features(
    a: _Analysis, audio: Audio, label: str, net: Any, cfg: FeatureConfig, use_cache: bool
) -> np.ndarray:
    """Per-frame (rms, centroid, power) of each stem [shape=(4, 3, frames)], cached.

    Grid-independent, so a new grid re-uses the (possibly minutes-long) separation.
    DSP: the masks apply to the shared STFT; demucs: one STFT per separated stem.
    """
    n_frames = a.S.shape[1]
    key = _cache.make_key("stemframes", audio_sha256=audio.sha256, config={**asdict(cfg), "stems": label})
    if use_cache:
        hit = _cache.load_arrays(
            key,
            required=("frames",),
            validate=lambda z: None if z["frames"].shape == (4, 3, n_frames) and np.isfinite(z["frames"]).all()
            else f"frames shape {z['frames'].shape}, expected {(4, 3, n_frames)}",
        )
        if hit is not None:
            return hit["frames"]
    if net is None:  # one mask at a time: mask * S, as the stacked product was, stem by stem
        S_c = np.ascontiguousarray(a.S)  # C order like the masks: 4x faster products, same values
        mags = (np.multiply(m, S_c, out=m) for m in _stems.dsp_mask_iter(S=a.S, sr=cfg.sr, n_fft=cfg.n_fft))
    else:
        wav = _stems.stem_waveforms(audio, label=label, net=net)
        # C order, as the stacked array was: the layout decides the BLAS products' last bits
        mags = (np.ascontiguousarray(np.abs(_dsp.stft(w, n_fft=cfg.n_fft, hop_length=cfg.hop_length)))[:, :n_frames] for w in wav)
    out = np.zeros((4, 3, n_frames), dtype=np.float32)
    for k, Sk in enumerate(mags):
        Pk = Sk * Sk
        out[k, 0] = _frame_rms(Pk, cfg.n_fft)
        out[k, 1] = _centroid(Sk, a.freqs)[0]
        out[k, 2] = Pk.sum(axis=0, dtype=np.float64)
        del Sk, Pk  # before the next mask is made: two [bins, frames] arrays fewer at the peak
    if use_cache:
        _cache.save_arrays(key, {"frames": out})
    return out


def _stem_beats(frames: np.ndarray, bf: _BeatFrames) -> dict:
    out: dict[str, np.ndarray] = {}
    energy = bf.sum(frames[:, 2])  # (4, n_beats)
    total = energy.sum(axis=0)
    for k, s in enumerate(_stems.STEM_NAMES):
        # Centroid weighted by the stem's energy per frame, so silent frames don't pull it to 0.
        w = bf.sum(frames[k, 1] * frames[k, 2])
        out[f"stem_{s}_rms"] = bf.mean(frames[k, 0])
        out[f"stem_{s}_centroid"] = np.where(energy[k] > 0, w / np.where(energy[k] > 0, energy[k], 1.0), 0.0)
        out[f"stem_{s}_energy_ratio"] = np.where(total > 0, energy[k] / np.where(total > 0, total, 1.0), 0.0)
    return out
