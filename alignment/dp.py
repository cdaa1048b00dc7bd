"""Best path of raw frames for the edited frames: Viterbi over raw positions.

State at edited frame i is the raw frame j it plays (or "unmatched"). From one edited
frame to the next a path either *stays* on its diagonal (j -> j+1, free: the raw
plays on) or *switches* to any raw frame (a cut, loop, reorder or jump back, anywhere
in the song: there is no search window) at a fixed penalty. The score of a state is
``sim(i, j) - tau``; the unmatched state scores 0, so a stretch of the edited file
joins a raw diagonal only where its frames resemble the raw better than ``tau`` on
average, for long enough to pay the switch penalty.

Because the switch cost does not depend on where it comes from, each step is O(n_raw)
(the best previous state is one max), so the whole path costs O(n_edit * n_raw), the
same as computing the similarity matrix, which is done block by block so that memory
stays O(block * n_raw). Back pointers are one bit per (i, j).
"""

from __future__ import annotations

import numpy as np

__all__ = ["viterbi_path", "UNMATCHED"]

UNMATCHED = -1
_BLOCK = 256


def _step_block(S, V, Vu, back, back_u, src, best, row0, switch_pen, enter_pen, leave_pen):
    """Advance the Viterbi over the rows of ``S`` [shape=(block, n_r), float64]: ``V``
    [shape=(n_r,)] (matched states) is updated in place, the unmatched score returned.

    One row is a handful of vector operations over the raw frames. It was a numba
    kernel; numpy does a 3-minute pair's rows as fast (0.18 s CPU either way), and a
    fresh process no longer imports numba and loads its cache (~0.9 s CPU, issue 17).
    Same arithmetic and ties as the kernel (float64; a stay wins a tie with a switch,
    the first best state wins), so the same paths.
    """
    n_r = S.shape[1]
    newV = np.empty_like(V)
    switched = np.empty(n_r, dtype=bool)
    switched[0] = True  # state 0 has no diagonal predecessor: it is always entered by a switch
    for ii in range(S.shape[0]):
        i = row0 + ii
        # best matched state of the previous frame (the first of equals)
        jm = int(V.argmax())
        m = float(V[jm])
        best[i] = jm
        # a switch comes from the best matched state or from "unmatched"
        from_m = m - switch_pen
        from_u = Vu - enter_pen
        if from_m >= from_u:
            sw = from_m
            src[i] = jm
        else:
            sw = from_u
            src[i] = -1
        # stay on the diagonal (j-1 -> j) unless a switch scores more
        np.less(V[:-1], sw, out=switched[1:])
        np.maximum(V[:-1], sw, out=newV[1:])
        newV[0] = sw
        newV += S[ii]
        back[i] = np.packbits(switched, bitorder="little")  # bit j of byte j >> 3
        # unmatched: stay unmatched, or leave the best matched state
        if Vu >= m - leave_pen:
            back_u[i] = 0
        else:
            Vu = m - leave_pen
            back_u[i] = 1
        V[:] = newV
    return Vu


def viterbi_path(
    E: np.ndarray,
    R: np.ndarray,
    *,
    tau: float,
    switch_pen: float,
    enter_pen: float,
    leave_pen: float,
    e_silent: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw frame for each edited frame.

    E : np.ndarray [shape=(n_e, d)] unit-norm edited frames (zero rows = silent)
    R : np.ndarray [shape=(n_r, d)] unit-norm raw frames
    tau : similarity that scores as much as "unmatched"
    switch_pen, enter_pen, leave_pen : costs of a jump between raw positions, of
        entering the raw from unmatched, and of leaving it
    e_silent : edited frames that vote for nothing (score 0 for every state)

    Returns (path [shape=(n_e,), int64] raw frame or ``UNMATCHED``,
    sim [shape=(n_e,), float32] similarity along the path, nan where unmatched).
    """
    n_e, n_r = E.shape[0], R.shape[0]
    assert n_e > 0 and n_r > 0
    back = np.zeros((n_e, (n_r + 7) // 8), dtype=np.uint8)
    back_u = np.zeros(n_e, dtype=np.uint8)
    src = np.full(n_e, -1, dtype=np.int64)
    best = np.zeros(n_e, dtype=np.int64)
    V = np.full(n_r, -np.inf)
    Vu = 0.0
    Rt = np.ascontiguousarray(R.T, dtype=np.float32)
    # Row 0: entering any state is free (the edit may start anywhere in the raw).
    s0 = (E[0] @ Rt - tau).astype(np.float64)
    if e_silent is not None and e_silent[0]:
        s0[:] = 0.0
    V[:] = s0
    for r0 in range(1, n_e, _BLOCK):
        r1 = min(n_e, r0 + _BLOCK)
        S = (E[r0:r1] @ Rt - tau).astype(np.float64)  # (block, n_r)
        if e_silent is not None:
            S[e_silent[r0:r1]] = 0.0
        Vu = _step_block(S, V, Vu, back, back_u, src, best, r0, switch_pen, enter_pen, leave_pen)
    # backtrack
    path = np.empty(n_e, dtype=np.int64)
    jm = int(np.argmax(V))
    state = jm if V[jm] >= Vu else UNMATCHED
    for i in range(n_e - 1, -1, -1):
        path[i] = state
        if i == 0:
            break
        if state == UNMATCHED:
            state = UNMATCHED if back_u[i] == 0 else int(best[i])
        else:
            switched = (back[i, state >> 3] >> (state & 7)) & 1
            state = int(src[i]) if switched else state - 1
    sim = np.full(n_e, np.nan, dtype=np.float32)
    ok = path >= 0
    if ok.any():
        idx = np.nonzero(ok)[0]
        sim[idx] = np.einsum("ij,ij->i", E[idx], R[path[idx]])
    return path, sim

