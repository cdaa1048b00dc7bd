"""Monte Carlo returns over a rollout buffer interleaved across vector-env workers.

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

import numpy as np

__all__ = ["monte_carlo_returns", "next_step_reset_mask"]


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
