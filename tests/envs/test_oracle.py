"""The oracle from any executor state (envs.oracle.oracle_from), what DAgger labels
off-trajectory states with: from the start it is ``oracle``; from a state on the plan's
own trajectory it finishes the plan exactly; from a state it cannot recover from it
says why and still returns allowed actions; it never touches the executor it is given."""

from __future__ import annotations

import random

import pytest

from datasets.errors import ParameterError
from envs.actions import ActionType as T
from envs.actions import Amount, Size
from envs.executor import Executor, execute
from envs.oracle import oracle, oracle_from
from envs.plan import EditPlan, Segment
from tests.envs._action_grids import waltz_grid

N = Amount.NEUTRAL


def _random_plans(grid, n: int, seed: int = 3):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        ex = Executor(grid, source_sha256="abc")
        while not ex.done:
            ex.step(*rng.choice(ex.valid_actions()))
        if ex.plan().segments:
            out.append(ex.plan())
    return out


def _state(ex: Executor) -> tuple:
    return ex.head, ex.n_steps, ex.segments(), ex.jumps_left, ex.beat_usage.tolist()


def test_from_the_start_it_is_the_oracle():
    grid = waltz_grid()
    for plan in _random_plans(grid, 30):
        a, b = oracle(plan), oracle_from(Executor(grid, source_sha256="abc"), plan)
        if a.exact:  # oracle tries a second variant only when the first is not exact
            assert (b.actions, b.plan, b.exact, b.notes) == (a.actions, a.plan, a.exact, a.notes)


def test_from_a_state_on_the_trajectory_it_finishes_the_plan():
    grid = waltz_grid()
    n_checked = 0
    for plan in _random_plans(grid, 30):
        res = oracle(plan)
        if not res.exact:
            continue
        ex = Executor(grid, source_sha256="abc")
        for act in res.actions:
            done = ex.segments()
            target = plan.merged().segments
            if done == target[: len(done)]:  # whole segments appended so far
                before = _state(ex)
                rest = EditPlan(segments=target[len(done):], grid=grid, source_sha256="abc")
                cont = oracle_from(ex, rest)
                assert _state(ex) == before  # not modified
                assert cont.exact and cont.plan == plan.merged(), cont.notes
                # the actions continue the episode from here, to the same plan
                c = ex.copy()
                for a in cont.actions:
                    c.step(*a)
                assert c.done and c.plan() == plan.merged()
                n_checked += 1
            ex.step(*act)
    assert n_checked >= 60


def test_a_state_it_cannot_recover_from_is_noted_not_raised():
    grid = waltz_grid()
    ex = Executor(grid, jump_budget=0)
    for _ in range(3):
        ex.step(T.KEEP, Size.BAR, N)  # beats [0, 11), the first unit holds the pickup
    want = EditPlan(segments=(Segment(0, 2),), grid=grid)  # behind the head, no jump left
    res = oracle_from(ex, want)
    assert not res.exact and any("jump budget" in note for note in res.notes)
    c = ex.copy()
    for a in res.actions:  # still allowed actions, ending the episode
        c.step(*a)
    assert c.done


def test_a_plan_on_another_grid_is_refused():
    with pytest.raises(ParameterError, match="oracle_from"):
        oracle_from(Executor(waltz_grid(40.0)), execute(waltz_grid(20.0), [(T.KEEP, Size.BAR, N)]))
