"""The DAgger expert (pretrain/dagger.py): exact on the label trajectory, valid and
target-seeking from any state; DAgger data collection and training rounds."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.beats import BeatGrid
from envs.executor import Executor, execute
from envs.oracle import oracle_actions
from envs.plan import EditPlan, Ops, Segment
from pretrain.dagger import (
    _flipped,
    collect_dagger,
    expert_action,
    expert_rollout,
)
from pretrain.dataset import build_bc_data, refine_actions
from pretrain.train import PretrainConfig, train_dagger
from tests.pretrain.synth import synth_corpus

KEEP, CUT, SKIP, GAIN, FADE_OUT, JUMP = 0, 1, 5, 8, 7, 4


def _grid(n_bars: int = 26, beats_per_bar: int = 4, pickup: int = 1) -> BeatGrid:
    """A grid whose bar 0 is a pickup, so phrase lines are not every 16th beat."""
    n = n_bars * beats_per_bar + pickup
    return BeatGrid.from_beat_times(np.arange(n) * 0.5, duration=n * 0.5, beats_per_bar=beats_per_bar,
                                    downbeat_index=pickup)


def _random_plan(seed: int, grid: BeatGrid) -> EditPlan:
    """A plan made by random persona-like actions: KEEP / CUT / SKIP / GAIN runs, now and
    then a JUMP_BACK + GAIN repeat (extended), a fade-out at the end (tight, radio)."""
    rng = np.random.default_rng(seed)
    ex = Executor(grid, source_sha256=f"s{seed}")
    while not ex.done:
        m = ex.masks()
        left = ex.n_beats - ex.head
        if left <= 8 and ex._segs and m.type[FADE_OUT]:
            sizes = np.flatnonzero(m.size[FADE_OUT])
            ex.step(FADE_OUT, int(sizes[-1]), 3)
            continue
        r = rng.random()
        if r < 0.07 and m.type[JUMP] and ex.head > 16:
            ex.step(JUMP, int(np.flatnonzero(m.size[JUMP])[-1]), 0)
            s = int(np.flatnonzero(m.size[GAIN])[0]) if ex.masks().type[GAIN] else None
            if s is not None:
                ex.step(GAIN, int(np.flatnonzero(ex.masks().size[GAIN])[-1]), 3)
            continue
        t = KEEP if r < 0.55 else CUT if r < 0.85 else SKIP if m.type[SKIP] else CUT
        if not m.type[t]:
            t = KEEP
        sizes = np.flatnonzero(m.size[t])
        a = 4 if t == SKIP else 2
        ex.step(t, int(rng.choice(sizes)), a if m.amount[t, a] else int(np.flatnonzero(m.amount[t])[0]))
    return ex.plan()


def _expressible_plans(n: int):
    grid = _grid()
    out = []
    seed = 0
    while len(out) < n:
        p = _random_plan(seed, grid)
        seed += 1
        if p.segments and execute(grid, oracle_actions(p, strict=False), source_sha256=p.source_sha256) == p.merged():
            out.append(p)
    return out


PLANS = _expressible_plans(12)


@pytest.mark.parametrize("max_size", [None, 1, 2])
def test_expert_reproduces_the_refined_oracle_on_the_label_trajectory(max_size):
    repeats = 0
    for plan in PLANS:
        acts = oracle_actions(plan)
        labels = tuple(acts) if max_size is None else refine_actions(plan, acts, max_size=max_size)
        ex = Executor(plan.grid, source_sha256=plan.source_sha256)
        got = expert_rollout(ex, plan, max_size=max_size)
        assert tuple(got) == tuple(labels)
        assert ex.plan() == plan.merged()
        repeats += any(t == JUMP for t, _, _ in acts)
    assert repeats >= 2  # the corpus of plans does exercise jump-back repeats


def test_expert_is_valid_and_returns_to_the_target_after_deviations():
    rng = np.random.default_rng(7)
    n_checked = 0
    for plan in PLANS:
        used_ref = plan.raw_beats_used > 0
        for _ in range(4):
            ex = Executor(plan.grid, source_sha256=plan.source_sha256)
            n_dev = int(rng.integers(1, 5))
            last_dev_head = 0
            while not ex.done:
                if n_dev and rng.random() < 0.2:
                    va = [v for v in ex.valid_actions() if v[0] in (KEEP, CUT, SKIP)]
                    ex.step(*va[rng.integers(len(va))])
                    n_dev -= 1
                    last_dev_head = ex.head
                    continue
                act = expert_action(ex, plan)
                m = ex.masks()
                assert m.type[act[0]] and m.size[act[0], act[1]] and m.amount[act[0], act[2]]
                ex.step(*act)
            if any(s.raw_start < s2.raw_end and s2.raw_start < s.raw_end and s is not s2
                   for s in plan.segments for s2 in plan.segments):
                continue  # a plan with repeats: only the validity is checked
            # after the last deviation, the raw beats played are exactly the target's
            used = ex.plan().raw_beats_used > 0 if ex.plan().segments else np.zeros_like(used_ref)
            assert np.array_equal(used[last_dev_head:], used_ref[last_dev_head:])
            n_checked += 1
    assert n_checked >= 10


def test_kept_unit_the_target_cut_keeps_the_targets_later_decisions():
    grid = _grid(n_bars=16, pickup=0)  # 64 beats, phrases [0,16) [16,32) [32,48) [48,64)
    plan = EditPlan(segments=(Segment(0, 16), Segment(32, 40), Segment(48, 64, Ops(gain_db=3.0))), grid=grid, source_sha256="x")
    ex = Executor(grid, source_sha256="x")
    ex.step(KEEP, 3, 2)  # [0, 16) as the target
    ex.step(KEEP, 3, 2)  # [16, 32): the target cuts it
    assert expert_action(ex, plan) == (KEEP, 1, 2)  # the target keeps [32, 40): a bar at a time
    expert_rollout(ex, plan)
    assert ex.plan().segments == (Segment(0, 40), Segment(48, 64, Ops(gain_db=3.0)))
    # the target's segment the policy cut is not fetched back
    ex = Executor(grid, source_sha256="x")
    ex.step(CUT, 3, 2)
    assert expert_action(ex, plan)[0] in (CUT, SKIP)
    expert_rollout(ex, plan)
    assert ex.plan().segments == (Segment(32, 40), Segment(48, 64, Ops(gain_db=3.0)))


def test_expert_after_the_episode_raises():
    plan = PLANS[0]
    ex = Executor(plan.grid, source_sha256=plan.source_sha256)
    expert_rollout(ex, plan)
    with pytest.raises(ValueError):
        expert_action(ex, plan)


def test_collect_labels_off_trajectory_states_with_the_expert():
    pairs, songs = synth_corpus([0, 1, 2])
    keep_all = lambda obs: np.array([KEEP, 1, 2])
    extra = collect_dagger(keep_all, pairs, songs, target_keep=0.5, refine_max_size=1)
    assert extra is not None and len(extra) > 0
    # no state of the label trajectories, and labels are allowed by the recorded masks
    t, s, a = extra.actions.T
    i = np.arange(len(extra))
    assert extra.type_mask[i, t].all() and extra.size_mask[i, t, s].all() and extra.amount_mask[i, t, a].all()
    base = build_bc_data(pairs, songs=songs, target_keep=0.5, refine_max_size=1)
    assert len(extra) < len(base) + sum(p.plan.grid.n_beats for p in pairs)
    # the policy that follows its labels is never off-trajectory: nothing to add
    follow = {p.name: list(refine_actions(p.plan, p.actions, max_size=1)) for p in pairs}
    for p in pairs:
        acts = iter(follow[p.name])
        assert collect_dagger(lambda obs, acts=acts: np.array(next(acts)), [p], songs, target_keep=0.5, refine_max_size=1) is None
    # a keep-all policy on songs whose plans cut: some labels are cuts
    assert (t == CUT).any() or (t == SKIP).any()


def test_flips_take_a_label_following_policy_off_its_trajectory():
    pairs, songs = synth_corpus([0, 1, 2])

    def follower(p):
        acts = iter(refine_actions(p.plan, p.actions, max_size=1))
        return lambda obs: np.array(next(acts, (KEEP, 0, 2)))

    for p in pairs:  # without flips it never leaves the trajectory (see above); with flips it does
        extra = collect_dagger(follower(p), [p], songs, target_keep=0.5, refine_max_size=1, flip_prob=0.3, seed=3)
        assert extra is not None and len(extra) > 0
        t, s, a = extra.actions.T
        i = np.arange(len(extra))
        assert extra.type_mask[i, t].all() and extra.size_mask[i, t, s].all() and extra.amount_mask[i, t, a].all()
    ex = Executor(pairs[0].plan.grid)
    assert _flipped(ex, (KEEP, 3, 2)) == (CUT, 3, 2)
    assert _flipped(ex, (CUT, 1, 2)) == (KEEP, 1, 2)
    assert _flipped(ex, (GAIN, 1, 3)) is None
    with pytest.raises(ValueError):
        collect_dagger(lambda obs: np.array([KEEP, 0, 2]), pairs, songs, target_keep=0.5, flip_prob=1.0)


def test_train_dagger_rounds_continue_the_run(tmp_path):
    pairs, songs = synth_corpus([0, 1, 2, 3])
    data = build_bc_data(pairs, songs=songs, target_keep=0.5, refine_max_size=1)
    cfg = PretrainConfig(run="d", runs_dir=str(tmp_path), epochs=2, dagger_rounds=2, dagger_epochs=1, restart=True,
                         threads=1, hidden=16, n_heads=2, n_layers=1, val_fraction=0.25)
    seen = []
    summary = train_dagger(cfg, data, pairs, songs=songs, target_keep=0.5, on_round=lambda r, sm: seen.append((r, sm["epoch"])))
    assert seen == [(0, 1), (1, 2), (2, 3)]
    assert len(summary["dagger_samples"]) == 2
    assert summary["n_train"] >= int(0.5 * len(data))
    with pytest.raises(ValueError):
        train_dagger(PretrainConfig(run="e", runs_dir=str(tmp_path), dagger_rounds=-1), data, pairs, songs=songs, target_keep=0.5)
