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
3. ``GridModel``: a conditional-logit ranker over a song's candidate phases on audio
   evidence alone (accent contrasts at the candidate downbeats: onsets, bass and kick,
   harmony changes; bar-change contrasts at the candidate phrase starts; where the music
   starts), trained on the tie sets of step 2 of every training pair (the likelihood of
   the set, so an editor who never shows an 8-bar habit teaches nothing about it). It
   predicts a new song's phase at inference; with no evidence at all it keeps the
   product's own phase. Its ``TempoModel`` ranks the pulses first, on how strongly each
   pulse's beats fall on onsets and on its tempo (``tempo_features``), trained on the
   pairs whose cuts told pulses apart.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from datasets.beats import BeatGrid
from datasets.errors import ParameterError
from datasets.features import BeatFeatures, feature_index
from datasets.structure import bar_index

__all__ = [
    "GridPhase",
    "PhaseFit",
    "GridModel",
    "TempoModel",
    "TEMPO_CANDIDATES",
    "cut_times",
    "fit_tempo",
    "tempo_features",
    "MAX_BAR_OFFSET",
    "cut_points",
    "fit_phase",
    "candidate_phases",
    "candidate_features",
    "fit_grid_model",
    "load_grid_model",
    "editor_grid_features",
    "GRID_MODEL_FILE",
]

log = logging.getLogger(__name__)

#: Bar offsets 0..7 cover the phase of the largest group the vocabulary has
#: (TWO_PHRASES = 8 bars, envs/actions.py).
MAX_BAR_OFFSET = 8
#: The labels folder's file holding the fitted ranker (written by ``make align``).
GRID_MODEL_FILE = "editor_grid.json"
#: L2 penalty of the ranker, on standardised features: with 5-30 songs and ~20
#: features the fit must stay smooth (0.1-3 all recovered the synthetic editors' phases
#: in tests; 1.0 is the middle).
RANKER_L2 = 1.0


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


def _lattice_salience(env: np.ndarray, times: np.ndarray, sr_hop: float) -> float:
    """Mean onset peak (+-2 frames) at the given times, over the envelope's mean."""
    f = np.round(times * sr_hop).astype(np.int64)
    f = f[(f >= 0) & (f < len(env))]
    if len(f) == 0:
        return 0.0
    win = np.clip(f[:, None] + np.arange(-2, 3)[None, :], 0, len(env) - 1)
    return float(env[win].max(1).mean() / (env.mean() + 1e-9))


#: The tempo ranker's features per candidate pulse (column order, saved with it).
TEMPO_FEATURE_NAMES: tuple[str, ...] = (
    "log2_bpm_over_120", "log2_bpm_over_120_sq", "abs_log2_bpm_over_120",
    "onsets_on_beats", "onsets_on_minus_between", "is_tracker", "is_double", "is_half", "is_two_thirds",
)


def tempo_features(env: np.ndarray, grid: BeatGrid, *, sr_hop: float) -> tuple[list[tuple[float, float]], np.ndarray]:
    """Audio evidence for every candidate pulse of a song [shape=(n_cand, 9)]: its tempo
    against the ~120 BPM listeners prefer, and how strongly its beats fall on onsets
    (and more than the points between them).

    env : the onset envelope (``datasets.features.onset_envelope_of``); sr_hop : frames/s
    """
    cands, rows = [], []
    for r, o in TEMPO_CANDIDATES:
        try:
            base = GridPhase(beat_ratio=r, beat_offset=o).base(grid)
        except ParameterError:
            continue
        beats = base.bounds[1:-1]
        mids = (base.bounds[1:-2] + base.bounds[2:-1]) / 2
        on = _lattice_salience(env, beats, sr_hop)
        between = _lattice_salience(env, mids, sr_hop)
        lg = float(np.log2(base.tempo / 120.0))
        cands.append((r, o))
        rows.append([lg, lg * lg, abs(lg), on, on - between, float(r == 1.0), float(r > 1.0), float(r == 0.5),
                     float(abs(r - 2 / 3) < 1e-6)])
    return cands, np.asarray(rows, dtype=np.float64)


# ------------------------------------------------------------------ audio evidence

