"""The EditPlan: the one contract between alignment, the environment and the renderer.

An EditPlan is an ordered list of segments of the raw recording, each a span of whole
raw beats ``[raw_start, raw_end)`` with per-segment treatments (``Ops``). The plan
carries the ``BeatGrid`` it is expressed in and the hash of the raw audio, so that it
can be rendered, exported or re-loaded from JSON without guessing (DESIGN.md, "One
contract").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from datasets.beats import BeatGrid
from datasets.errors import ParameterError

__all__ = ["Ops", "Segment", "EditPlan", "PLAN_FORMAT_VERSION"]

PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Ops:
    """Treatments applied to one segment, in this order: time/reverse, EQ, effects,
    gain, fades.

    gain_db : level change in dB
    fade_in_s, fade_out_s : fade lengths in seconds at the segment's start / end
        (0 = none); equal-power join crossfades are separate and always present
    eq_low_db, eq_high_db : low-shelf (below ~200 Hz) / high-shelf (above ~4 kHz) gain
    distortion : drive in dB (0 = off)
    reverb : wet level in [0, 1] (0 = off)
    time_factor : playback speed, pitch preserved; 2.0 = double time (half as long),
        0.5 = half time (twice as long)
    reversed : play the segment backwards
    """

    gain_db: float = 0.0
    fade_in_s: float = 0.0
    fade_out_s: float = 0.0
    eq_low_db: float = 0.0
    eq_high_db: float = 0.0
    distortion: float = 0.0
    reverb: float = 0.0
    time_factor: float = 1.0
    reversed: bool = False

    @property
    def is_identity(self) -> bool:
        return self == Ops()

    @property
    def has_effect(self) -> bool:
        """True when anything other than gain and fades changes the sound."""
        return (
            self.eq_low_db != 0.0
            or self.eq_high_db != 0.0
            or self.distortion != 0.0
            or self.reverb != 0.0
            or self.time_factor != 1.0
            or self.reversed
        )


@dataclass(frozen=True)
class Segment:
    """Raw beats [raw_start, raw_end) played with ``ops``."""

    raw_start: int
    raw_end: int
    ops: Ops = field(default_factory=Ops)

    @property
    def n_beats(self) -> int:
        return self.raw_end - self.raw_start


@dataclass(frozen=True, eq=False)
class EditPlan:
    """Ordered segments of raw beats, the grid they index, and the raw audio's hash."""

    segments: tuple[Segment, ...]
    grid: BeatGrid
    source_sha256: str = ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EditPlan):
            return NotImplemented
        return (
            self.segments == other.segments
            and self.source_sha256 == other.source_sha256
            and np.array_equal(self.grid.bounds, other.grid.bounds)
        )

    __hash__ = None  # type: ignore[assignment]

    # -- derived quantities -------------------------------------------------------
    def segment_seconds(self, seg: Segment) -> tuple[float, float]:
        """Raw span of a segment in seconds."""
        return float(self.grid.bounds[seg.raw_start]), float(self.grid.bounds[seg.raw_end])

    @property
    def raw_beats_used(self) -> np.ndarray:
        """How many times each raw beat is played [shape=(n_beats,), int]."""
        used = np.zeros(self.grid.n_beats, dtype=np.int64)
        for s in self.segments:
            used[s.raw_start : s.raw_end] += 1
        return used

    @property
    def keep_ratio(self) -> float:
        """Fraction of the raw duration that appears at least once in the output."""
        kept = self.raw_beats_used > 0
        widths = np.diff(self.grid.bounds)
        return float(widths[kept].sum() / widths.sum())

    def merged(self) -> "EditPlan":
        """Same plan with contiguous segments that share ops joined into one.

        Two plans that sound the same then compare equal (KEEP 4 + KEEP 4 == KEEP 8).
        """
        out: list[Segment] = []
        for s in self.segments:
            # Reversed segments never merge: [0,4) reversed then [4,8) reversed plays
            # beats 3210 7654, while [0,8) reversed plays 76543210.
            if (
                out
                and out[-1].raw_end == s.raw_start
                and out[-1].ops == s.ops
                and s.ops.fade_in_s == 0
                and out[-1].ops.fade_out_s == 0
                and not s.ops.reversed
            ):
                out[-1] = replace(out[-1], raw_end=s.raw_end)
            else:
                out.append(s)
        return replace(self, segments=tuple(out))

    # -- validation ---------------------------------------------------------------
    def validate(self, *, source_sha256: str | None = None) -> "EditPlan":
        """Raise ``ParameterError`` naming the first problem; return self when valid."""
        if not self.segments:
            raise ParameterError("plan has no segments (an edit must keep something)")
        n = self.grid.n_beats
        for i, s in enumerate(self.segments):
            if not (0 <= s.raw_start < s.raw_end <= n):
                raise ParameterError(f"segment {i}: raw beats [{s.raw_start}, {s.raw_end}) outside [0, {n})")
            o = s.ops
            if not (-60.0 <= o.gain_db <= 24.0):
                raise ParameterError(f"segment {i}: gain_db {o.gain_db} outside [-60, 24]")
            if o.fade_in_s < 0 or o.fade_out_s < 0:
                raise ParameterError(f"segment {i}: negative fade length")
            if not (0.25 <= o.time_factor <= 4.0):
                raise ParameterError(f"segment {i}: time_factor {o.time_factor} outside [0.25, 4]")
            if not (0.0 <= o.reverb <= 1.0):
                raise ParameterError(f"segment {i}: reverb {o.reverb} outside [0, 1]")
            if not (0.0 <= o.distortion <= 60.0):
                raise ParameterError(f"segment {i}: distortion {o.distortion} dB outside [0, 60]")
            if abs(o.eq_low_db) > 24 or abs(o.eq_high_db) > 24:
                raise ParameterError(f"segment {i}: EQ gain beyond +-24 dB")
        if source_sha256 is not None and self.source_sha256 and source_sha256 != self.source_sha256:
            raise ParameterError(
                f"plan was made for audio {self.source_sha256[:12]}, not this file ({source_sha256[:12]})"
            )
        return self

    # -- JSON -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dict with beats *and* seconds for every segment."""
        segs = []
        for s in self.segments:
            t0, t1 = self.segment_seconds(s)
            segs.append(
                {"raw_start_beat": s.raw_start, "raw_end_beat": s.raw_end, "raw_start_s": t0, "raw_end_s": t1, "ops": asdict(s.ops)}
            )
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "source_sha256": self.source_sha256,
            "keep_ratio": self.keep_ratio,
            "segments": segs,
            "grid": self.grid.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "EditPlan":
        if d.get("format_version") != PLAN_FORMAT_VERSION:
            raise ParameterError(f"plan format_version {d.get('format_version')!r}, expected {PLAN_FORMAT_VERSION}")
        grid = BeatGrid.from_dict(d["grid"])
        known = {f.name for f in fields(Ops)}
        segs = []
        for i, s in enumerate(d["segments"]):
            unknown = set(s.get("ops", {})) - known
            if unknown:
                raise ParameterError(f"segment {i}: unknown ops {sorted(unknown)}")
            segs.append(Segment(int(s["raw_start_beat"]), int(s["raw_end_beat"]), Ops(**s.get("ops", {}))))
        return cls(segments=tuple(segs), grid=grid, source_sha256=d.get("source_sha256", "")).validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "EditPlan":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParameterError(f"plan is not valid JSON ({exc})") from None
        return cls.from_dict(d)


