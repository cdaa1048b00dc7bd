"""The episode-end reward: every component of SPEC.md "Reward Design", with a breakdown.

The environment pays nothing per step (SPEC: Monte Carlo, episode-end rewards only) and
calls ``episode_reward`` once when the episode ends. Each component is a score in about
[-1, 1] (penalties in [-3, 0]) computed from the episode's ``EditPlan`` and the actions
that built it; the reward is their weighted sum (``RewardWeights``), and the weighted
terms are returned by name so that training logs can show what moved.

Components (unweighted score, what it measures):

Penalties (SPEC "Penalty Components")
- ``keep_ratio_penalty``: 0 while 20% <= keep <= 70% (cut at least 30%, at most 80%),
  then -1 per 5 points outside, down to -3. The guard against keep-all and cut-all. The
  band is widened to contain the target +- 10 points (``keep_band``): a user whose
  aligned edits keep 85 % sets that style.
- ``loop_budget``: -0.5 per loop beyond 2 + 1 per 3 cuts (LOOP and REPEAT_PREV are
  loops, CUT and SKIP are cuts), down to -2.
- ``excessive_jumps``: 0 up to 25% of actions being jumps (JUMP_BACK; our SKIP is a cut), then
  -4 per unit fraction above, down to -2 (at 75%).
- ``diversity_penalty``: -(4 - k) / 3 for k < 4 distinct action types (mild: small weight).

Rewards (SPEC "Reward Components")
- ``cut_ratio``: 1 at the target keep ratio, 0 at 12.5 points off, -1 at 25+ points off.
- ``section_coherence``: kept material in long raw-contiguous runs: per run
  log2(run bars) / 2 clipped to [-1, 1] (1 beat = -1, 1 bar = 0, a phrase = +1), averaged.
- ``phrase_alignment``: every edit point (start/end of a kept run inside the song)
  scores +1 on a phrase boundary, +0.25 on a bar line, -1 elsewhere; averaged.
- ``edit_structure``: each kept run and each dropped span between runs is whole bars:
  both ends on bar lines (the song's own start and end count as bar lines) and at least
  a bar long (+1), or not (-1); averaged (catches 3-beat cuts and 1-beat slivers that
  break the meter even when runs are long); minus 2 x the share of played beats with
  effects beyond 25 % (effects are spice).
- ``audio_clicks``: fraction of cuts where ``local_join_quality`` hears no
  click in a +-50 ms local render of the plan (never the whole song), mapped to [-1, 1].
  Without audio, 0 (no evidence).
- ``audio_energy``: energy consistency across joins from the per-beat ``rms_db`` (last
  beat before, first beat after, gains applied): the jump minus the jump the raw itself
  makes at the out or the in point (whichever is closer), 1 - 2 min(1, |dB| / 12),
  averaged; a fade halves it. Whole beats, not 40 ms windows: a downbeat after a join is
  always louder than the beat tail before it, and that is not an error.
- ``flow``: section-level transitions: level of the last bar of a kept section vs the
  first bar of the next, judged against the raw's own bar-to-bar change (9 dB scale),
  and continuity: cosine similarity (z-scored chroma + MFCC, bar means) of the bar after
  the join to the bar that followed the out point in the raw. Averaged over joins, with
  the ending as one more item: an edit that stops more than a bar before the song's end
  scores +1 with a fade-out, -1 without (else "keep the first 45 % and stop" is perfect).
- ``reorder_quality``: for each join that goes back (loop, jump back, reorder, repeat):
  +-0.5 for "moved material is at least a bar and both edit points are on bar lines",
  plus 0.5 x the same continuity; minus the fraction of raw beats played more than twice.
  0 when the plan never goes back.
- ``diversity_bonus``: min(k, 8) / 8 for k distinct action types (small weight).
- ``imitation``: only when the song has a human (aligned) plan: raw-usage IoU of the
  episode's plan and the human plan (duration-weighted), mapped to [-1, 1].

An empty plan (everything cut) scores -1 on every reward component: nothing kept is never
"coherent" or "clean". A plan with no joins (keep-all) scores 1 on the join terms, so it
is the keep-ratio and cut-ratio terms that make keep-all lose (tests/envs/test_reward.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from datasets.beats import BARS_PER_PHRASE, BeatGrid
from datasets.errors import ParameterError
from envs.actions import ActionType
from envs.plan import EditPlan, Segment
from envs.quality import CLICK_THRESHOLD, Click, JoinQuality, click_scores, energy_consistency
from envs.layout import DEFAULT_CROSSFADE_MS, layout
from envs.render import render_excerpt

__all__ = [
    "RewardWeights",
    "RewardContext",
    "RewardResult",
    "episode_reward",
    "target_keep_from",
    "keep_band",
    "plan_usage_iou",
    "local_join_quality",
    "COMPONENTS",
    "DEFAULT_TARGET_KEEP",
    "KEEP_RATIO_MIN",
    "KEEP_RATIO_MAX",
]

log = logging.getLogger(__name__)

#: SPEC: "Reward for hitting target cut ratio (~45%)": used when no aligned labels exist.
DEFAULT_TARGET_KEEP = 0.45
#: SPEC: "Must cut at least 30%, can't cut more than 80%".
KEEP_RATIO_MIN = 0.20
KEEP_RATIO_MAX = 0.70
#: SPEC: "Base allowance of 2 loops + 1 per 3 cuts".
LOOP_BASE_ALLOWANCE = 2
CUTS_PER_EXTRA_LOOP = 3
#: SPEC: "Only penalize if >25-30% of actions are jumps": we start at the lower end.
JUMP_FRACTION_FREE = 0.25
#: Cuts checked for clicks per episode (evenly spread): bounds the reward's cost (~2.5 ms
#: per cut on 2 busy cores) well inside the issue's 50 ms budget.
MAX_CLICK_JOINS = 8
#: Share of played beats that may carry effects before ``edit_structure`` objects.
EFFECT_FRACTION_FREE = 0.25
#: SPEC: "Mild penalties for using <4 action types".
MIN_DIVERSE_TYPES = 4

LOOP_TYPES = (ActionType.LOOP, ActionType.REPEAT_PREV)
#: SPEC files SKIP under navigation, but our SKIP drops k chunks (envs.actions): it is a
#: cut, and the oracle encodes long cuts with it, so only JUMP_BACK counts as a jump.
JUMP_TYPES = (ActionType.JUMP_BACK,)
#: SKIP drops several chunks: a cut too (the executor's ``n_cuts`` counts both).
CUT_TYPES = (ActionType.CUT, ActionType.SKIP)

COMPONENTS = (
    "keep_ratio_penalty",
    "loop_budget",
    "excessive_jumps",
    "diversity_penalty",
    "cut_ratio",
    "section_coherence",
    "phrase_alignment",
    "edit_structure",
    "audio_clicks",
    "audio_energy",
    "flow",
    "reorder_quality",
    "diversity_bonus",
    "imitation",
)


@dataclass(frozen=True)
class RewardWeights:
    """Weight of each component (same names as ``COMPONENTS``) and a global scale.

    The structural terms (coherence, phrase alignment, edit structure) and the cut ratio
    carry weight 1: they are what makes an edit musical and on target. Join-quality terms
    carry 0.5 (they are noisier). The keep-band penalty reaches -3 and the cut ratio -1,
    so keep-all loses to any plan inside the band. Diversity terms are mild (SPEC: "mild
    penalties", "small bonus").
    """

    keep_ratio_penalty: float = 1.0
    loop_budget: float = 1.0
    excessive_jumps: float = 1.0
    diversity_penalty: float = 0.25
    cut_ratio: float = 1.0
    section_coherence: float = 1.0
    phrase_alignment: float = 1.0
    edit_structure: float = 1.0
    audio_clicks: float = 0.5
    audio_energy: float = 0.5
    flow: float = 0.5
    reorder_quality: float = 0.5
    diversity_bonus: float = 0.1
    #: applied only when the song has a human plan (otherwise the term is absent)
    imitation: float = 1.0
    #: multiplies the total (SPEC's trajectory_reward_scale)
    scale: float = 1.0

    def __post_init__(self) -> None:
        names = {f.name for f in fields(self)} - {"scale"}
        assert names == set(COMPONENTS), f"weights {sorted(names ^ set(COMPONENTS))} out of sync with COMPONENTS"


@dataclass(frozen=True)
class RewardContext:
    """What the reward knows about one song, computed once per song.

    grid : the song's beat grid
    energy_db : np.ndarray [shape=(n_beats,), float64] per-beat level in dB
    timbre : np.ndarray [shape=(n_beats, d), float64] per-beat description of the music
        (the env uses chroma + MFCC 1..12, each column z-scored over the song), compared
        by cosine similarity of bar means: "does what follows a join resemble what
        followed the cut point in the raw?"
    target_keep : float in (0, 1], the keep ratio ``cut_ratio`` rewards
    y, sr : optional raw audio [shape=(channels, n) or (n,)] at its rate, for the click
        and level check on the real joins; None falls back to the features
    human_plan : optional aligned human plan of this song (enables ``imitation``)
    """

    grid: BeatGrid
    energy_db: np.ndarray
    timbre: np.ndarray
    target_keep: float = DEFAULT_TARGET_KEEP
    y: np.ndarray | None = None
    sr: int | None = None
    human_plan: EditPlan | None = None

    def __post_init__(self) -> None:
        n = self.grid.n_beats
        if self.energy_db.shape != (n,):
            raise ParameterError(f"energy_db has shape {self.energy_db.shape}, expected ({n},)")
        if self.timbre.ndim != 2 or self.timbre.shape[0] != n:
            raise ParameterError(f"timbre has shape {self.timbre.shape}, expected ({n}, d)")
        if not (0.0 < self.target_keep <= 1.0):
            raise ParameterError(f"target_keep {self.target_keep} outside (0, 1]")
        if (self.y is None) != (self.sr is None):
            raise ParameterError("give both y and sr for the click check, or neither")


@dataclass(frozen=True)
class RewardResult:
    """total = scale * sum(weighted.values()); scores are the unweighted components."""

    total: float
    weighted: dict[str, float]
    scores: dict[str, float]


# -- helpers -------------------------------------------------------------------------
def _runs(segments: Sequence[Segment]) -> list[tuple[int, int]]:
    """Segments merged into raw-contiguous runs in output order, ops ignored."""
    runs: list[list[int]] = []
    for s in segments:
        if runs and runs[-1][1] == s.raw_start:
            runs[-1][1] = s.raw_end
        else:
            runs.append([s.raw_start, s.raw_end])
    return [(a, b) for a, b in runs]


def _joins(segments: Sequence[Segment]) -> list[tuple[Segment, Segment]]:
    """Consecutive segment pairs that are not contiguous in the raw (audible edits)."""
    return [(a, b) for a, b in zip(segments[:-1], segments[1:]) if a.raw_end != b.raw_start]


def _phrase_start(grid: BeatGrid) -> np.ndarray:
    """bool [n_beats + 1]: beat index b starts a phrase (b = n_beats: the song's end)."""
    out = np.zeros(grid.n_beats + 1, dtype=bool)
    out[:-1] = (grid.beat_in_bar == 0) & (grid.bar % BARS_PER_PHRASE == 0)
    out[-1] = True
    return out


def _bar_start(grid: BeatGrid) -> np.ndarray:
    out = np.zeros(grid.n_beats + 1, dtype=bool)
    out[:-1] = grid.beat_in_bar == 0
    out[-1] = True
    return out


def _level_score(diff_db: float, scale_db: float) -> float:
    return 1.0 - 2.0 * min(1.0, abs(diff_db) / scale_db)


def plan_usage_iou(plan: EditPlan, other: EditPlan) -> float:
    """Duration-weighted IoU of the raw beats two plans use (same grid), in [0, 1]."""
    if plan.grid.n_beats != other.grid.n_beats:
        raise ParameterError(f"plans index different grids ({plan.grid.n_beats} vs {other.grid.n_beats} beats)")
    w = np.diff(plan.grid.bounds)
    a = plan.raw_beats_used > 0
    b = other.raw_beats_used > 0
    union = w[a | b].sum()
    return float(w[a & b].sum() / union) if union > 0 else 1.0


# -- components ------------------------------------------------------------------------
def keep_band(target_keep: float) -> tuple[float, float]:
    """The keep ratios ``keep_ratio_penalty`` leaves alone: SPEC's [20 %, 70 %], widened to
    contain target +- 10 points (a user whose edits keep 85 % is not punished for it)."""
    return min(KEEP_RATIO_MIN, target_keep - 0.10), max(KEEP_RATIO_MAX, target_keep + 0.10)


def _keep_ratio_penalty(keep: float, target_keep: float) -> float:
    lo, hi = keep_band(target_keep)
    dist = max(0.0, lo - keep, keep - hi)
    return -min(3.0, dist / 0.05)


def _loop_budget(types: np.ndarray) -> float:
    n_loops = int(np.isin(types, LOOP_TYPES).sum())
    n_cuts = int(np.isin(types, CUT_TYPES).sum())
    excess = n_loops - (LOOP_BASE_ALLOWANCE + n_cuts // CUTS_PER_EXTRA_LOOP)
    return -min(2.0, 0.5 * max(0, excess))


def _excessive_jumps(types: np.ndarray) -> float:
    if len(types) == 0:
        return 0.0
    frac = float(np.isin(types, JUMP_TYPES).mean())
    return -min(2.0, 4.0 * max(0.0, frac - JUMP_FRACTION_FREE))


def _section_coherence(runs: list[tuple[int, int]], bpb: int) -> float:
    if not runs:
        return -1.0
    lens = np.array([b - a for a, b in runs], dtype=np.float64)
    return float(np.clip(np.log2(lens / bpb) / 2.0, -1.0, 1.0).mean())


def _phrase_alignment(runs: list[tuple[int, int]], grid: BeatGrid) -> float:
    if not runs:
        return -1.0
    n = grid.n_beats
    points = [a for a, _ in runs if a > 0] + [b for _, b in runs if b < n]
    if not points:
        return 0.0  # nothing was cut: no edit point to judge
    phrase, bar = _phrase_start(grid), _bar_start(grid)
    p = np.asarray(points)
    return float(np.where(phrase[p], 1.0, np.where(bar[p], 0.25, -1.0)).mean())


def _edit_structure(runs: list[tuple[int, int]], segments: Sequence[Segment], grid: BeatGrid) -> float:
    if not runs:
        return -1.0
    bpb = grid.beats_per_bar
    bar = _bar_start(grid)  # the song's start and end count as bar lines (pickups, tails)
    bar[0] = True
    items = []
    for a, b in runs:
        items.append(bar[a] and bar[b] and b - a >= bpb)
    for (_, b0), (a1, _) in zip(runs[:-1], runs[1:]):
        if a1 > b0:  # a forward cut: the dropped span is whole bars too
            items.append(bar[b0] and bar[a1] and a1 - b0 >= bpb)
    score = float(np.mean([1.0 if ok else -1.0 for ok in items]))
    # effects (EQ, distortion, reverb, time, reverse) are spice: past a quarter of the
    # played beats they stop being an edit and become a different piece
    lens = np.array([s.raw_end - s.raw_start for s in segments], dtype=np.float64)
    fx = np.array([s.ops.has_effect for s in segments], dtype=bool)
    fx_frac = float(lens[fx].sum() / lens.sum())
    return float(np.clip(score - 2.0 * max(0.0, fx_frac - EFFECT_FRACTION_FREE), -1.0, 1.0))


def _natural_jumps(e: np.ndarray, out_point: int, in_point: int) -> tuple[float, float]:
    """Level changes the raw itself has at a cut's out point and in point (dB)."""
    n = len(e)
    nat_out = e[out_point] - e[out_point - 1] if out_point < n else 0.0
    nat_in = e[in_point] - e[in_point - 1] if in_point > 0 else 0.0
    return float(nat_out), float(nat_in)


def _join_levels(joins, ctx: RewardContext) -> float:
    """Beat-level energy consistency across joins (per-beat ``rms_db``, gains applied).

    A jump is judged against the jumps the raw itself makes at the out point and at the
    in point: cutting from the end of a build into a drop is as loud a step as the song's
    own, not an error."""
    if not joins:
        return 1.0
    e = ctx.energy_db
    scores = []
    for a, b in joins:
        jump = (e[b.raw_start] + b.ops.gain_db) - (e[a.raw_end - 1] + a.ops.gain_db)
        nat_out, nat_in = _natural_jumps(e, a.raw_end, b.raw_start)
        excess = min(abs(jump), abs(jump - nat_out), abs(jump - nat_in))
        if a.ops.fade_out_s > 0 or b.ops.fade_in_s > 0:
            excess *= 0.5
        scores.append(_level_score(excess, 12.0))
    return float(np.mean(scores))


def _bar_mean(z: np.ndarray, start: int, bpb: int) -> np.ndarray | None:
    seg = z[start : start + bpb]
    return seg.mean(axis=0) if len(seg) else None


def _cos(u: np.ndarray | None, v: np.ndarray | None) -> float:
    if u is None or v is None:
        return 0.0
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-9))


def _continuation(a_end: int, b_start: int, ctx: RewardContext) -> float:
    """Cosine similarity in [-1, 1] of the bar that follows a join to the bar that
    followed the out point in the raw (for a cut at the song's end: the bars before
    the out point and before the in point). 1 = the raw could have gone there."""
    z, bpb, n = ctx.timbre, ctx.grid.beats_per_bar, ctx.grid.n_beats
    if a_end < n:
        return _cos(_bar_mean(z, a_end, bpb), _bar_mean(z, b_start, bpb))
    if b_start > 0:
        return _cos(_bar_mean(z, max(0, a_end - bpb), bpb), _bar_mean(z, max(0, b_start - bpb), bpb))
    return 0.0


def _flow(runs: list[tuple[int, int]], segments: Sequence[Segment], ctx: RewardContext) -> float:
    """Section-level transitions: level of the last bar of one kept section vs the first
    bar of the next (judged against the raw's own change, as ``_join_levels``), and
    continuity of the music across the join (``_continuation``); plus the ending: an
    edit that stops more than a bar before the song's end must fade out (+1) or it
    stops dead (-1). Otherwise "keep the first 45 % and stop" would be a perfect edit."""
    if not runs:
        return -1.0
    e, bpb, n = ctx.energy_db, ctx.grid.beats_per_bar, ctx.grid.n_beats
    scores = []
    last = segments[-1]
    if last.raw_end < n - bpb:
        scores.append(1.0 if last.ops.fade_out_s > 0 else -1.0)
    gain_in = {}
    gain_out = {}
    for s in segments:
        gain_in.setdefault(s.raw_start, s.ops.gain_db)
        gain_out[s.raw_end] = s.ops.gain_db
    for (a0, b0), (a1, b1) in zip(runs[:-1], runs[1:]):
        lvl0 = e[max(a0, b0 - bpb) : b0].mean() + gain_out.get(b0, 0.0)
        lvl1 = e[a1 : min(b1, a1 + bpb)].mean() + gain_in.get(a1, 0.0)
        jump = lvl1 - lvl0
        nat = [e[b0 : b0 + bpb].mean() - e[max(0, b0 - bpb) : b0].mean()] if b0 < len(e) else []
        if a1 > 0:
            nat.append(e[a1 : a1 + bpb].mean() - e[max(0, a1 - bpb) : a1].mean())
        excess = min([abs(jump)] + [abs(jump - x) for x in nat])
        scores.append(0.5 * _level_score(excess, 9.0) + 0.5 * _continuation(b0, a1, ctx))
    return float(np.mean(scores)) if scores else 1.0


def _reorder_quality(joins, plan: EditPlan, ctx: RewardContext) -> float:
    """Joins that go back (loops, jumps back, reorders, repeats): each scores
    +1 when the repeated / moved material is at least a bar, both edit points sit on bar
    lines and the music continues (``_continuation``), less otherwise; minus the fraction
    of raw beats played more than twice (loop spam)."""
    back = [(a, b) for a, b in joins if b.raw_start < a.raw_end]
    if not back:
        return 0.0
    grid = ctx.grid
    bpb, n = grid.beats_per_bar, grid.n_beats
    scores = []
    for a, b in back:
        on_bars = grid.beat_in_bar[b.raw_start] == 0 and (a.raw_end == n or grid.beat_in_bar[a.raw_end] == 0)
        big = (b.raw_end - b.raw_start) >= bpb and (a.raw_end - a.raw_start) >= bpb
        structural = 1.0 if (on_bars and big) else -1.0
        scores.append(0.5 * structural + 0.5 * _continuation(a.raw_end, b.raw_start, ctx))
    overuse = float((plan.raw_beats_used > 2).mean())
    return float(np.clip(np.mean(scores) - overuse, -1.0, 1.0))


def local_join_quality(
    *, y: np.ndarray, sr: int, plan, crossfade_ms: float | None = None, window_ms: float = 50.0,
    threshold: float = CLICK_THRESHOLD,
) -> JoinQuality:
    """Click scores and energy jumps at every cut of ``plan``, rendering only
    +-``window_ms`` around each cut (``envs.render.render_excerpt``), not the song.

    Cheap enough for the environment's episode-end reward. y is the raw audio.
    """
    xf = DEFAULT_CROSSFADE_MS if crossfade_ms is None else crossfade_ms
    y = np.atleast_2d(np.asarray(y, dtype=np.float32))
    lay = layout(plan, sr, xf)
    half = int(round(window_ms * sr / 1000))
    pos = np.array([j.position for j in lay.joins if j.is_cut], dtype=np.int64)
    scores = np.zeros(len(pos))
    jumps = np.zeros(len(pos))
    clicks = []
    ctx = max(5.0, window_ms * 0.4)
    for k, j in enumerate(pos):
        ex = render_excerpt(y=y, sr=sr, plan=plan, start=int(j) - half, end=int(j) + half, crossfade_ms=xf, lay=lay)
        sc, ch = click_scores(y=ex, sr=sr, positions=[half], context_ms=min(20.0, ctx))
        scores[k] = sc[0]
        if sc[0] > threshold:
            clicks.append(Click(int(j), float(sc[0]), int(ch[0])))
        gap = max(lay.crossfade / 2 / sr * 1000, 1.0)
        jumps[k] = energy_consistency(y=ex, sr=sr, positions=[half], window_ms=window_ms - gap, gap_ms=gap)[0]
    return JoinQuality(positions=pos, scores=scores, clicks=tuple(clicks), energy_jumps_db=jumps)


def _audio_clicks(plan: EditPlan, joins, ctx: RewardContext) -> float:
    """Click score at the plan's cuts, heard on the real output.

    ``local_join_quality`` renders +-50 ms around a cut (never the whole
    song) and runs the click detector there. Each cut is rendered as the two-segment plan
    (previous, next): the audio around a join depends only on those two segments (their
    handles and crossfade), so it is the same as in the full render, and at most
    ``MAX_CLICK_JOINS`` cuts, evenly spread, are checked to bound the cost. Time stretch
    is left out of this check (pedalboard's stretch costs ~35 ms per call; whether a
    crossfaded join clicks does not depend on it). Without audio, 0 (no evidence).
    """
    if not plan.segments:
        return -1.0
    if ctx.y is None:
        return 0.0
    if not joins:
        return 1.0
    pick = np.unique(np.linspace(0, len(joins) - 1, min(len(joins), MAX_CLICK_JOINS)).round().astype(int))
    n_cuts = n_clicks = 0
    for i in pick:
        pair = tuple(replace(s, ops=replace(s.ops, time_factor=1.0)) if s.ops.time_factor != 1.0 else s for s in joins[i])
        q = local_join_quality(y=ctx.y, sr=ctx.sr, plan=replace(plan, segments=pair))
        n_cuts += q.n_cuts
        n_clicks += len(q.clicks)
    return 1.0 if n_cuts == 0 else 1.0 - 2.0 * n_clicks / n_cuts


# -- the reward ------------------------------------------------------------------------
def episode_reward(
    plan: EditPlan,
    action_types: Sequence[int] | np.ndarray,
    ctx: RewardContext,
    weights: RewardWeights = RewardWeights(),
) -> RewardResult:
    """Score one finished episode.

    Parameters
    ----------
    plan : the episode's plan (may have no segments: everything cut)
    action_types : the ``ActionType`` of every action executed, in order [shape=(steps,)]
    ctx : the song (grid, per-beat energy and timbre, target, optional audio / human plan)
    weights : component weights

    Returns
    -------
    RewardResult with the total, the weighted terms and the raw scores, by component name.
    """
    types = np.asarray(action_types, dtype=np.int64)
    segs = plan.segments
    runs = _runs(segs)
    joins = _joins(segs)
    grid = ctx.grid
    keep = plan.keep_ratio if segs else 0.0
    k = len(np.unique(types))
    s: dict[str, float] = {
        "keep_ratio_penalty": _keep_ratio_penalty(keep, ctx.target_keep),
        "loop_budget": _loop_budget(types),
        "excessive_jumps": _excessive_jumps(types),
        "diversity_penalty": -max(0, MIN_DIVERSE_TYPES - k) / (MIN_DIVERSE_TYPES - 1),
        "cut_ratio": 1.0 - 2.0 * min(1.0, abs(keep - ctx.target_keep) / 0.25),
        "section_coherence": _section_coherence(runs, grid.beats_per_bar),
        "phrase_alignment": _phrase_alignment(runs, grid),
        "edit_structure": _edit_structure(runs, segs, grid),
        "audio_clicks": _audio_clicks(plan, joins, ctx),
        "audio_energy": _join_levels(joins, ctx) if segs else -1.0,
        "flow": _flow(runs, segs, ctx),
        "reorder_quality": _reorder_quality(joins, plan, ctx) if segs else -1.0,
        "diversity_bonus": min(k, 8) / 8.0,
    }
    if ctx.human_plan is not None:
        s["imitation"] = 2.0 * plan_usage_iou(plan, ctx.human_plan) - 1.0 if segs else -1.0
    weighted = {name: float(getattr(weights, name) * v) for name, v in s.items()}
    total = float(weights.scale * sum(weighted.values()))
    return RewardResult(total=total, weighted=weighted, scores={n: float(v) for n, v in s.items()})


def target_keep_from(keep_ratios) -> float:
    """The keep ratio an episode aims at, from the user's aligned pairs' keep ratios (the
    caller reads them: ``alignment.label_index.keep_ratios``): their median, clipped to
    the keep band's floor (20 %); 45 % when there are none. One value for every song: a
    per-song value would hand the policy each label's own answer."""
    ratios = np.asarray(keep_ratios, dtype=np.float64)
    if ratios.size == 0:
        return DEFAULT_TARGET_KEEP
    return float(np.clip(np.median(ratios), KEEP_RATIO_MIN, 1.0))
