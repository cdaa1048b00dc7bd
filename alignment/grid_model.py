"""The editor's grid of a new song, predicted from audio alone (inference).

alignment/grid.py fits each training pair's grid from where its edit cuts; this module
learns to predict it where there is no edit yet.

``GridModel``: a conditional-logit ranker over a song's candidate phases on audio
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

from alignment.grid import TEMPO_CANDIDATES, GridPhase, candidate_phases
from datasets.beats import BeatGrid
from datasets.errors import ParameterError
from datasets.features import BeatFeatures, feature_index
from datasets.structure import bar_index

__all__ = ["GridModel", "TempoModel", "FEATURE_NAMES", "TEMPO_FEATURE_NAMES", "tempo_features", "candidate_features",
           "fit_grid_model", "load_grid_model", "editor_grid_features", "GRID_MODEL_FILE"]

log = logging.getLogger(__name__)

#: The labels folder's file holding the fitted ranker (written by ``make align``).
GRID_MODEL_FILE = "editor_grid.json"
#: L2 penalty of the ranker, on standardised features: with 5-30 songs and ~20
#: features the fit must stay smooth (0.1-3 all recovered the synthetic editors' phases
#: in tests; 1.0 is the middle).
RANKER_L2 = 1.0


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
