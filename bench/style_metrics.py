"""Style metrics and floors for bench/style.py, all in raw seconds.

An edit is compared with the editor's as *spans of the raw recording* in playing order,
``[(start_s, end_s), ...]``, so the editor's grid and the product's never need to agree.
Raw time is counted in cells of ``RES`` = 10 ms.

========================  ==========================================================================
metric                    definition (held-out song, prediction vs the editor's truth)
========================  ==========================================================================
``iou``                   raw-usage IoU: cells played at least once by both / by either
``phrase_acc``            on the editor's phrases: fraction where both agree on kept / cut; a
                          phrase is kept by an edit when more than half of its cells are played
``keep_err``              abs(keep - editor's keep), keep = fraction of the raw played at least once
``repeat_hit``            the editor's repeated phrase is played at least twice over at least half
                          of its cells (only songs where the editor repeats; nan elsewhere)
``join_f``                F-measure of the cut points (raw times where the edit does not continue
                          in the raw, the recording's own ends excluded), one-to-one matching
                          within 100 ms (``mir_eval.util.match_events``)
``downbeat_agreement``    fraction of the editor's downbeats within 70 ms of a downbeat of a grid
========================  ==========================================================================

(pretrain/evaluate.py's ``plan_metrics`` measures plans on one shared grid in beats; these
compare across grids, so they live here, once.)

Floors, fitted on the training fold only (``fit_floors``): keep everything; a
position-only intro cut (one fixed stretch, its start and length the training edits' mean
fractions of the song); random whole product bars dropped to the training mean keep ratio
(seeded); and ``PhraseHGB``, a gradient-boosted classifier that keeps or cuts each phrase
of the product's grid from whole-song phrase features (the "how learnable is this
style" reference).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from datasets.errors import ParameterError

__all__ = ["RES", "JOIN_TOL_S", "DOWNBEAT_TOL_S", "spans_of_plan", "spans_of_truth", "usage", "raw_iou", "keep_ratio",
           "phrase_kept", "phrase_accuracy", "repeat_hit", "cut_points", "join_f", "downbeat_agreement", "song_scores",
           "mean_scores", "first_cut_fraction", "keep_everything", "IntroCut", "RandomBars", "PhraseHGB", "phrase_table"]

#: Raw-time resolution of the usage metrics: 10 ms (a crossfade's length).
RES = 0.01
#: Join tolerance: 100 ms, the issue's "cut points within 100 ms" (mir_eval's onset
#: evaluation uses 50 ms; a cut between beats is judged more loosely).
JOIN_TOL_S = 0.1
#: Downbeat tolerance: 70 ms, mir_eval's beat F-measure window.
DOWNBEAT_TOL_S = 0.07
#: Two raw times closer than this are the same point (a contiguous join's float noise).
_SAME_S = 1e-3

Spans = list[tuple[float, float]]


def spans_of_plan(plan) -> Spans:
    """Raw seconds of an ``envs.plan.EditPlan``'s segments, in playing order."""
    return [plan.segment_seconds(s) for s in plan.segments]


def spans_of_truth(truth: dict) -> Spans:
    """Raw seconds of an editor's segments (bench/style_editors.py truth record)."""
    return [(float(a), float(b)) for a, b, *_ in truth["segments"]]


def usage(spans: Spans, duration: float) -> np.ndarray:
    """How many times each 10 ms cell of the raw is played [shape=(ceil(duration / RES),), int]."""
    n = int(np.ceil(duration / RES - 1e-9))
    d = np.zeros(n + 1, dtype=np.int64)
    for a, b in spans:
        i, j = int(np.clip(round(a / RES), 0, n)), int(np.clip(round(b / RES), 0, n))
        if j > i:
            d[i] += 1
            d[j] -= 1
    return np.cumsum(d)[:n]


def raw_iou(pred: Spans, ref: Spans, duration: float) -> float:
    """Cells played by both / cells played by either (1.0 when neither plays anything)."""
    up, ur = usage(pred, duration) > 0, usage(ref, duration) > 0
    union = int((up | ur).sum())
    return float((up & ur).sum() / union) if union else 1.0


