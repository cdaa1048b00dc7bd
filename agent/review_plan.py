"""The corrections a musician makes on the review page, as operations on an EditPlan.

The page shows the raw recording in phrases (4 bars of the plan's own grid, the
``BeatGrid.unit_ids`` groups, so a pickup sliver belongs to the opening phrase) and the
edges of every cut on bar lines. Two gestures change the plan, both through one
primitive, :func:`set_span` (keep or cut raw beats ``[start, end)``):

- toggle a phrase: a phrase that plays (kept, repeated or partly kept) is cut
  everywhere it plays; a cut phrase is kept once;
- move a cut edge to another bar line (:func:`move_edge`): the beats between the old
  and the new edge take the state of the side the edge moves away from.

What the plan keeps of its own is left alone: the order of segments, repeats elsewhere,
gains, EQ and effects. A cut splits a segment into the pieces before and after it (a
reversed segment plays its later piece first); the first piece played keeps the fade-in,
the last the fade-out. A kept span extends the segment that plays the raw just before
it (or just after it), so it sounds like its neighbour and that segment's fades stay at
its ends (an ending fade stays at the end). Then contiguous segments merge (``EditPlan.merged``) and an edit that now stops
before the song does gets its fade (``agent.ending.soften_ending``, as in inference).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from agent.ending import soften_ending
from datasets.beats import BARS_PER_PHRASE
from datasets.errors import ParameterError
from envs.plan import EditPlan, Ops, Segment

__all__ = ["Phrase", "phrases", "bar_lines", "cut_edges", "set_span", "toggle_phrase", "move_edge"]


@dataclass(frozen=True)
class Phrase:
    """One phrase of the raw recording and what the plan does with it.

    start, end : raw beats [start, end)
    status : "kept" (every beat plays once), "cut" (no beat plays), "repeated" (some
        beat plays more than once) or "partial" (some beats play, some do not)
    effect : some beat plays with an effect other than gain and fades
    """

    index: int
    start: int
    end: int
    status: str
    effect: bool


def phrases(plan: EditPlan) -> list[Phrase]:
    """The phrases of ``plan``'s grid with their status, in raw order."""
    ids = plan.grid.unit_ids(BARS_PER_PHRASE)
    used = plan.raw_beats_used
    effect = np.zeros(plan.grid.n_beats, dtype=bool)
    for s in plan.segments:
        if s.ops.has_effect:
            effect[s.raw_start : s.raw_end] = True
    starts = np.concatenate([[0], np.flatnonzero(ids[1:] != ids[:-1]) + 1])
    ends = np.concatenate([starts[1:], [plan.grid.n_beats]])
    out = []
    for k, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
        u = used[a:b]
        if not u.any():
            status = "cut"
        elif (u > 1).any():
            status = "repeated"
        elif u.all():
            status = "kept"
        else:
            status = "partial"
        out.append(Phrase(index=k, start=a, end=b, status=status, effect=bool(effect[a:b].any())))
    return out


def bar_lines(plan: EditPlan) -> list[int]:
    """Beats that start a bar [0, n_beats], both ends of the song included: where a cut
    edge may go."""
    down = np.flatnonzero(plan.grid.is_downbeat).tolist()
    return sorted({0, plan.grid.n_beats, *down})


def cut_edges(plan: EditPlan) -> list[int]:
    """Raw beats (0 < b < n_beats) where playing and cut beats meet: the edges the page
    lets the musician move."""
    played = plan.raw_beats_used > 0
    return (np.flatnonzero(played[1:] != played[:-1]) + 1).tolist()


def _seconds(plan: EditPlan, a: int, b: int, ops: Ops) -> float:
    """Output seconds of raw beats [a, b) played with ``ops``."""
    return float(plan.grid.bounds[b] - plan.grid.bounds[a]) / ops.time_factor


