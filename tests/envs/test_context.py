"""Song-level context channels (envs/context.py) on a constructed song with known form."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.beats import BeatGrid
from datasets.features import N_FEATURES, feature_index
from envs.context import CONTEXT_CHANNELS, N_CONTEXT, phrase_units, song_context
from envs.env import AudioEditEnv, Song
from envs.observation import HEAD_INDEX, N_BEAT_CHANNELS, channel_index

# form: a 2-bar pickup, then 4-bar sections; verse and chorus come back, the bridge once
FORM = ("P", "V", "C", "V", "C", "B", "C")
BARS = {"P": 2, "V": 4, "C": 4, "B": 4}
LEVEL_DB = {"P": -32.0, "V": -20.0, "C": -12.0, "B": -17.0}
CHROMA = [f"chroma_{p}" for p in ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")]


def _song() -> tuple[np.ndarray, BeatGrid, list[int]]:
    rng = np.random.default_rng(0)
    # per section type: one chroma vector per bar (a chord sequence) and one timbre
    chords = {k: rng.random((4, 12)) ** 3 for k in BARS}
    timbre = {k: rng.normal(size=12) * 3 for k in BARS}
    rows, starts = [], []
    for sec in FORM:
        starts.append(len(rows))
        for bar in range(BARS[sec]):
            for _ in range(4):
                v = rng.normal(scale=0.05, size=N_FEATURES)
                v[feature_index("rms_db")] = LEVEL_DB[sec] + rng.normal(scale=0.3)
                v[[feature_index(c) for c in CHROMA]] = chords[sec][bar] + rng.normal(scale=0.02, size=12)
                v[[feature_index(f"mfcc_{k}") for k in range(1, 13)]] = timbre[sec] + rng.normal(scale=0.1, size=12)
                rows.append(v)
    n = len(rows)
    grid = BeatGrid.from_beat_times(np.arange(n) * 0.5, duration=n * 0.5, beats_per_bar=4)
    return np.asarray(rows, dtype=np.float32), grid, starts + [n]


@pytest.fixture(scope="module")
def song():
    values, grid, starts = _song()
    return values, grid, starts, song_context(values, grid)


def _unit(ctx: np.ndarray, starts: list[int], i: int, name: str) -> float:
    col = ctx[starts[i] : starts[i + 1], CONTEXT_CHANNELS.index(name)]
    assert np.ptp(col) == 0, f"{name} is not constant over unit {i}"
    return float(col[0])


def test_units_follow_the_section_changes_not_bar_zero(song):
    values, grid, starts, ctx = song
    units, change = phrase_units(values, grid)
    np.testing.assert_array_equal(units, starts)  # offset by the 2-bar pickup
    assert ctx.shape == (grid.n_beats, N_CONTEXT) and ctx.dtype == np.float32 and np.isfinite(ctx).all()
    start = ctx[:, CONTEXT_CHANNELS.index("ctx_unit_start")]
    np.testing.assert_array_equal(np.flatnonzero(start), starts[:-1])
    pos = ctx[:, CONTEXT_CHANNELS.index("ctx_unit_pos")]
    assert (pos[start == 1] == 0).all() and (pos >= 0).all() and (pos < 1).all()
    left = ctx[:, CONTEXT_CHANNELS.index("ctx_unit_left")]
    assert left[starts[1]] == 1.0 and left[starts[2] - 1] == pytest.approx(1 / 16)
    # a section start is a strong change; the pickup's start has no previous bar
    assert all(_unit(ctx, starts, i, "ctx_unit_change") > 0.5 for i in range(1, len(FORM)))


def test_loudness_ranks_within_the_song(song):
    _, _, starts, ctx = song
    loud = [_unit(ctx, starts, i, "ctx_unit_loud_pct") for i in range(len(FORM))]
    assert loud[0] == 0.0  # the pickup is the quietest unit
    assert min(loud[i] for i, s in enumerate(FORM) if s == "C") > max(loud[i] for i, s in enumerate(FORM) if s != "C")
    z = [_unit(ctx, starts, i, "ctx_unit_loud_z") for i in range(len(FORM))]
    assert z[0] < 0 < z[2]
    beat_pct = ctx[:, CONTEXT_CHANNELS.index("ctx_loud_pct")]
    assert beat_pct.min() == 0.0 and beat_pct.max() == 1.0


def test_repetition_and_order_of_material(song):
    _, _, starts, ctx = song
    u = {name: [_unit(ctx, starts, i, name) for i in range(len(FORM))] for name in CONTEXT_CHANNELS[8:15]}
    v1, c1, v2, c2, br, c3 = 1, 2, 3, 4, 5, 6
    # verse and chorus come back, bridge and pickup do not
    assert u["ctx_unit_repeat"][v1] > 0.9 and u["ctx_unit_repeat"][c1] > 0.9
    assert u["ctx_unit_repeat"][br] < 0.8 and u["ctx_unit_n_similar"][br] == 0.0
    # the second verse repeats earlier material, the first only later material
    assert u["ctx_unit_earlier_sim"][v2] > 0.9 and u["ctx_unit_earlier_sim"][v1] < 0.8
    assert u["ctx_unit_later_sim"][v1] > 0.9 and u["ctx_unit_later_sim"][c3] == 0.0
    assert u["ctx_unit_occurrence"][v1] == 0.0 and u["ctx_unit_occurrence"][v2] == pytest.approx(1 / 3)
    assert u["ctx_unit_occurrence"][c3] == pytest.approx(2 / 3)
    assert u["ctx_unit_n_similar"][c1] == pytest.approx(2 / 6)
    # verse -> chorus is a section change
    assert u["ctx_unit_prev_sim"][c1] < 0.8 and u["ctx_unit_prev_sim"][0] == 0.0
    assert u["ctx_unit_repeat_pct"][br] < u["ctx_unit_repeat_pct"][v1]


def test_tiny_and_degenerate_songs_are_finite():
    for n in (1, 3, 9):
        grid = BeatGrid.from_beat_times(np.arange(n) * 0.5, duration=n * 0.5, beats_per_bar=4)
        ctx = song_context(np.zeros((grid.n_beats, N_FEATURES), dtype=np.float32), grid)
        assert ctx.shape == (grid.n_beats, N_CONTEXT) and np.isfinite(ctx).all()


def test_observation_carries_the_context(song):
    values, grid, starts, ctx = song
    env = AudioEditEnv([Song(values=values, grid=grid, name="form")])
    obs, _ = env.reset(seed=0)
    assert obs["beats"].shape[1] == N_BEAT_CHANNELS
    cols = [channel_index(c) for c in CONTEXT_CHANNELS]
    assert cols == list(range(N_FEATURES, N_FEATURES + N_CONTEXT))
    np.testing.assert_array_equal(obs["beats"][HEAD_INDEX:, cols], ctx[: obs["beats"].shape[0] - HEAD_INDEX])
    assert not obs["beats"][:HEAD_INDEX].any()  # padding rows stay all-zero
