"""The action executor (envs.executor: Executor / execute) and its inverse (envs.oracle: oracle_actions):
semantics of each action on real and synthetic grids, masks, budgets, the step cap and
the round trips actions -> plan -> actions -> plan."""

from __future__ import annotations

import random

import numpy as np
import pytest

from datasets.errors import ParameterError
from envs import actions as A
from envs.actions import ActionType as T
from envs.actions import Amount, Size
from envs.executor import Executor, execute
from envs.oracle import oracle, oracle_actions
from envs.plan import EditPlan, Ops, Segment
from tests.envs._action_grids import SONGS, song_grid, waltz_grid

N = Amount.NEUTRAL


def _real(name: str = "race1-jt.ogg"):
    grid = song_grid(name)
    if grid is None:
        pytest.skip("real music not available (../shared/data is absent)")
    return grid


def _bar_span(grid, bar: int) -> tuple[int, int]:
    """Beats of the executor's BAR unit holding bar ``bar`` (a pickup or last piece
    shorter than a bar shares its neighbour's unit)."""
    ids = grid.unit_ids(1)
    idx = np.flatnonzero(ids == ids[np.flatnonzero(grid.bar == bar)[0]])
    return int(idx[0]), int(idx[-1]) + 1


def _go_to(ex: Executor, beat: int) -> None:
    """KEEP beats until the head is at ``beat``."""
    while ex.head < beat:
        ex.step(T.KEEP, Size.BEAT, N)


