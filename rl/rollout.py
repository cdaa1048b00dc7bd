"""Rollouts: the policy edits songs in a vector of envs; what one PPO epoch learns from.

Both the learner (``rl/ppo.py``, in its own process) and the overlapped rollout worker
(``rl/worker.py``, a forked process) collect with ``collect_rollout``, so neither imports
the other. A ``Rollout`` is env-major: each env's transitions are contiguous and every
recorded episode is complete (Monte Carlo: the reward is paid at the episode end, and a
half-finished episode would have no return at all).

Vector envs are built with gymnasium's ``SAME_STEP`` autoreset (``make_vector_env``), so
every buffer row is a real transition.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector.async_vector_env import _async_worker
from torch import nn

from agent.model import obs_to_tensors
from datasets.procs import child_call

__all__ = ["HEADS", "Rollout", "collect_rollout", "index_obs", "make_vector_env", "obs_to_torch", "rollout_logp"]

HEADS = ("type", "size", "amount")  # the factored action's heads: the columns of Rollout.actions


@dataclass(frozen=True)
class Rollout:
    """Transitions of one epoch, env-major: each env's episodes are contiguous and end done.

    obs : dict of tensors, each [M, ...]
    actions : int64 [M, 3] (type, size, amount)
    logp, values, rewards : float32 [M]
    dones : bool [M] (terminated or truncated)
    episode_ids : int64 [M], the episode of each transition (``episodes[k]["id"]``)
    episodes : one dict per finished episode: id, song, reward, length, components, type counts
    env_steps : every env step taken, recorded or not (throughput counts these)
    """

    obs: dict[str, torch.Tensor]
    actions: torch.Tensor
    logp: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    episode_ids: torch.Tensor | None = None
    episodes: list[dict[str, Any]] = field(default_factory=list)
    env_steps: int = 0

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def make_vector_env(env_fns: Sequence[Callable[[], gym.Env]], *, subprocess: bool = False) -> gym.vector.VectorEnv:
    """N envs in one process (sync) or one process each (``subprocess``), same-step autoreset.

    Same-step autoreset returns the first observation of the next episode together with
    the final reward, so no step is wasted on a reset and no "reset transition" enters
    the buffer (gymnasium's default next-step mode would add one per episode).
    """
    mode = gym.vector.AutoresetMode.SAME_STEP
    if subprocess:
        # gymnasium's own worker, started so that it dies with this process (datasets/procs.py)
        worker = functools.partial(child_call, os.getpid(), _async_worker)
        return gym.vector.AsyncVectorEnv(list(env_fns), autoreset_mode=mode, worker=worker)
    return gym.vector.SyncVectorEnv(list(env_fns), autoreset_mode=mode)


def obs_to_torch(obs: Mapping[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Batched numpy Dict observation -> tensors: floats float32, masks bool (agent/model.py's rule)."""
    return obs_to_tensors(obs, device=device)


def index_obs(obs: Mapping[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rows ``idx`` of every observation tensor (a minibatch of a rollout)."""
    return {k: v[idx] for k, v in obs.items()}


@torch.no_grad()
def rollout_logp(policy: nn.Module, obs: Mapping[str, torch.Tensor], actions: torch.Tensor, *, batch: int = 256) -> torch.Tensor:
    """log P of ``actions`` under ``policy`` for a whole rollout, in no-grad batches."""
    idx_all = torch.arange(actions.shape[0], device=actions.device)
    return torch.cat([policy.evaluate(index_obs(obs, idx), actions[idx])[0] for idx in idx_all.split(batch)])


def _env_info(infos: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Env ``i``'s entries of a vector env's stacked info dict (masks are ``_key``)."""
    out: dict[str, Any] = {}
    for k, v in infos.items():
        if k.startswith("_"):
            continue
        mask = infos.get("_" + k)
        if mask is not None and not bool(mask[i]):
            continue
        out[k] = _env_info(v, i) if isinstance(v, Mapping) else v[i]
    return out


def _valid_actions(obs: Mapping[str, np.ndarray], actions: np.ndarray) -> np.ndarray:
    """bool [N]: each action allowed by its observation's three masks."""
    n = np.arange(actions.shape[0])
    t, s, a = actions[:, 0], actions[:, 1], actions[:, 2]
    return (
        (np.asarray(obs["type_mask"])[n, t] != 0)
        & (np.asarray(obs["size_mask"])[n, t, s] != 0)
        & (np.asarray(obs["amount_mask"])[n, t, a] != 0)
    )


@torch.no_grad()
def collect_rollout(
    envs: gym.vector.VectorEnv,
    policy: nn.Module,
    *,
    obs: Mapping[str, np.ndarray],
    steps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    max_env_steps: int | None = None,
) -> Rollout:
    """Step ``envs`` until each env has ``steps`` transitions and no episode in flight.

    obs : the batched observation the envs are at (just reset)
    max_env_steps : safety cap on vector steps (default 50 * steps); an env still
        mid-episode at the cap has its unfinished tail dropped, never given a return
    """
    n = envs.num_envs
    cap = max_env_steps if max_env_steps is not None else 50 * max(1, steps)
    # a policy that reads only part of the observation stores only that part (agent/model.py)
    crop = getattr(policy, "crop_obs", None) or dict
    buf_obs: list[dict[str, np.ndarray]] = []
    buf_act, buf_logp, buf_val, buf_rew, buf_done, buf_rec, buf_ep = [], [], [], [], [], [], []
    ep_id = np.arange(n, dtype=np.int64)  # id of the episode each env is in
    next_id = n
    recorded = np.zeros(n, dtype=np.int64)
    recording = np.ones(n, dtype=bool)
    episodes: list[dict[str, Any]] = []
    ep_types: list[Counter] = [Counter() for _ in range(n)]
    ep_len = np.zeros(n, dtype=np.int64)
    ep_ret = np.zeros(n, dtype=np.float64)  # sum of the episode's rewards (usually only the last)
    env_steps = 0
    t = 0
    while recording.any() and t < cap:
        # inference_mode (not only no_grad): no version counters or view tracking, ~10 % off
        # each batched act; the stored observations are rebuilt below outside of it, so the
        # update's autograd never sees an inference tensor
        with torch.inference_mode():
            actions, logp, value, _ = policy.act(obs_to_torch(obs, device), deterministic=False, generator=generator)
        actions_np = actions.cpu().numpy().astype(np.int64)
        # masks are the policy's job; a violation here is a bug, never a training signal
        assert _valid_actions(obs, actions_np).all(), "policy sampled a masked action"
        next_obs, reward, term, trunc, infos = envs.step(actions_np)
        done = np.logical_or(term, trunc)
        buf_obs.append(crop(obs))
        buf_act.append(actions_np)
        buf_logp.append(logp.float().cpu().numpy())
        buf_val.append(value.float().cpu().numpy())
        buf_rew.append(np.asarray(reward, dtype=np.float32))
        buf_done.append(done)
        buf_rec.append(recording.copy())
        buf_ep.append(ep_id.copy())
        env_steps += n
        recorded += recording
        ep_len += 1
        ep_ret += reward
        for i in range(n):
            if recording[i]:
                ep_types[i][int(actions_np[i, 0])] += 1
            if done[i]:
                if recording[i]:
                    final = _env_info(infos["final_info"], i) if "final_info" in infos else {}
                    comps = final.get("reward_components", {})
                    episodes.append(
                        {
                            "id": int(ep_id[i]),
                            "song": str(final.get("song", "")),
                            "reward": float(ep_ret[i]),
                            "length": int(ep_len[i]),
                            "components": {k: float(v) for k, v in comps.items()},
                            "types": ep_types[i],
                        }
                    )
                ep_len[i] = 0
                ep_ret[i] = 0.0
                ep_id[i] = next_id
                next_id += 1
                ep_types[i] = Counter()
                if recorded[i] >= steps:
                    recording[i] = False
        obs = next_obs
        t += 1
    rec = np.stack(buf_rec, axis=1)  # (N, T) which steps are kept
    done_nt = np.stack(buf_done, axis=1)
    if recording.any():
        # cap hit: drop the unfinished tails of envs still mid-episode
        for i in np.flatnonzero(recording):
            ends = np.flatnonzero(done_nt[i] & rec[i])
            last = ends[-1] + 1 if ends.size else 0
            rec[i, last:] = False

    def gather(steps_list: list[np.ndarray]) -> np.ndarray:
        x = np.stack(steps_list, axis=1)  # (N, T, ...)
        return x[rec]  # env-major (M, ...)

    obs_t = obs_to_torch({k: gather([o[k] for o in buf_obs]) for k in buf_obs[0]})
    rew = gather(buf_rew)
    return Rollout(
        obs=obs_t,
        actions=torch.as_tensor(gather(buf_act)),
        logp=torch.as_tensor(gather(buf_logp)),
        values=torch.as_tensor(gather(buf_val)),
        rewards=torch.as_tensor(rew),
        dones=torch.as_tensor(gather(buf_done)),
        episode_ids=torch.as_tensor(gather(buf_ep)),
        episodes=episodes,
        env_steps=env_steps,
    )
