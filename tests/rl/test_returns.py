"""Monte Carlo returns over a buffer interleaved across vector-env workers."""

from __future__ import annotations

import numpy as np

from rl.returns import monte_carlo_returns, next_step_reset_mask


def _per_episode_reference(rewards, dones, gamma):
    """Split each worker's column into episodes and sum each one separately."""
    t_len, n = rewards.shape
    out = np.zeros_like(rewards)
    for i in range(n):
        start = 0
        for t in range(t_len):
            if dones[t, i] or t == t_len - 1:
                ep = rewards[start : t + 1, i]
                for k in range(len(ep)):
                    out[start + k, i] = sum(gamma**j * ep[k + j] for j in range(len(ep) - k))
                start = t + 1
    return out


def test_interleaved_episodes_do_not_leak():
    # worker 0: episodes of length 3, 2, 1 ; worker 1: episode of length 4, then 2 (cut by the buffer)
    rewards = np.array([[0, 0], [0, 0], [5, 0], [0, 7], [2, 0], [3, 1]], dtype=np.float32)
    dones = np.array([[0, 0], [0, 0], [1, 0], [0, 1], [1, 0], [1, 0]], dtype=bool)
    g = monte_carlo_returns(rewards, dones)
    np.testing.assert_allclose(g[:, 0], [5, 5, 5, 2, 2, 3])
    np.testing.assert_allclose(g[:, 1], [7, 7, 7, 7, 1, 1])
    # the buggy version (sum over the buffer ignoring ends) would give worker 0 a return of 10 at t=0
    assert g[0, 0] != rewards[:, 0].sum()


def test_matches_reference_random_buffers():
    rng = np.random.default_rng(0)
    for gamma in (1.0, 0.9):
        r = rng.normal(size=(40, 5)).astype(np.float32)
        d = rng.random((40, 5)) < 0.2
        np.testing.assert_allclose(monte_carlo_returns(r, d, gamma=gamma), _per_episode_reference(r, d, gamma), rtol=1e-5, atol=1e-5)


def test_bootstrap_only_for_unfinished_episodes():
    rewards = np.array([[1, 1], [1, 1]], dtype=np.float32)
    dones = np.array([[0, 0], [1, 0]], dtype=bool)
    g = monte_carlo_returns(rewards, dones, gamma=1.0, last_values=np.array([100.0, 10.0]))
    np.testing.assert_allclose(g[:, 0], [2, 1])  # ended inside the buffer: no bootstrap
    np.testing.assert_allclose(g[:, 1], [12, 11])


def test_single_worker_vector_and_next_step_mask():
    g = monte_carlo_returns(np.array([1.0, 2.0, 3.0]), np.array([0, 1, 0], dtype=bool))
    np.testing.assert_allclose(g, [3, 2, 3])
    d = np.array([[0, 1], [1, 0], [0, 0]], dtype=bool)
    m = next_step_reset_mask(d, prev_dones=np.array([1, 0], dtype=bool))
    np.testing.assert_array_equal(m, [[False, True], [True, False], [False, True]])