# ---- sizes -------------------------------------------------------------------------------
def test_sizes_are_grid_aligned_units():
    grid = waltz_grid()  # 3/4, bar 0 is a 2-beat pickup
    ex = Executor(grid)
    tab = ex._tab
    assert tab.end[Size.BEAT][0] == 1
    assert tab.end[Size.BAR][0] == 5  # the pickup, shorter than a bar, joins the first bar
    assert tab.end[Size.BAR][2] == 5  # a whole 3-beat bar from a downbeat
    assert tab.end[Size.BAR][3] == 5  # mid-bar: to the next downbeat
    # TWO_BARS = bar // 2, PHRASE = bar // 4, TWO_PHRASES = bar // 8, each a run of beats,
    # away from the pickup
    for s, k in ((Size.TWO_BARS, 2), (Size.PHRASE, 4), (Size.TWO_PHRASES, 8)):
        assert tab.end[s][0] == tab.end[s][2]
        for h in range(2, grid.n_beats):
            e = tab.end[s][h]
            assert np.all(grid.bar[h:e] // k == grid.bar[h] // k)
            assert e == grid.n_beats or grid.bar[e] // k != grid.bar[h] // k or grid.n_beats - e < 3
    # the last chunk is clipped to the end, never past it
    assert all(tab.end[s][grid.n_beats - 1] == grid.n_beats for s in range(5))


def test_keep_all_gives_one_segment():
    grid = _real()
    rng = random.Random(0)
    ex = Executor(grid, source_sha256="x")
    while not ex.done:
        sizes = np.flatnonzero(ex.masks().size[T.KEEP])
        ex.step(T.KEEP, int(rng.choice(sizes)), N)
    plan = ex.plan()
    assert plan.segments == (Segment(0, grid.n_beats),)
    assert plan.keep_ratio == 1.0 and plan.source_sha256 == "x"
    assert np.all(ex.beat_usage == 1) and ex.out_beats == grid.n_beats
    assert ex.out_seconds == pytest.approx(grid.duration)


def test_cut_one_bar_removes_exactly_that_bar():
    grid = _real()
    b0, b1 = _bar_span(grid, 5)
    ex = Executor(grid)
    _go_to(ex, b0)
    ex.step(T.CUT, Size.BAR, N)
    assert ex.head == b1
    while not ex.done:
        ex.step(T.KEEP, int(np.flatnonzero(ex.masks().size[T.KEEP])[-1]), N)
    plan = ex.plan()
    assert plan.segments == (Segment(0, b0), Segment(b1, grid.n_beats))
    assert np.array_equal(np.flatnonzero(ex.beat_usage == 0), np.arange(b0, b1))
    assert np.array_equal(np.flatnonzero(ex.beat_cut), np.arange(b0, b1))
    removed = grid.bounds[b1] - grid.bounds[b0]
    assert ex.out_seconds == pytest.approx(grid.duration - removed)


def test_loop_x2_duplicates_the_chunk():
    grid = _real()
    b0, b1 = _bar_span(grid, 3)
    ex = Executor(grid)
    _go_to(ex, b0)
    ex.step(T.LOOP, Size.BAR, Amount.NEUTRAL)
    assert ex.head == b1 and ex.n_loops == 1
    assert ex.segments()[-2:] == (Segment(b0, b1), Segment(b0, b1))
    assert np.all(ex.beat_usage[b0:b1] == 2)
    ex.step(T.LOOP, Size.BAR, Amount.POS_LARGE)  # x4
    b2 = _bar_span(grid, 4)[1]
    assert ex.segments()[-4:] == (Segment(b1, b2),) * 4


def test_jump_back_replays_the_right_beats():
    grid = _real()
    b0 = _bar_span(grid, 6)[0]
    ex = Executor(grid)
    _go_to(ex, b0)
    ex.step(T.JUMP_BACK, Size.BAR, Amount.NEG_LARGE)  # 2 bars back, 8 beats in 4/4
    assert ex.head == _bar_span(grid, 4)[0] == b0 - 2 * grid.beats_per_bar
    ex.step(T.KEEP, Size.TWO_BARS, N)
    assert ex.head == b0
    assert ex.plan().segments == (Segment(0, b0), Segment(b0 - 8, b0))
    assert np.all(ex.beat_usage[b0 - 8 : b0] == 2) and ex.n_jumps == 1
    # from the middle of a bar, one unit back is the start of that bar
    ex.step(T.KEEP, Size.BEAT, N)
    ex.step(T.JUMP_BACK, Size.BAR, Amount.NEG_SMALL)
    assert ex.head == b0
    # JUMP_BACK in 3/4: a bar is 3 beats
    w = waltz_grid()
    ex = Executor(w)
    _go_to(ex, 8)  # downbeat of bar 3
    ex.step(T.JUMP_BACK, Size.BAR, Amount.NEG_LARGE)
    assert ex.head == 0  # bar 1 starts with the 2-beat pickup it absorbs


def test_swap_next_swaps_and_reorder_rotates():
    grid = _real()
    c = [_bar_span(grid, b) for b in (2, 3, 4)]
    ex = Executor(grid)
    _go_to(ex, c[0][0])
    ex.step(T.SWAP_NEXT, Size.BAR, N)
    assert ex.head == c[1][1]
    assert ex.segments()[-2:] == (Segment(*c[1]), Segment(*c[0]))
    ex = Executor(grid)
    _go_to(ex, c[0][0])
    ex.step(T.REORDER, Size.BAR, N)
    assert ex.head == c[2][1]
    assert ex.segments()[-2:] == (Segment(c[1][0], c[2][1]), Segment(*c[0]))


def test_repeat_prev_repeats_with_its_treatment_and_skip_drops_chunks():
    grid = waltz_grid()
    ex = Executor(grid)
    ex.step(T.GAIN, Size.BAR, Amount.NEG_LARGE)
    ex.step(T.REPEAT_PREV, Size.BEAT, N)
    assert ex.head == 5  # the 2-beat pickup and bar 1 are one unit
    assert ex.segments() == (Segment(0, 5, Ops(gain_db=-3.0)),) * 2
    ex.step(T.SKIP, Size.BAR, Amount.POS_SMALL)  # 3 bars of 3 beats
    assert ex.head == 14 and np.all(ex.beat_cut[5:14] == 1) and ex.n_cuts == 1


def test_treatments_follow_the_table():
    grid = waltz_grid()
    tr = {
        (T.GAIN, Amount.POS_SMALL): Ops(gain_db=1.5),
        (T.EQ_LOW, Amount.POS_LARGE): Ops(eq_low_db=6.0),
        (T.EQ_HIGH, Amount.NEG_SMALL): Ops(eq_high_db=-3.0),
        (T.DISTORTION, Amount.POS_LARGE): Ops(distortion=A.DISTORTION_DB[Amount.POS_LARGE]),
        (T.REVERB, Amount.POS_SMALL): Ops(reverb=A.REVERB_WET[Amount.POS_SMALL]),
        (T.DOUBLE_TIME, N): Ops(time_factor=2.0),
        (T.HALF_TIME, N): Ops(time_factor=0.5),
        (T.REVERSE, N): Ops(reversed=True),
    }
    for (t, a), ops in tr.items():
        ex = Executor(grid)
        ex.step(t, Size.BAR, a)
        assert ex.segments() == (Segment(0, 5, ops),), t
    ex = Executor(grid)
    ex.step(T.KEEP, Size.BAR, N)
    ex.step(T.FADE_OUT, Size.BAR, Amount.NEUTRAL)  # half of a 3-beat bar
    (seg,) = ex.segments()[1:]
    assert seg.ops.fade_out_s == pytest.approx(0.5 * (grid.bounds[8] - grid.bounds[5]))
    ex.step(T.FADE_IN, Size.BEAT, Amount.POS_LARGE)
    assert ex.segments()[-1].ops.fade_in_s == pytest.approx(grid.bounds[9] - grid.bounds[8])
    assert ex.step(T.HALF_TIME, Size.BEAT, N).n_appended == 1
    assert ex.out_seconds == pytest.approx(grid.bounds[9] + 2 * (grid.bounds[10] - grid.bounds[9]))


# ---- masks, budgets, termination ---------------------------------------------------------
@pytest.mark.parametrize("name", SONGS)
def test_masks_always_leave_a_valid_action_and_refuse_masked_ones(name):
    grid = _real(name)
    rng = random.Random(3)
    ex = Executor(grid)
    for _ in range(20):
        ex.reset()
        while not ex.done:
            m = ex.masks()
            acts = ex.valid_actions()
            assert acts and m.type[T.KEEP] and m.size[T.KEEP, Size.BEAT]
            # a masked one raises and changes nothing
            t = rng.randrange(18)
            bad = [(t, s, a) for s in range(5) for a in range(5) if (t, s, a) not in set(acts)]
            if bad:
                head, n = ex.head, ex.n_steps
                with pytest.raises(ParameterError, match="masked"):
                    ex.step(*rng.choice(bad))
                assert (ex.head, ex.n_steps) == (head, n)
            ex.step(*rng.choice(acts))
        assert not ex.masks().type.any() and ex.valid_actions() == ()
        assert ex.plan().segments, "an episode that ends at the song's end keeps something"


def test_cut_to_the_end_is_masked_while_nothing_is_kept():
    grid = waltz_grid()
    ex = Executor(grid)
    while ex.head < grid.n_beats - 1:
        ex.step(T.CUT, Size.BEAT, N)
    assert not ex.masks().type[T.CUT] and not ex.masks().type[T.SKIP]
    ex.step(T.KEEP, Size.BEAT, N)
    assert ex.done and ex.plan().segments == (Segment(grid.n_beats - 1, grid.n_beats),)


def test_jump_and_loop_budgets_mask_when_spent():
    grid = waltz_grid()
    ex = Executor(grid, jump_budget=2, loop_budget=1)
    _go_to(ex, 8)
    for _ in range(2):
        assert ex.masks().type[T.JUMP_BACK]
        ex.step(T.JUMP_BACK, Size.BEAT, Amount.NEG_SMALL)
    assert ex.jumps_left == 0 and not ex.masks().type[T.JUMP_BACK]
    ex.step(T.LOOP, Size.BEAT, N)
    assert not ex.masks().type[T.LOOP] and not ex.masks().type[T.REPEAT_PREV]


def test_step_cap_terminates():
    grid = waltz_grid()
    ex = Executor(grid, max_steps=10)
    ex.step(T.KEEP, Size.BEAT, N)
    while not ex.done:
        ex.step(T.REPEAT_PREV, Size.BEAT, N)  # never advances
    assert ex.n_steps == 10 and ex.head == 1
    with pytest.raises(ParameterError, match="done"):
        ex.step(T.KEEP, Size.BEAT, N)
    # the default cap also ends an episode that never advances
    ex = Executor(grid, jump_budget=10**6)
    ex.step(T.KEEP, Size.BAR, N)
    while not ex.done:
        ex.step(T.JUMP_BACK, Size.BEAT, Amount.NEG_SMALL) if ex.head else ex.step(T.KEEP, Size.BEAT, N)
    assert ex.n_steps == A.default_max_steps(grid.n_beats)


def test_execute_names_the_bad_action():
    with pytest.raises(ParameterError, match="action 1"):
        execute(waltz_grid(), [(T.KEEP, Size.BAR, N), (T.KEEP, Size.BAR, Amount.POS_LARGE)])


def test_merged_never_joins_reversed_segments():
    grid = waltz_grid()
    plan = execute(grid, [(T.REVERSE, Size.BAR, N), (T.REVERSE, Size.BAR, N), (T.GAIN, Size.BAR, 0), (T.GAIN, Size.BAR, 0)])
    assert plan.segments == (
        Segment(0, 5, Ops(reversed=True)),  # the pickup joins bar 1
        Segment(5, 8, Ops(reversed=True)),
        Segment(5 + 3, 14, Ops(gain_db=-3.0)),
    )


# ---- round trips -------------------------------------------------------------------------
def _random_episode(grid, rng, **kw):
    ex = Executor(grid, source_sha256="abc", **kw)
    acts = []
    while not ex.done:
        a = rng.choice(ex.valid_actions())
        ex.step(*a)
        acts.append(a)
    return acts, ex.plan()


@pytest.mark.parametrize("name", SONGS + ("waltz",))
def test_round_trips_on_random_episodes(name):
    grid = waltz_grid() if name == "waltz" else _real(name)
    rng = random.Random(11)
    n_exact = 0
    for _ in range(60):
        acts, plan = _random_episode(grid, rng)
        # actions -> execute -> plan
        assert execute(grid, acts, source_sha256="abc") == plan
        if not plan.segments:
            continue  # the step cap ended an episode that kept nothing
        # plan -> JSON -> plan -> oracle -> execute -> the same (merged) plan
        again = oracle_actions(EditPlan.from_json(plan.to_json()))
        assert execute(grid, again, source_sha256="abc") == plan.merged() == plan
        # the oracle's own episode ends (its last cuts reach the end of the song)
        ex = Executor(grid)
        for a in again:
            ex.step(*a)
        assert ex.done
        n_exact += 1
    assert n_exact >= 50


def test_oracle_uses_loop_swap_repeat_and_jump_labels():
    grid = _real()
    bars = [_bar_span(grid, b) for b in range(12)]
    seg = lambda a, b, **o: Segment(a, b, Ops(**o))  # noqa: E731
    cases = {
        # keep bar 2 twice: LOOP x2
        T.LOOP: [seg(0, bars[2][1]), seg(*bars[2]), seg(bars[3][0], grid.n_beats)],
        # bars 3 and 2 swapped
        T.SWAP_NEXT: [seg(0, bars[2][0]), seg(*bars[3]), seg(*bars[2]), seg(bars[4][0], grid.n_beats)],
        # a treated chunk twice
        T.REPEAT_PREV: [seg(0, bars[2][0]), seg(*bars[2], gain_db=3.0), seg(*bars[2], gain_db=3.0)],
        # back from bar 8 to bar 1
        T.JUMP_BACK: [seg(0, bars[8][0]), seg(bars[1][0], bars[3][0])],
    }
    for t, segs in cases.items():
        plan = EditPlan(segments=tuple(segs), grid=grid)
        acts = oracle_actions(plan)
        assert t in [x[0] for x in acts], t
        assert execute(grid, acts) == plan.merged()


@pytest.mark.parametrize("kw", [dict(jump_budget=0), dict(jump_budget=3, loop_budget=1)])
def test_round_trips_with_small_budgets(kw):
    grid = waltz_grid()
    rng = random.Random(5)
    for _ in range(60):
        acts, plan = _random_episode(grid, rng, **kw)
        if plan.segments:
            assert execute(grid, oracle_actions(plan, **kw), source_sha256="abc", **kw) == plan


def test_oracle_ends_with_the_actions_that_append_behind_the_end():
    # REORDER / SWAP_NEXT / LOOP as the last action append material after a span that
    # reaches the song's end; the oracle must find them (no other action can)
    grid = _real()
    last_bar = int(grid.unit_ids(1)[-1])  # the last BAR unit's bar
    for t, bar, amount in ((T.REORDER, last_bar - 2, N), (T.SWAP_NEXT, last_bar - 1, N), (T.LOOP, last_bar, Amount.POS_LARGE)):
        ex = Executor(grid)
        _go_to(ex, _bar_span(grid, bar - 1)[0])
        ex.step(T.KEEP, Size.BAR, N)
        # the largest allowed size reaches the end (the last bar may be a single beat)
        ex.step(t, Size.BAR if t != T.LOOP else int(np.flatnonzero(ex.masks().size[t])[-1]), amount)
        assert ex.done
        acts = oracle_actions(ex.plan())
        assert acts[-1][0] == t
        assert execute(grid, acts) == ex.plan()


def test_oracle_flags_plans_the_vocabulary_cannot_express():
    grid = waltz_grid()
    plan = EditPlan(segments=(Segment(0, 5, Ops(gain_db=2.0, eq_low_db=4.0)), Segment(8, 14)), grid=grid)
    with pytest.raises(ParameterError, match="not expressible"):
        oracle_actions(plan)
    res = oracle(plan)
    assert not res.exact and res.notes
    # the closest: the span kept with the strongest single treatment, the rest exact
    assert res.plan.segments[-1] == Segment(8, 14)
    assert [s.raw_start for s in res.plan.segments][0] == 0
    assert oracle_actions(plan, strict=False) == list(res.actions)
    # a fade that is no chunk fraction
    plan = EditPlan(segments=(Segment(0, 5, Ops(fade_in_s=0.123)),), grid=grid)
    assert not oracle(plan).exact
    # more jumps back than the budget allows
    plan = EditPlan(segments=(Segment(20, 30), Segment(0, 3), Segment(20, 30), Segment(0, 3)), grid=grid)
    assert oracle(plan).exact
    res = oracle(plan, jump_budget=1)
    assert not res.exact and any("jump" in n for n in res.notes)


def test_output_length_cap_masks_repeats():
    """REPEAT_PREV / LOOP / JUMP_BACK stop once the output reaches 1.5x the raw."""
    import numpy as np

    from datasets.beats import BeatGrid
    from envs.actions import ActionType, Amount, Size
    from envs.executor import Executor

    grid = BeatGrid.from_beat_times(np.arange(0, 32, 0.5), duration=32.0, beats_per_bar=4)
    ex = Executor(grid)
    ex.step(int(ActionType.KEEP), int(Size.PHRASE), int(Amount.NEUTRAL))  # 8 s kept
    repeats = 0
    while ex.masks().type[int(ActionType.REPEAT_PREV)]:
        ex.step(int(ActionType.REPEAT_PREV), int(Size.BEAT), int(Amount.NEUTRAL))
        repeats += 1
    assert ex.out_seconds >= 1.5 * grid.duration
    assert repeats == 5  # 8 s + 5 x 8 s = 48 s = 1.5 x 32 s
    m = ex.masks()
    assert not m.type[int(ActionType.LOOP)] and not m.type[int(ActionType.JUMP_BACK)]
    assert m.type[int(ActionType.KEEP)] and m.type[int(ActionType.CUT)]
