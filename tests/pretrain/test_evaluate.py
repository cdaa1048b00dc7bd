"""Episode metrics against a reference plan, and greedy rollouts in the env."""

from __future__ import annotations

import numpy as np
import torch

from agent.model import Policy, PolicyConfig
from envs.plan import EditPlan, Segment
from pretrain.evaluate import edit_points, plan_metrics, policy_fn, rollout
from tests.pretrain.synth import synth_pair


def _plan(grid, spans):
    return EditPlan(segments=tuple(Segment(a, b) for a, b in spans), grid=grid, source_sha256="x")


def test_plan_metrics():
    pair, _ = synth_pair(0)
    g = pair.plan.grid
    n = g.n_beats
    ref = _plan(g, [(0, 16), (32, 48)])
    same = plan_metrics(ref, ref)
    assert same == {"iou": 1.0, "keep_error": 0.0, "join_f": 1.0}
    shifted = _plan(g, [(0, 17), (33, 48)])  # edit points one beat off: still matched
    m = plan_metrics(shifted, ref)
    assert m["join_f"] == 1.0 and 0.9 < m["iou"] < 1.0
    everything = _plan(g, [(0, n)])
    m = plan_metrics(everything, ref)
    assert m["join_f"] == 0.0 and abs(m["iou"] - 32 / n) < 1e-9 and abs(m["keep_error"] - (1 - 32 / n)) < 1e-9
    assert edit_points(ref).tolist() == [16, 32, 48]


def test_rollout_of_the_label_actions_reproduces_the_plan():
    pair, song = synth_pair(3)
    acts = iter(pair.actions)
    plan = rollout(lambda obs: np.array(next(acts)), song)
    assert plan_metrics(plan, pair.plan) == {"iou": 1.0, "keep_error": 0.0, "join_f": 1.0}


def test_policy_rollout_is_legal_and_ends():
    from envs.observation import HEAD_INDEX, N_BEAT_CHANNELS, N_GLOBALS, WINDOW

    torch.manual_seed(0)
    _, song = synth_pair(4)
    model = Policy(PolicyConfig(n_channels=N_BEAT_CHANNELS, n_globals=N_GLOBALS, window=WINDOW, head_index=HEAD_INDEX, hidden=16, n_heads=2, n_layers=1))
    plan = rollout(policy_fn(model), song)
    assert plan.grid.n_beats == song.grid.n_beats
