"""Returns and advantages: what each transition of a rollout is worth (rl/ppo.py, steps 3-4).

Monte Carlo returns over a rollout buffer interleaved across vector-env workers, their
running statistics (value targets), and the advantage baselines.

The buffer is time-major, ``[T, N]``: row t holds the N workers' transitions at rollout
step t, and each column is one worker's stream of consecutive episodes. The return of a
transition is the (discounted) sum of the rewards that follow it *in its own episode*:

    G[t, i] = r[t, i] + gamma * (1 - done[t, i]) * G[t + 1, i]
    G[T, i] = last_values[i]   (bootstrap of an episode cut by the end of the buffer; 0 if None)

The predecessor summed over the interleaved buffer ignoring episode ends, so one song's
episode-end reward leaked into the previous episode of the same worker (and, flattened,
into other workers'). Here ``done`` stops the sum at every episode end, per worker.

Autoreset: the vector envs made by ``envs.env.make_vector_env`` use gymnasium's
``SAME_STEP`` autoreset, so every buffer row is a real transition. With gymnasium's
default ``NEXT_STEP`` autoreset, the step after each ``done`` is a reset step whose
action is ignored: drop it from the loss with ``next_step_reset_mask(dones)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["monte_carlo_returns", "next_step_reset_mask", "RunningMeanStd", "song_baseline", "compute_advantages",
           "explained_variance"]


def monte_carlo_returns(
    rewards: np.ndarray,
    dones: np.ndarray,
    gamma: float = 1.0,
    last_values: np.ndarray | None = None,
) -> np.ndarray:
    """Per-episode discounted returns of an interleaved buffer.

    Parameters
    ----------
    rewards : np.ndarray [shape=(T, N)] reward of each transition (worker i at step t)
    dones : np.ndarray [shape=(T, N)] true where the transition ended its episode
        (``terminated | truncated``)
    gamma : float in [0, 1], discount; 1.0 = undiscounted (the spec's episode-end reward)
    last_values : np.ndarray [shape=(N,)] or None, value estimates of the state after the
        buffer's last row, used for episodes still running at the end of the buffer; None
        treats them as ending there (return = rewards seen so far)

    Returns
    -------
    np.ndarray [shape=(T, N), float32]
    """
    r = np.asarray(rewards, dtype=np.float64)
    d = np.asarray(dones, dtype=bool)
    if r.ndim == 1:  # a single worker given as [T]
        r, d = r[:, None], d[:, None]
    assert r.shape == d.shape and r.ndim == 2, f"rewards {r.shape} and dones {d.shape} must both be [T, N]"
    assert 0.0 <= gamma <= 1.0, f"gamma {gamma} outside [0, 1]"
    t_len, n = r.shape
    g = np.zeros(n) if last_values is None else np.asarray(last_values, dtype=np.float64).reshape(n).copy()
    out = np.empty((t_len, n), dtype=np.float64)
    not_done = ~d
    for t in range(t_len - 1, -1, -1):
        g = r[t] + gamma * not_done[t] * g  # (N,)
        out[t] = g
    out = out.astype(np.float32)
    return out if np.ndim(rewards) == 2 else out[:, 0]


def next_step_reset_mask(dones: np.ndarray, prev_dones: np.ndarray | None = None) -> np.ndarray:
    """Which buffer rows are real transitions under gymnasium's ``NEXT_STEP`` autoreset.

    The step after an episode end only resets the sub-env (its action is ignored), so it
    must not be trained on. ``prev_dones`` [shape=(N,)] is the last ``dones`` row of the
    previous buffer (None = none ended there).

    Returns
    -------
    np.ndarray [shape=(T, N), bool] true for real transitions
    """
    d = np.asarray(dones, dtype=bool)
    shifted = np.empty_like(d)
    shifted[0] = False if prev_dones is None else np.asarray(prev_dones, dtype=bool)
    shifted[1:] = d[:-1]
    return ~shifted


class RunningMeanStd:
    """Welford / Chan running mean and variance of a scalar stream (spec: reward stats)."""

    def __init__(self, eps: float = 1e-4) -> None:
        # eps as a pseudo-count keeps the first update from dividing by zero
        self.mean = 0.0
        self.var = 1.0
        self.count = eps

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).ravel()
        if x.size == 0:
            return
        b_mean, b_var, b_n = float(x.mean()), float(x.var()), x.size
        delta = b_mean - self.mean
        tot = self.count + b_n
        self.mean += delta * b_n / tot
        m2 = self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / tot
        self.var = m2 / tot
        self.count = tot

    @property
    def std(self) -> float:
        return math.sqrt(self.var + 1e-8)

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


def song_baseline(returns: torch.Tensor, episode_ids: torch.Tensor, episodes: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Per transition [M]: the mean return of the other episodes of the same song.

    An episode's return is its first transition's (Monte Carlo, reward at the end). A
    song edited once in the batch gets the mean over all episodes instead."""
    ids = episode_ids.numpy()
    g = returns.double().numpy()
    first: dict[int, float] = {}
    for k in range(len(ids) - 1, -1, -1):  # the first transition of each episode wins
        first[int(ids[k])] = g[k]
    song_of = {int(e["id"]): e.get("song", "") for e in episodes}
    by_song: dict[str, list[int]] = {}
    for e in first:
        by_song.setdefault(song_of.get(e, f"#{e}"), []).append(e)
    overall = float(np.mean(list(first.values()))) if first else 0.0
    base: dict[int, float] = {}
    for eps in by_song.values():
        tot = sum(first[e] for e in eps)
        for e in eps:
            base[e] = (tot - first[e]) / (len(eps) - 1) if len(eps) > 1 else overall
    return torch.as_tensor(np.array([base[int(e)] for e in ids]), dtype=returns.dtype)


def compute_advantages(
    returns: torch.Tensor,
    values: torch.Tensor | None,
    *,
    baseline: str,
    episode_ids: torch.Tensor | None = None,
    episodes: Sequence[Mapping[str, Any]] = (),
) -> torch.Tensor:
    """Normalised advantages [M] from returns [M], values [M] (``baseline="value"``) or
    the episodes' songs (``baseline="song"``: ``episode_ids`` [M] and ``episodes``)."""
    if baseline == "value":
        assert values is not None, "value baseline needs values"
        adv = returns - values
    elif baseline == "song":
        assert episode_ids is not None, "song baseline needs episode ids"
        adv = returns - song_baseline(returns, episode_ids, episodes)
    else:
        adv = returns - returns.mean()
    if adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - pred] / Var[target] (nan when the target is constant)."""
    var_y = float(target.var()) if target.numel() > 1 else 0.0
    if var_y == 0.0:
        return float("nan")
    return 1.0 - float((target - pred).var()) / var_y