#: Per-beat accents whose contrast at candidate downbeats says where bars start
#: (datasets/features.py column names; deltas are taken against the previous beat).
_ACCENTS = (
    "onset_strength", "onset_strength_max", "beat_salience", "chroma_change", "mfcc_novelty", "structure_novelty",
    "energy_low", "stem_drums_rms", "stem_bass_rms", "band_sub_db", "band_bass_db", "band_lowmid_db", "rms_db",
    "spectral_centroid",
)
_DELTAS = ("rms_db", "band_bass_db", "band_sub_db")


def _z(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean()) / (x.std() + 1e-9)


def _bar_table(values: np.ndarray, grid: BeatGrid) -> tuple[np.ndarray, np.ndarray]:
    """(downbeat beat index per bar, per-bar descriptors [n_bars, 3]: change of mean
    loudness/timbre from the previous bar, novelty at the downbeat, |loudness change|)."""
    down, bar_of = bar_index(grid)
    rms_db = values[:, feature_index("rms_db")].astype(np.float64)
    mfcc = values[:, [feature_index(f"mfcc_{k}") for k in range(1, 13)]].astype(np.float64)
    timbre = np.concatenate([rms_db[:, None] / 3.0, (mfcc - mfcc.mean(0)) / (mfcc.std(0) + 1e-9)], axis=1)
    nb = len(down)
    ok = bar_of >= 0
    counts = np.bincount(bar_of[ok], minlength=nb).astype(np.float64)
    desc = np.stack([np.bincount(bar_of[ok], timbre[ok, c], minlength=nb) for c in range(timbre.shape[1])], 1)
    desc = desc / np.maximum(counts, 1)[:, None]
    change = np.r_[0.0, np.linalg.norm(np.diff(desc, axis=0), axis=1)]
    loud = desc[:, 0] * 3.0
    dloud = np.r_[0.0, np.abs(np.diff(loud))]
    nov = values[down, feature_index("structure_novelty")].astype(np.float64)
    return down, np.stack([_z(change), _z(nov), _z(dloud)], axis=1)


#: Names of the ranker's features, in column order (saved with the model).
FEATURE_NAMES: tuple[str, ...] = (
    *(f"down_{a}" for a in _ACCENTS),
    *(f"down_d_{a}" for a in _DELTAS),
    "down_is_tracker",
    *(f"phrase4_{d}" for d in ("change", "novelty", "dloud")),
    *(f"phrase8_{d}" for d in ("change", "novelty", "dloud")),
    "phrase4_at_music_start",
    "phrase8_at_music_start",
    "phrase4_at_first_full_bar",
    "phrase8_at_first_full_bar",
    "phrase_is_tracker",
    # a learned prior over phases relative to the tracker's (an editor often hears the bar
    # and the phrase the same distance from where the tracker puts them)
    *(f"prior_shift_{k}" for k in range(4)),
    *(f"prior_offset4_{k}" for k in range(4)),
    "prior_offset8_second_half",
)


