"""The oracle: an EditPlan -> factored actions that rebuild it (the inverse of
``envs.executor.execute``), from the start of the song (``oracle``, ``oracle_actions``:
the labels of an aligned pair) or from any executor state (``oracle_from``: the DAgger
expert's continuation).

The decomposition is simulated on an ``Executor``, so every action it emits is checked
against that state's masks as it is chosen, with the executor's own unit tables.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from datasets.errors import ParameterError
from envs import actions as _act
from envs.executor import AMOUNT_OK, FADE_FRAC, JUMP_K, KEEP_LIKE_TYPES, OPS, SKIP_K, Executor
from envs.plan import EditPlan, Ops, Segment

__all__ = ["OracleResult", "oracle", "oracle_actions", "oracle_from"]

_T = _act.ActionType
_NS, _NA = _act.N_SIZES, _act.N_AMOUNTS
_KEEP, _CUT, _LOOP, _JUMP, _SKIP = int(_T.KEEP), int(_T.CUT), int(_T.LOOP), int(_T.JUMP_BACK), int(_T.SKIP)
_FADE_IN, _FADE_OUT, _REPEAT, _SWAP, _REORDER = (
    int(_T.FADE_IN), int(_T.FADE_OUT), int(_T.REPEAT_PREV), int(_T.SWAP_NEXT), int(_T.REORDER)
)
_IDENTITY = Ops()

@dataclass(frozen=True)
class OracleResult:
    """Actions that rebuild a plan, and how well they do.

    actions : ((type, size, amount), ...) ending with the cuts to the song's end
    plan : what the actions execute to (merged; from a state, with what the executor
        had appended before)
    exact : True when ``plan`` is the target (after what was appended before), merged
    notes : why it is not exact (empty when exact)
    """

    actions: tuple[tuple[int, int, int], ...]
    plan: EditPlan
    exact: bool
    notes: tuple[str, ...]


def _treatment(ops: Ops) -> tuple[int, int] | None:
    """(type, amount) of a keep-like type whose ops are exactly ``ops``; fades excluded."""
    for t in sorted(KEEP_LIKE_TYPES):
        if t in (_FADE_IN, _FADE_OUT):
            continue
        for a in range(_NA):
            if AMOUNT_OK[t][a] and OPS[t][a] == ops:
                return t, a
    return None


def _closest_treatment(ops: Ops) -> tuple[int, int]:
    """The keep-like (type, amount) nearest to ``ops`` (one treatment; fades excluded):
    the strongest single effect wins, in the order reverse, time, distortion, reverb,
    EQ, gain."""

    def nearest(table: dict, value: float) -> int:
        return int(min(table, key=lambda a: abs(table[a] - value)))

    if ops.reversed:
        return int(_T.REVERSE), 2
    if ops.time_factor != 1.0:
        return (int(_T.DOUBLE_TIME), 2) if ops.time_factor > 1.0 else (int(_T.HALF_TIME), 2)
    if ops.distortion > 0:
        return int(_T.DISTORTION), nearest(_act.DISTORTION_DB, ops.distortion)
    if ops.reverb > 0:
        return int(_T.REVERB), nearest(_act.REVERB_WET, ops.reverb)
    if ops.eq_low_db or ops.eq_high_db:
        t = _T.EQ_LOW if abs(ops.eq_low_db) >= abs(ops.eq_high_db) else _T.EQ_HIGH
        v = ops.eq_low_db if t == _T.EQ_LOW else ops.eq_high_db
        if abs(v) >= 1.5:
            return int(t), nearest(_act.EQ_DB, v)
    if abs(ops.gain_db) >= 0.75:
        return int(_T.GAIN), nearest(_act.GAIN_DB, ops.gain_db)
    return int(_T.KEEP), 2


class _Oracle:
    """Greedy decomposition of a merged plan into actions, simulated on an Executor so
    every emitted action is checked against the masks as it is chosen.

    ex : the executor to drive (stepped in place: pass a copy); target : merged segments
    to append after what ``ex`` already holds."""

    def __init__(self, ex: Executor, target: EditPlan, *, protect_end: bool) -> None:
        self.protect_end = protect_end
        self.target = target
        self.ex = ex
        self.tab = ex.tables
        self.ok = ex.allowed  # ok(t, s): size s of type t is allowed now (hot: bound once)
        self.acts: list[tuple[int, int, int]] = []
        self.notes: list[str] = []

    def do(self, t: int, s: int, a: int) -> None:
        self.ex.step(t, s, a)
        self.acts.append((int(t), int(s), int(a)))

    # -- head movement ------------------------------------------------------------------
    def move_to(self, target: int) -> bool:
        """CUT / SKIP forward or JUMP_BACK (then forward) until the head is at target."""
        ex, tab = self.ex, self.tab
        while ex.head != target:
            if ex.done:
                self.notes.append(f"step cap reached before beat {target}")
                return False
            h = ex.head
            if target > h:
                best = None  # (end, preference) -> action
                kept = ex.n_segments > 0
                for s in range(_NS):
                    if self.ok(_CUT, s) and tab.end[s][h] <= target:
                        cand = (tab.end[s][h], 0, -s, (_CUT, s, 2))
                        best = cand if best is None or cand[:3] > best[:3] else best
                    if self.ok(_SKIP, s):
                        for a in range(_NA):
                            k = SKIP_K[a]
                            if k is None:
                                continue
                            e = tab.chunk_ends(s, h, k)
                            if not kept and e >= tab.n:
                                e = tab.n - 1  # as in Executor._apply
                            if e <= target:
                                cand = (e, -1, -s, (_SKIP, s, a))
                                best = cand if best is None or cand[:3] > best[:3] else best
                assert best is not None, "CUT BEAT always fits before a later target"
                self.do(*best[3])
            else:
                if not ex.masks().type[_JUMP]:
                    self.notes.append(f"cannot go back from beat {h} to {target} (jump budget spent)")
                    return False
                below, above = None, None
                for s in range(_NS):
                    if not self.ok(_JUMP, s):
                        continue
                    for a in range(_NA):
                        k = JUMP_K[a]
                        if k is None:
                            continue
                        b = tab.back[k][s][h]
                        if b <= target:
                            cand = (b, -s, -k, (_JUMP, s, a))
                            below = cand if below is None or cand[:3] > below[:3] else below
                        else:
                            cand = (-b, -s, -k, (_JUMP, s, a))
                            above = cand if above is None or cand[:3] > above[:3] else above
                self.do(*(below or above)[3])
        return True

    # -- emitting one span --------------------------------------------------------------
    def best_size(self, t: int, h: int, b: int, exact_end: bool) -> int | None:
        """Largest allowed size of type t whose chunk from h ends at (or before) b."""
        best = None
        for s in range(_NS):
            e = self.tab.end[s][h]
            if self.ok(t, s) and (e == b if exact_end else e <= b):
                best = s
        return best

    def emit(self, b: int, ops: Ops, *, single_chunk: bool = False) -> bool:
        """Append [head, b) with ``ops`` in the largest chunks; False when not exact.

        single_chunk : the span must be one chunk (fades, reverse: splitting changes
        the sound)."""
        ex = self.ex
        exact = True
        tr = _treatment(ops)
        fade = ops.fade_in_s > 0 or ops.fade_out_s > 0
        if fade and ops == replace(Ops(), fade_in_s=ops.fade_in_s, fade_out_s=ops.fade_out_s) and (
            ops.fade_in_s == 0 or ops.fade_out_s == 0
        ):
            t = _FADE_IN if ops.fade_in_s > 0 else _FADE_OUT
            want = ops.fade_in_s if t == _FADE_IN else ops.fade_out_s
            s = self.best_size(t, ex.head, b, exact_end=True)
            if s is not None:
                dur = self.tab.bounds[b] - self.tab.bounds[ex.head]
                a = min(range(_NA), key=lambda a: abs(FADE_FRAC[a] * dur - want))
                if FADE_FRAC[a] * dur != want:
                    self.notes.append(f"fade {want:.3f} s over beats [{ex.head}, {b}) is no chunk fraction")
                    exact = False
                self.do(t, s, a)
                return exact
            self.notes.append(f"fade over beats [{ex.head}, {b}) is not one chunk")
            exact = False
            # closest: the fade on the first (fade in) or last (fade out) chunk only
            first = True
            while not ex.done and ex.head < b:
                s = self.best_size(_KEEP, ex.head, b, exact_end=False)
                last = self.tab.end[s][ex.head] == b
                if (t == _FADE_IN and first) or (t == _FADE_OUT and last):
                    self.do(t, s, 4)  # the whole chunk
                else:
                    self.do(_KEEP, s, 2)
                first = False
            return False
        if tr is None:
            tr = _closest_treatment(ops)
            self.notes.append(f"ops {ops} are not one action's treatment")
            exact = False
        t, a = tr
        while not ex.done and ex.head < b:
            s = self.best_size(t, ex.head, b, exact_end=single_chunk)
            if s is None:
                self.notes.append(f"reversed span [{ex.head}, {b}) is not one chunk")
                exact = False
                s = self.best_size(t, ex.head, b, exact_end=False)
            self.do(t, s, a)
        return exact and ex.head == b

    # -- the whole plan -----------------------------------------------------------------
    def run(self) -> OracleResult:
        ex, tab = self.ex, self.tab
        n_before = ex.n_segments  # appended before the oracle took over (append-only)
        work = [[s.raw_start, s.raw_end, s.ops] for s in self.target.segments]
        i = 0
        while i < len(work) and not ex.done:
            a0, b0, ops = work[i]
            nxt = work[i + 1] if i + 1 < len(work) else None
            # 1. an exact repeat of the last appended segment
            if ex.n_segments and ex.spans()[-1] == (a0, b0, ops) and self.ok(_REPEAT, 0):
                self.do(_REPEAT, 0, 2)
                i += 1
                continue
            # 2. SWAP_NEXT / REORDER: this span is the chunk(s) after the chunk at which
            #    the next span starts. A span reaching the song's end can only be
            #    followed by more output this way (any other action appending it ends
            #    the episode), so such a span is first split where the swap starts.
            if nxt is not None and ops == _IDENTITY and nxt[2] == _IDENTITY:
                if b0 == tab.n and a0 < nxt[1] < b0 and i + 2 == len(work):
                    work[i:i + 1] = [[a0, nxt[1], ops], [nxt[1], b0, ops]]
                    continue
                if nxt[0] < a0 and self.structural(i, work):
                    i += 1  # work[i + 1] was trimmed to what remains of it (or removed)
                    continue
            # 3. go to the span's start
            if not self.move_to(a0):
                self.notes.append(f"segment [{a0}, {b0}) dropped")
                i += 1
                continue
            # 4. a repeat of this span's tail by the next span: LOOP / REPEAT_PREV
            if nxt is not None and nxt[2] == ops and a0 <= nxt[0] < b0 <= nxt[1] and self.repeat(i, work):
                i += 1
                continue
            self.emit(b0, ops, single_chunk=ops.reversed)
            i += 1
        if i < len(work):
            why = "step cap" if ex.n_steps >= ex.max_steps else "the head reached the song's end"
            self.notes.append(f"{len(work) - i} segments not reached ({why})")
        if ex.n_segments and not ex.done:
            self.move_to(tab.n)
        got = ex.plan()
        want = self.target
        if n_before:
            before = tuple(Segment(a, b, o) for a, b, o in ex.spans()[:n_before])
            want = replace(want, segments=before + want.segments).merged()
        exact = got == want and not self.notes
        if got != want and not self.notes:
            self.notes.append("actions do not rebuild the plan")
        return OracleResult(actions=tuple(self.acts), plan=got, exact=exact, notes=tuple(self.notes))

    def repeat(self, i: int, work: list) -> bool:
        """Emit work[i] = [a0, b0) whose tail [c, b0) the following spans repeat (they
        start at c with the same ops) as chunks up to c, then LOOP (unchanged chunk) or
        the treated chunk + REPEAT_PREV. Consumed spans are removed from ``work`` (a
        longer last one is trimmed to start at b0). False when it does not fit."""
        ex, tab = self.ex, self.tab
        a0, b0, ops = work[i]
        c = work[i + 1][0]
        tr = _treatment(ops)
        if tr is None or ops.reversed or ex.head != a0:
            return False
        if not any(tab.end[s][c] == b0 for s in range(_NS)):
            return False  # the repeated tail is not one chunk
        if c > a0 and not self.emit(c, ops):
            return True  # emitted (inexactly); the caller moves on
        reps, j, trim = 0, i + 1, None
        while j < len(work) and work[j][0] == c and work[j][2] == ops and work[j][1] >= b0 and reps < 3:
            if work[j][1] > b0:
                if self.protect_end and work[j][1] == tab.n and j + 1 < len(work):
                    break  # keep a span reaching the end whole: SWAP/REORDER may need it
                reps += 1
                trim = j
                break
            reps += 1
            j += 1
        if reps == 0:
            return False
        s_loop = self.best_size(_LOOP, c, b0, exact_end=True)
        if ops == _IDENTITY and s_loop is not None:
            self.do(_LOOP, s_loop, {1: 2, 2: 3, 3: 4}[reps])
            done_reps = reps
        else:
            s = self.best_size(tr[0], c, b0, exact_end=True)
            if s is None:  # pragma: no cover - the first allowed size ending at b0 exists
                return False
            self.do(tr[0], s, tr[1])
            done_reps = 0
            while done_reps < reps and self.ok(_REPEAT, 0):
                self.do(_REPEAT, 0, 2)
                done_reps += 1
        # drop the consumed repeats; trim a longer last one to what follows b0
        consumed = list(range(i + 1, i + 1 + done_reps))
        if trim is not None and trim in consumed:
            work[trim] = [b0, work[trim][1], ops]
            consumed.remove(trim)
        for k in reversed(consumed):
            del work[k]
        return True

    def structural(self, i: int, work: list) -> bool:
        """Emit SWAP_NEXT or REORDER for work[i], work[i+1] if they fit; trims work[i+1]."""
        tab = self.tab
        a0, b0, _ = work[i]
        nxt = work[i + 1]
        y = nxt[0]
        for s in range(_NS):
            e1 = tab.end[s][y]
            if e1 != a0 or nxt[1] < e1:
                continue
            e2 = tab.end[s][e1]
            e3 = tab.end[s][e2]
            if b0 == e2:
                t = _SWAP
            elif b0 == e3 and e2 < tab.n:
                t = _REORDER
            else:
                continue
            if not self.move_to(y) or not self.ok(t, s):
                return False
            self.do(t, s, 2)
            if nxt[1] == e1:
                del work[i + 1]
            else:
                work[i + 1] = [e1, nxt[1], nxt[2]]
            return True
        return False


def oracle(plan: EditPlan, **kw) -> OracleResult:
    """Decompose a plan into factored actions (the inverse of ``execute``).

    Greedy, left to right over ``plan.merged()``: a segment equal to the last appended
    one is REPEAT_PREV; a span that is the chunk(s) after the head followed by the
    head's chunk is SWAP_NEXT / REORDER; otherwise the head moves to the segment's start
    (CUT / SKIP forward with the farthest-reaching allowed move, JUMP_BACK to the
    nearest allowed landing point at or before it, then forward), and the segment is
    appended in the largest allowed chunks of the one type whose treatment equals its
    ops; a tail repeated by the next segment becomes LOOP (unchanged chunks) or the
    treatment + REPEAT_PREV. Ends with the cuts to the end of the song. Two variants of
    this greedy pass are tried (see the code); the first exact one is returned.

    Not every plan is expressible: ops that are no single action's treatment (several
    effects, other dB values), fades that are no chunk fraction, reversed spans that
    are not one chunk, more jumps back than the budget or more steps than the cap.
    Then the closest actions are returned with ``exact=False`` and the reasons in
    ``notes``. ``kw`` go to ``Executor`` (use the environment's budgets).
    """
    # Two greedy variants differ only in whether a repeat may eat into a span that
    # reaches the song's end (needed by LOOPs at the end, fatal before a final SWAP /
    # REORDER); the first exact one wins.
    start = Executor(plan.grid, source_sha256=plan.source_sha256, **kw)
    first = oracle_from(start, plan, protect_end=False)
    if first.exact:
        return first
    second = oracle_from(start, plan, protect_end=True)
    return second if second.exact else first


def oracle_from(ex: Executor, plan: EditPlan, *, protect_end: bool = False) -> OracleResult:
    """The oracle's actions from any executor state: ``plan``'s segments appended after
    what ``ex`` already holds, then the cuts to the song's end (``oracle`` is this from
    a fresh executor). The DAgger expert (pretrain/dagger.py) labels off-trajectory
    states with it.

    ex : Executor on ``plan``'s grid, in any state; not modified (the oracle steps a copy)
    plan : the segments still to play, in order (merged here)
    protect_end : the second greedy variant of ``oracle`` (a repeat never eats into a
        span that reaches the song's end)

    Returns an ``OracleResult`` whose ``plan`` holds the segments ``ex`` had appended
    before, and whose ``actions`` are only the new ones. Moves the vocabulary cannot
    make from this state (a jump back with the budget spent, the step cap) are in
    ``notes``, with the closest actions.
    """
    if ex.n_beats != plan.grid.n_beats:
        raise ParameterError(f"oracle_from: executor on {ex.n_beats} beats, plan on {plan.grid.n_beats}")
    return _Oracle(ex.copy(), plan.merged(), protect_end=protect_end).run()


def oracle_actions(plan: EditPlan, *, strict: bool = True, **kw) -> list[tuple[int, int, int]]:
    """Actions such that ``execute(plan.grid, actions, source_sha256=plan.source_sha256,
    **kw) == plan.merged()``.

    strict : raise ``ParameterError`` (with the reasons) when the plan is not exactly
        expressible; otherwise return the closest actions (see ``oracle``)
    """
    res = oracle(plan, **kw)
    if strict and not res.exact:
        raise ParameterError("plan is not expressible with the action vocabulary: " + "; ".join(res.notes[:3]))
    return list(res.actions)
