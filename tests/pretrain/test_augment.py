"""Augmentations keep timing (so plans stay valid) and get their own cache identity."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.audio import ANALYSIS_SR, Audio, audio_hash, resample, to_mono
from datasets.errors import ParameterError
from pretrain.augment import IDENTITY, Augmentation, augment_audio, random_augmentations
from tests.conftest import click_track


def _audio(seconds=4.0, sr=44100):
    y, times = click_track(bpm=120, seconds=seconds, sr=sr)
    y2 = np.stack([y, y]) * 0.5
    return Audio(path="click.wav", y=y2, sr=sr, y_mono=resample(to_mono(y2), sr_in=sr, sr_out=ANALYSIS_SR),
                 sha256=audio_hash(y2, sr), is_silent=False), times


def _onsets(y, sr):
    env = np.abs(y).max(0)
    frame = int(0.005 * sr)
    e = env[: len(env) // frame * frame].reshape(-1, frame).max(1)
    return np.flatnonzero((e[1:] > 0.3 * e.max()) & (e[:-1] <= 0.3 * e.max())) * 0.005


@pytest.mark.parametrize("aug", [Augmentation(pitch_semitones=2.0), Augmentation(pitch_semitones=-2.0, tilt_db=4.0),
                                 Augmentation(snr_db=30.0, gain_db=-6.0, seed=3)])
def test_timing_unchanged(aug):
    a, times = _audio()
    b = augment_audio(a, aug)
    assert b.y.shape == a.y.shape and b.sr == a.sr
    assert np.isfinite(b.y).all() and np.abs(b.y).max() <= 1.0
    assert not np.allclose(b.y, a.y)
    on_a, on_b = _onsets(a.y, a.sr), _onsets(b.y, b.sr)
    assert len(on_a) >= len(times) - 1
    # every click is still where it was (within 2 detection frames of 5 ms)
    assert len(on_b) == len(on_a) and np.abs(on_b - on_a).max() <= 0.0101


def test_identity_and_cache_key():
    a, _ = _audio(2.0)
    assert augment_audio(a, IDENTITY) is a
    aug = Augmentation(snr_db=25.0, seed=1)
    b1, b2 = augment_audio(a, aug), augment_audio(a, aug)
    assert b1.sha256 == b2.sha256 != a.sha256  # deterministic, and a new cache identity
    np.testing.assert_array_equal(b1.y, b2.y)
    assert augment_audio(a, Augmentation(snr_db=25.0, seed=2)).sha256 != b1.sha256
    assert "#aug=" in b1.path
    augs = random_augmentations(3, seed=0)
    assert len({x.key() for x in augs}) == 3 and all(abs(x.pitch_semitones) <= 2 for x in augs)
    with pytest.raises(ParameterError, match="pitch"):
        Augmentation(pitch_semitones=3.0)
