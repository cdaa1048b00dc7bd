import numpy as np
import pytest

from agent.duration import bar_spans, fit_duration
from datasets.beats import BeatGrid
from envs.plan import EditPlan, Ops, Segment


def _seconds(plan):
    return sum((plan.grid.bounds[s.raw_end] - plan.grid.bounds[s.raw_start]) / s.ops.time_factor for s in plan.segments)


@pytest.fixture
def plan():
    # 4/4 at 120 BPM: 0.5 s beats, 2 s bars, 64 beats = 32 s
    grid = BeatGrid.from_beat_times(np.arange(0, 32, 0.5), duration=32.0, beats_per_bar=4)
    segs = (Segment(0, 16), Segment(24, 40, Ops(gain_db=1.5)), Segment(48, 60, Ops(fade_out_s=1.0)))
    return EditPlan(segments=segs, grid=grid)


@pytest.mark.parametrize("target", [10.0, 15.0, 23.0, 27.0])
def test_lands_within_half_a_bar(plan, target):
    energy = np.linspace(0, 1, plan.grid.n_beats)
    out = fit_duration(plan, target_s=target, energy=energy, output_seconds=_seconds)
    assert abs(_seconds(out) - target) <= 1.0 + 1e-9
    # every segment still starts and ends on a bar line
    starts = {b0 for b0, _ in bar_spans(plan.grid)} | {plan.grid.n_beats}
    assert all(s.raw_start in starts and s.raw_end in starts for s in out.segments)
    out.validate()


def test_quiet_bars_go_first(plan):
    energy = np.ones(plan.grid.n_beats)
    energy[0:4] = 0.0  # the first bar is silent
    out = fit_duration(plan, target_s=_seconds(plan) - 2.0, energy=energy, output_seconds=_seconds)
    assert out.segments[0].raw_start == 4


def test_already_fitting_plan_is_unchanged(plan):
    out = fit_duration(plan, target_s=_seconds(plan) + 0.3, energy=np.ones(64), output_seconds=_seconds)
    assert out == plan.merged()


def test_runaway_repeats_are_dropped_first(plan):
    """An untrained policy once repeated one segment 250 times: fitting must undo that."""
    rep = EditPlan(segments=(Segment(0, 8),) + (Segment(8, 16, Ops(time_factor=0.5)),) * 40, grid=plan.grid)
    out = fit_duration(rep, target_s=20.0, energy=np.ones(64), output_seconds=_seconds)
    assert abs(_seconds(out) - 20.0) <= 1.0 + 1e-9


def test_a_mid_bar_fragment_grows_back_onto_bar_lines(plan):
    """A one-beat fragment (keep ratio 0.02) grows to the target by bars."""
    tiny = EditPlan(segments=(Segment(17, 18),), grid=plan.grid)
    out = fit_duration(tiny, target_s=8.0, energy=np.ones(64), output_seconds=_seconds)
    assert abs(_seconds(out) - 8.0) <= 1.0 + 1e-9
    assert len(out.segments) == 1 and out.segments[0].raw_start <= 17 and out.segments[0].raw_end >= 18