# =====================================================================================
# The action executor: factored actions -> EditPlan (the environment calls exactly this)
# =====================================================================================
# Semantics are the table in envs/actions.py (``MEANING``, docs/actions.md). Speed
# matters (the environment must step >= 20k times/s): everything that depends only on
# the grid is precomputed once per grid (``_GridTables``), masks are cached per state
# key, and ``step`` is plain scalar Python.

from collections import OrderedDict  # noqa: E402
from typing import NamedTuple  # noqa: E402

from envs import actions as _act  # noqa: E402

__all__ += ["Masks", "Executor", "StepResult", "execute", "oracle", "oracle_actions", "OracleResult"]

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


_OPS = _ops_table()
_KEEP_LIKE = frozenset(int(t) for t in _act.KEEP_LIKE)
_FADE_FRAC = [_act.FADE_FRACTION.get(_act.Amount(a)) for a in range(_NA)]
_LOOP_K = [_act.LOOP_COUNT.get(_act.Amount(a)) for a in range(_NA)]
_SKIP_K = [_act.SKIP_CHUNKS.get(_act.Amount(a)) for a in range(_NA)]
_JUMP_K = [_act.JUMP_UNITS.get(_act.Amount(a)) for a in range(_NA)]
_AMOUNT_OK = [[_act.Amount(a) in _act.VALID_AMOUNTS[_T(t)] for a in range(_NA)] for t in range(_NT)]
_TS_ACTIONS = [[tuple((t, s, a) for a in range(_NA) if _AMOUNT_OK[t][a]) for s in range(_NS)] for t in range(_NT)]
_AMOUNT_MASK = np.array(_AMOUNT_OK, dtype=bool)
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


