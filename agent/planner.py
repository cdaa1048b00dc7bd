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

from agent.song_bars import BAR_FEATURES, N_TARGETS, PHRASE_BARS, SIMILAR, bar_features, bar_targets, beat_prior  # noqa: F401 (re-exported)
from datasets.beats import BeatGrid

__all__ = ["PlannerConfig", "Planner", "attach_priors", "fit_planner", "bar_features", "song_inputs", "KINDS", "bar_targets", "beat_prior", "oof_priors", "BAR_FEATURES", "N_TARGETS"]

#: Planner designs (``PlannerConfig.kind``): this file's pointwise MLP, the listwise
#: transformer over the song's bars of agent/planner_attention.py, or the linear
#: within-song phrase ranker of agent/planner_rank.py.
KINDS = ("mlp", "attention", "rank")


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
    kind: str = "rank"
    """"rank" (agent/planner_rank.py, ``RankConfig`` defaults) | "mlp" (this file) |
    "attention" (agent/planner_attention.py, ``AttentionConfig`` defaults); ``seed`` and
    ``folds`` apply to all. Rank is the default: held-out budgeted-plan IoU on 5 real-music
    editors (bench/planner_cv.py) 0.71-0.95 vs the MLP's 0.70-0.87, best on 4 of 5, and
    end to end (bench/style.py --only-folds 0, PPO) loud70 0.834 vs 0.794, tight60 0.664
    vs 0.420 before the planner"""


def song_inputs(values: np.ndarray, grid: BeatGrid, kind: str = "rank") -> tuple[np.ndarray, np.ndarray]:
    """A planner kind's per-bar inputs of a song and the bar bounds [n_bars + 1]: the MLP's
    ``bar_features``, the attention planner's ``bar_tokens`` (those plus raw summaries) or
    the rank planner's ``rank_inputs`` (those plus bar seconds and phrase index)."""
    if _check_kind(kind) == "attention":
        from agent.planner_attention import bar_tokens

        return bar_tokens(values, grid)
    if kind == "rank":
        from agent.planner_rank import rank_inputs

        return rank_inputs(values, grid)
    return bar_features(values, grid)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        from datasets.errors import ParameterError

        raise ParameterError(f"planner kind {kind!r}: expected one of {KINDS}")
    return kind


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
        if cfg.kind == "rank":
            from agent.planner_rank import RankConfig, RankPlanner

            return RankPlanner.fit(songs, RankConfig(seed=cfg.seed))  # type: ignore[return-value]
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
        if state.get("kind") == "rank":
            from agent.planner_rank import RankPlanner

            return RankPlanner.from_state(state)  # type: ignore[return-value]
        if tuple(state.get("features", ())) != BAR_FEATURES:
            return None  # a planner of another feature set: the policy runs without a prior
        cfg = PlannerConfig(**{**state["config"], "kind": "mlp"})  # older states name no kind: all MLPs
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