def candidate_features(feats: BeatFeatures) -> tuple[list[GridPhase], np.ndarray]:
    """Audio evidence for every candidate phase of a song [shape=(n_cand, n_features)].

    feats : features on the product's own grid (``extract_features(audio)``)
    """
    grid = feats.grid
    v = feats.values
    n = grid.n_beats
    acc = [_z(v[:, feature_index(a)]) for a in _ACCENTS]
    acc += [_z(np.r_[0.0, np.diff(v[:, feature_index(a)].astype(np.float64))]) for a in _DELTAS]
    acc = np.stack(acc, axis=1)  # (n_beats, k)
    rms_db = v[:, feature_index("rms_db")].astype(np.float64)
    loud_floor = np.percentile(rms_db, 90) - 20.0
    cands = candidate_phases(grid)
    rows = []
    for ph in cands:
        g = ph.apply(grid)
        down_mask = g.beat_in_bar == 0
        if down_mask.sum() == 0 or down_mask.sum() == n:
            down_part = np.zeros(acc.shape[1])
        else:
            down_part = acc[down_mask].mean(0) - acc[~down_mask].mean(0)
        down, bars = _bar_table(v, g)
        bar_no = g.bar[down]
        music_bar = int(np.argmax([rms_db[d] >= loud_floor for d in down])) if len(down) else 0
        parts = []
        for k in (4, 8):
            start = np.mod(bar_no, k) == 0
            if start.all() or not start.any():
                parts.append(np.zeros(bars.shape[1]))
            else:
                parts.append(bars[start].mean(0) - bars[~start].mean(0))
        at_start4 = float(len(down) > 0 and bar_no[music_bar] % 4 == 0)
        at_start8 = float(len(down) > 0 and bar_no[music_bar] % 8 == 0)
        # the first whole bar (after a pickup) is where many listeners start counting
        full = int(np.flatnonzero(g.beat_in_bar == 0)[0]) if down_mask.any() else 0
        full_bar = int(g.bar[full])
        rows.append(np.r_[down_part, float(ph.downbeat_shift == 0), parts[0], parts[1], at_start4, at_start8,
                          float(full_bar % 4 == 0), float(full_bar % 8 == 0), float(ph.bar_offset == 0),
                          np.eye(4)[min(ph.downbeat_shift, 3)], np.eye(4)[ph.bar_offset % 4], float(ph.bar_offset >= 4)])
    X = np.asarray(rows, dtype=np.float64)
    assert X.shape[1] == len(FEATURE_NAMES), (X.shape, len(FEATURE_NAMES))
    return cands, X


# ------------------------------------------------------------------ the ranker


def _fit_conditional_logit(songs: list[tuple[np.ndarray, np.ndarray]], l2: float) -> dict | None:
    """Weights maximising sum over songs of log P(evidence set) = log sum_{c in set}
    softmax(Zw)_c - l2/2 |w|^2 on standardised features; None when no song has an
    informative evidence set (all or none of its candidates)."""
    from scipy.optimize import minimize

    songs = [(X, m) for X, m in songs if m.any() and not m.all()]
    if not songs:
        return None
    allX = np.concatenate([X for X, _ in songs])
    mean = allX.mean(0)
    std = allX.std(0)
    std = np.where(std < 1e-9, 1.0, std)
    Zs = [((X - mean) / std, m) for X, m in songs]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        total, grad = 0.5 * l2 * w @ w, l2 * w
        for Z, m in Zs:
            sc = Z @ w
            p = np.exp(sc - sc.max())
            p /= p.sum()
            pm = p * m
            q = pm.sum()
            total -= np.log(q + 1e-300)
            # d/dw [-log sum_set p] = E_p[z] - E_{p | set}[z]
            grad = grad + Z.T @ p - Z.T @ (pm / (q + 1e-300))
        return float(total), grad

    w = minimize(loss, np.zeros(allX.shape[1]), jac=True, method="L-BFGS-B").x
    hit = [bool(m[int(np.argmax(Z @ w))]) for Z, m in Zs]
    return dict(weights=tuple(float(x) for x in w), mean=tuple(map(float, mean)), std=tuple(map(float, std)),
                n_songs=len(songs), agreement=float(np.mean(hit)))


@dataclass(frozen=True)
class _Ranker:
    """A conditional-logit ranker of a song's candidates (phases or pulses).

    weights : [shape=(n_features,)] on standardised features; None = keep the
        product's own candidate (the first; no training pair showed any evidence)
    mean, std : feature standardisation fitted on the training candidates
    n_songs : training songs with evidence; agreement : the fraction of them whose
        predicted candidate is in their evidence set (training fit)
    """

    weights: tuple[float, ...] | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    n_songs: int = 0
    agreement: float = float("nan")

    NAMES: ClassVar[tuple[str, ...]] = ()  # the features this ranker's code computes

    def scores(self, X: np.ndarray) -> np.ndarray:
        if self.weights is None:
            return -np.arange(len(X), dtype=np.float64)  # the product's own candidate first
        Z = (X - np.asarray(self.mean)) / np.asarray(self.std)
        return Z @ np.asarray(self.weights)

    def to_dict(self) -> dict:
        return {
            "weights": None if self.weights is None else list(self.weights),
            "mean": list(self.mean),
            "std": list(self.std),
            "feature_names": list(self.NAMES),
            "n_songs": self.n_songs,
            "agreement": None if np.isnan(self.agreement) else self.agreement,
        }

    @classmethod
    def _fields_from(cls, d: dict) -> dict:
        names = tuple(d.get("feature_names") or ())
        if d.get("weights") is not None and names != cls.NAMES:
            raise ParameterError(f"editor grid model has features {names[:3]}..., this code expects {cls.NAMES[:3]}... "
                                 "(labels or checkpoint from another version: run make align and retrain)")
        return dict(
            weights=None if d.get("weights") is None else tuple(float(x) for x in d["weights"]),
            mean=tuple(float(x) for x in d.get("mean", ())),
            std=tuple(float(x) for x in d.get("std", ())),
            n_songs=int(d.get("n_songs", 0)),
            agreement=float("nan") if d.get("agreement") is None else float(d["agreement"]),
        )


