"""rl/ppo.py on a tiny masked env whose optimum (1.0 per episode) is known."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from agent.checkpoint import load_checkpoint
from datasets.errors import ParameterError
from rl.ppo import PPOConfig, SaveTo, entropy_coef_at, train
from rl.returns import RunningMeanStd, compute_advantages, monte_carlo_returns
from rl.rollout import collect_rollout, make_vector_env, obs_to_torch
from tests.rl.tiny import BANNED_SIZE, TinyMaskedEnv, TinyPolicy, tiny_agent_policy

FAST = dict(lr=1e-2, update_epochs=4, minibatch_size=64, grad_accum=2, ent_coef=0.05, ent_coef_final=0.0,
            target_kl=None, anchor="none")


@torch.no_grad()
def _greedy_reward(policy, n_episodes: int = 64, seed: int = 123) -> float:
    env = TinyMaskedEnv()
    total = 0.0
    for k in range(n_episodes):
        obs, _ = env.reset(seed=seed + k)
        done = False
        while not done:
            batch = obs_to_torch({key: v[None] for key, v in obs.items()})
            action = policy.act(batch, deterministic=True)[0][0].numpy()
            obs, r, term, trunc, _ = env.step(action)
            total += r
            done = term or trunc
    return total / n_episodes


@pytest.mark.parametrize("baseline, overlap", [("mean", True), ("value", True), ("mean", False)])
def test_ppo_improves_return_towards_known_optimum(baseline, overlap):
    # overlap=True: rollouts one update behind in a forked worker, decoupled PPO (the
    # default on CPU); overlap=False: plain PPO in this process
    torch.manual_seed(0)
    policy = TinyPolicy()
    before = _greedy_reward(policy)
    cfg = PPOConfig(seed=1, epochs=60, steps=32, n_envs=4, baseline=baseline, overlap=overlap, **FAST)
    hist = list(train(cfg, policy=policy, env_fns=[TinyMaskedEnv] * 4))
    first = np.mean([h["episode_reward"] for h in hist[:5]])
    last = np.mean([h["episode_reward"] for h in hist[-5:]])
    after = _greedy_reward(policy)
    assert first < 0.35, first  # a near-uniform masked policy scores ~0.25
    assert last > first + 0.25, (first, last)
    assert after > 0.65 and after > before + 0.35, (before, after)  # optimum 1.0, random ~0.25


def test_masks_respected_during_rollouts():
    torch.manual_seed(0)
    policy = TinyPolicy()
    envs = make_vector_env([TinyMaskedEnv] * 3)
    obs, _ = envs.reset(seed=[0, 1, 2])
    ro = collect_rollout(envs, policy, obs=obs, steps=200, generator=torch.Generator().manual_seed(0))
    envs.close()
    a = ro.actions.numpy()
    n = np.arange(len(ro))
    assert (ro.obs["type_mask"].numpy()[n, a[:, 0]] == 1).all()
    assert (ro.obs["size_mask"].numpy()[n, a[:, 0], a[:, 1]] == 1).all()
    assert (ro.obs["amount_mask"].numpy()[n, a[:, 0], a[:, 2]] == 1).all()
    assert not (a[:, 1] == BANNED_SIZE).any()
    assert (a[a[:, 0] < 9, 2] == 2).all()  # NEUTRAL-only types
    # the sampler still explores what is allowed (not a trivially constant policy)
    assert len(np.unique(a[:, 0])) == 18 and len(np.unique(a[:, 1])) == 4


def test_returns_honour_episode_ends():
    torch.manual_seed(0)
    policy = TinyPolicy()
    envs = make_vector_env([lambda: TinyMaskedEnv(episode_len=3)] * 2)
    obs, _ = envs.reset(seed=[5, 6])
    ro = collect_rollout(envs, policy, obs=obs, steps=5, generator=torch.Generator().manual_seed(0))
    envs.close()
    # each env records >= 5 steps and finishes its episode: 2 complete episodes of 3 = 6 each
    assert len(ro) == 12 and ro.dones.numpy().reshape(4, 3)[:, -1].all()
    assert ro.dones.sum() == 4 and len(ro.episodes) == 4
    g = monte_carlo_returns(ro.rewards.numpy(), ro.dones.numpy(), gamma=1.0)
    ep_rewards = ro.rewards.numpy().reshape(4, 3)[:, -1]
    # every step of an episode gets that episode's end reward, never the next episode's
    np.testing.assert_allclose(g.reshape(4, 3), np.repeat(ep_rewards[:, None], 3, axis=1), rtol=1e-6)
    np.testing.assert_allclose(sorted(e["reward"] for e in ro.episodes), sorted(ep_rewards), rtol=1e-6)
    assert all(set(e["components"]) == {"type", "size", "amount"} for e in ro.episodes)


@pytest.mark.parametrize("overlap", [True, False])
def test_checkpoint_resume_continues_identically(tmp_path, overlap):
    # with overlap the checkpoint also carries the weights the in-flight rollout uses;
    # checkpoints are agent/checkpoint.py's (the one format), so the policy is an agent Policy
    cfg = PPOConfig(seed=3, epochs=4, steps=16, n_envs=2, save_every=2, overlap=overlap, **FAST)
    ckpt, mid = tmp_path / "ppo.pt", tmp_path / "mid.pt"

    torch.manual_seed(0)
    full = tiny_agent_policy()
    hist_full = []
    for row in train(cfg, policy=full, env_fns=[TinyMaskedEnv] * 2, save=SaveTo(ckpt)):
        hist_full.append(row)
        if row["epoch"] == 1:  # the loop is the caller's: keep epoch 2's checkpoint
            shutil.copy(ckpt, mid)
    state = load_checkpoint(mid, expect_layout=None)
    assert state["stage"] == "finetune" and state["step"] == hist_full[1]["global_step"]
    assert state["extra"]["ppo"]["epoch"] == 2 and state["extra"]["ppo"]["global_step"] == hist_full[1]["global_step"]

    torch.manual_seed(99)  # a different init: everything must come from the checkpoint
    resumed = tiny_agent_policy()
    hist_res = list(train(cfg, policy=resumed, env_fns=[TinyMaskedEnv] * 2, resume=state))
    assert [h["epoch"] for h in hist_res] == [2, 3]
    for a, b in zip(hist_full[2:], hist_res):
        assert a["episode_reward"] == b["episode_reward"] and a["policy_loss"] == b["policy_loss"]
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name


def test_checkpoints_need_the_agent_format(tmp_path):
    # one checkpoint format: saving a policy agent/checkpoint.py cannot rebuild is refused
    # up front, and a dict that is not a fine-tuning checkpoint is not resumed
    cfg = PPOConfig(seed=3, epochs=1, steps=8, n_envs=2, overlap=False, **FAST)
    with pytest.raises(ParameterError, match="agent.model.Policy"):
        next(train(cfg, policy=TinyPolicy(), env_fns=[TinyMaskedEnv] * 2, save=SaveTo(tmp_path / "x.pt")))
    with pytest.raises(ParameterError, match="not a fine-tuning checkpoint"):
        next(train(cfg, policy=TinyPolicy(), env_fns=[TinyMaskedEnv] * 2, resume={"format": "rl-ppo-1", "epoch": 2}))
    assert not list(tmp_path.iterdir())


def test_kl_anchor_keeps_policy_near_reference():
    def run(coef):
        torch.manual_seed(0)
        policy = TinyPolicy()
        cfg = PPOConfig(seed=2, epochs=15, steps=32, n_envs=4, **{**FAST, "anchor": "kl", "anchor_coef": coef})
        hist = list(train(cfg, policy=policy, env_fns=[TinyMaskedEnv] * 4))
        return hist[-1]["anchor_loss"], _greedy_reward(policy)

    kl_free, _ = run(0.0)
    kl_anchored, _ = run(20.0)
    assert kl_anchored < 0.5 * kl_free, (kl_anchored, kl_free)


def test_subprocess_vector_env_runs():
    cfg = PPOConfig(seed=4, epochs=1, steps=8, n_envs=2, **FAST)
    hist = list(train(cfg, policy=TinyPolicy(), env_fns=[TinyMaskedEnv] * 2, subprocess=True))
    assert hist[0]["episodes"] >= 4 and np.isfinite(hist[0]["policy_loss"])


class _FailingEnv(TinyMaskedEnv):
    def step(self, action):
        raise ValueError("env exploded on purpose")


def test_overlap_worker_errors_reach_the_learner():
    # a failure inside the rollout worker is raised in the learner with its traceback,
    # and the worker process is gone afterwards (no orphan)
    cfg = PPOConfig(seed=4, epochs=2, steps=8, n_envs=2, overlap=True, **FAST)
    with pytest.raises(RuntimeError, match="env exploded on purpose"):
        list(train(cfg, policy=TinyPolicy(), env_fns=[_FailingEnv] * 2))
    import multiprocessing

    assert not [p for p in multiprocessing.active_children() if p.is_alive()]


def test_overlap_rollouts_lag_one_update_and_are_reweighted():
    # epoch 0's rollout uses the starting weights (no lag: weights 1); later rollouts are
    # one update behind, so pi_prox / pi_behaviour differs from 1 for some samples
    cfg = PPOConfig(seed=5, epochs=4, steps=16, n_envs=2, overlap=True, **FAST)
    torch.manual_seed(0)
    hist = list(train(cfg, policy=TinyPolicy(), env_fns=[TinyMaskedEnv] * 2))
    assert hist[0]["lag_weight"] == pytest.approx(1.0, abs=1e-5)
    assert any(abs(h["lag_weight"] - 1.0) > 1e-3 or h["lag_weight_clipped"] > 0 for h in hist[1:])
    assert all("time_worker_rollout" in h for h in hist)


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=1000)
    rms = RunningMeanStd(eps=0.0 + 1e-12)
    for chunk in np.array_split(x, 7):
        rms.update(chunk)
    assert rms.mean == pytest.approx(x.mean(), rel=1e-6)
    assert rms.var == pytest.approx(x.var(), rel=1e-6)


def test_entropy_schedule_and_advantages():
    cfg = PPOConfig(epochs=100, ent_coef=0.75, ent_coef_final=0.01, ent_decay_frac=0.5)
    assert entropy_coef_at(cfg, 0) == pytest.approx(0.75)
    assert entropy_coef_at(cfg, 25) == pytest.approx(0.38)
    assert entropy_coef_at(cfg, 50) == pytest.approx(0.01) == entropy_coef_at(cfg, 99)
    lin = PPOConfig(epochs=100, ent_coef=0.5, ent_coef_final=0.0, ent_schedule="linear", ent_decay_frac=1.0)
    assert entropy_coef_at(lin, 50) == pytest.approx(0.25)
    g = torch.tensor([1.0, 2.0, 3.0, 10.0])
    adv = compute_advantages(g, None, baseline="mean")
    assert adv.mean().abs() < 1e-6 and adv.std() == pytest.approx(1.0, rel=1e-5)
    assert torch.argsort(adv).tolist() == [0, 1, 2, 3]
    v = torch.tensor([1.0, 2.0, 3.0, 0.0])  # only the last return beats its value
    adv_v = compute_advantages(g, v, baseline="value")
    assert adv_v.argmax() == 3 and torch.allclose(adv_v[:3], adv_v[0].expand(3))


def test_song_baseline_is_the_leave_one_out_mean_of_the_same_song():
    from rl.returns import song_baseline

    # episodes 0, 1, 2 of song "a" (returns 1, 2, 6), episode 3 of "b" alone (return 10)
    ids = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    g = torch.tensor([1.0, 1.0, 2.0, 2.0, 2.0, 6.0, 10.0, 10.0])
    eps = [{"id": 0, "song": "a"}, {"id": 1, "song": "a"}, {"id": 2, "song": "a"}, {"id": 3, "song": "b"}]
    b = song_baseline(g, ids, eps)
    # a: others' means (2+6)/2, (1+6)/2, (1+2)/2; b: edited once -> mean of all 4 episodes
    torch.testing.assert_close(b, torch.tensor([4.0, 4.0, 3.5, 3.5, 3.5, 1.5, 4.75, 4.75]))
    adv = compute_advantages(g, None, baseline="song", episode_ids=ids, episodes=eps)
    assert adv[5] > 0 > adv[0]  # the best edit of song "a" beats the worst one


def test_song_groups_edit_the_same_songs():
    # song_group envs share reset seeds: each song drawn is edited by the whole group
    cfg = PPOConfig(seed=7, epochs=1, steps=8, n_envs=4, song_group=2, overlap=False, **FAST)  # envs here
    seen = []

    class Recording(TinyMaskedEnv):
        def reset(self, *, seed=None, options=None):
            obs, info = super().reset(seed=seed, options=options)
            seen.append((seed, self._target))
            return obs, info

    list(train(cfg, policy=TinyPolicy(), env_fns=[Recording] * 4))
    seeds = [s for s, _ in seen if s is not None]
    assert len(seeds) == 4 and seeds[0] == seeds[1] != seeds[2] == seeds[3]


def test_type_collapse_warns():
    policy = TinyPolicy()
    with torch.no_grad():
        policy.type_head.bias[:] = -20.0
        policy.type_head.bias[5] = 20.0  # type 5 whenever it is allowed (always, below)
    cfg = PPOConfig(seed=6, epochs=1, steps=8, n_envs=2, **{**FAST, "lr": 1e-6})
    with pytest.warns(RuntimeWarning, match="type collapse: type 5"):
        hist = list(train(cfg, policy=policy, env_fns=[lambda: TinyMaskedEnv(n_allowed=(18, 18))] * 2))
    assert hist[0]["top_type"] == 5 and hist[0]["top_type_frac"] > 0.9


def test_ppo_loss_gradients_finite_with_the_agent_policy_and_masks():
    # rl/ppo.py uses Policy.evaluate's entropies directly: with masked choices (-inf
    # log-probs) the loss's gradient must stay finite in every parameter.
    from agent.model import Policy, PolicyConfig, obs_to_tensors
    from rl.ppo import evaluate_actions
    from tests.agent.fake_obs import random_obs

    cfg = PolicyConfig(n_channels=130, n_globals=6, window=16, head_index=4, hidden=16, n_layers=1, n_heads=2,
                       kernel_size=5)
    torch.manual_seed(0)
    policy = Policy(cfg).eval()
    obs = obs_to_tensors(random_obs(cfg, 16, seed=1))
    assert not obs["size_mask"].all()
    with torch.no_grad():
        actions = policy.act(obs, generator=torch.Generator().manual_seed(0))[0]
    logp, ent, value = evaluate_actions(policy, obs, actions)
    assert ent.shape == (16, 3) and torch.isfinite(ent).all()
    (logp.mean() - 0.5 * ent.sum(-1).mean() + value.pow(2).mean()).backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