def keep_ratio(spans: Spans, duration: float) -> float:
    """Fraction of the raw played at least once."""
    u = usage(spans, duration)
    return float((u > 0).mean()) if len(u) else 0.0


def phrase_kept(spans: Spans, phrases: np.ndarray, duration: float) -> np.ndarray:
    """Per phrase (boundaries in seconds [shape=(m + 1,)]): more than half of it played
    [shape=(m,), bool]."""
    u = usage(spans, duration) > 0
    out = []
    for a, b in zip(phrases[:-1], phrases[1:]):
        cells = u[int(round(a / RES)) : int(round(b / RES))]
        out.append(bool(cells.mean() > 0.5) if len(cells) else False)
    return np.array(out, dtype=bool)


def phrase_accuracy(pred: Spans, ref: Spans, phrases: np.ndarray, duration: float) -> float:
    """Fraction of the editor's phrases on which both edits agree (kept / cut)."""
    return float(np.mean(phrase_kept(pred, phrases, duration) == phrase_kept(ref, phrases, duration)))


def repeat_hit(spans: Spans, repeat: tuple[float, float] | None, duration: float) -> float:
    """1.0 when at least half of the ``repeat`` span [start, end) s is played >= 2 times,
    0.0 when not, nan when there is no repeat to hit."""
    if repeat is None:
        return float("nan")
    u = usage(spans, duration)
    i, j = int(round(repeat[0] / RES)), int(round(repeat[1] / RES))
    return float((u[i:j] >= 2).mean() >= 0.5) if j > i else float("nan")


def cut_points(spans: Spans, duration: float) -> np.ndarray:
    """Raw times (s) where the edit leaves or enters the raw other than by playing on:
    every end that the next span does not continue, every start that does not continue
    the previous span, the recording's own ends excluded [shape=(k,), sorted, unique]."""
    pts = []
    for k, (a, b) in enumerate(spans):
        prev_end = spans[k - 1][1] if k > 0 else None
        next_start = spans[k + 1][0] if k + 1 < len(spans) else None
        if a > _SAME_S and (prev_end is None or abs(prev_end - a) > _SAME_S):
            pts.append(a)
        if b < duration - _SAME_S and (next_start is None or abs(next_start - b) > _SAME_S):
            pts.append(b)
    pts = np.sort(np.asarray(pts, dtype=np.float64))
    if len(pts) > 1:
        pts = pts[np.r_[True, np.diff(pts) > _SAME_S]]
    return pts


def join_f(pred: Spans, ref: Spans, duration: float, *, tol: float = JOIN_TOL_S) -> float:
    """F-measure of the cut points, one-to-one within ``tol`` seconds (1.0 when neither
    edit cuts, 0.0 when only one does)."""
    import mir_eval

    est, gt = cut_points(pred, duration), cut_points(ref, duration)
    if len(est) == 0 and len(gt) == 0:
        return 1.0
    if len(est) == 0 or len(gt) == 0:
        return 0.0
    hits = len(mir_eval.util.match_events(gt, est, tol))
    if hits == 0:
        return 0.0
    p, r = hits / len(est), hits / len(gt)
    return 2 * p * r / (p + r)


def downbeat_agreement(editor_downbeats: np.ndarray, grid_downbeats: np.ndarray, *, tol: float = DOWNBEAT_TOL_S) -> float:
    """Fraction of the editor's downbeats (s) within ``tol`` of one of the grid's (s)."""
    ed = np.asarray(editor_downbeats, dtype=np.float64)
    gd = np.sort(np.asarray(grid_downbeats, dtype=np.float64))
    if len(ed) == 0:
        return float("nan")
    if len(gd) == 0:
        return 0.0
    near = np.abs(ed[:, None] - gd[None, :]).min(axis=1)  # (n_editor,): a few hundred each
    return float((near <= tol).mean())