class _GridTables:
    """Everything about a grid the executor needs, as Python lists (fast scalar access).

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


_TABLE_CACHE: "OrderedDict[int, tuple[BeatGrid, _GridTables]]" = OrderedDict()


def _tables_for(grid: BeatGrid) -> _GridTables:
    """Per-grid tables, cached for the last 64 grid objects (by identity; the cache holds
    the grid, so an id is never reused while cached)."""
    hit = _TABLE_CACHE.get(id(grid))
    if hit is not None and hit[0] is grid:
        _TABLE_CACHE.move_to_end(id(grid))
        return hit[1]
    tab = _GridTables(grid)
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
    def n_segments(self) -> int:
        return len(self._segs)

    @property
    def last_segment(self) -> Segment | None:
        """The most recently appended segment (what REPEAT_PREV would repeat)."""
        if not self._segs:
            return None
        a, b, o = self._segs[-1]
        return Segment(a, b, o)

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
            if t in _KEEP_LIKE or t in (_CUT, _LOOP):
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
        if not (0 <= t < _NT and 0 <= s < _NS and 0 <= a < _NA) or not rows[t][s] or not _AMOUNT_OK[t][a]:
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
        if t in _KEEP_LIKE:
            e = end[h]
            if t == _FADE_IN or t == _FADE_OUT:
                frac = _FADE_FRAC[a]
                dur = tab.bounds[e] - tab.bounds[h]
                ops = Ops(fade_in_s=frac * dur) if t == _FADE_IN else Ops(fade_out_s=frac * dur)
            else:
                ops = _OPS[t][a]
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
            k = _LOOP_K[a]
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
            k = _SKIP_K[a]
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
            k = _JUMP_K[a]
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


# ---- the oracle: plan -> actions ------------------------------------------------------
@dataclass(frozen=True)
class OracleResult:
    """Actions that rebuild a plan, and how well they do.

    actions : ((type, size, amount), ...) ending with the cuts to the song's end
    plan : what the actions execute to (merged)
    exact : True when ``plan == target.merged()``
    notes : why it is not exact (empty when exact)
    """

    actions: tuple[tuple[int, int, int], ...]
    plan: EditPlan
    exact: bool
    notes: tuple[str, ...]


def _treatment(ops: Ops) -> tuple[int, int] | None:
    """(type, amount) of a keep-like type whose ops are exactly ``ops``; fades excluded."""
    for t in sorted(_KEEP_LIKE):
        if t in (_FADE_IN, _FADE_OUT):
            continue
        for a in range(_NA):
            if _AMOUNT_OK[t][a] and _OPS[t][a] == ops:
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
    every emitted action is checked against the masks as it is chosen."""

    def __init__(self, plan: EditPlan, kw: dict, *, protect_end: bool) -> None:
        self.protect_end = protect_end
        self.target = plan.merged()
        self.ex = Executor(plan.grid, source_sha256=plan.source_sha256, **kw)
        self.tab = self.ex._tab
        self.acts: list[tuple[int, int, int]] = []
        self.notes: list[str] = []

    def do(self, t: int, s: int, a: int) -> None:
        self.ex.step(t, s, a)
        self.acts.append((int(t), int(s), int(a)))

    def ok(self, t: int, s: int) -> bool:
        return not self.ex.done and self.ex._entry()[1][t][s]

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
                for s in range(_NS):
                    if self.ok(_CUT, s) and tab.end[s][h] <= target:
                        cand = (tab.end[s][h], 0, -s, (_CUT, s, 2))
                        best = cand if best is None or cand[:3] > best[:3] else best
                    if self.ok(_SKIP, s):
                        for a in range(_NA):
                            k = _SKIP_K[a]
                            if k is None:
                                continue
                            e = tab.chunk_ends(s, h, k)
                            if not ex._segs and e >= tab.n:
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
                        k = _JUMP_K[a]
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
                a = min(range(_NA), key=lambda a: abs(_FADE_FRAC[a] * dur - want))
                if _FADE_FRAC[a] * dur != want:
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
        work = [[s.raw_start, s.raw_end, s.ops] for s in self.target.segments]
        i = 0
        while i < len(work) and not ex.done:
            a0, b0, ops = work[i]
            nxt = work[i + 1] if i + 1 < len(work) else None
            # 1. an exact repeat of the last appended segment
            if ex._segs and ex._segs[-1] == (a0, b0, ops) and self.ok(_REPEAT, 0):
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
        if self.ex._segs and not ex.done:
            self.move_to(tab.n)
        got = ex.plan()
        exact = got == self.target and not self.notes
        if got != self.target and not self.notes:
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
    first = _Oracle(plan, kw, protect_end=False).run()
    if first.exact:
        return first
    second = _Oracle(plan, kw, protect_end=True).run()
    return second if second.exact else first


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