@dataclass(frozen=True)
class TempoModel(_Ranker):
    """Ranks a song's candidate pulses (``TEMPO_CANDIDATES``) on ``tempo_features``."""

    NAMES: ClassVar[tuple[str, ...]] = TEMPO_FEATURE_NAMES

    def predict(self, env: np.ndarray, grid: BeatGrid, *, sr_hop: float) -> tuple[float, float]:
        if self.weights is None:
            return (1.0, 0.0)
        cands, X = tempo_features(env, grid, sr_hop=sr_hop)
        return cands[int(np.argmax(self.scores(X)))]

    @classmethod
    def from_dict(cls, d: dict | None) -> "TempoModel":
        return cls(**cls._fields_from(d)) if d else cls()

    @classmethod
    def fit(cls, songs: list[tuple[np.ndarray, np.ndarray]], *, l2: float = RANKER_L2) -> "TempoModel":
        """songs: (X [n_cand, 9], evidence mask [n_cand] bool) per training song."""
        fitted = _fit_conditional_logit(songs, l2)
        return cls() if fitted is None else cls(**fitted)


@dataclass(frozen=True)
class GridModel(_Ranker):
    """Ranks a song's candidate phases (step 3); ``tempo`` picks the pulse first.

    evidence_share : how many cut points sat on a bar line before and after the fit
    """

    NAMES: ClassVar[tuple[str, ...]] = FEATURE_NAMES
    evidence_share: dict = field(default_factory=dict)
    tempo: TempoModel = field(default_factory=TempoModel)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.NAMES

    def predict(self, feats: BeatFeatures) -> GridPhase:
        """The editor's phase of a new song's beats (``feats`` on those beats)."""
        if self.weights is None:
            return GridPhase()
        cands, X = candidate_features(feats)
        return cands[int(np.argmax(self.scores(X)))]

    def to_dict(self) -> dict:
        return {**super().to_dict(), "evidence_share": self.evidence_share, "tempo": self.tempo.to_dict()}

    @classmethod
    def from_dict(cls, d: dict | None) -> "GridModel":
        if not d:
            return cls()
        return cls(**cls._fields_from(d), evidence_share=dict(d.get("evidence_share") or {}),
                   tempo=TempoModel.from_dict(d.get("tempo")))

    @classmethod
    def fit(cls, songs: list[tuple[np.ndarray, np.ndarray]], *, l2: float = RANKER_L2) -> "GridModel":
        """songs: (X [n_cand, n_features], evidence mask [n_cand] bool) per training song.
        A song whose evidence is every candidate teaches nothing and is skipped."""
        fitted = _fit_conditional_logit(songs, l2)
        return cls() if fitted is None else cls(**fitted)