def song_scores(pred: Spans, truth: dict) -> dict:
    """Every metric of one held-out edit against the editor's truth record."""
    ref = spans_of_truth(truth)
    dur = float(truth["duration"])
    phrases = np.asarray(truth["phrases"], dtype=np.float64)
    return {
        "iou": raw_iou(pred, ref, dur),
        "phrase_acc": phrase_accuracy(pred, ref, phrases, dur),
        "keep_err": abs(keep_ratio(pred, dur) - keep_ratio(ref, dur)),
        "repeat_hit": repeat_hit(pred, truth["repeat"], dur),
        "join_f": join_f(pred, ref, dur),
        "keep": keep_ratio(pred, dur),
    }


def mean_scores(rows: list[dict]) -> dict:
    """Means over songs (nan-aware: repeat_hit over the songs where the editor repeats),
    with ``n`` songs and ``n_repeat`` songs that have a repeat."""
    out: dict = {"n": len(rows)}
    for k in rows[0] if rows else ():
        v = np.array([r[k] for r in rows], dtype=np.float64)
        out[k] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    out["n_repeat"] = int(sum(np.isfinite(r.get("repeat_hit", np.nan)) for r in rows))
    return out


# ------------------------------------------------------------------------------- floors
def keep_everything(duration: float) -> Spans:
    """The edit that changes nothing."""
    return [(0.0, float(duration))]


def first_cut_fraction(spans: Spans, duration: float) -> float:
    """Where (fraction of the song) the first stretch of unplayed raw starts; 1.0 when the
    edit plays everything."""
    u = usage(spans, duration) > 0
    gap = np.flatnonzero(~u)
    return float(gap[0] / len(u)) if len(gap) else 1.0


@dataclass(frozen=True)
class IntroCut:
    """Cut one fixed stretch [start, start + length) (fractions of the song): the training
    edits' mean first-cut position and mean cut fraction. Position only, no listening."""

    start: float
    length: float

    @classmethod
    def fit(cls, truths: list[dict]) -> "IntroCut":
        if not truths:
            raise ParameterError("IntroCut.fit: no training edits")
        starts = [first_cut_fraction(spans_of_truth(t), t["duration"]) for t in truths]
        lengths = [1.0 - keep_ratio(spans_of_truth(t), t["duration"]) for t in truths]
        return cls(start=float(np.mean(starts)), length=float(np.mean(lengths)))

    def edit(self, duration: float) -> Spans:
        a = min(self.start, 1.0 - self.length) * duration
        b = a + self.length * duration
        return [(s, e) for s, e in ((0.0, a), (b, float(duration))) if e - s > RES]


@dataclass(frozen=True)
class RandomBars:
    """Drop whole bars of the product's grid in a random order (seeded per song) until the
    keep ratio reaches the training edits' mean."""

    keep: float
    seed: int = 0

    @classmethod
    def fit(cls, truths: list[dict], *, seed: int = 0) -> "RandomBars":
        if not truths:
            raise ParameterError("RandomBars.fit: no training edits")
        return cls(keep=float(np.mean([keep_ratio(spans_of_truth(t), t["duration"]) for t in truths])), seed=seed)

    def edit(self, grid, *, name: str) -> Spans:
        starts = np.flatnonzero(np.r_[True, grid.bar[1:] != grid.bar[:-1]])
        ends = np.r_[starts[1:], grid.n_beats]
        t = grid.bounds
        width = t[ends] - t[starts]
        keep = np.ones(len(starts), dtype=bool)
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        total = t[-1]
        for k in rng.permutation(len(starts)):
            if width[keep].sum() / total <= self.keep or keep.sum() == 1:
                break
            keep[k] = False
        return _merge([(float(t[a]), float(t[b])) for a, b, k in zip(starts, ends, keep) if k])


def _merge(spans: Spans) -> Spans:
    out: Spans = []
    for a, b in spans:
        if out and abs(out[-1][1] - a) <= _SAME_S:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


