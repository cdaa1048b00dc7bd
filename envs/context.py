"""Song-level context per beat: where a beat stands in the whole song.

The observation window shows 64 beats; an editor decides what to drop by comparing a
passage with the *whole* song (the quietest part, material heard before, the section
that changes the song). These channels carry that comparison into every beat row. They
are computed once per song from the 121 raw features (by name), in cheap numpy.

Units: the song is cut into *phrase units* of 4 bars (or 2 bars when 2-bar units
catch clearly more section changes), aligned to the bar lines where the sound changes
most (bar-to-bar timbre/loudness change), because sections rarely start on the beat
tracker's bar 0. Every unit-level channel is constant over the unit's beats.

=========================  ===========================================================
``ctx_loud_pct``           the beat's loudness (``rms_db``) percentile in the song, 0..1
``ctx_unit_start``         1 on the first beat of a unit
``ctx_unit_pos``           position of the beat inside its unit, 0..1
``ctx_unit_left``          beats to the end of its unit / (4 bars of beats)
``ctx_unit_index``         unit index / (n_units - 1), 0..1
``ctx_unit_frac``          unit duration / song duration
``ctx_unit_loud_pct``      the unit's mean loudness percentile among the units, 0..1
``ctx_unit_loud_z``        the unit's mean loudness, z-score over the units (clipped +-3)
``ctx_unit_repeat``        max similarity to any other unit (repeated material), -1..1
``ctx_unit_repeat_pct``    percentile of ``ctx_unit_repeat`` among the units, 0..1
``ctx_unit_prev_sim``      similarity to the previous unit (low = section change)
``ctx_unit_earlier_sim``   max similarity to an earlier unit (0 for the first)
``ctx_unit_later_sim``     max similarity to a later unit (0 for the last)
``ctx_unit_n_similar``     fraction of the other units that sound like this one
``ctx_unit_occurrence``    how many earlier units sound like this one, / 3, clipped to 1
``ctx_unit_change``        bar-change strength at the unit's start, z-score (clipped +-3)
=========================  ===========================================================

"Sound alike" = similarity >= ``SIMILAR`` and mean loudness within ``SIMILAR_DB``.
Similarity = cosine of the two units' bar-by-bar sequences of z-scored chroma and MFCC
(aligned from the units' starts), so the order of the chords counts, not just the mix.
"""

from __future__ import annotations

import numpy as np

from datasets.beats import BARS_PER_PHRASE, BeatGrid
from datasets.features import N_FEATURES, feature_index
from datasets.structure import bar_index, phrase_units, unit_similarity

__all__ = ["CONTEXT_CHANNELS", "PLAN_CHANNELS", "PLAN_PRIOR_COLUMNS", "N_CONTEXT", "plan_channels", "SIMILAR", "SIMILAR_DB", "phrase_units", "song_context"]

CONTEXT_CHANNELS: tuple[str, ...] = (
    "ctx_loud_pct",
    "ctx_unit_start",
    "ctx_unit_pos",
    "ctx_unit_left",
    "ctx_unit_index",
    "ctx_unit_frac",
    "ctx_unit_loud_pct",
    "ctx_unit_loud_z",
    "ctx_unit_repeat",
    "ctx_unit_repeat_pct",
    "ctx_unit_prev_sim",
    "ctx_unit_earlier_sim",
    "ctx_unit_later_sim",
    "ctx_unit_n_similar",
    "ctx_unit_occurrence",
    "ctx_unit_change",
)
#: The whole-song plan of this editor (agent/planner.py) when the song carries one
#: (``Song.plan_prior``); all zeros with ``plan_known`` 0 otherwise:
#: ``plan_keep`` / ``plan_keep_phrase`` / ``plan_repeat`` / ``plan_fade`` are the
#: planner's probabilities for the beat's bar (and the mean over its phrase);
#: ``plan_budget_keep`` is 1 on the bars that the planner's keep scores rank first
#: until the target keep ratio is filled (the "cut until X % is left" decision, made
#: over the whole song at once, for the ratio this episode aims at).
PLAN_CHANNELS: tuple[str, ...] = ("plan_keep", "plan_keep_phrase", "plan_repeat", "plan_fade", "plan_budget_keep", "plan_known")
#: The planner's per-beat prior columns (``Song.plan_prior``), in this order: the four
#: probabilities shown as channels, then ``plan_score``, the order in which the budgeted
#: plan takes bars (not shown to the policy: for training songs it ranks the editor's own
#: kept bars first, agent/planner.py).
PLAN_PRIOR_COLUMNS: tuple[str, ...] = PLAN_CHANNELS[:4] + ("plan_score",)
SONG_CHANNELS = CONTEXT_CHANNELS
CONTEXT_CHANNELS = SONG_CHANNELS + PLAN_CHANNELS
N_CONTEXT = len(CONTEXT_CHANNELS)

