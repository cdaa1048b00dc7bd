"""The action executor: factored actions -> EditPlan, one step at a time (the environment
calls exactly this), with the masks of every state.

Semantics are the table in envs/actions.py (``MEANING``, docs/actions.md). Speed matters
(the environment must step >= 20k times/s): everything that depends only on the grid is
precomputed once per grid (``GridTables``), masks are cached per state key, and ``step``
is plain scalar Python. The inverse, plan -> actions, is envs/oracle.py; it reads the
same tables (``Executor.tables`` and the per-(type, amount) lists below).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from datasets.beats import BeatGrid
from datasets.errors import ParameterError
from envs import actions as _act
from envs.plan import EditPlan, Ops, Segment

__all__ = ["Masks", "Executor", "GridTables", "StepResult", "execute",
           "OPS", "KEEP_LIKE_TYPES", "FADE_FRAC", "LOOP_K", "SKIP_K", "JUMP_K", "AMOUNT_OK"]

_T = _act.ActionType
_NT, _NS, _NA = _act.N_TYPES, _act.N_SIZES, _act.N_AMOUNTS
_KEEP, _CUT, _LOOP, _REORDER, _JUMP, _SKIP = 0, 1, 2, 3, 4, 5
_FADE_IN, _FADE_OUT, _REPEAT, _SWAP = 6, 7, 16, 17
assert (_T.REORDER, _T.JUMP_BACK, _T.REPEAT_PREV, _T.SWAP_NEXT) == (_REORDER, _JUMP, _REPEAT, _SWAP)


def _ops_table() -> list[list[Ops | None]]:
    """Ops appended by keep-like types for each amount (None: undefined amount).

    NEUTRAL-only types ignore the amount (a masked amount means the same as NEUTRAL);
    GAIN / EQ at NEUTRAL are 0 dB, i.e. KEEP. Fades depend on the chunk (None here).
    """
    tab: list[list[Ops | None]] = [[None] * _NA for _ in range(_NT)]
    for a in range(_NA):
        A = _act.Amount(a)
        tab[_T.KEEP][a] = Ops()
        tab[_T.GAIN][a] = Ops(gain_db=_act.GAIN_DB.get(A, 0.0))
        tab[_T.DOUBLE_TIME][a] = Ops(time_factor=_act.TIME_FACTOR[_T.DOUBLE_TIME])
        tab[_T.HALF_TIME][a] = Ops(time_factor=_act.TIME_FACTOR[_T.HALF_TIME])
        tab[_T.REVERSE][a] = Ops(reversed=True)
        tab[_T.EQ_LOW][a] = Ops(eq_low_db=_act.EQ_DB.get(A, 0.0))
        tab[_T.EQ_HIGH][a] = Ops(eq_high_db=_act.EQ_DB.get(A, 0.0))
        if A in _act.DISTORTION_DB or A == _act.Amount.NEUTRAL:
            tab[_T.DISTORTION][a] = Ops(distortion=_act.DISTORTION_DB.get(A, 0.0))
        if A in _act.REVERB_WET or A == _act.Amount.NEUTRAL:
            tab[_T.REVERB][a] = Ops(reverb=_act.REVERB_WET.get(A, 0.0))
    return tab


# The action table (envs/actions.py) as per-(type, amount) Python lists, for scalar speed
# in ``step``; the oracle (envs/oracle.py) reads the same lists, so the two cannot drift.
#: OPS[t][a]: the Ops a keep-like type t appends at amount a (None: undefined amount)
OPS = _ops_table()
#: the keep-like types as ints (they append the chunk at the head and advance past it)
KEEP_LIKE_TYPES = frozenset(int(t) for t in _act.KEEP_LIKE)
#: per amount: fade fraction, LOOP count, SKIP chunks, JUMP_BACK units (None: undefined)
FADE_FRAC = [_act.FADE_FRACTION.get(_act.Amount(a)) for a in range(_NA)]
LOOP_K = [_act.LOOP_COUNT.get(_act.Amount(a)) for a in range(_NA)]
SKIP_K = [_act.SKIP_CHUNKS.get(_act.Amount(a)) for a in range(_NA)]
JUMP_K = [_act.JUMP_UNITS.get(_act.Amount(a)) for a in range(_NA)]
#: AMOUNT_OK[t][a]: amount a means something for type t
AMOUNT_OK = [[_act.Amount(a) in _act.VALID_AMOUNTS[_T(t)] for a in range(_NA)] for t in range(_NT)]
_TS_ACTIONS = [[tuple((t, s, a) for a in range(_NA) if AMOUNT_OK[t][a]) for s in range(_NS)] for t in range(_NT)]
_AMOUNT_MASK = np.array(AMOUNT_OK, dtype=bool)
_AMOUNT_MASK.flags.writeable = False


@dataclass(frozen=True)
class Masks:
    """The three action masks of one state (True = allowed); arrays are read-only.

    type : np.ndarray [shape=(18,), bool]
    size : np.ndarray [shape=(18, 5), bool] allowed sizes given the type
    amount : np.ndarray [shape=(18, 5), bool] allowed amounts given the type (the same
        in every state: amounts are masked by meaning, never by position)

    Every (type, size, amount) with all three True executes; a type is allowed iff it
    has an allowed size.
    """

    type: np.ndarray
    size: np.ndarray
    amount: np.ndarray


class GridTables:
    """Everything about a grid the executor needs, as Python lists (fast scalar access);
    the oracle plans with the same tables (``Executor.tables``).

    n : beats of the grid; bounds : beat boundaries in seconds [n + 1]

    end[s][h] : end of the unit of size s that contains beat h (the chunk is [h, end));
        end[s][n] = n so chained lookups clip at the song's end
    back[k][s][h] : where JUMP_BACK by k units of size s from head h lands (k = 1, 2):
        the start of the k-th unit starting before h, clipped at 0
    """

    def __init__(self, grid: BeatGrid) -> None:
        n = grid.n_beats
        self.n = n
        self.bounds = [float(x) for x in grid.bounds]
        unit_ids = [grid.unit_ids(_act.SIZE_UNIT_BARS[_act.Size(s)]) for s in range(_NS)]
        self.end: list[list[int]] = []
        self.start: list[list[int]] = []
        for ids in unit_ids:
            # a unit is a run of equal ids (robust even if bar numbers were not monotonic)
            change = np.flatnonzero(ids[1:] != ids[:-1]) + 1  # unit starts after 0
            starts = np.concatenate([[0], change])
            ends = np.concatenate([change, [n]])
            which = np.repeat(np.arange(len(starts)), ends - starts)
            self.end.append(ends[which].tolist() + [n])
            self.start.append(starts[which].tolist() + [n])
        self.back: list[list[list[int]] | None] = [None, [], []]
        for s in range(_NS):
            st = self.start[s]
            b1 = [0] + [st[h - 1] for h in range(1, n + 1)]
            b2 = [0] + [st[b - 1] if b > 0 else 0 for b in b1[1:]]
            self.back[1].append(b1)
            self.back[2].append(b2)
        # state key -> [Masks, size rows as lists, valid (t, s, a) tuple or None until asked]
        self.mask_cache: dict[int, list] = {}

    def chunk_ends(self, s: int, h: int, k: int) -> int:
        """End of k consecutive chunks of size s from h (clipped at n)."""
        e = self.end[s]
        for _ in range(k):
            h = e[h]
        return h


_TABLE_CACHE: "OrderedDict[int, tuple[BeatGrid, GridTables]]" = OrderedDict()


def _tables_for(grid: BeatGrid) -> GridTables:
    """Per-grid tables, cached for the last 64 grid objects (by identity; the cache holds
    the grid, so an id is never reused while cached)."""
    hit = _TABLE_CACHE.get(id(grid))
    if hit is not None and hit[0] is grid:
        _TABLE_CACHE.move_to_end(id(grid))
        return hit[1]
    tab = GridTables(grid)
    _TABLE_CACHE[id(grid)] = (grid, tab)
    while len(_TABLE_CACHE) > 64:
        _TABLE_CACHE.popitem(last=False)
    return tab


class StepResult(NamedTuple):
    """What one step did: head before/after (raw beats), segments appended, done."""

    head_before: int
    head_after: int
    n_appended: int
    done: bool


class Executor:
    """Turns factored actions into an EditPlan, one step at a time.

    Parameters
    ----------
    grid : BeatGrid of the raw recording
    source_sha256 : the raw audio's hash, copied into the plan
    max_steps : int > 0, step cap (default ``max(16, 4 * n_beats)``): the episode ends
        there even if the head has not reached the end (JUMP_BACK and REPEAT_PREV do
        not advance, so without a cap an episode could last forever)
    jump_budget : int >= 0, JUMP_BACKs allowed per episode (default
        ``max(16, n_beats // 8)``); JUMP_BACK is masked once it is spent
    loop_budget : int >= 0 or None, LOOP + REPEAT_PREV steps allowed per episode
        (default None = unlimited; SPEC.md's loop budget is a reward penalty, the
        reward reads ``n_loops``)
    max_output_ratio : float > 0, output length cap as a multiple of the raw duration
        (default 1.5): once reached, LOOP, REPEAT_PREV and JUMP_BACK are masked. Without
        it a policy could REPEAT_PREV until the step cap and turn a 3-minute song into an
        hour (an untrained policy did exactly that).

    State read by the environment (all per episode, reset by ``reset``)
    --------------------------------------------------------------------
    head : read head, raw beat in [0, n_beats]; done when it reaches n_beats
    n_steps, done, jumps_left, loops_left
    type_counts : list[int] [18], steps per action type
    n_loops (LOOP + REPEAT_PREV), n_jumps, n_cuts (CUT + SKIP)
    beat_usage : np.ndarray [shape=(n_beats,), int32] times each raw beat was appended
    beat_cut : np.ndarray [shape=(n_beats,), int32] times each raw beat was dropped by
        CUT / SKIP
    out_beats : raw beats appended so far (with repeats); out_seconds : output duration
        so far in seconds (time factors applied, crossfades ignored)
    n_segments : segments appended so far (unmerged)
    """

    def __init__(
        self,
        grid: BeatGrid,
        *,
        source_sha256: str = "",
        max_steps: int | None = None,
        jump_budget: int | None = None,
        loop_budget: int | None = None,
        max_output_ratio: float = 1.5,
    ) -> None:
        self.grid = grid
        self.source_sha256 = source_sha256
        self._tab = _tables_for(grid)
        n = self._tab.n
        self.n_beats = n
        self.max_steps = _act.default_max_steps(n) if max_steps is None else int(max_steps)
        self.jump_budget = _act.default_jump_budget(n) if jump_budget is None else int(jump_budget)
        self.loop_budget = None if loop_budget is None else int(loop_budget)
        if not max_output_ratio > 0:
            raise ParameterError(f"max_output_ratio must be > 0, got {max_output_ratio}")
        self.max_output_ratio = float(max_output_ratio)
        self._out_cap = self.max_output_ratio * grid.duration
        if self.max_steps <= 0 or self.jump_budget < 0 or (self.loop_budget is not None and self.loop_budget < 0):
            raise ParameterError(
                f"executor budgets must be positive (max_steps={max_steps}, jump_budget={jump_budget}, loop_budget={loop_budget})"
            )
        self.reset()

    # -- episode state ----------------------------------------------------------------
    def reset(self) -> "Executor":
        """Start a new episode on the same grid (head 0, empty plan)."""
        n = self.n_beats
        self.head = 0
        self.n_steps = 0
        self.done = False
        self.jumps_left = self.jump_budget
        self.loops_left = self.loop_budget
        self.type_counts = [0] * _NT
        self.n_loops = self.n_jumps = self.n_cuts = 0
        self.beat_usage = np.zeros(n, dtype=np.int32)
        self.beat_cut = np.zeros(n, dtype=np.int32)
        self.out_beats = 0
        self.out_seconds = 0.0
        self._segs: list[tuple[int, int, Ops]] = []
        return self

    def copy(self) -> "Executor":
        """An independent copy of the current state (shares the grid tables)."""
        c = object.__new__(Executor)
        c.__dict__.update(self.__dict__)
        c.type_counts = list(self.type_counts)
        c.beat_usage = self.beat_usage.copy()
        c.beat_cut = self.beat_cut.copy()
        c._segs = list(self._segs)
        return c

    @property
    def tables(self) -> GridTables:
        """The grid's unit tables (shared by every executor on this grid; read-only)."""
        return self._tab

    def allowed(self, t: int, s: int) -> bool:
        """Whether size s of type t is allowed now (``masks().size[t, s]`` as a Python
        bool, without building arrays; False once done)."""
        return not self.done and self._entry()[1][t][s]

    @property
    def n_segments(self) -> int:
        return len(self._segs)

    @property
    def last_segment(self) -> Segment | None:
        """The most recently appended segment (what REPEAT_PREV would repeat)."""
        if not self._segs:
            return None
        a, b, o = self._segs[-1]
        return Segment(a, b, o)

    def spans(self) -> tuple[tuple[int, int, Ops], ...]:
        """Appended segments in order, not merged, as (raw_start, raw_end, ops) triples:
        ``segments`` without building Segment objects, for per-step callers (DAgger)."""
        return tuple(self._segs)

    def segments(self) -> tuple[Segment, ...]:
        """Appended segments in order, not merged."""
        return tuple(Segment(a, b, o) for a, b, o in self._segs)

    def plan(self) -> EditPlan:
        """The plan so far, merged (``EditPlan.merged``). Not validated: it is empty
        when nothing was appended (possible only if the step cap ends the episode)."""
        return EditPlan(segments=self.segments(), grid=self.grid, source_sha256=self.source_sha256).merged()

    # -- masks --------------------------------------------------------------------------
    def _key(self) -> int:
        room = self.out_seconds < self._out_cap  # repeats stop at the output length cap
        return (
            (self.head << 3)
            | (4 if self._segs else 0)
            | (2 if room and self.jumps_left > 0 else 0)
            | (1 if room and (self.loops_left is None or self.loops_left > 0) else 0)
        )

    def _entry(self):
        key = self._key()
        hit = self._tab.mask_cache.get(key)
        if hit is None:
            hit = self._tab.mask_cache[key] = self._compute_masks(key)
        return hit

    def masks(self) -> Masks:
        """Masks of the current state (cached per state; arrays are read-only).

        After ``done`` every type is masked."""
        if self.done:
            return _DONE_MASKS
        return self._entry()[0]

    def valid_actions(self) -> tuple[tuple[int, int, int], ...]:
        """Every allowed (type, size, amount) of the current state (cached)."""
        if self.done:
            return ()
        entry = self._entry()
        if entry[2] is None:  # built on first use: the environment itself never needs it
            rows = entry[1]
            entry[2] = tuple(x for t in range(_NT) for s in range(_NS) if rows[t][s] for x in _TS_ACTIONS[t][s])
        return entry[2]

    def _compute_masks(self, key: int):
        h = key >> 3
        has_out, can_jump, can_loop = bool(key & 4), bool(key & 2), bool(key & 1)
        tab = self._tab
        n = tab.n
        assert h < n
        e1 = [tab.end[s][h] for s in range(_NS)]
        e2 = [tab.end[s][e1[s]] for s in range(_NS)]
        e3 = [tab.end[s][e2[s]] for s in range(_NS)]
        e4 = [tab.end[s][e3[s]] for s in range(_NS)]
        rows = [[False] * _NS for _ in range(_NT)]
        for t in range(_NT):
            row = rows[t]
            if t in KEEP_LIKE_TYPES or t in (_CUT, _LOOP):
                if t == _LOOP and not can_loop:
                    continue
                for s in range(_NS):
                    # one name per distinct chunk: drop a size that ends where a smaller one does
                    if s > 0 and e1[s] == e1[s - 1]:
                        continue
                    if t == _CUT and not has_out and e1[s] == n:
                        continue  # cutting to the end with nothing kept leaves no edit
                    row[s] = True
            elif t == _SKIP:
                # with nothing kept, SKIP stops at the last beat (an edit keeps something)
                lim = n if has_out else n - 1
                for s in range(_NS):
                    if e1[s] >= lim:
                        continue  # SKIP would land where CUT of this size does
                    if s > 0 and (min(e2[s], lim), min(e3[s], lim), min(e4[s], lim)) == (
                        min(e2[s - 1], lim),
                        min(e3[s - 1], lim),
                        min(e4[s - 1], lim),
                    ):
                        continue
                    row[s] = True
            elif t == _JUMP:
                if h == 0 or not can_jump:
                    continue
                b1, b2 = tab.back[1], tab.back[2]
                for s in range(_NS):
                    if s > 0 and b1[s][h] == b1[s - 1][h] and b2[s][h] == b2[s - 1][h]:
                        continue
                    row[s] = True
            elif t == _SWAP:
                for s in range(_NS):
                    if e1[s] >= n:
                        continue
                    if s > 0 and (e1[s], e2[s]) == (e1[s - 1], e2[s - 1]):
                        continue
                    row[s] = True
            elif t == _REORDER:
                for s in range(_NS):
                    if e2[s] >= n:
                        continue
                    if s > 0 and (e1[s], e2[s], e3[s]) == (e1[s - 1], e2[s - 1], e3[s - 1]):
                        continue
                    row[s] = True
            elif t == _REPEAT:
                row[0] = has_out and can_loop
            else:  # pragma: no cover - every type is handled above
                raise AssertionError(t)
        size = np.array(rows, dtype=bool)
        typ = size.any(axis=1)
        assert typ[_KEEP] and size[_KEEP, 0], "KEEP BEAT is always allowed before the end"
        size.flags.writeable = False
        typ.flags.writeable = False
        return [Masks(type=typ, size=size, amount=_AMOUNT_MASK), rows, None]

    # -- stepping -------------------------------------------------------------------------
    def step(self, t: int, s: int, a: int) -> StepResult:
        """Execute one allowed action; raise ``ParameterError`` for a masked one."""
        if self.done:
            raise ParameterError("episode is done; call reset()")
        rows = self._entry()[1]
        if not (0 <= t < _NT and 0 <= s < _NS and 0 <= a < _NA) or not rows[t][s] or not AMOUNT_OK[t][a]:
            raise ParameterError(f"action ({_name(t, s, a)}) is masked at head {self.head}")
        return self._apply(t, s, a)

    def _apply(self, t: int, s: int, a: int) -> StepResult:
        """Execute without looking at the masks. Raises ``ParameterError`` when the
        action has no meaning here (undefined amount, nothing to jump to or repeat, no
        next chunk); a masked but defined action does what its table entry says (tests
        use this to show masked actions duplicate allowed ones)."""
        tab = self._tab
        n = tab.n
        h = self.head
        segs = self._segs
        n0 = len(segs)
        end = tab.end[s]
        if (t == _LOOP or t == _REPEAT or t == _JUMP) and self.out_seconds >= self._out_cap:
            raise ParameterError(f"{_name(t, s, a)}: output already {self.max_output_ratio:g}x the raw length")
        if t in KEEP_LIKE_TYPES:
            e = end[h]
            if t == _FADE_IN or t == _FADE_OUT:
                frac = FADE_FRAC[a]
                dur = tab.bounds[e] - tab.bounds[h]
                ops = Ops(fade_in_s=frac * dur) if t == _FADE_IN else Ops(fade_out_s=frac * dur)
            else:
                ops = OPS[t][a]
                if ops is None:
                    raise ParameterError(f"{_name(t, s, a)} has no meaning")
            self._append(h, e, ops, 1)
            self.head = e
        elif t == _CUT:
            e = end[h]
            self.beat_cut[h:e] += 1
            self.n_cuts += 1
            self.head = e
        elif t == _LOOP:
            k = LOOP_K[a]
            if k is None:
                raise ParameterError(f"{_name(t, s, a)} has no meaning")
            if self.loops_left is not None and self.loops_left <= 0:
                raise ParameterError("loop budget spent")
            e = end[h]
            self._append(h, e, _IDENTITY, k)
            self.n_loops += 1
            if self.loops_left is not None:
                self.loops_left -= 1
            self.head = e
        elif t == _SKIP:
            k = SKIP_K[a]
            if k is None:
                raise ParameterError(f"{_name(t, s, a)} has no meaning")
            e = h
            for _ in range(k):
                e = end[e]
            if not segs and e >= n:
                e = n - 1  # nothing kept yet: the last beat stays (an edit keeps something)
            self.beat_cut[h:e] += 1
            self.n_cuts += 1
            self.head = e
        elif t == _JUMP:
            k = JUMP_K[a]
            if k is None or h == 0:
                raise ParameterError(f"{_name(t, s, a)} has no meaning at head {h}")
            if self.jumps_left <= 0:
                raise ParameterError("jump budget spent")
            self.head = tab.back[k][s][h]
            self.jumps_left -= 1
            self.n_jumps += 1
        elif t == _SWAP or t == _REORDER:
            e1 = end[h]
            e2 = end[e1]
            if e1 >= n or (t == _REORDER and e2 >= n):
                raise ParameterError(f"{_name(t, s, a)}: not enough chunks left at head {h}")
            if t == _SWAP:
                self._append(e1, e2, _IDENTITY, 1)
                self._append(h, e1, _IDENTITY, 1)
                self.head = e2
            else:
                e3 = end[e2]
                self._append(e1, e3, _IDENTITY, 1)
                self._append(h, e1, _IDENTITY, 1)
                self.head = e3
        elif t == _REPEAT:
            if not segs:
                raise ParameterError("REPEAT_PREV: nothing appended yet")
            if self.loops_left is not None and self.loops_left <= 0:
                raise ParameterError("loop budget spent")
            ra, rb, ro = segs[-1]
            self._append(ra, rb, ro, 1)
            self.n_loops += 1
            if self.loops_left is not None:
                self.loops_left -= 1
        else:
            raise ParameterError(f"action type {t} outside [0, {_NT})")
        self.type_counts[t] += 1
        self.n_steps += 1
        self.done = self.head >= n or self.n_steps >= self.max_steps
        return StepResult(h, self.head, len(segs) - n0, self.done)

    def _append(self, a: int, b: int, ops: Ops, k: int) -> None:
        seg = (a, b, ops)
        for _ in range(k):
            self._segs.append(seg)
        self.beat_usage[a:b] += k
        self.out_beats += k * (b - a)
        self.out_seconds += k * (self._tab.bounds[b] - self._tab.bounds[a]) / ops.time_factor


_IDENTITY = Ops()
_DONE_MASKS = Masks(
    type=np.zeros(_NT, dtype=bool), size=np.zeros((_NT, _NS), dtype=bool), amount=_AMOUNT_MASK
)
for _arr in (_DONE_MASKS.type, _DONE_MASKS.size):
    _arr.flags.writeable = False


def _name(t: int, s: int, a: int) -> str:
    try:
        return f"{_T(t).name}, {_act.Size(s).name}, {_act.Amount(a).name}"
    except ValueError:
        return f"{t}, {s}, {a}"


def execute(grid: BeatGrid, actions, **kw) -> EditPlan:
    """Run (type, size, amount) actions from the start of ``grid``; return the merged plan.

    ``kw`` go to ``Executor`` (source_sha256, max_steps, jump_budget, loop_budget).
    Raises ``ParameterError`` for a masked action or one after the episode ended.
    """
    ex = Executor(grid, **kw)
    for i, (t, s, a) in enumerate(actions):
        try:
            ex.step(int(t), int(s), int(a))
        except ParameterError as exc:
            raise ParameterError(f"action {i}: {exc}") from None
    return ex.plan()
