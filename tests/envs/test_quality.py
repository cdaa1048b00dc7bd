"""Click detector and energy consistency at joins, on real music."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.audio import load_audio
from datasets.beats import BeatGrid
from envs.plan import EditPlan, Ops, Segment
from envs.quality import click_scores, detect_clicks, energy_consistency
from envs.render import render
from envs.reward import local_join_quality
from tests.conftest import music_file


@pytest.fixture(scope="module")
def song():
    a = load_audio(music_file("spunkyrace-ks.ogg"))  # drums with hi-hats throughout
    y = np.ascontiguousarray(a.y[:, 20 * a.sr : 60 * a.sr])
    dur = y.shape[1] / a.sr
    grid = BeatGrid.from_beat_times(np.arange(0.2, dur - 0.1, 0.47), duration=dur, beats_per_bar=4)
    return y, a.sr, grid


def _random_plan(grid, rng, n_segs=20, effects=False):
    segs = []
    for k in range(n_segs):
        a = int(rng.integers(0, grid.n_beats - 6))
        ops = Ops()
        if effects and k % 3 == 1:
            ops = [Ops(gain_db=-3), Ops(eq_low_db=4), Ops(reversed=True), Ops(time_factor=2.0), Ops(distortion=12)][k % 5]
        segs.append(Segment(a, a + int(rng.integers(2, 6)), ops))
    return EditPlan(tuple(segs), grid, "")


def _naive(y, sr, grid, plan):
    """Concatenate the segments' raw spans with no crossfade; return (audio, join positions)."""
    b = grid.samples(sr)
    parts = [y[:, b[s.raw_start] : b[s.raw_end]] for s in plan.segments]
    return np.concatenate(parts, axis=1), np.cumsum([p.shape[1] for p in parts])[:-1]


def test_naive_cuts_are_flagged_and_rendered_cuts_pass(song):
    y, sr, grid = song
    plan = _random_plan(grid, np.random.default_rng(0))
    naive, pos = _naive(y, sr, grid, plan)
    # judge only cuts that really jump: a naive cut where both sides happen to meet is silent
    jump = np.abs(naive[:, pos] - naive[:, pos - 1]).max(axis=0)
    loud = pos[jump > 0.05]
    assert len(loud) >= 10
    flagged = {c.position for c in detect_clicks(y=naive, sr=sr, positions=loud)}
    assert len(flagged) >= 0.9 * len(loud)

    res = render(y=y, sr=sr, plan=plan)
    assert len(res.cut_positions) >= 15
    assert detect_clicks(y=res.y, sr=sr, positions=res.cut_positions) == []


def test_unedited_music_has_no_clicks_on_its_beats(song):
    y, sr, grid = song
    beats = grid.samples(sr)[5:-5:3]
    assert len(detect_clicks(y=y, sr=sr, positions=beats)) <= 1


def test_one_hard_step_in_a_sine_and_in_silence():
    sr = 44100
    t = np.arange(sr) / sr
    x = np.sin(2 * np.pi * 200 * t).astype(np.float32)
    x[sr // 2 :] = np.roll(x, 37)[sr // 2 :]  # phase jump mid-waveform
    assert len(detect_clicks(y=x, sr=sr, positions=[sr // 2])) == 1
    smooth = np.sin(2 * np.pi * 200 * t).astype(np.float32)
    assert detect_clicks(y=smooth, sr=sr, positions=[sr // 2]) == []
    silence = np.zeros(sr, np.float32)
    assert detect_clicks(y=silence, sr=sr, positions=[sr // 2]) == []
    step = silence.copy()
    step[sr // 2 :] = 0.3
    assert len(detect_clicks(y=step, sr=sr, positions=[sr // 2])) == 1
    # too close to the edge to judge: score 0, never a click
    scores, _ = click_scores(y=x, sr=sr, positions=[10])
    assert scores[0] == 0.0


def test_energy_consistency_measures_level_steps():
    sr = 22050
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(sr)).astype(np.float32)
    x[sr // 2 :] *= 2.0
    jump = energy_consistency(y=x, sr=sr, positions=[sr // 2, sr // 4])
    assert jump[0] == pytest.approx(20 * np.log10(2.0), abs=0.5)
    assert abs(jump[1]) < 0.5


def test_local_quality_agrees_with_the_full_render(song):
    y, sr, grid = song
    plan = _random_plan(grid, np.random.default_rng(3), n_segs=15, effects=True)
    res = render(y=y, sr=sr, plan=plan, limit=False)
    q = local_join_quality(y=y, sr=sr, plan=plan)
    assert np.array_equal(q.positions, res.cut_positions)
    assert q.clicks == () and q.click_fraction == 0.0
    full, _ = click_scores(y=res.y, sr=sr, positions=res.cut_positions)
    assert np.all(q.scores < 3.0) and np.all(full < 3.0)
    full_jumps = energy_consistency(y=res.y, sr=sr, positions=res.cut_positions, window_ms=45, gap_ms=5)
    close = np.abs(q.energy_jumps_db - full_jumps) < 1.0
    assert close.mean() >= 0.8  # time-stretched sides differ in detail, not in level

    # the same spans cut naively: the local check of a 0 ms crossfade plan flags clicks
    hard = local_join_quality(y=y, sr=sr, plan=plan, crossfade_ms=0.0)
    assert len(hard.clicks) >= 3


def test_time_stretched_and_reversed_joins_pass(song):
    """Regression: the stretcher's flush-out used to fall inside the crossfade (a click)."""
    y, sr, grid = song
    rng = np.random.default_rng(7)
    segs = []
    for k in range(16):
        a = int(rng.integers(0, grid.n_beats - 6))
        ops = (Ops(time_factor=2.0), Ops(time_factor=0.5), Ops(reversed=True), Ops(time_factor=1.5, reversed=True))[k % 4]
        segs.append(Segment(a, a + int(rng.integers(2, 6)), ops))
    plan = EditPlan(tuple(segs), grid, "")
    res = render(y=y, sr=sr, plan=plan)
    scores, _ = click_scores(y=res.y, sr=sr, positions=res.cut_positions)
    assert len(scores) == 15 and scores.max() < 3.0
