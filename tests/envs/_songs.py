"""Songs for the environment tests: synthetic (fast) and real 30 s slices (cached)."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np

from datasets.audio import audio_hash, load_audio
from datasets.beats import BeatGrid
from datasets.features import N_FEATURES, extract_features
from envs.env import Song
from tests.conftest import music_file


def synthetic_song(n_beats: int = 96, *, seed: int = 0, name: str = "synthetic") -> Song:
    """A 4/4 grid at 120 BPM with random feature values (for API tests, not rewards)."""
    grid = BeatGrid.from_beat_times(np.arange(n_beats) * 0.5, duration=n_beats * 0.5, beats_per_bar=4)
    values = np.random.default_rng(seed).normal(size=(grid.n_beats, N_FEATURES)).astype(np.float32)
    return Song(values=values, grid=grid, name=name)


@functools.lru_cache(maxsize=None)
def real_song(name: str, seconds: float = 30.0, *, with_audio: bool = True) -> Song:
    """The first ``seconds`` of a recording in ../shared/data/music (skips when absent)."""
    audio = load_audio(music_file(name))
    n = int(seconds * audio.sr)
    m = int(seconds * 22050)
    y = np.ascontiguousarray(audio.y[:, :n])
    audio = replace(audio, y=y, y_mono=np.ascontiguousarray(audio.y_mono[:m]), sha256=audio_hash(y, audio.sr))
    feats = extract_features(audio, stems="dsp")
    return Song.from_features(feats, audio=audio if with_audio else None, name=name)
