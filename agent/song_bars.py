"""Per-bar tables of a whole song, shared by the planners (agent/planner.py,
agent/planner_attention.py): the bar features a planner reads (``bar_features``), the
editor's per-bar decisions it learns (``bar_targets``) and the per-beat prior the policy
sees (``beat_prior``). One module below both planners, so neither imports the other's
internals.
"""

from __future__ import annotations

import numpy as np

from datasets.beats import BeatGrid
from datasets.features import feature_index
from datasets.structure import unit_similarity

__all__ = ["BAR_FEATURES", "N_TARGETS", "PHRASE_BARS", "SIMILAR", "bar_features", "bar_targets", "beat_prior"]

_RMS_DB = feature_index("rms_db")
_RMS = feature_index("rms")
_CHROMA = [feature_index(f"chroma_{p}") for p in ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")]
_CENTROID = feature_index("spectral_centroid")
_ONSETS = feature_index("onset_density")
_NOVELTY = feature_index("structure_novelty")
_LOW = feature_index("energy_low")

#: Per-bar inputs, in column order.
BAR_FEATURES: tuple[str, ...] = (
    "bar_loud_z", "bar_loud_pct", "bar_loud_rank",
    "phrase_loud_z", "phrase_loud_pct", "phrase_loud_rank", "phrase_loud_minus_prev", "phrase_loud_minus_next",
    "phrase_repeat_max", "phrase_n_similar", "phrase_earlier_sim", "phrase_later_sim", "phrase_repeat_rank",
    "phrase_power_z", "phrase_power_pct", "phrase_power_rank", "phrase_chroma_repeat", "phrase_chroma_repeat_rank",
    "pos_frac", "phrases_from_start", "phrases_to_end", "is_first_phrase", "is_last_phrase", "is_second_phrase",
    "bar_in_phrase_0", "bar_in_phrase_1", "bar_in_phrase_2", "bar_in_phrase_3", "bar_in_section",
    "before_music", "is_music_start",
    "novelty_z", "centroid_z", "onsets_z", "low_z", "phrase_len_frac",
)
#: kept, repeated, faded
N_TARGETS = 3
#: Phrases of the editor's grid are this many bars (the vocabulary's PHRASE).
PHRASE_BARS = 4
#: Two phrases "sound alike" above this similarity (envs/context.py's SIMILAR).
SIMILAR = 0.8



def _z(x: np.ndarray) -> np.ndarray:
    return np.clip((x - x.mean()) / (x.std() + 1e-9), -3, 3) if len(x) > 1 else np.zeros(len(x))


def _pct(x: np.ndarray) -> np.ndarray:
    n = len(x)
    if n <= 1:
        return np.full(n, 0.5)
    r = np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)
    return r / (n - 1)


def _bars(grid: BeatGrid) -> tuple[np.ndarray, np.ndarray]:
    """(first beat of each bar [n_bars + 1 bounds], bar index of every beat)."""
    b = np.asarray(grid.bar)
    starts = np.r_[0, np.flatnonzero(b[1:] != b[:-1]) + 1]
    bounds = np.r_[starts, grid.n_beats]
    of = np.repeat(np.arange(len(starts)), np.diff(bounds))
    return bounds, of


