"""Beat grids shared by the action / executor tests: real songs (tracked once per test
session) and a synthetic 3/4 grid with a pickup beat."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from datasets.beats import BeatGrid
from tests.conftest import MUSIC

#: A 54 s song with a 3-beat pickup bar, a 96 s one, and a 6 s one (12 beats).
SONGS = ("race1-jt.ogg", "freezingpoint.ogg", "lostrace-ks.ogg")


@lru_cache(maxsize=None)
def song_grid(name: str) -> BeatGrid | None:
    """Tracked grid of a real recording, or None when ../shared/data is absent."""
    path = MUSIC / name
    if not path.exists():
        return None
    from datasets.audio import ANALYSIS_SR, load_audio
    from datasets.beats import track_beats

    audio = load_audio(path)
    return track_beats(y=audio.y_mono, sr=ANALYSIS_SR, name=name)


def waltz_grid(seconds: float = 40.0) -> BeatGrid:
    """3/4 at 100 BPM, starting with a 2-beat pickup bar (a partial beat, then one full beat)."""
    times = np.arange(0.25, seconds - 0.1, 0.6)
    return BeatGrid.from_beat_times(times, duration=seconds, beats_per_bar=3, downbeat_index=1)