def _pieces(plan: EditPlan, seg: Segment, a: int, b: int) -> list[Segment]:
    """``seg`` without raw beats [a, b), in the order the pieces play, fades given to
    the first and last piece played (and shortened to fit them)."""
    keep = [(s, e) for s, e in ((seg.raw_start, min(seg.raw_end, a)), (max(seg.raw_start, b), seg.raw_end)) if e > s]
    if keep == [(seg.raw_start, seg.raw_end)]:  # no overlap: untouched
        return [seg]
    if seg.ops.reversed:
        keep.reverse()  # a reversed segment plays its later raw beats first
    out = []
    for k, (s, e) in enumerate(keep):
        length = _seconds(plan, s, e, seg.ops)
        fade_in = min(seg.ops.fade_in_s, length) if k == 0 else 0.0
        fade_out = min(seg.ops.fade_out_s, length) if k == len(keep) - 1 else 0.0
        out.append(Segment(s, e, replace(seg.ops, fade_in_s=fade_in, fade_out_s=fade_out)))
    return out


def _cut(plan: EditPlan, a: int, b: int) -> tuple[Segment, ...]:
    segs: list[Segment] = []
    for seg in plan.segments:
        segs.extend(_pieces(plan, seg, a, b))
    return tuple(segs)


def _keep(plan: EditPlan, a: int, b: int) -> tuple[Segment, ...]:
    """``plan``'s segments with every cut run of raw beats in [a, b) played once."""
    segs = list(plan.segments)
    used = plan.raw_beats_used
    k = a
    while k < b:
        if used[k]:
            k += 1
            continue
        r0 = k
        while k < b and not used[k]:
            k += 1
        segs = _insert(segs, r0, k)
    return tuple(segs)


def _insert(segs: list[Segment], r0: int, r1: int) -> list[Segment]:
    """Play raw beats [r0, r1) once: the segment that plays the raw just before them (or
    just after them) grows over them, with its treatment and its fades at its new ends;
    else they become a plain segment after the last segment that ends before them."""
    fwd = [i for i, s in enumerate(segs) if not s.ops.reversed]
    before = next((i for i in fwd if segs[i].raw_end == r0), None)
    if before is not None:
        segs[before] = replace(segs[before], raw_end=r1)
        return segs
    after = next((i for i in fwd if segs[i].raw_start == r1), None)
    if after is not None:
        segs[after] = replace(segs[after], raw_start=r0)
        return segs
    earlier = [i for i, s in enumerate(segs) if s.raw_end <= r0]
    at = max(earlier, key=lambda i: (segs[i].raw_end, -i)) + 1 if earlier else 0
    return segs[:at] + [Segment(r0, r1)] + segs[at:]


def set_span(plan: EditPlan, start: int, end: int, *, keep: bool) -> EditPlan:
    """``plan`` with raw beats [start, end) cut everywhere they play (keep=False) or,
    where none of them plays, played once (keep=True). Raises ``ParameterError`` for a
    span outside the song or an edit that would keep nothing."""
    n = plan.grid.n_beats
    if not (0 <= start < end <= n):
        raise ParameterError(f"beats [{start}, {end}) are not a span of the song's {n} beats")
    segs = _keep(plan, start, end) if keep else _cut(plan, start, end)
    if not segs:
        raise ParameterError("cutting this would leave nothing: an edit must keep something")
    return soften_ending(replace(plan, segments=segs).merged()).validate()


def toggle_phrase(plan: EditPlan, index: int) -> EditPlan:
    """Cut phrase ``index`` where it plays, or keep it once where it is cut."""
    ph = phrases(plan)
    if not 0 <= index < len(ph):
        raise ParameterError(f"phrase {index} does not exist (the song has {len(ph)})")
    p = ph[index]
    return set_span(plan, p.start, p.end, keep=p.status == "cut")


def move_edge(plan: EditPlan, edge: int, to: int) -> EditPlan:
    """Move the cut edge at raw beat ``edge`` to the bar line ``to``: the beats in
    between take the state of the side the edge leaves (moving a cut's start earlier
    cuts more; moving it later keeps more)."""
    if edge not in cut_edges(plan):
        raise ParameterError(f"beat {edge} is not the edge of a cut")
    if to not in bar_lines(plan):
        raise ParameterError(f"beat {to} is not on a bar line")
    if to == edge:
        return plan
    played = plan.raw_beats_used > 0
    if to > edge:  # the span [edge, to) becomes what lies left of the edge
        return set_span(plan, edge, to, keep=bool(played[edge - 1]))
    return set_span(plan, to, edge, keep=bool(played[edge]))
