"""The plan's one merge rule (envs.plan.merge_segments), used by ``EditPlan.merged`` and
by the renderer: the two uses differ only in reversed runs, and on purpose."""

from __future__ import annotations

import random

import numpy as np

from datasets.beats import BeatGrid
from envs.actions import ActionType as T
from envs.actions import Amount, Size
from envs.executor import execute
from envs.oracle import oracle
from envs.plan import EditPlan, Ops, Segment, merge_segments
from envs.layout import layout

N = Amount.NEUTRAL
_OPS = (Ops(), Ops(gain_db=-3.0), Ops(reversed=True), Ops(reversed=True, gain_db=-3.0),
        Ops(fade_in_s=0.5), Ops(fade_out_s=0.5))


def _grid(n: int = 40) -> BeatGrid:
    return BeatGrid.from_beat_times(np.arange(n) * 0.5, duration=n * 0.5, beats_per_bar=4, downbeat_index=0)


def _random_segments(rng: random.Random, n: int) -> list[Segment]:
    """Segments that often continue each other forward, or backward when reversed."""
    segs, h = [], rng.randrange(0, n - 10)
    for _ in range(rng.randrange(1, 8)):
        a = h if rng.random() < 0.6 else rng.randrange(0, n - 2)
        b = min(n, a + rng.randrange(1, 6))
        segs.append(Segment(a, b, rng.choice(_OPS)))
        if segs[-1].ops.reversed and rng.random() < 0.4 and a > 0:  # the raw just before it
            segs.append(Segment(max(0, a - rng.randrange(1, 4)), a, segs[-1].ops))
        h = b if rng.random() < 0.7 else max(0, a - rng.randrange(1, 6))
    return segs


def test_the_two_merges_differ_only_in_reversed_runs():
    rng = random.Random(0)
    grid = _grid()
    n_differ = 0
    for _ in range(3000):
        segs = _random_segments(rng, grid.n_beats)
        plan_rule = list(EditPlan(tuple(segs), grid).merged().segments)
        sound_rule = merge_segments(segs, reversed_runs=True)
        # every forward run is joined alike; reversed segments are never joined by merged()
        assert [s for s in plan_rule if not s.ops.reversed] == [s for s in sound_rule if not s.ops.reversed]
        assert [s for s in plan_rule if s.ops.reversed] == [s for s in segs if s.ops.reversed]
        # the renderer's rule is the plan's rule plus the backward joins of reversed runs
        assert merge_segments(plan_rule, reversed_runs=True) == sound_rule
        n_differ += plan_rule != sound_rule
    assert n_differ > 300  # the random plans do exercise the difference


def test_merged_keeps_reversed_runs_apart_so_the_oracle_rebuilds_them():
    """REVERSE BEAT [5,6), JUMP_BACK 2 beats, REVERSE BEAT [4,5) sounds like [4,6)
    reversed, and the renderer plays it as one piece; as a plan it stays two segments,
    because [4,6) is no chunk (a beat from 4 ends at 5, a bar at 8) that the oracle could
    rebuild with one REVERSE."""
    grid = _grid()
    plan = execute(grid, [(T.KEEP, Size.BAR, N), (T.CUT, Size.BEAT, N), (T.REVERSE, Size.BEAT, N),
                          (T.JUMP_BACK, Size.BEAT, Amount.NEG_LARGE), (T.REVERSE, Size.BEAT, N)])
    rev = Ops(reversed=True)
    assert plan.segments == (Segment(0, 4), Segment(5, 6, rev), Segment(4, 5, rev))
    assert merge_segments(plan.segments, reversed_runs=True) == [Segment(0, 4), Segment(4, 6, rev)]
    assert len(layout(plan, 8000).pieces) == 2  # the renderer plays [4,6) reversed as one piece
    res = oracle(plan)
    assert res.exact and res.plan == plan
    joined = EditPlan(tuple(merge_segments(plan.segments, reversed_runs=True)), grid)
    assert not oracle(joined).exact  # what the renderer's rule would make of the plan