def bar_features(values: np.ndarray, grid: BeatGrid) -> tuple[np.ndarray, np.ndarray]:
    """Whole-song features of every bar of ``grid`` (the editor's phase).

    Returns (X [shape=(n_bars, len(BAR_FEATURES))], bar bounds [n_bars + 1] in beats).
    """
    values = np.nan_to_num(values.astype(np.float64))
    bounds, bar_of = _bars(grid)
    nb = len(bounds) - 1
    w = np.maximum(np.diff(grid.bounds), 1e-6)

    def bar_mean(col: np.ndarray) -> np.ndarray:
        return np.bincount(bar_of, col * w, minlength=nb) / np.bincount(bar_of, w, minlength=nb)

    loud = bar_mean(values[:, _RMS_DB])
    # phrases: groups of PHRASE_BARS bars by the grid's own numbering (its phase)
    bar_no = np.asarray(grid.bar)[bounds[:-1]]
    ph_id = bar_no // PHRASE_BARS
    _, ph_of = np.unique(ph_id, return_inverse=True)
    npz = int(ph_of.max()) + 1
    ph_bounds = np.r_[bounds[:-1][np.r_[0, np.flatnonzero(np.diff(ph_of)) + 1]], grid.n_beats]
    ph_w = np.bincount(ph_of, np.diff(grid.bounds[bounds]), minlength=npz)
    ph_loud = np.bincount(ph_of, loud * np.diff(grid.bounds[bounds]), minlength=npz) / np.maximum(ph_w, 1e-9)
    sim = unit_similarity(values, grid, ph_bounds) if npz > 1 else np.ones((1, 1))
    off = sim - 2.0 * np.eye(npz)
    rep = off.max(1) if npz > 1 else np.zeros(npz)
    n_sim = (off >= SIMILAR).sum(1) / max(npz - 1, 1)
    earlier = np.array([off[i, :i].max() if i > 0 else 0.0 for i in range(npz)])
    later = np.array([off[i, i + 1 :].max() if i < npz - 1 else 0.0 for i in range(npz)])
    loud_floor = np.percentile(values[:, _RMS_DB], 90) - 20.0
    music = np.flatnonzero(loud >= loud_floor)
    first_music = int(music[0]) if len(music) else 0
    rank = lambda x: (1.0 - _pct(x))  # noqa: E731  0 = the loudest / most repeated
    # loudness as energy (dB of the mean power, as a meter integrates it) beside the mean
    # of the beats' dB: the two rank phrases differently when one has quiet breaks
    beat_power = values[:, _RMS].astype(np.float64) ** 2 * w
    bar_pow = np.bincount(bar_of, beat_power, minlength=nb)
    bar_dur = np.bincount(bar_of, w, minlength=nb)
    ph_power_db = 10 * np.log10(np.bincount(ph_of, bar_pow, minlength=npz) / np.maximum(np.bincount(ph_of, bar_dur, minlength=npz), 1e-9) + 1e-20)
    # harmonic repetition alone (bar-by-bar chroma, the usual self-similarity of MIR)
    chroma_rep = _chroma_repetition(values, grid, ph_bounds)
    cols = {
        "bar_loud_z": _z(loud),
        "bar_loud_pct": _pct(loud),
        "bar_loud_rank": rank(loud),
        "phrase_loud_z": _z(ph_loud)[ph_of],
        "phrase_loud_pct": _pct(ph_loud)[ph_of],
        "phrase_loud_rank": rank(ph_loud)[ph_of],
        "phrase_loud_minus_prev": np.clip(np.r_[0.0, np.diff(ph_loud)] / 6.0, -2, 2)[ph_of],
        "phrase_loud_minus_next": np.clip(np.r_[-np.diff(ph_loud), 0.0] / 6.0, -2, 2)[ph_of],
        "phrase_repeat_max": rep[ph_of],
        "phrase_n_similar": n_sim[ph_of],
        "phrase_earlier_sim": earlier[ph_of],
        "phrase_later_sim": later[ph_of],
        "phrase_repeat_rank": rank(rep)[ph_of],
        "phrase_power_z": _z(ph_power_db)[ph_of],
        "phrase_power_pct": _pct(ph_power_db)[ph_of],
        "phrase_power_rank": rank(ph_power_db)[ph_of],
        "phrase_chroma_repeat": chroma_rep[ph_of],
        "phrase_chroma_repeat_rank": rank(chroma_rep)[ph_of],
        "pos_frac": (grid.bounds[bounds[:-1]] + grid.bounds[bounds[1:]]) / (2 * grid.duration),
        "phrases_from_start": np.minimum(ph_of, 4) / 4.0,
        "phrases_to_end": np.minimum(npz - 1 - ph_of, 4) / 4.0,
        "is_first_phrase": (ph_of == 0).astype(float),
        "is_last_phrase": (ph_of == npz - 1).astype(float),
        "is_second_phrase": (ph_of == 1).astype(float),
        **{f"bar_in_phrase_{k}": (np.mod(bar_no, PHRASE_BARS) == k).astype(float) for k in range(PHRASE_BARS)},
        "bar_in_section": np.mod(bar_no, 2 * PHRASE_BARS) / (2 * PHRASE_BARS),
        "before_music": (np.arange(nb) < first_music).astype(float),
        "is_music_start": (np.arange(nb) == first_music).astype(float),
        "novelty_z": _z(bar_mean(values[:, _NOVELTY])),
        "centroid_z": _z(bar_mean(values[:, _CENTROID])),
        "onsets_z": _z(bar_mean(values[:, _ONSETS])),
        "low_z": _z(bar_mean(values[:, _LOW])),
        "phrase_len_frac": (np.diff(ph_bounds) / grid.n_beats)[ph_of],
    }
    assert tuple(cols) == BAR_FEATURES
    X = np.stack([np.asarray(cols[k], dtype=np.float64) for k in BAR_FEATURES], axis=1)
    return np.nan_to_num(X).astype(np.float32), bounds


