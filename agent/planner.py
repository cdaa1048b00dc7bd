"""The whole-song planner: which bars this editor keeps, repeats and fades.

An editor's decisions are mostly global (how much of the song to keep, which phrase is
the quietest or the most repeated, whether the opening always stays), and the step
policy sees a window of 32 beats. The planner looks at the whole song once, bar by bar
on the editor's own grid (alignment/grid.py), and its per-bar probabilities reach the
policy as context channels (``envs.context.PLAN_CHANNELS``), so every step decision
knows the song-level plan of the beats in its window.

Per bar it sees (``bar_features``): the bar's and its phrase's loudness as a z-score,
percentile and rank within the song (the loudest phrase has rank 0), how often its
phrase's material recurs (similarity to the other phrases: max, count, earlier, later),
its position (fraction of the song, phrases from the start and from the end, first and
last phrase, the bar's place in its phrase and 8-bar section, the first loud bar), the
section change at its start and its timbre/brightness relative to the song.

Targets (``bar_targets``, from an aligned plan): kept (>= half its beats played), played
twice or more, inside a fade. Model: a small MLP (torch) trained with binary
cross-entropy and weight decay; at most a few seconds for 20 songs on one core.

Training songs get *out-of-fold* priors (``oof_priors``: each song's plan comes from
a planner that never saw it), so behaviour cloning and PPO learn how far to trust a
plan as good as the one inference will get; inference uses the planner fitted on all
songs, saved in the checkpoint as plain tensors (``to_state`` / ``from_state``).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from datasets.beats import BeatGrid
from datasets.features import feature_index
from datasets.structure import unit_similarity

__all__ = ["PlannerConfig", "Planner", "attach_priors", "fit_planner", "bar_features", "song_inputs", "KINDS", "bar_targets", "beat_prior", "oof_priors", "BAR_FEATURES", "N_TARGETS"]

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
#: Planner designs (``PlannerConfig.kind``): this file's pointwise MLP, or the listwise
#: transformer over the song's bars of agent/planner_attention.py.
KINDS = ("mlp", "attention")
#: Phrases of the editor's grid are this many bars (the vocabulary's PHRASE).
PHRASE_BARS = 4
#: Two phrases "sound alike" above this similarity (envs/context.py's SIMILAR).
SIMILAR = 0.8


@dataclass(frozen=True)
class PlannerConfig:
    hidden: int = 32
    """MLP width: 31 inputs, ~2k weights; 20 songs give ~1,000 bars"""
    epochs: int = 300
    """full-batch Adam steps (the loss flattens by ~200 on the demo and real-music sets)"""
    lr: float = 0.01
    weight_decay: float = 1e-3
    dropout: float = 0.1
    budget_from_labels: bool = True
    """training songs' budgeted plan (the ``plan_budget_keep`` channel) takes the editor's
    kept bars first, the out-of-fold planner ordering the rest; inference's comes from
    the planner alone. The policy learns to carry out the budgeted plan rather than to
    second-guess it from its window, which it did worse than the planner: loud70, 18
    held-out real songs, planner 0.824 IoU vs the policy trained on out-of-fold plans only
    0.732 (policy vs its own plan: 0.839)"""
    folds: int = 4
    """out-of-fold priors for the training songs (fewer songs: one fold per song)"""
    seed: int = 0
    kind: str = "mlp"
    """"mlp" (this file) | "attention" (agent/planner_attention.py, its own
    ``AttentionConfig`` defaults; ``seed`` and ``folds`` apply to both)"""


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


def song_inputs(values: np.ndarray, grid: BeatGrid, kind: str = "mlp") -> tuple[np.ndarray, np.ndarray]:
    """A planner kind's per-bar inputs of a song and the bar bounds [n_bars + 1]: the MLP's
    ``bar_features``, or the attention planner's ``bar_tokens`` (those plus raw summaries)."""
    if _check_kind(kind) == "attention":
        from agent.planner_attention import bar_tokens

        return bar_tokens(values, grid)
    return bar_features(values, grid)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        from datasets.errors import ParameterError

        raise ParameterError(f"planner kind {kind!r}: expected one of {KINDS}")
    return kind


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


class _MLP(nn.Module):
    def __init__(self, n_in: int, cfg: PlannerConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, N_TARGETS),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, 3) logits
        return self.net(x)