#: Two units sound alike above this similarity (repeated sections score ~0.9,
#: different sections of one song ~0.3-0.7 with this descriptor) ...
SIMILAR = 0.8
#: ... when their mean loudness also differs by less than this many dB.
SIMILAR_DB = 2.5

_RMS_DB = feature_index("rms_db")


def _pct(x: np.ndarray) -> np.ndarray:
    """Percentile rank in [0, 1] (ties share their mean rank; one value -> 0.5)."""
    n = len(x)
    if n <= 1:
        return np.full(n, 0.5)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(n, dtype=np.float64)
    # average the ranks of equal values so equal loudness gets an equal percentile
    _, inv = np.unique(x, return_inverse=True)
    ranks = np.bincount(inv, ranks)[inv] / np.bincount(inv)[inv]
    return ranks / (n - 1)


def budget_keep(score: np.ndarray, grid: BeatGrid, target_keep: float) -> np.ndarray:
    """[shape=(n_beats,)] 1 on the bars kept when bars are taken in order of ``score``
    (per beat, constant over a bar; ties to the earlier bar) until their duration
    reaches ``target_keep`` of the song."""
    n = grid.n_beats
    bar = np.asarray(grid.bar)
    starts = np.r_[0, np.flatnonzero(bar[1:] != bar[:-1]) + 1]
    ends = np.r_[starts[1:], n]
    dur = grid.bounds[ends] - grid.bounds[starts]
    order = np.argsort(-score[starts], kind="stable")
    cum = np.cumsum(dur[order]) / max(grid.duration, 1e-9)
    k = int(np.searchsorted(cum, float(np.clip(target_keep, 0.0, 1.0)) - 1e-9)) + 1
    keep_bar = np.zeros(len(starts), dtype=bool)
    keep_bar[order[:k]] = True
    return np.repeat(keep_bar, ends - starts).astype(np.float64)


def plan_channels(plan_prior: np.ndarray | None, grid: BeatGrid, *, target_keep: float) -> np.ndarray:
    """The ``PLAN_CHANNELS`` of every beat [shape=(n_beats, len(PLAN_CHANNELS)), float32].

    plan_prior : [shape=(n_beats, 5)] ``PLAN_PRIOR_COLUMNS`` (agent/planner.py), or None
    target_keep : the keep ratio the budgeted plan fills (the env's)
    """
    n = grid.n_beats
    out = np.zeros((n, len(PLAN_CHANNELS)), dtype=np.float64)
    if plan_prior is None or n == 0:
        return out.astype(np.float32)
    prior = np.nan_to_num(np.asarray(plan_prior, dtype=np.float64))
    assert prior.shape == (n, len(PLAN_PRIOR_COLUMNS)), f"plan prior {prior.shape} does not match {n} beats"
    out[:, :4] = prior[:, :4]
    out[:, 4] = budget_keep(prior[:, 4], grid, target_keep)
    out[:, 5] = 1.0
    return out.astype(np.float32)


