import numpy as np

from agent.ending import soften_ending
from datasets.beats import BeatGrid
from envs.plan import EditPlan, Ops, Segment

GRID = BeatGrid.from_beat_times(np.arange(0, 32, 0.5), duration=32.0, beats_per_bar=4)  # 2 s bars


def test_an_edit_stopping_early_fades_out_over_a_bar():
    plan = EditPlan(segments=(Segment(0, 16), Segment(24, 40)), grid=GRID)
    out = soften_ending(plan)
    assert out.segments[0] == plan.segments[0]
    assert out.segments[-1].ops.fade_out_s == 2.0


def test_short_last_segment_fades_over_half_of_it():
    out = soften_ending(EditPlan(segments=(Segment(0, 16), Segment(24, 26)), grid=GRID))
    assert out.segments[-1].ops.fade_out_s == 0.5


def test_song_ending_and_existing_fades_are_kept():
    to_end = EditPlan(segments=(Segment(0, 16), Segment(48, 64)), grid=GRID)
    assert soften_ending(to_end) == to_end
    faded = EditPlan(segments=(Segment(0, 16, Ops(fade_out_s=4.0)),), grid=GRID)
    assert soften_ending(faded) == faded