class Planner:
    """A fitted planner (MLP + the input standardisation)."""

    def __init__(self, cfg: PlannerConfig, mean: np.ndarray, std: np.ndarray, net: _MLP) -> None:
        self.cfg, self.mean, self.std, self.net = cfg, mean, std, net

    @classmethod
    def fit(cls, songs: list[tuple[np.ndarray, np.ndarray]], cfg: PlannerConfig = PlannerConfig()) -> "Planner":
        """songs: (``song_inputs`` X [n_bars, F] of ``cfg.kind``, targets Y [n_bars, 3]) per
        training song. ``kind="attention"`` returns an ``AttentionPlanner`` (same methods)."""
        if _check_kind(cfg.kind) == "attention":
            from agent.planner_attention import AttentionConfig, AttentionPlanner

            return AttentionPlanner.fit(songs, AttentionConfig(seed=cfg.seed))  # type: ignore[return-value]
        X = np.concatenate([x for x, _ in songs]).astype(np.float32)
        Y = np.concatenate([y for _, y in songs]).astype(np.float32)
        mean, std = X.mean(0), X.std(0)
        std = np.where(std < 1e-6, 1.0, std)
        xt = torch.from_numpy((X - mean) / std)
        yt = torch.from_numpy(Y)
        # its own seeded RNG stream: the same songs give the same planner in every stage,
        # and the caller's RNG (behaviour cloning's exact resume) is left untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net = _MLP(X.shape[1], cfg)
            # a target no training bar has (an editor who never fades) stays near 0
            opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            net.train()
            for _ in range(cfg.epochs):
                opt.zero_grad()
                drop = torch.rand(xt.shape) < cfg.dropout  # input dropout: no single feature carries a style
                loss = nn.functional.binary_cross_entropy_with_logits(net(xt.masked_fill(drop, 0.0)), yt)
                loss.backward()
                opt.step()
        net.eval()
        return cls(cfg, mean, std, net)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """[shape=(n_bars, 3)] probabilities kept / repeated / faded."""
        with torch.no_grad():
            z = torch.from_numpy(((X - self.mean) / self.std).astype(np.float32))
            return torch.sigmoid(self.net(z)).numpy()

    def prior(self, values: np.ndarray, grid: BeatGrid) -> np.ndarray:
        """The per-beat plan prior of a song (``beat_prior`` layout)."""
        X, bounds = bar_features(values, grid)
        return beat_prior(self.predict(X), bounds, grid)

    def to_state(self) -> dict:
        """Plain tensors and numbers (loads with ``torch.load(weights_only=True)``)."""
        return {"config": asdict(self.cfg), "mean": torch.from_numpy(self.mean.astype(np.float32)),
                "std": torch.from_numpy(self.std.astype(np.float32)), "features": list(BAR_FEATURES),
                "net": {k: v.detach().clone() for k, v in self.net.state_dict().items()}}

    @classmethod
    def from_state(cls, state: dict | None) -> "Planner | None":
        if not state:
            return None
        if state.get("kind", "mlp") == "attention":  # states before the kinds are MLPs
            from agent.planner_attention import AttentionPlanner

            return AttentionPlanner.from_state(state)  # type: ignore[return-value]
        if tuple(state.get("features", ())) != BAR_FEATURES:
            return None  # a planner of another feature set: the policy runs without a prior
        cfg = PlannerConfig(**state["config"])
        net = _MLP(len(BAR_FEATURES), cfg)
        net.load_state_dict(state["net"])
        net.eval()
        return cls(cfg, state["mean"].numpy(), state["std"].numpy(), net)


def _fold_of(key: str, folds: int, seed: int) -> int:
    """A song's fold from its key alone, so every stage computes the same folds."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest(), 16) % folds


def oof_priors(songs: list[tuple[str, np.ndarray, BeatGrid, object]], cfg: PlannerConfig = PlannerConfig()) -> tuple[list[np.ndarray], Planner]:
    """Out-of-fold priors for training songs, and the planner fitted on all of them.

    songs : (key, values [n_beats, 121], grid (the editor's phase), aligned plan) each
    """
    tables = []
    for _, values, grid, plan in songs:
        X, bounds = song_inputs(values, grid, cfg.kind)
        tables.append((X, bar_targets(plan, bounds), bounds))
    full = Planner.fit([(X, Y) for X, Y, _ in tables], cfg)
    k = max(2, min(cfg.folds, len(songs)))
    fold = [_fold_of(key, k, cfg.seed) for key, *_ in songs]
    if len(set(fold)) < 2:  # every song hashed into one fold: one song per fold
        fold = list(range(len(songs)))
    priors: list[np.ndarray | None] = [None] * len(songs)
    for f in sorted(set(fold)):
        train = [(X, Y) for (X, Y, _), fo in zip(tables, fold) if fo != f]
        model = Planner.fit(train, cfg) if train else full
        for i, ((X, _, bounds), fo) in enumerate(zip(tables, fold)):
            if fo == f:
                kept = tables[i][1][:, 0] > 0.5 if cfg.budget_from_labels else None
                priors[i] = beat_prior(model.predict(X), bounds, songs[i][2], kept=kept)
    return priors, full  # type: ignore[return-value]


def _pair_songs(pairs, stems: str) -> list[tuple[str, np.ndarray, BeatGrid, object]]:
    """(key, features on the label's grid, grid, plan) of each labelled pair."""
    from datasets.audio import load_audio
    from datasets.features import extract_features

    out = []
    for p in pairs:
        feats = extract_features(load_audio(p.raw_path), grid=p.plan.grid, stems=stems)
        out.append((p.raw_sha256 or p.name, feats.values, p.plan.grid, p.plan))
    return out


def fit_planner(pairs, *, stems: str = "auto", cfg: PlannerConfig = PlannerConfig()) -> Planner | None:
    """The planner fitted on every pair (what inference uses); None with fewer than 2."""
    if len(pairs) < 2:
        return None
    tables = []
    for _, values, grid, plan in _pair_songs(pairs, stems):
        X, bounds = song_inputs(values, grid, cfg.kind)
        tables.append((X, bar_targets(plan, bounds)))
    return Planner.fit(tables, cfg)


def attach_priors(pairs, *, stems: str = "auto", cfg: PlannerConfig = PlannerConfig()) -> tuple[list, Planner | None]:
    """Training pairs (``pretrain.dataset.LabeledPair``) with their out-of-fold plan
    priors, and the planner fitted on all of them (None with fewer than 2 pairs: the
    policy then runs without a prior). Deterministic: behaviour cloning and PPO call it
    on the same pairs and get the same priors."""
    from dataclasses import replace

    if len(pairs) < 2:
        return list(pairs), None
    priors, planner = oof_priors(_pair_songs(pairs, stems), cfg)
    return [replace(p, plan_prior=pr) for p, pr in zip(pairs, priors)], planner