def _chroma_repetition(values: np.ndarray, grid: BeatGrid, ph_bounds: np.ndarray) -> np.ndarray:
    """[shape=(n_phrases,)] max over the other phrases of the mean cosine of their
    bar-by-bar chroma, aligned from the phrases' starts (repeated material ~0.9+)."""
    chroma = values[:, _CHROMA].astype(np.float64)
    bar = np.asarray(grid.bar)
    seqs = []
    for a, b in zip(ph_bounds[:-1], ph_bounds[1:]):
        bars = [chroma[a:b][bar[a:b] == k].mean(0) for k in np.unique(bar[a:b])]
        v = np.array(bars)
        seqs.append(v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-9))
    m = len(seqs)
    out = np.zeros(m)
    for i in range(m):
        best = -1.0
        for j in range(m):
            if i != j:
                k = min(len(seqs[i]), len(seqs[j]))
                best = max(best, float(np.mean(np.sum(seqs[i][:k] * seqs[j][:k], axis=1))))
        out[i] = best if m > 1 else 0.0
    return out


def bar_targets(plan, bounds: np.ndarray) -> np.ndarray:
    """[shape=(n_bars, 3)] kept / repeated / faded per bar of an aligned plan."""
    n = plan.grid.n_beats
    used = np.zeros(n)
    fade = np.zeros(n)
    for s in plan.segments:
        used[s.raw_start : s.raw_end] += 1
        if s.ops.fade_in_s > 0 or s.ops.fade_out_s > 0:
            fade[s.raw_start : s.raw_end] = 1
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        out.append([np.mean(used[a:b] >= 1) >= 0.5, np.mean(used[a:b] >= 2) >= 0.5, np.mean(fade[a:b]) >= 0.5])
    return np.asarray(out, dtype=np.float32)


def beat_prior(probs: np.ndarray, bounds: np.ndarray, grid: BeatGrid, *, kept: np.ndarray | None = None) -> np.ndarray:
    """Per-beat prior [shape=(n_beats, 5)] in ``envs.context.PLAN_PRIOR_COLUMNS`` order:
    keep, keep of its phrase (mean over the phrase's bars), repeat, fade, and the score
    that orders bars for the budgeted plan (the phrase's keep, the bar's own breaking
    ties). ``kept`` [n_bars] bool (training songs, ``PlannerConfig.budget_from_labels``):
    the editor's kept bars rank first, so the budgeted plan the policy learns from is
    the editor's wherever the keep ratio allows."""
    nb = len(bounds) - 1
    bar_no = np.asarray(grid.bar)[bounds[:-1]]
    _, ph_of = np.unique(bar_no // PHRASE_BARS, return_inverse=True)
    ph_keep = np.bincount(ph_of, probs[:, 0]) / np.bincount(ph_of)
    score = (ph_keep[ph_of] + 0.1 * probs[:, 0]) / 1.1  # in [0, 1]
    if kept is not None:
        score = score + 2.0 * np.asarray(kept, dtype=np.float64)
    per_bar = np.stack([probs[:, 0], ph_keep[ph_of], probs[:, 1], probs[:, 2], score], axis=1)
    reps = np.diff(bounds)
    assert len(reps) == nb
    return np.repeat(per_bar, reps, axis=0).astype(np.float32)
