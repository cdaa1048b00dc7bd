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

The same moves follow ``--keep-ratio`` (measured in raw seconds kept, not output seconds)
and restore bars when the policy cut below the reward's floor. ``LengthRequest`` /
``policy_target_keep`` / ``fit_length`` are inference's whole length step: what the
policy is asked to aim at, and the fit afterwards, with a one-line note when a request
cannot be reached (clamped, saying what was reached).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from datasets.errors import ParameterError
from envs.plan import EditPlan, Segment

__all__ = ["fit_duration", "bar_spans", "bar_seconds", "KEEP_RATIO_RANGE", "LengthRequest", "policy_target_keep", "fit_length",
           "trained_keep_range"]

#: Allowed ``--keep-ratio``: below 5 % of a recording is a fragment, not an edit (a
#: 30-minute jam cut to 3 minutes is 0.10); 1.0 keeps everything (fades and effects only).
KEEP_RATIO_RANGE = (0.05, 1.0)


def bar_spans(grid) -> list[tuple[int, int]]:
    """[start, end) beat span of every bar of a grid."""
    starts = np.flatnonzero(np.r_[True, np.diff(grid.bar) != 0])
    ends = np.r_[starts[1:], grid.n_beats]
    return list(zip(starts.tolist(), ends.tolist()))


def bar_seconds(grid) -> float:
    """Typical bar length of a grid, seconds (median beat x beats per bar)."""
    return float(np.median(np.diff(grid.bounds))) * grid.beats_per_bar


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
    bar_s = bar_seconds(plan.grid)
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


@dataclass(frozen=True)
class LengthRequest:
    """The musician's length request: an output length (``--target-duration``), a keep
    ratio (``--keep-ratio``), or neither (the trained style's keep ratio)."""

    target_s: float | None = None
    """seconds of edited audio, finite and > 0"""
    keep_ratio: float | None = None
    """fraction of the raw recording played at least once, in ``KEEP_RATIO_RANGE``"""

    def __post_init__(self) -> None:
        if self.target_s is not None and self.keep_ratio is not None:
            raise ParameterError("give --target-duration or --keep-ratio, not both")
        if self.target_s is not None and not (math.isfinite(self.target_s) and self.target_s > 0):
            raise ParameterError(f"--target-duration {self.target_s} must be a finite number of seconds > 0")
        lo, hi = KEEP_RATIO_RANGE
        if self.keep_ratio is not None and not (math.isfinite(self.keep_ratio) and lo <= self.keep_ratio <= hi):
            raise ParameterError(f"--keep-ratio {self.keep_ratio} outside [{lo}, {hi}]")


def policy_target_keep(
    request: LengthRequest, *, duration_s: float, style_keep: float | None, trained: tuple[float, float] | None
) -> float | None:
    """The keep ratio the policy is told to aim at (the env's ``target_keep``).

    The request's ratio, clipped to ``trained``, the range of the ``target_keep`` global
    the policy saw in training: a value outside it is an input the policy never learned
    to read (a run trains on one target, so its normaliser divides by ~0 and a request
    of 0.2 against a style of 0.55 became hundreds of standard deviations; the edits of
    --keep-ratio 0.2 / 0.3 / 0.4 / 0.6 kept 0.32 / 0.64 / 0.88 / 0.73). ``fit_length``
    lands the plan on the request afterwards. None = the env's default.
    """
    if request.target_s is not None:
        keep = request.target_s / duration_s
    elif request.keep_ratio is not None:
        keep = request.keep_ratio
    else:
        keep = style_keep
    if keep is None:
        return None
    keep = float(np.clip(keep, 0.0, 1.0))
    if trained is not None:
        keep = float(np.clip(keep, *trained))
    return keep


def fit_length(
    plan: EditPlan,
    request: LengthRequest,
    *,
    style_keep: float,
    energy: np.ndarray,
    output_seconds: Callable[[EditPlan], float],
    floor_keep: float = 0.2,
) -> tuple[EditPlan, str | None]:
    """Land the policy's plan on the request by whole bars (``fit_duration``).

    ``--target-duration`` is met in output seconds, ``--keep-ratio`` in raw seconds
    kept (``plan.keep_ratio``); both within a bar where the recording allows. Without a
    request, a plan that keeps less than ``floor_keep`` (the reward's floor) is brought
    back up to ``style_keep``: a fragment is never handed over.

    Returns (plan, note): note is one line for the log when the request cannot be
    reached within a bar (it is clamped: the note says what was reached), or when bars
    were restored; None otherwise.
    """
    grid = plan.grid
    total = float(grid.bounds[-1] - grid.bounds[0])  # raw seconds the keep ratio divides
    bar_s = bar_seconds(grid)

    def kept_seconds(p: EditPlan) -> float:
        return p.keep_ratio * total if p.segments else 0.0

    if request.target_s is not None:
        measure, want = output_seconds, request.target_s
    elif request.keep_ratio is not None:
        measure, want = kept_seconds, request.keep_ratio * total
    elif not plan.segments or plan.keep_ratio < floor_keep:
        kept = plan.keep_ratio if plan.segments else 0.0
        if not plan.segments:  # nothing to grow from: start from the loudest bar
            b0, b1 = max(bar_spans(grid), key=lambda b: float(np.mean(energy[b[0] : b[1]])))
            plan = replace(plan, segments=(Segment(b0, b1),))
        out = fit_duration(plan, target_s=style_keep * total, energy=energy, output_seconds=output_seconds)
        return out, (
            f"the policy kept {100 * kept:.0f} % of the recording, below the {100 * floor_keep:.0f} % floor "
            f"of its reward; bars were brought back up to the style's {100 * style_keep:.0f} % "
            f"(now {100 * out.keep_ratio:.0f} %)"
        )
    else:
        return plan.merged(), None
    # A target beyond what bar moves can reach would only spin the search: aim at the
    # nearest reachable length (one bar .. every raw bar once, or the plan's own length
    # when its loops make it longer), then say so when the request was further away.
    full = replace(plan, segments=(Segment(0, grid.n_beats),))
    longest = max(measure(full), measure(plan))
    out = fit_duration(plan, target_s=float(np.clip(want, min(bar_s, longest), longest)), energy=energy, output_seconds=measure)
    reached = measure(out)
    if abs(reached - want) <= bar_s:
        return out, None
    if request.target_s is not None:
        asked, got = f"--target-duration {request.target_s:g} s", f"the edit is {reached:.1f} s"
    else:
        asked, got = f"--keep-ratio {request.keep_ratio:g}", f"the edit keeps {out.keep_ratio:.2f}"
    return out, f"{asked} cannot be reached on this {total:.1f} s recording (bars of {bar_s:.1f} s): clamped, {got}"


def trained_keep_range(policy, *, n_std: float = 2.0) -> tuple[float, float] | None:
    """[lo, hi] of the ``target_keep`` global in the policy's training data: mean +- n_std
    standard deviations of its global normaliser (``agent.model.FeatureNormalizer``);
    None when the normaliser was never fitted (an untrained policy)."""
    from envs.observation import global_index

    norm = policy.global_normalizer
    if not bool(norm.fitted):
        return None
    i = global_index("target_keep")
    mean, std = float(norm.mean[i]), float(norm.std[i])
    return mean - n_std * std, mean + n_std * std