#: Per-beat features summarised per phrase for PhraseHGB (names of datasets.features).
_SUMMARY = ("spectral_centroid", "spectral_flatness", "onset_density", "energy_low", "band_bass_db",
            "structure_novelty", "repetition", "key_clarity")


def phrase_table(values: np.ndarray, grid) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Whole-song features of the product's phrases (``datasets.structure.phrase_units``).

    values : np.ndarray [shape=(n_beats, 121)] the song's beat features on ``grid``
    Returns (bounds in seconds [shape=(m + 1,)], features [shape=(m, k)], column names):
    loudness (mean rms_db), its rank percentile and z-score in the song; repetition (max
    similarity to another phrase), its rank percentile and z-score; position of start
    and end, first / last, length (s and fraction), number of phrases; and per-song
    z-scores of the ``_SUMMARY`` features' phrase means.
    """
    from datasets.features import feature_index
    from datasets.structure import phrase_units, unit_similarity

    units, _ = phrase_units(values, grid)
    m = len(units) - 1
    w = np.diff(grid.bounds)
    dur = float(grid.bounds[-1])

    def per_unit(col: np.ndarray) -> np.ndarray:
        return np.array([np.average(col[a:b], weights=w[a:b]) for a, b in zip(units[:-1], units[1:])])

    def rank(x: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(x, kind="stable"), kind="stable") / max(m - 1, 1)

    def z(x: np.ndarray) -> np.ndarray:
        return (x - x.mean()) / (x.std() + 1e-9)

    loud = per_unit(values[:, feature_index("rms_db")].astype(np.float64))
    sim = unit_similarity(values, grid, units)
    rep = np.array([np.max(np.delete(sim[i], i)) if m > 1 else 0.0 for i in range(m)])
    t = grid.bounds[units]
    cols = {
        "loud_db": loud, "loud_rank": rank(loud), "loud_z": z(loud),
        "rep": rep, "rep_rank": rank(rep), "rep_z": z(rep),
        "pos_start": t[:-1] / dur, "pos_end": t[1:] / dur,
        "is_first": (np.arange(m) == 0).astype(float), "is_last": (np.arange(m) == m - 1).astype(float),
        "length_s": np.diff(t), "length_frac": np.diff(t) / dur, "n_phrases": np.full(m, float(m)),
    }
    for name in _SUMMARY:
        cols[f"{name}_z"] = z(per_unit(values[:, feature_index(name)].astype(np.float64)))
    return t, np.stack(list(cols.values()), axis=1), list(cols)


@dataclass
class PhraseHGB:
    """Keep or cut each product phrase with a HistGradientBoostingClassifier on
    ``phrase_table`` features; label: the training editor plays more than half of it."""

    seed: int = 0
    max_iter: int = 200
    model: object = None
    constant: bool | None = None

    def fit(self, songs: list[tuple[np.ndarray, object, dict]]) -> "PhraseHGB":
        """songs : [(values, product grid, truth record)] of the training fold."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        X, y = [], []
        for values, grid, truth in songs:
            bounds, feats, _ = phrase_table(values, grid)
            X.append(feats)
            y.append(phrase_kept(spans_of_truth(truth), bounds, truth["duration"]))
        if not X:
            raise ParameterError("PhraseHGB.fit: no training songs")
        X, y = np.concatenate(X), np.concatenate(y)
        if y.all() or not y.any():  # one class only: nothing to learn
            self.constant = bool(y[0])
            return self
        self.model = HistGradientBoostingClassifier(max_iter=self.max_iter, learning_rate=0.05, random_state=self.seed).fit(X, y)
        return self

    def edit(self, values: np.ndarray, grid) -> Spans:
        bounds, feats, _ = phrase_table(values, grid)
        if self.constant is not None:
            keep = np.full(len(feats), self.constant)
        else:
            p = self.model.predict_proba(feats)[:, 1]
            keep = p > 0.5
            if not keep.any():
                keep[int(np.argmax(p))] = True  # an edit keeps something
        return _merge([(float(a), float(b)) for a, b, k in zip(bounds[:-1], bounds[1:], keep) if k])
