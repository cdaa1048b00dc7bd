"""An edit that stops before the song does gets a fade, never a dead stop.

When the policy's last kept segment ends before the raw recording ends, the edited song
would stop at full level mid-phrase. A musician would fade it; so do we, over one bar
(at most half the segment), unless the segment already fades out. An edit that runs to
the recording's own ending keeps it as played.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from envs.plan import EditPlan

__all__ = ["soften_ending"]


def soften_ending(plan: EditPlan) -> EditPlan:
    """Return ``plan`` with a one-bar fade-out on its last segment when needed."""
    if not plan.segments:
        return plan
    last = plan.segments[-1]
    if last.raw_end >= plan.grid.n_beats or last.ops.fade_out_s > 0:
        return plan
    bar_s = float(np.median(np.diff(plan.grid.bounds))) * plan.grid.beats_per_bar
    t0, t1 = plan.segment_seconds(last)
    fade = min(bar_s, (t1 - t0) / last.ops.time_factor / 2)
    return replace(plan, segments=plan.segments[:-1] + (replace(last, ops=replace(last.ops, fade_out_s=fade)),))
