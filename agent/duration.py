"""Land an edit on a requested length: a final bar-level adjustment of the plan.

Users ask for exact lengths ("make it 3:30"). The policy aims at the matching keep ratio,
which gets close; this step then adds or removes whole bars until the output is within
half a bar of the target where the material allows (and always tries for one bar).
Bars, not beats, because a cut in the middle of a bar is what a musician hears as wrong.

Moves, cheapest first:
- drop a segment that only repeats material played elsewhere (a loop),
- trim a bar from either end of a segment (no new join),
- extend a segment by the neighbouring unused raw bar (no new join),
- remove a bar from inside a segment (one new join), or a whole segment;
quietest material first (energy normalised to [0, 1] over the song).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from envs.plan import EditPlan, Segment

__all__ = ["fit_duration", "bar_spans"]


def bar_spans(grid) -> list[tuple[int, int]]:
    """[start, end) beat span of every bar of a grid."""
    starts = np.flatnonzero(np.r_[True, np.diff(grid.bar) != 0])
    ends = np.r_[starts[1:], grid.n_beats]
    return list(zip(starts.tolist(), ends.tolist()))


def _candidates(plan: EditPlan, bars: list[tuple[int, int]], energy: np.ndarray, longer: bool) -> list[tuple[float, EditPlan]]:
    """Plans one bar shorter (or longer), each with a cost (lower = better)."""
    segs = list(plan.segments)
    used = plan.raw_beats_used
    bar_of = {b: i for i, (b0, b1) in enumerate(bars) for b in range(b0, b1)}
    out: list[tuple[float, EditPlan]] = []

    def make(new_segs: list[Segment]) -> EditPlan:
        return replace(plan, segments=tuple(s for s in new_segs if s.raw_end > s.raw_start))

    for k, s in enumerate(segs):
        if not longer:
            # drop a whole segment (the policy's loops and repeats go first when the
            # same material is played elsewhere): costlier than trimming a bar
            if len(segs) > 1:
                again = 0.0 if (used[s.raw_start : s.raw_end] > 1).all() else 1.0
                e = float(energy[s.raw_start : s.raw_end].mean()) + 0.5 * again
                out.append((e, make(segs[:k] + segs[k + 1 :])))
            # trim one bar from the start or the end (bar-aligned edges only)
            b_first = bars[bar_of[s.raw_start]]
            if b_first[0] == s.raw_start and b_first[1] < s.raw_end:
                e = float(energy[b_first[0] : b_first[1]].mean())
                out.append((e, make(segs[:k] + [replace(s, raw_start=b_first[1])] + segs[k + 1 :])))
            b_last = bars[bar_of[s.raw_end - 1]]
            if b_last[1] == s.raw_end and b_last[0] > s.raw_start:
                e = float(energy[b_last[0] : b_last[1]].mean())
                out.append((e, make(segs[:k] + [replace(s, raw_end=b_last[0])] + segs[k + 1 :])))
            # remove an inner bar: a new join costs more than trimming an edge
            for b0, b1 in bars:
                if s.raw_start < b0 and b1 < s.raw_end:
                    e = float(energy[b0:b1].mean()) + 1.0
                    left = replace(s, raw_end=b0, ops=replace(s.ops, fade_out_s=0.0))
                    right = replace(s, raw_start=b1, ops=replace(s.ops, fade_in_s=0.0))
                    out.append((e, make(segs[:k] + [left, right] + segs[k + 1 :])))
        else:
            # extend to the next (previous) bar line when the beats up to it are not played
            # elsewhere: a whole neighbouring bar, or the rest of a bar the segment ends
            # (starts) inside, so a mid-bar edge comes back onto the bar grid
            if s.raw_end < plan.grid.n_beats:
                b1 = bars[bar_of[s.raw_end]][1]
                if not used[s.raw_end : b1].any():
                    e = -float(energy[s.raw_end : b1].mean())
                    out.append((e, make(segs[:k] + [replace(s, raw_end=b1)] + segs[k + 1 :])))
            if s.raw_start > 0:
                b0 = bars[bar_of[s.raw_start - 1]][0]
                if not used[b0 : s.raw_start].any():
                    e = -float(energy[b0 : s.raw_start].mean())
                    out.append((e, make(segs[:k] + [replace(s, raw_start=b0)] + segs[k + 1 :])))
    return out


def fit_duration(
    plan: EditPlan,
    *,
    target_s: float,
    energy: np.ndarray,
    output_seconds: Callable[[EditPlan], float],
    max_moves: int = 2000,
) -> EditPlan:
    """Return a plan whose output length is as close to ``target_s`` as bar moves allow.

    energy : per-beat loudness [shape=(n_beats,)] (e.g. the RMS feature); quiet bars go
        first, loud bars come back first
    output_seconds : the renderer's duration of a plan (crossfade overlaps included)
    """
    energy = np.asarray(energy, dtype=np.float64)
    energy = (energy - energy.min()) / (np.ptp(energy) + 1e-12)  # costs in [0, 1]
    bar_s = float(np.median(np.diff(plan.grid.bounds))) * plan.grid.beats_per_bar
    bars = bar_spans(plan.grid)
    for _ in range(max_moves):
        err = output_seconds(plan) - target_s
        if abs(err) <= bar_s / 2:
            break
        options = _candidates(plan, bars, energy, longer=err < 0)
        if not options:
            break
        # the best move is the cheapest that does not overshoot by more than it fixes
        options.sort(key=lambda c: c[0])
        moved = False
        for _, cand in options:
            if abs(output_seconds(cand) - target_s) < abs(err):
                plan, moved = cand, True
                break
        if not moved:
            break
    return plan.merged()
