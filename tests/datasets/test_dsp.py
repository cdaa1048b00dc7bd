"""datasets.dsp reproduces librosa 0.11 bit for bit on real recordings.

The feature pipeline runs datasets.dsp instead of librosa (a fresh process then skips
~3 s of librosa/numba imports and JIT, issue 17); the cached features, the beat grids
and every label depend on those numbers staying what they were. Each function is
compared with ``np.array_equal`` (same dtype, same shape, same bits).
"""

from __future__ import annotations

import numpy as np
import pytest

from datasets import dsp
from datasets.audio import ANALYSIS_SR as SR
from datasets.audio import load_audio
from tests.conftest import music_file

librosa = pytest.importorskip("librosa")


def _same(a, b) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    assert np.array_equal(a, b), f"max difference {np.max(np.abs(a.astype(float) - b.astype(float)))}"


@pytest.fixture(scope="module", params=["race1-jt.ogg", "raceintro-ks.ogg"])
def y(request) -> np.ndarray:
    """A 54 s song and a 6 s clip (short clips take other branches: tuning on every
    frame, partial beat windows at both ends)."""
    return load_audio(music_file(request.param)).y_mono


def test_window_and_stft(y):
    import scipy.signal

    for n in (2048, 344):
        _same(dsp.hann(n), scipy.signal.get_window("hann", n, fftbins=True))
    _same(dsp.stft(y, n_fft=2048, hop_length=512), librosa.stft(y, n_fft=2048, hop_length=512))
    odd = y[: len(y) - 77]  # a length that is no multiple of the hop
    _same(dsp.stft(odd, n_fft=2048, hop_length=512), librosa.stft(odd, n_fft=2048, hop_length=512))


def test_filters():
    _same(dsp.mel_filters(sr=SR, n_fft=2048, n_mels=128), librosa.filters.mel(sr=SR, n_fft=2048, n_mels=128))
    _same(dsp.mel_filters(sr=SR, n_fft=2048, n_mels=48, fmin=60.0, fmax=8000.0),
          librosa.filters.mel(sr=SR, n_fft=2048, n_mels=48, fmin=60.0, fmax=8000.0))
    _same(dsp.mel_filters(sr=SR, n_fft=2048, n_mels=128, norm=None), librosa.filters.mel(sr=SR, n_fft=2048, n_mels=128, norm=None))
    for tuning in (0.0, -0.13, 0.3):
        _same(dsp.chroma_filters(sr=SR, n_fft=2048, tuning=tuning), librosa.filters.chroma(sr=SR, n_fft=2048, tuning=tuning))


def test_spectral_features(y):
    S = np.abs(dsp.stft(y))
    P = S * S
    mel_db = dsp.power_to_db(dsp.mel_filters(sr=SR, n_fft=2048) @ P)
    _same(mel_db, librosa.power_to_db(dsp.mel_filters(sr=SR, n_fft=2048) @ P))
    for agg, rows in ((np.median, slice(None)), (np.mean, slice(0, 16))):
        _same(dsp.onset_strength(S=mel_db[rows], aggregate=agg),
              librosa.onset.onset_strength(S=mel_db[rows], sr=SR, hop_length=512, aggregate=agg))
    for step in (1, 4):
        _same(dsp.estimate_tuning(S=P[:, ::step], sr=SR, n_fft=2048), librosa.estimate_tuning(S=P[:, ::step], sr=SR, n_fft=2048))
    raw = dsp.chroma_filters(sr=SR, n_fft=2048) @ P
    chroma = dsp.normalize(raw, norm=np.inf, axis=0)
    _same(chroma, librosa.util.normalize(raw, norm=np.inf, axis=0))
    _same(dsp.spectral_contrast(S=S, sr=SR, n_fft=2048), librosa.feature.spectral_contrast(S=S, sr=SR, n_fft=2048, n_bands=6))
    _same(dsp.mfcc(S=mel_db, n_mfcc=13), librosa.feature.mfcc(S=mel_db, n_mfcc=13))
    beats = chroma[:, ::20].astype(np.float64)
    _same(dsp.tonnetz(chroma=beats), librosa.feature.tonnetz(chroma=beats))


def test_peaks_tempo_beats(y):
    S = np.abs(dsp.stft(y))
    env = dsp.onset_strength(S=dsp.power_to_db(dsp.mel_filters(sr=SR, n_fft=2048) @ (S * S)))
    kw = dict(pre_max=3, post_max=3, pre_avg=3, post_avg=5, delta=0.07 * env.max(), wait=3)
    _same(dsp.peak_pick(env, **kw), librosa.util.peak_pick(env, **kw))
    _same(dsp.tempo(onset_envelope=env, sr=SR), librosa.feature.tempo(onset_envelope=env, sr=SR, hop_length=512))
    for bpm, tight in ((120.0, 100), (90.0, 400)):
        ours = dsp.beat_track(onset_envelope=env, sr=SR, start_bpm=bpm, tightness=tight)
        ref = librosa.beat.beat_track(onset_envelope=env, sr=SR, hop_length=512, start_bpm=bpm, tightness=tight, trim=True)
        _same(ours[0], ref[0])
        _same(ours[1], ref[1])
    t = dsp.frames_to_time(ref[1], sr=SR)
    _same(t, librosa.frames_to_time(ref[1], sr=SR, hop_length=512))
    frames = dsp.time_to_frames(t, sr=SR)
    _same(frames, librosa.time_to_frames(t, sr=SR, hop_length=512))
    chroma = dsp.normalize(dsp.chroma_filters(sr=SR, n_fft=2048) @ (S * S), norm=np.inf, axis=0)
    _same(dsp.sync(chroma, frames, aggregate=np.median), librosa.util.sync(chroma, frames, aggregate=np.median))


def test_beat_tracker_on_silence_and_a_click_track():
    assert dsp.beat_track(onset_envelope=np.zeros(500, np.float32), sr=SR)[1].size == 0
    env = np.zeros(2000, np.float32)
    env[::22] = 1.0  # a click every 22 frames: 117.5 BPM
    ours = dsp.beat_track(onset_envelope=env, sr=SR)
    _same(ours[1], librosa.beat.beat_track(onset_envelope=env, sr=SR, hop_length=512)[1])
    assert np.all(np.diff(ours[1]) == 22)


def test_fftconvolve_valid_is_scipys(y):
    import scipy.signal

    rng = np.random.default_rng(0)
    seg = y[len(y) // 2 : len(y) // 2 + 4 * SR]  # the aligner's offset refinement: 4 s against 4 s + 2 x 768
    ref = y[len(y) // 2 - 768 : len(y) // 2 + 4 * SR + 768]
    _same(dsp.fftconvolve_valid(ref, seg[::-1]), scipy.signal.fftconvolve(ref, seg[::-1], mode="valid"))
    for n, m in ((1000, 17), (300, 1)):
        a, b = rng.standard_normal(n), rng.standard_normal(m)
        _same(dsp.fftconvolve_valid(a, b), scipy.signal.fftconvolve(a, b, mode="valid"))