def song_context(values: np.ndarray, grid: BeatGrid, *, plan_prior: np.ndarray | None = None, target_keep: float = 0.5) -> np.ndarray:
    """The ``CONTEXT_CHANNELS`` of every beat.

    values : np.ndarray [shape=(n_beats, 121)] raw beat features
    grid : the song's BeatGrid
    plan_prior, target_keep : the planner's prior and the episode's keep target
        (``plan_channels``)

    Returns np.ndarray [shape=(n_beats, N_CONTEXT), float32], finite.
    """
    n = grid.n_beats
    assert values.shape == (n, N_FEATURES), f"features {values.shape} do not match grid ({n} beats)"
    out = np.zeros((n, N_CONTEXT), dtype=np.float64)
    if n == 0:
        return out.astype(np.float32)
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    widths = np.maximum(np.diff(grid.bounds), 1e-6)
    rms_db = values[:, _RMS_DB]
    units, change = phrase_units(values, grid)
    m = len(units) - 1
    unit_of = np.searchsorted(units, np.arange(n), side="right") - 1
    starts, ends = units[unit_of], units[unit_of + 1]

    # unit loudness (duration-weighted mean dB) and bar-by-bar descriptor sequences
    energy = np.array([np.average(rms_db[units[i] : units[i + 1]], weights=widths[units[i] : units[i + 1]]) for i in range(m)])
    seconds = np.array([widths[units[i] : units[i + 1]].sum() for i in range(m)])
    sim = unit_similarity(values, grid, units)
    off = sim - 2.0 * np.eye(m)  # exclude self-similarity from the maxima
    repeat = off.max(axis=1) if m > 1 else np.zeros(m)
    alike = (sim >= SIMILAR) & (np.abs(energy[:, None] - energy[None, :]) <= SIMILAR_DB) & ~np.eye(m, dtype=bool)
    earlier = np.array([off[i, :i].max() if i > 0 else 0.0 for i in range(m)])
    later = np.array([off[i, i + 1 :].max() if i < m - 1 else 0.0 for i in range(m)])
    prev = np.r_[0.0, np.diag(sim, -1)] if m > 1 else np.zeros(m)
    occurrence = np.array([alike[i, :i].sum() for i in range(m)], dtype=np.float64)
    n_similar = alike.sum(axis=1) / max(m - 1, 1)
    loud_z = np.clip((energy - energy.mean()) / (energy.std() + 1e-9), -3, 3) if m > 1 else np.zeros(m)
    _, bar_of = bar_index(grid)
    chg_z = np.clip((change - change.mean()) / (change.std() + 1e-9), -3, 3) if len(change) > 1 else np.zeros(len(change))
    unit_change = chg_z[np.clip(bar_of[units[:-1]], 0, len(change) - 1)]
    unit_change[bar_of[units[:-1]] < 0] = 0.0

    phrase_beats = float(BARS_PER_PHRASE * grid.beats_per_bar)
    cols = {
        "ctx_loud_pct": _pct(rms_db),
        "ctx_unit_start": (np.arange(n) == starts).astype(np.float64),
        "ctx_unit_pos": (np.arange(n) - starts) / np.maximum(ends - starts, 1),
        "ctx_unit_left": (ends - np.arange(n)) / phrase_beats,
        "ctx_unit_index": (unit_of / (m - 1)) if m > 1 else np.zeros(n),
        "ctx_unit_frac": (seconds / seconds.sum())[unit_of],
        "ctx_unit_loud_pct": _pct(energy)[unit_of],
        "ctx_unit_loud_z": loud_z[unit_of],
        "ctx_unit_repeat": repeat[unit_of],
        "ctx_unit_repeat_pct": _pct(repeat)[unit_of],
        "ctx_unit_prev_sim": prev[unit_of],
        "ctx_unit_earlier_sim": earlier[unit_of],
        "ctx_unit_later_sim": later[unit_of],
        "ctx_unit_n_similar": n_similar[unit_of],
        "ctx_unit_occurrence": np.minimum(occurrence / 3.0, 1.0)[unit_of],
        "ctx_unit_change": unit_change[unit_of],
    }
    assert tuple(cols) == SONG_CHANNELS
    for c, name in enumerate(SONG_CHANNELS):
        out[:, c] = cols[name]
    out[:, len(SONG_CHANNELS) :] = plan_channels(plan_prior, grid, target_keep=target_keep)
    return np.nan_to_num(out).astype(np.float32)
