"""The editor's grid: where *this* editor hears bar and phrase lines.

The product's beat tracker picks a downbeat and numbers bars from the start of the
song; an editor who cuts "on the bar" or "on the phrase" hears those lines where the
music tells *them*, often a beat or a bar or two away. Labels expressed on the wrong
phase turn a phrase-level edit into BEAT- and BAR-sized fiddling (and a repeated phrase
into JUMP_BACK + steps instead of one LOOP), so the labels, the training environment
and inference use the editor's phase of the same beats (``BeatGrid.rephased``).

1. ``cut_points``: the raw beats where an aligned edit leaves or re-enters the raw
   (edges of the plan's non-contiguous runs; 0 and the end of the song do not count).
2. ``fit_phase``: over every phase (downbeat shift s in [0, beats_per_bar), bar offset o
   in [0, 8)) count the cut points on a downbeat, on a phrase start (4 bars) and on a
   2-phrase start (8 bars); the phases with the highest count are the pair's
   *evidence*. Ties go to the product's own phase (s = 0, then the smallest o), so an
   edit with no cuts changes nothing.
   Before the phase, the pulse (``fit_tempo``): an editor may tap twice the tracker's
   tempo, half of it, or two beats in three of the tracker's (a 107 BPM listener to a
   song the tracker hears at 161), and then no phase of the tracker's beats holds their
   bar lines. Each pulse of ``TEMPO_CANDIDATES`` (``BeatGrid.retimed``) gets its best
   phase and the likelihood of the cuts' raw times (``cut_times``) under it (a cut on a
   line of period P is P / 2 tol times likelier than by chance, tol the same for every
   pulse); another pulse wins only by ``TEMPO_MARGIN``.
3. At inference the editor's grid of a new song is predicted from audio alone
   (alignment/grid_model.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from datasets.beats import BeatGrid
from datasets.errors import ParameterError

__all__ = ["GridPhase", "PhaseFit", "TEMPO_CANDIDATES", "MAX_BAR_OFFSET", "cut_times", "fit_tempo", "cut_points",
           "fit_phase", "candidate_phases"]

log = logging.getLogger(__name__)

#: Bar offsets 0..7 cover the phase of the largest group the vocabulary has
#: (TWO_PHRASES = 8 bars, envs/actions.py).
MAX_BAR_OFFSET = 8


@dataclass(frozen=True)
class GridPhase:
    """An editor's grid of the product's beats: their pulse (``BeatGrid.retimed``
    arguments; (1, 0) is the tracker's own beats), then their phase of it
    (``BeatGrid.rephased`` arguments)."""

    downbeat_shift: int = 0
    bar_offset: int = 0
    beat_ratio: float = 1.0
    """the editor's beats per tracker beat: 1, 2 (double time), 0.5 (half), 2/3"""
    beat_offset: float = 0.0
    """tracker beats from the tracker's first whole beat to the editor's first beat"""

    @property
    def tempo(self) -> tuple[float, float]:
        return (float(self.beat_ratio), float(self.beat_offset))

    def base(self, grid: BeatGrid) -> BeatGrid:
        """The editor's beats, with the tracker's rule for their first downbeat."""
        if self.tempo == (1.0, 0.0):
            return grid
        return grid.retimed(self.beat_ratio, self.beat_offset)

    def apply(self, grid: BeatGrid) -> BeatGrid:
        if self == GridPhase():
            return grid
        g = self.base(grid)
        return g.rephased(downbeat_shift=self.downbeat_shift % g.beats_per_bar, bar_offset=self.bar_offset)

    def to_list(self) -> list:
        head = [int(self.downbeat_shift), int(self.bar_offset)]
        return head if self.tempo == (1.0, 0.0) else head + [round(self.beat_ratio, 6), round(self.beat_offset, 6)]

    @classmethod
    def from_list(cls, x) -> "GridPhase":
        x = list(x)
        return cls(int(x[0]), int(x[1]), *(float(v) for v in x[2:4]))


@dataclass(frozen=True)
class PhaseFit:
    """What one pair's cut points say about the editor's phase.

    phase : the chosen phase (the best, ties to the product's own)
    ties : every phase with the best count (the evidence the ranker learns from)
    hits : cut-point hits of the chosen phase (downbeat + phrase + 2-phrase counts)
    n_cuts : number of cut points
    on_bar_before, on_bar_after : fraction of cut points on a downbeat of the product's
        grid and of the chosen phase's grid
    """

    phase: GridPhase
    ties: tuple[GridPhase, ...]
    hits: int
    n_cuts: int
    on_bar_before: float
    on_bar_after: float
    tempo_ties: tuple[tuple[float, float], ...] = ((1.0, 0.0),)
    """the pulses (``TEMPO_CANDIDATES``) the cut points support as well as the chosen one
    (``fit_tempo``); ``ties`` are phases of the chosen pulse's beats"""
    tempo_scores: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return {
            "phase": self.phase.to_list(),
            "ties": [p.to_list() for p in self.ties],
            "hits": self.hits,
            "n_cuts": self.n_cuts,
            "on_bar_before": round(self.on_bar_before, 4),
            "on_bar_after": round(self.on_bar_after, 4),
            "tempo": list(self.phase.tempo),
            "tempo_ties": [list(t) for t in self.tempo_ties],
            "tempo_scores": [round(x, 3) for x in self.tempo_scores],
        }


def cut_points(segments, n_beats: int) -> np.ndarray:
    """Raw beats where the edit leaves or re-enters the raw [shape=(k,), int, sorted].

    segments : the plan's segments (``raw_start``, ``raw_end`` in raw beats), in output
        order; a segment that starts where the previous one ended is a continuation
        (a fade or gain split), not a cut.
    """
    pts = {int(p) for p in _edges(segments, lambda a, b: a == b)}
    return np.array(sorted(p for p in pts if 0 < p < n_beats), dtype=np.int64)


def _edges(segments, joined) -> list:
    """Raw positions where the output leaves or re-enters the raw: every segment start
    and end, except where ``joined(start, previous end)`` (a continuation)."""
    pts = []
    prev_end = None
    for seg in segments:
        if prev_end is None or not joined(seg.raw_start, prev_end):
            pts.append(seg.raw_start)
            if prev_end is not None:
                pts.append(prev_end)
        prev_end = seg.raw_end
    if prev_end is not None:
        pts.append(prev_end)
    return pts


def candidate_phases(grid: BeatGrid) -> list[GridPhase]:
    """Every (downbeat shift, bar offset) of the grid's meter, the product's own first."""
    return [GridPhase(s, o) for s in range(grid.beats_per_bar) for o in range(MAX_BAR_OFFSET)]


def _group_starts(grid: BeatGrid, bars: int) -> np.ndarray:
    """[shape=(n_beats,), bool] first beat of each group of ``bars`` bars."""
    down = grid.beat_in_bar == 0
    return down & (np.mod(grid.bar, bars) == 0)


def fit_phase(grid: BeatGrid, cuts: np.ndarray) -> PhaseFit:
    """The phase under which the most cut points fall on the editor's lines (step 2)."""
    cuts = np.asarray(cuts, dtype=np.int64)
    cands = candidate_phases(grid)
    scores = []
    for ph in cands:
        g = ph.apply(grid)
        hits = _group_starts(g, 1)[cuts].sum() + _group_starts(g, 4)[cuts].sum() + _group_starts(g, 8)[cuts].sum()
        scores.append(int(hits))
    best = max(scores) if scores else 0
    ties = tuple(p for p, s in zip(cands, scores) if s == best)
    phase = ties[0]  # candidate_phases lists the product's own phase first
    on_before = float(_group_starts(grid, 1)[cuts].mean()) if len(cuts) else 1.0
    on_after = float(_group_starts(phase.apply(grid), 1)[cuts].mean()) if len(cuts) else 1.0
    return PhaseFit(phase=phase, ties=ties, hits=best, n_cuts=len(cuts), on_bar_before=on_before, on_bar_after=on_after)


# ------------------------------------------------------------------ the editor's pulse

#: The pulses an editor may tap against the tracker's beats: (their beats per tracker
#: beat, their first beat's offset in tracker beats). Each offset starts a distinct
#: lattice of its ratio (half time: two parities; 2/3, one beat every 1.5: three
#: lattices on half-beat positions); the downbeat shift then covers the rest. Real
#: editors of the style bench tap 2x, 1/2x and 2/3x of the tracker on 3-6 of 35 songs.
TEMPO_CANDIDATES: tuple[tuple[float, float], ...] = (
    (1.0, 0.0), (2.0, 0.0), (0.5, 0.0), (0.5, 1.0), (2 / 3, 0.0), (2 / 3, 0.5), (2 / 3, 1.0),
)
#: Log-likelihood (nats) another pulse must gain over the tracker's own before the
#: labels move to it: a few cut points can land on any lattice's lines by chance,
#: and e^3 = 20x is the evidence of about one extra cut point on a phrase line.
TEMPO_MARGIN = 3.0
#: Pulses whose cut-point likelihood is within this of the chosen one are its ties
#: (the tempo ranker's evidence set).
TEMPO_TIE = 1.0
#: Cut-point model: a cut lands on a bar, phrase and 2-phrase line of the editor's grid
#: with these weights, or anywhere (noise); a line of period P is hit by chance with
#: probability 2 tol / P, so a hit is worth P / (2 tol) against chance.
_LINE_WEIGHTS = np.array([0.3, 0.3, 0.3])
_NOISE = 0.1
#: Within this of a segment edge, two raw times are the same cut (a continuation).
JOIN_S = 0.05


def cut_times(segments, duration: float) -> np.ndarray:
    """Raw seconds where the edit leaves or re-enters the raw [shape=(k,), sorted]:
    ``cut_points`` of the aligned segments (``raw_start``, ``raw_end`` in seconds),
    before any grid rounds them."""
    pts = [float(p) for p in _edges(segments, lambda a, b: abs(a - b) <= JOIN_S)]
    t = np.unique(np.round([p for p in pts if JOIN_S < p < duration - JOIN_S], 3))
    if len(t) > 1:  # one cut seen twice (out of a span and back into it)
        t = t[np.r_[True, np.diff(t) > JOIN_S]]
    return t


def _tolerance(grid: BeatGrid) -> float:
    """How far (s) from a beat line a cut still counts as on it: a fifth of a beat,
    30-100 ms (human jitter of +-20 ms and MP3 delivery stay well inside)."""
    return float(np.clip(0.2 * np.median(np.diff(grid.bounds)), 0.03, 0.1))


def _pulse_fit(grid: BeatGrid, times: np.ndarray, tol: float) -> tuple[PhaseFit, float]:
    """The best phase of a pulse's beats for the cut times, and the times' log-likelihood.

    tol : seconds, the same for every pulse (the tracker's), so a denser pulse does not
        explain cuts more cheaply: its lines are hit by chance more often.
    """
    idx = np.clip(np.searchsorted(grid.bounds, times), 1, grid.n_beats)
    idx = np.where(np.abs(grid.bounds[idx - 1] - times) < np.abs(grid.bounds[idx] - times), idx - 1, idx)
    near = (np.abs(grid.bounds[idx] - times) <= tol) & (idx > 0) & (idx < grid.n_beats)
    fit = fit_phase(grid, np.unique(idx[near]))
    g = fit.phase.apply(grid)
    bar_s = g.beats_per_bar * float(np.median(np.diff(g.bounds)))
    periods = np.array([1.0, 4.0, 8.0]) * bar_s
    lv = np.stack([_group_starts(g, k)[idx[near]] for k in (1, 4, 8)], axis=1).astype(np.float64)
    lik = _NOISE + (lv * _LINE_WEIGHTS * periods / (2 * tol)).sum(1)
    score = float(np.log(lik).sum() + (len(times) - near.sum()) * np.log(_NOISE))
    return fit, score


def fit_tempo(grid: BeatGrid, times: np.ndarray) -> PhaseFit:
    """The editor's pulse and phase from the raw times of their cuts (``cut_times``).

    Every pulse of ``TEMPO_CANDIDATES`` gets its best phase (``fit_phase`` on its beats)
    and the likelihood of the cut times under it; another pulse than the tracker's wins
    by ``TEMPO_MARGIN``. The returned phase carries the pulse (``GridPhase.apply`` on the
    tracker's grid gives the editor's grid); ``ties`` are phases of that pulse's beats.
    """
    times = np.asarray(times, dtype=np.float64)
    tol = _tolerance(grid)
    fits: list[tuple[tuple[float, float], PhaseFit, float]] = []
    scores = []
    for r, o in TEMPO_CANDIDATES:
        try:
            base = GridPhase(beat_ratio=r, beat_offset=o).base(grid)
        except ParameterError:  # too short for that pulse
            scores.append(-1e9)
            continue
        fit, score = _pulse_fit(base, times, tol)
        fits.append(((r, o), fit, score))
        scores.append(score)
    own = fits[0]
    best = max(fits[1:], key=lambda f: f[2], default=own)
    tempo, fit, score = best if best[2] > own[2] + TEMPO_MARGIN else own
    ties = tuple(t for t, _, sc in fits if sc >= score - TEMPO_TIE)
    if tempo not in ties:
        ties = (tempo, *ties)
    phase = replace(fit.phase, beat_ratio=tempo[0], beat_offset=tempo[1])
    return PhaseFit(
        phase=phase, ties=fit.ties, hits=fit.hits, n_cuts=len(times),
        on_bar_before=_share_on_downbeats(grid, times), on_bar_after=_share_on_downbeats(phase.apply(grid), times),
        tempo_ties=ties, tempo_scores=tuple(scores),
    )


def _share_on_downbeats(grid: BeatGrid, times: np.ndarray) -> float:
    """Fraction of the times within ``_tolerance`` of one of the grid's downbeats."""
    if len(times) == 0:
        return 1.0
    t = grid.times[grid.is_downbeat]
    if len(t) == 0:
        return 0.0
    d = np.min(np.abs(times[:, None] - t[None, :]), axis=1)
    return float(np.mean(d <= _tolerance(grid)))
