import itertools

import numpy as np

from alignment.dp import UNMATCHED, viterbi_path

PEN = dict(switch_pen=1.0, enter_pen=0.5, leave_pen=0.3)


def _score(path, S, *, switch_pen, enter_pen, leave_pen):
    """Total score of a path of raw frames (-1: unmatched) under the model dp.py states."""
    total = 0.0
    for i, j in enumerate(path):
        total += 0.0 if j == UNMATCHED else S[i, j]
        if i == 0:
            continue
        p = path[i - 1]
        if p == UNMATCHED and j != UNMATCHED:
            total -= enter_pen
        elif p != UNMATCHED and j == UNMATCHED:
            total -= leave_pen
        elif p != UNMATCHED and j != p + 1:
            total -= switch_pen
    return total


def _unit(rng, n, d, *, ties):
    x = rng.standard_normal((n, d)).astype(np.float32)
    if ties:
        x = np.round(x)
        x[np.all(x == 0, axis=1), 0] = 1.0
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_path_is_optimal_against_every_path():
    """Exhaustive search over every path of small songs, ties included: the returned
    path scores the best (the numpy step replaced a numba kernel, issue 17)."""
    rng = np.random.default_rng(0)
    for case in range(60):
        n_e, n_r = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        E, R = _unit(rng, n_e, 3, ties=case % 2 == 0), _unit(rng, n_r, 3, ties=case % 2 == 0)
        silent = rng.random(n_e) < 0.2
        tau = float(rng.choice([0.0, 0.5]))
        S = (E @ R.T - tau).astype(np.float64)
        S[silent] = 0.0
        path, sim = viterbi_path(E, R, tau=tau, e_silent=silent, **PEN)
        best = max(_score(p, S, **PEN) for p in itertools.product(range(-1, n_r), repeat=n_e))
        assert np.isclose(_score(list(path), S, **PEN), best), (case, path)
        ok = path >= 0
        np.testing.assert_allclose(sim[ok], np.einsum("ij,ij->i", E[ok], R[path[ok]]), rtol=1e-6)
        assert np.isnan(sim[~ok]).all()


def test_a_cut_edit_follows_the_raw_across_blocks():
    """Longer than one block of rows (256): the edit plays raw frames 100-399, then
    600-899; the path finds both runs and the jump."""
    rng = np.random.default_rng(1)
    R = _unit(rng, 1000, 16, ties=False)
    idx = np.r_[100:400, 600:900]
    path, sim = viterbi_path(R[idx], R, tau=0.7, switch_pen=4.0, enter_pen=2.0, leave_pen=2.0)
    np.testing.assert_array_equal(path, idx)
    np.testing.assert_allclose(sim, 1.0, rtol=1e-5)
