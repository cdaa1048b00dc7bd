"""Song structure from beat features: phrase units aligned to section changes.

One analysis for everything that reasons about a song's form (the demo corpus's scripted
editors decide which phrases to drop with it; the environment's song-context channels
describe the same units to the policy), so the two can never disagree about where a
phrase starts.
"""

from __future__ import annotations

import numpy as np

from datasets.beats import BARS_PER_PHRASE, BeatGrid
from datasets.features import feature_index

__all__ = ["phrase_units", "bar_index", "unit_similarity"]

_RMS_DB = feature_index("rms_db")
_MFCC = [feature_index(f"mfcc_{k}") for k in range(1, 13)]
_CHROMA = [feature_index(f"chroma_{p}") for p in ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")]


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)


def bar_index(grid: BeatGrid) -> tuple[np.ndarray, np.ndarray]:
    """(downbeat beat indices, bar number per beat with -1 for a pickup)."""
    downbeats = np.flatnonzero(grid.beat_in_bar == 0)
    if len(downbeats) == 0:
        downbeats = np.array([0])
    return downbeats, np.searchsorted(downbeats, np.arange(grid.n_beats), side="right") - 1


def phrase_units(values: np.ndarray, grid: BeatGrid) -> tuple[np.ndarray, np.ndarray]:
    """Phrase units aligned to the song's section changes.

    Returns (bounds [n_units + 1] int64 beat indices from 0 to n_beats, bar-change
    strength [n_bars] per bar: distance of the bar's mean loudness/timbre from the
    previous bar's).
    """
    n = grid.n_beats
    downbeats, bar_of = bar_index(grid)
    rms_db = values[:, _RMS_DB].astype(np.float64)
    mfcc = values[:, _MFCC].astype(np.float64)
    timbre = np.concatenate([rms_db[:, None] / 3.0, _z(mfcc)], axis=1)
    counts = np.bincount(bar_of + 1, minlength=len(downbeats) + 1)[1:]
    sums = np.stack([np.bincount(bar_of + 1, timbre[:, c], minlength=len(downbeats) + 1)[1:] for c in range(timbre.shape[1])], 1)
    bar_desc = sums / np.maximum(counts, 1)[:, None]
    change = np.r_[0.0, np.linalg.norm(np.diff(bar_desc, axis=0), axis=1)]
    # 4-bar phrases are the norm; 2-bar units only when they catch clearly more changes
    best = (-np.inf, BARS_PER_PHRASE, 0)
    for size, prefer in ((BARS_PER_PHRASE, 1.15), (BARS_PER_PHRASE // 2, 1.0)):
        for o in range(min(size, len(downbeats))):
            score = prefer * change[o::size].mean()
            if score > best[0] + 1e-12:
                best = (score, size, o)
    _, size, offset = best
    bounds = sorted({0, n, *(int(s) for s in downbeats[offset::size])})
    # a leading/trailing sliver shorter than a bar belongs to its neighbour
    bpb = grid.beats_per_bar
    if len(bounds) > 2 and bounds[1] - bounds[0] < bpb:
        del bounds[1]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < bpb:
        del bounds[-2]
    return np.asarray(bounds, dtype=np.int64), change


def unit_similarity(values: np.ndarray, grid: BeatGrid, units: np.ndarray) -> np.ndarray:
    """How alike two units sound: [n_units, n_units] in [-1, 1], ones on the diagonal.

    Cosine of the units' bar-by-bar sequences of z-scored chroma and timbre (MFCC,
    weighted 0.7), aligned from each unit's start over the shorter unit, so the order of
    the chords counts, not only the mix. Repeated sections score about 0.9 and above,
    different sections of one song 0.3-0.7 (demo corpus).
    """
    m = len(units) - 1
    desc = np.concatenate([_z(values[:, _CHROMA].astype(np.float64)), 0.7 * _z(values[:, _MFCC].astype(np.float64))], axis=1)
    seqs = []
    for i in range(m):
        sl = slice(units[i], units[i + 1])
        bars = grid.bar[sl]
        seqs.append(np.stack([desc[sl][bars == b].mean(axis=0) for b in np.unique(bars)]))
    sim = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            k = min(len(seqs[i]), len(seqs[j]))
            a, b = seqs[i][:k].ravel(), seqs[j][:k].ravel()
            sim[i, j] = sim[j, i] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))
    return sim
