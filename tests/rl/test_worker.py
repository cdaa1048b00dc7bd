"""rl/worker.py's N rollout workers (issue 18): each owns its block of the envs and its
seeds, the learner gets their rollouts in worker order, and a run is deterministic for a
given number of workers; Ray actors give the same run as forked processes."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch

from datasets.errors import ParameterError
from rl.ppo import PPOConfig, epoch_seeds, train
from rl.rollout import collect_rollout, make_vector_env
from rl.worker import RolloutPool, merge_results, split_envs, worker_sample_seed
from tests.rl.tiny import TinyMaskedEnv, TinyPolicy

FAST = dict(lr=1e-2, update_epochs=4, minibatch_size=64, grad_accum=2, ent_coef=0.05, ent_coef_final=0.0,
            target_kl=None, anchor="none")


def _run(monkeypatch, **kw):
    """2 epochs of PPO with 2 rollout workers on 4 tiny envs: (history, final weights)."""
    torch.manual_seed(0)
    policy = TinyPolicy()
    cfg = PPOConfig(seed=1, epochs=2, steps=16, n_envs=4, rollout_workers=2, **{**FAST, **kw})
    hist = list(train(cfg, policy=policy, env_fns=[TinyMaskedEnv] * 4))
    return hist, {k: v.clone() for k, v in policy.state_dict().items()}


def test_split_envs_gives_every_worker_a_contiguous_block():
    assert split_envs(4, 2) == [range(0, 2), range(2, 4)]
    assert split_envs(5, 2) == [range(0, 3), range(3, 5)]
    blocks = split_envs(16, 3)
    assert sorted(i for b in blocks for i in b) == list(range(16)) and [len(b) for b in blocks] == [6, 5, 5]
    seeds = {worker_sample_seed(123, k) for k in range(64)}
    assert len(seeds) == 64 and worker_sample_seed(123, 0) == 123


def test_each_worker_collects_its_own_envs_with_its_own_seeds():
    # the pool's rollout is, worker by worker, what collect_rollout gives on that
    # worker's block of envs, reset with its block of seeds, sampling with its own seed
    torch.manual_seed(0)
    policy = TinyPolicy()
    seeds, sample = [11, 11, 12, 13, 14], 99
    pool = RolloutPool(lambda idx: make_vector_env([TinyMaskedEnv] * len(idx)), policy, n_envs=5, workers=2, steps=6)
    try:
        pool.request(policy.state_dict(), seeds, sample)
        got = pool.result()
    finally:
        pool.close()
    parts = []
    for k, block in enumerate(split_envs(5, 2)):
        envs = make_vector_env([TinyMaskedEnv] * len(block))
        obs, _ = envs.reset(seed=[seeds[i] for i in block])
        gen = torch.Generator().manual_seed(worker_sample_seed(sample, k))
        parts.append(collect_rollout(envs, policy, obs=obs, steps=6, generator=gen))
        envs.close()
    ro = got.rollout
    assert torch.equal(ro.actions, torch.cat([p.actions for p in parts]))
    assert torch.equal(ro.rewards, torch.cat([p.rewards for p in parts]))
    assert ro.env_steps == sum(p.env_steps for p in parts) and len(ro.episodes) == sum(len(p.episodes) for p in parts)
    # episode ids stay unique across workers, and every transition's id names one of the episodes
    ids = [e["id"] for e in ro.episodes]
    assert len(set(ids)) == len(ids) and set(ro.episode_ids.tolist()) <= set(ids)
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]


def test_merge_keeps_worker_order_and_offsets_episode_ids():
    torch.manual_seed(0)
    policy = TinyPolicy()
    outs = []
    for seed in (1, 2):
        envs = make_vector_env([lambda: TinyMaskedEnv(episode_len=3)] * 2)
        obs, _ = envs.reset(seed=[seed, seed + 10])
        outs.append(collect_rollout(envs, policy, obs=obs, steps=3, generator=torch.Generator().manual_seed(seed)))
        envs.close()
    from rl.worker import RolloutResult

    m = merge_results([RolloutResult(o, None, 1.0, 2.0, 3.0) for o in outs]).rollout
    a, b = outs
    assert torch.equal(m.actions[: len(a)], a.actions) and torch.equal(m.actions[len(a):], b.actions)
    assert m.episode_ids[: len(a)].tolist() == a.episode_ids.tolist()
    assert m.episode_ids[len(a):].min() > a.episode_ids.max()


def test_ppo_with_two_rollout_workers_runs_two_epochs_deterministically(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    hist, weights = _run(monkeypatch)
    assert [h["epoch"] for h in hist] == [0, 1]
    # 4 envs x >= 16 steps of 4-step episodes, from both workers' envs
    assert all(h["episodes"] >= 16 and np.isfinite(h["policy_loss"]) for h in hist)
    # one update ahead, as the single overlapped worker: decoupled PPO weights the lag
    assert hist[0]["lag_weight"] == pytest.approx(1.0, abs=1e-5) and "cpu_time_worker" in hist[1]
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
    hist2, weights2 = _run(monkeypatch)
    for a, b in zip(hist, hist2):
        assert a["episode_reward"] == b["episode_reward"] and a["policy_loss"] == b["policy_loss"]
    assert all(torch.equal(weights[k], weights2[k]) for k in weights)
    # without overlap each epoch's rollout has the current weights: plain PPO, no lag weights
    sync, _ = _run(monkeypatch, overlap=False)
    assert "lag_weight" not in sync[1] and sync[0]["episode_reward"] == hist[0]["episode_reward"]


class _FailingEnv(TinyMaskedEnv):
    def step(self, action):
        raise ValueError("env exploded on purpose")


def test_a_failing_worker_reaches_the_learner_and_no_worker_is_left(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = PPOConfig(seed=4, epochs=2, steps=8, n_envs=4, rollout_workers=2, **FAST)
    with pytest.raises(RuntimeError, match=r"(?s)rollout worker 1 of 2.*env exploded on purpose"):
        list(train(cfg, policy=TinyPolicy(), env_fns=[TinyMaskedEnv] * 2 + [_FailingEnv] * 2))
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
    with pytest.raises(ParameterError, match="rollout_workers=5"):
        next(train(PPOConfig(n_envs=4, rollout_workers=5), policy=TinyPolicy(), env_fns=[TinyMaskedEnv] * 4))


def test_ray_actors_give_the_same_run_as_local_workers(monkeypatch):
    # RAY_ADDRESS=local: a local Ray instance of 2 CPUs, started and stopped by the run
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local, w_local = _run(monkeypatch)
    monkeypatch.setenv("RAY_ADDRESS", "local")
    on_ray, w_ray = _run(monkeypatch)
    import ray

    assert not ray.is_initialized()  # the pool shut its own instance down
    for a, b in zip(local, on_ray):
        assert a["episode_reward"] == b["episode_reward"] and a["policy_loss"] == b["policy_loss"]
    assert all(torch.equal(w_local[k], w_ray[k]) for k in w_local)
