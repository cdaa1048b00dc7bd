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
3. ``GridModel``: a conditional-logit ranker over a song's candidate phases on audio
   evidence alone (accent contrasts at the candidate downbeats: onsets, bass and kick,
   harmony changes; bar-change contrasts at the candidate phrase starts; where the music
   starts), trained on the tie sets of step 2 of every training pair (the likelihood of
   the set, so an editor who never shows an 8-bar habit teaches nothing about it). It
   predicts a new song's phase at inference; with no evidence at all it keeps the
   product's own phase.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from datasets.beats import BeatGrid
from datasets.errors import ParameterError
from datasets.features import BeatFeatures, feature_index
from datasets.structure import bar_index

__all__ = [
    "GridPhase",
    "PhaseFit",
    "GridModel",
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
    """An editor's phase of the product's beats (``BeatGrid.rephased`` arguments)."""

    downbeat_shift: int = 0
    bar_offset: int = 0

    def apply(self, grid: BeatGrid) -> BeatGrid:
        if self == GridPhase():
            return grid
        return grid.rephased(downbeat_shift=self.downbeat_shift % grid.beats_per_bar, bar_offset=self.bar_offset)

    def to_list(self) -> list[int]:
        return [int(self.downbeat_shift), int(self.bar_offset)]


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

    def to_dict(self) -> dict:
        return {
            "phase": self.phase.to_list(),
            "ties": [p.to_list() for p in self.ties],
            "hits": self.hits,
            "n_cuts": self.n_cuts,
            "on_bar_before": round(self.on_bar_before, 4),
            "on_bar_after": round(self.on_bar_after, 4),
        }


def cut_points(segments, n_beats: int) -> np.ndarray:
    """Raw beats where the edit leaves or re-enters the raw [shape=(k,), int, sorted].

    segments : the plan's segments (``raw_start``, ``raw_end`` in raw beats), in output
        order; a segment that starts where the previous one ended is a continuation
        (a fade or gain split), not a cut.
    """
    pts: set[int] = set()
    prev_end = None
    for s in segments:
        if s.raw_start != prev_end:
            pts.add(int(s.raw_start))
            if prev_end is not None:
                pts.add(int(prev_end))
        prev_end = s.raw_end
    if prev_end is not None:
        pts.add(int(prev_end))
    return np.array(sorted(p for p in pts if 0 < p < n_beats), dtype=np.int64)


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


@dataclass(frozen=True)
class GridModel:
    """A conditional-logit ranker of a song's candidate phases (step 3).

    weights : [shape=(n_features,)] on standardised features; None = keep the
        product's own phase (no training pair showed any phase evidence)
    mean, std : feature standardisation fitted on the training candidates
    n_songs : training songs with evidence; agreement : the fraction of them whose
        predicted phase is in their evidence set (training fit)
    """

    weights: tuple[float, ...] | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    feature_names: tuple[str, ...] = FEATURE_NAMES
    n_songs: int = 0
    agreement: float = float("nan")
    evidence_share: dict = field(default_factory=dict)

    def scores(self, X: np.ndarray) -> np.ndarray:
        if self.weights is None:
            return -np.arange(len(X), dtype=np.float64)  # the product's own phase first
        Z = (X - np.asarray(self.mean)) / np.asarray(self.std)
        return Z @ np.asarray(self.weights)

    def predict(self, feats: BeatFeatures) -> GridPhase:
        """The editor's phase of a new song's grid."""
        if self.weights is None:
            return GridPhase()
        cands, X = candidate_features(feats)
        return cands[int(np.argmax(self.scores(X)))]

    def to_dict(self) -> dict:
        return {
            "weights": None if self.weights is None else list(self.weights),
            "mean": list(self.mean),
            "std": list(self.std),
            "feature_names": list(self.feature_names),
            "n_songs": self.n_songs,
            "agreement": None if np.isnan(self.agreement) else self.agreement,
            "evidence_share": self.evidence_share,
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> "GridModel":
        if not d:
            return cls()
        names = tuple(d.get("feature_names") or ())
        if d.get("weights") is not None and names != FEATURE_NAMES:
            raise ParameterError(f"editor grid model has features {names[:3]}..., this code expects {FEATURE_NAMES[:3]}...")
        return cls(
            weights=None if d.get("weights") is None else tuple(float(x) for x in d["weights"]),
            mean=tuple(float(x) for x in d.get("mean", ())),
            std=tuple(float(x) for x in d.get("std", ())),
            feature_names=names or FEATURE_NAMES,
            n_songs=int(d.get("n_songs", 0)),
            agreement=float("nan") if d.get("agreement") is None else float(d["agreement"]),
            evidence_share=dict(d.get("evidence_share") or {}),
        )

    @classmethod
    def fit(cls, songs: list[tuple[np.ndarray, np.ndarray]], *, l2: float = RANKER_L2) -> "GridModel":
        """songs: (X [n_cand, n_features], evidence mask [n_cand] bool) per training song.

        Maximises sum over songs of log P(evidence set) = log sum_{c in set} softmax(Xw)_c
        minus l2/2 |w|^2. A song whose evidence is every candidate teaches nothing and is
        skipped.
        """
        from scipy.optimize import minimize

        songs = [(X, m) for X, m in songs if m.any() and not m.all()]
        if not songs:
            return cls()
        allX = np.concatenate([X for X, _ in songs])
        mean = allX.mean(0)
        std = allX.std(0)
        std = np.where(std < 1e-9, 1.0, std)
        Zs = [((X - mean) / std, m) for X, m in songs]

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            total, grad = 0.5 * l2 * w @ w, l2 * w
            for Z, m in Zs:
                s = Z @ w
                p = np.exp(s - s.max())
                p /= p.sum()
                pm = p * m
                q = pm.sum()
                total -= np.log(q + 1e-300)
                # d/dw [-log sum_set p] = E_p[z] - E_{p | set}[z]
                grad = grad + Z.T @ p - Z.T @ (pm / (q + 1e-300))
            return float(total), grad

        res = minimize(loss, np.zeros(allX.shape[1]), jac=True, method="L-BFGS-B")
        w = res.x
        hit = [bool(m[int(np.argmax(Z @ w))]) for Z, m in Zs]
        return cls(
            weights=tuple(float(x) for x in w), mean=tuple(map(float, mean)), std=tuple(map(float, std)),
            n_songs=len(songs), agreement=float(np.mean(hit)),
        )


def fit_grid_model(label_files, *, out: str | Path | None = None, stems: str = "auto") -> GridModel:
    """Fit the ranker on the labelled pairs that train (``make align``'s last step) and
    write it to ``out`` (``labels/GRID_MODEL_FILE``). Pairs without phase evidence
    (label files from before the editor grid) are skipped."""
    from datasets.atomic import atomic_write_text
    from datasets.audio import load_audio
    from datasets.features import extract_features

    songs, shares = [], []
    for p in sorted(Path(f) for f in label_files):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        fit = rec.get("editor_grid") if isinstance(rec, dict) else None
        if not fit or not rec.get("raw_path"):
            continue
        feats = extract_features(load_audio(rec["raw_path"]), stems=stems)
        cands, X = candidate_features(feats)
        ties = {tuple(t) for t in fit["ties"]}
        mask = np.array([tuple(c.to_list()) in ties for c in cands])
        songs.append((X, mask))
        shares.append((fit["on_bar_before"], fit["on_bar_after"]))
    model = GridModel.fit(songs)
    if shares:
        b, a = np.mean(shares, axis=0)
        model = replace(model, evidence_share={"cuts_on_bar_before": round(float(b), 4),
                                               "cuts_on_bar_after": round(float(a), 4), "pairs": len(shares)})
    if out is not None:
        atomic_write_text(out, json.dumps(model.to_dict(), indent=1))
    log.info(
        "editor grid: %d pairs with phase evidence, ranker %s",
        model.n_songs, "keeps the tracker's phase" if model.weights is None else f"fits {model.agreement:.2f} of them",
    )
    return model


def load_grid_model(label_dir: str | Path) -> GridModel:
    """The ranker ``make align`` wrote for a run (the product's own phase if none)."""
    p = Path(label_dir) / GRID_MODEL_FILE
    if not p.is_file():
        return GridModel()
    return GridModel.from_dict(json.loads(p.read_text()))


def editor_grid_features(audio, feats: BeatFeatures, model: dict | GridModel | None, **extract_kw) -> tuple[BeatFeatures, GridPhase]:
    """A new song's features on the editor's predicted phase of its grid (inference).

    feats : the song's features on the product's own grid; model : the checkpoint's
    ``extra["editor_grid"]`` (None: an older checkpoint, the grid stays as it is).
    ``extract_kw`` goes to ``extract_features`` (stems, cache) so the columns that
    depend on the phase (bar and phrase position) are computed as in training.
    """
    from datasets.features import extract_features

    m = model if isinstance(model, GridModel) else GridModel.from_dict(model)
    phase = m.predict(feats)
    if phase == GridPhase():
        return feats, phase
    return extract_features(audio, grid=phase.apply(feats.grid), **extract_kw), phase