def fit_grid_model(label_files, *, out: str | Path | None = None, stems: str = "auto") -> GridModel:
    """Fit the rankers on the labelled pairs that train (``make align``'s last step) and
    write them to ``out`` (``labels/GRID_MODEL_FILE``): the pulse ranker on every pair's
    tempo evidence, the phase ranker on the phase evidence, on features of the pulse the
    pair's cuts chose. Pairs without evidence (older label files) are skipped."""
    from datasets.atomic import atomic_write_text
    from datasets.audio import load_audio
    from datasets.features import FeatureConfig, extract_features, onset_envelope_of

    cfg = FeatureConfig()
    songs, tempo_songs, shares = [], [], []
    for p in sorted(Path(f) for f in label_files):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        fit = rec.get("editor_grid") if isinstance(rec, dict) else None
        if not fit or not rec.get("raw_path"):
            continue
        audio = load_audio(rec["raw_path"])
        feats = extract_features(audio, stems=stems)
        chosen = GridPhase.from_list(fit["phase"])
        tempo_ties = {tuple(t) for t in fit.get("tempo_ties", [[1.0, 0.0]])}
        if len(tempo_ties) > 1 or chosen.tempo != (1.0, 0.0):
            tcands, TX = tempo_features(onset_envelope_of(audio, cfg), feats.grid, sr_hop=cfg.sr / cfg.hop_length)
            tempo_songs.append((TX, np.array([_tempo_in(c, tempo_ties) for c in tcands])))
        if chosen.tempo != (1.0, 0.0):
            feats = extract_features(audio, grid=chosen.base(feats.grid), stems=stems)
        cands, X = candidate_features(feats)
        ties = {tuple(t) for t in fit["ties"]}
        mask = np.array([tuple(c.to_list()) in ties for c in cands])
        songs.append((X, mask))
        shares.append((fit["on_bar_before"], fit["on_bar_after"]))
    model = replace(GridModel.fit(songs), tempo=TempoModel.fit(tempo_songs))
    if shares:
        b, a = np.mean(shares, axis=0)
        model = replace(model, evidence_share={"cuts_on_bar_before": round(float(b), 4),
                                               "cuts_on_bar_after": round(float(a), 4), "pairs": len(shares),
                                               "pairs_off_tracker_pulse": len([1 for X, m in tempo_songs if not m[0]])})
    if out is not None:
        atomic_write_text(out, json.dumps(model.to_dict(), indent=1))
    log.info(
        "editor grid: %d pairs with phase evidence, ranker %s; pulse ranker %s",
        model.n_songs, "keeps the tracker's phase" if model.weights is None else f"fits {model.agreement:.2f} of them",
        "keeps the tracker's beats" if model.tempo.weights is None
        else f"fits {model.tempo.agreement:.2f} of {model.tempo.n_songs} pairs",
    )
    return model


def _tempo_in(c: tuple[float, float], ties: set) -> bool:
    return any(abs(c[0] - t[0]) < 1e-4 and abs(c[1] - t[1]) < 1e-4 for t in ties)


def load_grid_model(label_dir: str | Path) -> GridModel:
    """The ranker ``make align`` wrote for a run (the product's own phase if none)."""
    p = Path(label_dir) / GRID_MODEL_FILE
    if not p.is_file():
        return GridModel()
    return GridModel.from_dict(json.loads(p.read_text()))


def editor_grid_features(audio, feats: BeatFeatures, model: dict | GridModel | None, **extract_kw) -> tuple[BeatFeatures, GridPhase]:
    """A new song's features on the editor's predicted grid (inference): their pulse
    first (the tempo ranker, on the onset envelope), then their phase of it.

    feats : the song's features on the product's own grid; model : the checkpoint's
    ``extra["editor_grid"]`` (None: an older checkpoint, the grid stays as it is).
    ``extract_kw`` goes to ``extract_features`` (stems, cache) so the columns that
    depend on the grid (bar and phrase position) are computed as in training.
    """
    from datasets.features import FeatureConfig, extract_features, onset_envelope_of

    m = model if isinstance(model, GridModel) else GridModel.from_dict(model)
    tempo = (1.0, 0.0)
    if m.tempo.weights is not None:
        cfg = FeatureConfig()
        env = onset_envelope_of(audio, cfg, use_cache=extract_kw.get("use_cache", True))  # the features' own
        tempo = m.tempo.predict(env, feats.grid, sr_hop=cfg.sr / cfg.hop_length)
    pulse = GridPhase(beat_ratio=tempo[0], beat_offset=tempo[1])
    base_feats = feats if pulse == GridPhase() else extract_features(audio, grid=pulse.base(feats.grid), **extract_kw)
    phase = replace(m.predict(base_feats), beat_ratio=tempo[0], beat_offset=tempo[1])
    if replace(phase, beat_ratio=1.0, beat_offset=0.0) == GridPhase():
        return base_feats, phase
    return extract_features(audio, grid=phase.apply(feats.grid), **extract_kw), phase
