"""Where every segment and join of an EditPlan lands in the output, from the plan alone.

The renderer (envs/render.py) fills this layout with sound; the environment, the reward
and the DAW exports ask it for the output duration and the join positions without
touching audio.

Rules
-----
1. **Merging.** Consecutive segments that continue each other in the raw (forward:
   ``prev.raw_end == cur.raw_start``; both reversed: ``cur.raw_end == prev.raw_start``) with
   identical ops and no fade at the join are played as one segment, so effects with memory
   (EQ, reverb, time stretch) run across them without restarting.
2. **Cuts are sample-accurate** at ``plan.grid.samples(sr)``. A segment with time factor
   ``f`` lasts exactly ``max(1, round((end - start) / f))`` output samples.
3. **Joins.** Between consecutive (merged) segments there are four kinds of join:

   - ``"contiguous"``: the raw continues with the same sound. Plain concatenation, no
     crossfade. A keep-all plan is therefore the raw itself, bit for bit (unless the raw
     peaks above 1.0, see 5).
   - ``"blend"``: the raw continues (same direction, time factor 1) but the ops change
     (gain step, EQ on/off, a fade). Both treatments are computed a few ms past the join
     from the raw itself, and the output goes from one to the other with raised-cosine
     weights that sum to 1 (the two signals are the same music, so they are correlated
     and an equal-power curve would bump the level by up to 3 dB). Removes **0** samples.
   - ``"crossfade"``: a real cut (the raw does not continue). Each side is extended by
     ``h`` "handle" samples of its own raw material beyond the cut (as a DAW does), and
     the two overlap over ``[j - h, j + h)`` with equal-power (sin/cos) weights, centred
     on the cut, so the beat stays exactly where the grid puts it. Removes **0** samples.
   - ``"overlap"``: a real cut where a handle does not exist (the earlier segment ends at
     the end of the raw, or the later one starts at its start). The later segment starts
     ``L`` samples early and the two overlap over ``[start, start + L)`` with equal-power
     weights. Removes exactly **L** samples.

   With ``x = round(crossfade_ms * sr / 1000)`` the crossfade length, ``h = min(x // 2,
   len_prev // 2, len_cur // 2)`` and ``L = min(2 * (x // 2), len_prev // 2, len_cur // 2)``
   (segment lengths in output samples). So only ``"overlap"`` joins shorten the output;
   with ``crossfade_ms=0`` every cut is a hard cut (an "overlap" of 0 samples). The layout
   follows the grid (``grid.samples(sr)``), not the audio's length, so that
   ``output_duration`` needs no audio; audio a few samples shorter is zero-padded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from datasets.errors import ParameterError
from envs.plan import EditPlan, Ops, Segment, merge_segments

__all__ = ["DEFAULT_CROSSFADE_MS", "Join", "Piece", "Layout", "layout", "output_duration", "join_positions"]

#: 10 ms: long enough that a cut between unrelated waveforms has no audible click (a
#: 100 Hz cycle), short enough not to smear a drum hit across the join.
DEFAULT_CROSSFADE_MS = 10.0


# ---------------------------------------------------------------------------------------
# Layout: where every segment and join lands in the output, from the plan alone
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Join:
    """A join between segment ``index - 1`` and segment ``index`` (merged plan).

    position : output sample at the centre of the transition
    start, end : the transition window [start, end) in output samples (start == end for
        a contiguous join)
    kind : "contiguous" | "blend" | "crossfade" | "overlap" (module docstring, rule 3)
    removed : output samples this join removes (non-zero only for "overlap")
    """

    index: int
    position: int
    start: int
    end: int
    kind: str
    removed: int

    @property
    def is_cut(self) -> bool:
        """True for joins between audio that does not continue in the raw."""
        return self.kind in ("crossfade", "overlap")


@dataclass(frozen=True)
class Piece:
    """One merged segment placed in the output.

    raw_start, raw_end : raw samples of the segment's core [raw_start, raw_end)
    out_start, length : output samples of the core [out_start, out_start + length)
    head, tail : handle samples rendered before / after the core (play order)
    """

    segment: Segment
    raw_start: int
    raw_end: int
    out_start: int
    length: int
    head: int
    tail: int

    @property
    def out_end(self) -> int:
        return self.out_start + self.length

    @property
    def ops(self) -> Ops:
        return self.segment.ops


@dataclass(frozen=True)
class Layout:
    """Output timeline of a plan at one sample rate (no audio involved)."""

    pieces: tuple[Piece, ...]
    joins: tuple[Join, ...]
    n_out: int
    sr: int
    n_raw: int
    crossfade: int

    @property
    def duration(self) -> float:
        """Output seconds."""
        return self.n_out / self.sr


def _core_length(n_raw_span: int, tf: float) -> int:
    return n_raw_span if tf == 1.0 else max(1, int(round(n_raw_span / tf)))


def _raw_continues(p: Segment, c: Segment) -> bool:
    """True when ``c`` plays the raw right where ``p`` stops, at the same speed."""
    if p.ops.time_factor != 1.0 or c.ops.time_factor != 1.0 or p.ops.reversed != c.ops.reversed:
        return False
    return c.raw_end == p.raw_start if p.ops.reversed else p.raw_end == c.raw_start


def layout(plan: EditPlan, sr: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS, *, n_raw: int | None = None) -> Layout:
    """Place every segment and join of ``plan`` in the output at rate ``sr``.

    n_raw : raw length in samples (default, and what ``render`` uses: the grid's duration
        at ``sr``); handles are only available inside [0, n_raw).
    """
    if crossfade_ms < 0:
        raise ParameterError(f"crossfade_ms must be >= 0, got {crossfade_ms}")
    if not plan.segments:
        raise ParameterError("plan has no segments (an edit must keep something)")
    bounds = plan.grid.samples(sr)
    if n_raw is None:
        n_raw = int(bounds[-1])
    bounds = np.minimum(bounds, n_raw)
    x = int(round(crossfade_ms * sr / 1000.0))
    half = x // 2
    segs = merge_segments(plan.segments, reversed_runs=True)  # rule 1: what sounds the same is one piece
    spans = []
    for s in segs:
        a, b = int(bounds[s.raw_start]), int(bounds[s.raw_end])
        if b <= a:
            raise ParameterError(f"segment beats [{s.raw_start}, {s.raw_end}) are empty at {sr} Hz")
        spans.append((a, b, _core_length(b - a, s.ops.time_factor)))

    def room(i: int, side: str) -> int:
        """Raw samples available beyond segment i's first ("head") or last ("tail") played sample."""
        a, b, _ = spans[i]
        before, after = a, n_raw - b
        rev = segs[i].ops.reversed
        if side == "head":
            return after if rev else before
        return before if rev else after

    def has_handle(i: int, side: str, h: int) -> bool:
        return room(i, side) >= int(math.ceil(h * segs[i].ops.time_factor))

    kinds: list[tuple[str, int]] = []  # (kind, width) per join i (1..)
    for i in range(1, len(segs)):
        p, c = segs[i - 1], segs[i]
        lp, lc = spans[i - 1][2], spans[i][2]
        h = min(half, lp // 2, lc // 2)
        if _raw_continues(p, c):
            if p.ops == c.ops and p.ops.fade_out_s == 0 and c.ops.fade_in_s == 0:
                kinds.append(("contiguous", 0))
                continue
            # the raw continues, so the handles are the neighbours' own samples
            if h > 0 and has_handle(i - 1, "tail", h) and has_handle(i, "head", h):
                kinds.append(("blend", h))
                continue
        elif h > 0 and has_handle(i - 1, "tail", h) and has_handle(i, "head", h):
            kinds.append(("crossfade", h))
            continue
        kinds.append(("overlap", min(2 * half, lp // 2, lc // 2)))

    pieces: list[Piece] = []
    joins: list[Join] = []
    pos = 0
    for i, s in enumerate(segs):
        a, b, n = spans[i]
        head = tail = 0
        if i > 0:
            kind, w = kinds[i - 1]
            if kind == "overlap":
                pos -= w
                joins.append(Join(i, pos + w // 2, pos, pos + w, kind, w))
            else:
                joins.append(Join(i, pos, pos - w, pos + w, kind, 0))
                head = w
        if i + 1 < len(segs) and kinds[i][0] in ("blend", "crossfade"):
            tail = kinds[i][1]
        pieces.append(Piece(s, a, b, pos, n, head, tail))
        pos += n
    return Layout(tuple(pieces), tuple(joins), pos, int(sr), int(n_raw), x)


def output_duration(plan: EditPlan, sr: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS) -> float:
    """Seconds of audio ``render`` will return for ``plan`` at ``sr``, without rendering."""
    return layout(plan, sr, crossfade_ms).duration


def join_positions(
    plan: EditPlan, sr: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS, *, include_blends: bool = False
) -> np.ndarray:
    """Output sample index (centre of the transition) of every cut [shape=(n_cuts,), int64].

    A cut is a join whose two sides do not continue each other in the raw ("crossfade"
    and "overlap" joins); ``include_blends`` adds the raw-contiguous joins where the
    ops change.
    """
    keep = ("crossfade", "overlap", "blend") if include_blends else ("crossfade", "overlap")
    return np.array([j.position for j in layout(plan, sr, crossfade_ms).joins if j.kind in keep], dtype=np.int64)
