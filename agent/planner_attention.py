"""The attention planner: the whole song's bars compared with each other, then planned.

The MLP planner (agent/planner.py) decides each bar from one row of hand-made whole-song
features (loudness rank, repetition score, ...); what it can know of the other bars is
what those columns say. This planner reads the song as a sequence of bar tokens and lets
every bar attend to every other one, so a rule like "the k loudest phrases" or "the most
repeated material" can be learned from the bars themselves:

1. one token per bar of the editor's grid (``bar_tokens``): the MLP's ``BAR_FEATURES``,
   beside raw summaries of the bar (weighted mean of loudness, band energies, timbre,
   stems, novelty; each z-scored within the song, so loud and quiet recordings compare),
   its unit-norm mean chroma, and position codes (sin/cos of the song fraction);
2. a linear projection, then ``layers`` pre-norm self-attention blocks over all bars of
   the song (no window: the receptive field is the whole song). Each head's attention
   logits get a learned multiple of two structural biases computed from the tokens
   themselves: the bars' chroma cosine averaged over the next ``PHRASE_BARS`` bars
   (aligned repetition, as a listener compares a phrase with another) and a same-phrase
   indicator; so a head can gather the bars that repeat this one without learning
   cosine similarity from 20 songs;
3. three heads (kept, repeated, faded logits per bar).

Training is listwise: a batch is every training song, padded, with a key mask; loss =
binary cross-entropy of the three targets + ``rank_weight`` x a pairwise logistic loss
on the kept logit between kept and cut bars of the same song (the budgeted plan takes
bars in score order up to the style's keep ratio, so within-song order is what counts,
not the calibration across songs). Adam with weight decay, dropout on inputs and inside
the blocks, a fixed seed in a forked RNG (the caller's stream is left alone).

Measured (bench/planner_cv.py, 35 real songs per editor, 2-fold, editor's grid, IoU at
the editor's keep): better than the MLP on loud70 (0.884 vs 0.850), chorus75 (0.718 vs
0.698) and firstdown (0.823 vs 0.809), worse on sections8 (0.691 vs 0.727) and tight60
(0.648 vs 0.722); only loud70 and tight60 differ by more than the seed spread (~0.03).
It is not the default (``PlannerConfig.kind = "mlp"``).

The state (``to_state``) is plain tensors, numbers and strings, so a checkpoint that
carries it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from agent.song_bars import BAR_FEATURES, bar_features, beat_prior
from datasets.beats import BeatGrid
from datasets.features import feature_index

__all__ = ["AttentionConfig", "AttentionPlanner", "bar_tokens", "TOKEN_FEATURES", "KIND"]

#: ``PlannerConfig.kind`` and the state's "kind" for this planner.
KIND = "attention"

#: Raw beat-feature columns summarised per bar (weighted mean, z-scored in the song):
#: loudness and its spread, the bands an arrangement fills, timbre (MFCC 1-12), onset
#: and novelty (where sections change), the stems (what plays), tonal clarity.
_RAW = (
    "rms_db", "rms_std", "crest_db", "spectral_centroid", "spectral_flatness", "onset_density", "onset_strength",
    "energy_low", "energy_mid", "energy_high",
    "band_sub_db", "band_bass_db", "band_lowmid_db", "band_mid_db", "band_highmid_db", "band_presence_db",
    "band_brilliance_db",
    *(f"mfcc_{k}" for k in range(1, 13)),
    "structure_novelty", "mfcc_novelty", "repetition", "similarity_prev_bar", "similarity_prev_phrase",
    "chroma_change", "key_clarity",
    "stem_drums_rms", "stem_bass_rms", "stem_vocals_rms", "stem_other_rms",
)
_CHROMA_NAMES = tuple(f"chroma_{p}" for p in ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"))
#: Position codes: sin/cos of the bar's song fraction at these periods (whole song, half, quarter).
_POS_FREQS = (1, 2, 4)


def _token_features() -> tuple[str, ...]:
    pos = tuple(f"pos_{fn}_{k}" for k in _POS_FREQS for fn in ("sin", "cos"))
    return (*BAR_FEATURES, *(f"raw_{c}_z" for c in _RAW), *(f"bar_{c}" for c in _CHROMA_NAMES), *pos)


#: Token columns, in order (the state records them; another set loads as no planner).
TOKEN_FEATURES: tuple[str, ...] = _token_features()
_CHROMA_SLICE = slice(TOKEN_FEATURES.index("bar_chroma_C"), TOKEN_FEATURES.index("bar_chroma_B") + 1)
_BIP = [TOKEN_FEATURES.index(f"bar_in_phrase_{k}") for k in range(4)]


def bar_tokens(values: np.ndarray, grid: BeatGrid) -> tuple[np.ndarray, np.ndarray]:
    """Bar tokens of a song on ``grid`` (the editor's phase).

    values : np.ndarray [shape=(n_beats, 121)] beat features on ``grid``
    Returns (tokens [shape=(n_bars, len(TOKEN_FEATURES)), float32], bar bounds [n_bars + 1] in beats).
    """

    X, bounds = bar_features(values, grid)
    v = np.nan_to_num(values.astype(np.float64))
    nb = len(bounds) - 1
    bar_of = np.repeat(np.arange(nb), np.diff(bounds))
    w = np.maximum(np.diff(grid.bounds), 1e-6)
    den = np.bincount(bar_of, w, minlength=nb)

    def bar_mean(col: np.ndarray) -> np.ndarray:
        return np.bincount(bar_of, col * w, minlength=nb) / den

    raw = np.stack([bar_mean(v[:, feature_index(c)]) for c in _RAW], axis=1)  # (n_bars, len(_RAW))
    raw = np.clip((raw - raw.mean(0)) / (raw.std(0) + 1e-9), -3, 3) if nb > 1 else np.zeros_like(raw)
    chroma = np.stack([bar_mean(v[:, feature_index(c)]) for c in _CHROMA_NAMES], axis=1)
    chroma = chroma / (np.linalg.norm(chroma, axis=1, keepdims=True) + 1e-9)  # unit norm: cosine = dot
    frac = (grid.bounds[bounds[:-1]] + grid.bounds[bounds[1:]]) / (2 * max(grid.duration, 1e-9))
    pos = np.stack([f(2 * math.pi * k * frac) for k in _POS_FREQS for f in (np.sin, np.cos)], axis=1)
    T = np.concatenate([X, raw, chroma, pos], axis=1)
    assert T.shape[1] == len(TOKEN_FEATURES)
    return np.nan_to_num(T).astype(np.float32), bounds


@dataclass(frozen=True)
class AttentionConfig:
    dim: int = 32
    """token width; ~20k weights in all, for ~1,000 bars of 20 songs"""
    layers: int = 1
    """one block already sees the whole song; a second one measured no better on the
    planner CV at twice the time (held-out IoU at the true keep, chorus75 / loud70 /
    sections8: 2 layers 0.666 / 0.862 / 0.724; 1 layer, mean of seeds 0-2: 0.683 / 0.876 /
    0.700 (sections8: seeds 1-2); the seed-to-seed spread is ~0.03)"""
    heads: int = 4
    epochs: int = 150
    """full-batch AdamW steps (every training song in each); 300 were no better (within
    the seed spread) and twice as slow"""
    lr: float = 3e-3
    weight_decay: float = 1e-2
    dropout: float = 0.1
    rank_weight: float = 1.0
    """weight of the within-song pairwise loss on the kept logit (0: BCE only)"""
    seed: int = 0


class _Block(nn.Module):
    """Pre-norm self-attention with structural biases, then a feed-forward layer."""

    def __init__(self, cfg: AttentionConfig, n_bias: int) -> None:
        super().__init__()
        assert cfg.dim % cfg.heads == 0, f"dim {cfg.dim} is not a multiple of heads {cfg.heads}"
        self.h = cfg.heads
        self.ln1, self.ln2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        # per head, how much each structural bias adds to its attention logits (starts at
        # 0: the heads decide from data whether repetition matters to this editor)
        self.bias_w = nn.Parameter(torch.zeros(cfg.heads, n_bias))
        self.ff = nn.Sequential(nn.Linear(cfg.dim, 2 * cfg.dim), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(2 * cfg.dim, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q = q.view(B, T, self.h, C // self.h).transpose(1, 2)  # (B, h, T, hs)
        k = k.view(B, T, self.h, C // self.h).transpose(1, 2)
        v = v.view(B, T, self.h, C // self.h).transpose(1, 2)
        att = q @ k.transpose(-2, -1) / math.sqrt(C // self.h)  # (B, h, T, T)
        att = att + torch.einsum("hc,bcij->bhij", self.bias_w, bias)
        att = att.masked_fill(~key_mask[:, None, None, :], float("-inf")).softmax(-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ff(self.ln2(x)))


class _SongTransformer(nn.Module):
    """Bar tokens of padded songs -> (kept, repeated, faded) logits per bar."""

    N_BIAS = 2  # aligned chroma repetition, same phrase

    def __init__(self, n_in: int, cfg: AttentionConfig) -> None:
        super().__init__()
        # the input standardisation lives in the module (buffers), so the structural
        # biases can read the raw unit-norm chroma and the state is one state_dict
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        self.inp = nn.Linear(n_in, cfg.dim)
        self.blocks = nn.ModuleList(_Block(cfg, self.N_BIAS) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, 3)
        self.in_drop = cfg.dropout

    @staticmethod
    def structure(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Structural biases [shape=(B, 2, T, T)]: chroma cosine of bars i+k and j+k averaged
        over k < 4 (the bars that exist), and 1 where i and j share a 4-bar phrase."""
        B, T, _ = tokens.shape
        c = tokens[..., _CHROMA_SLICE] * mask[..., None]  # (B, T, 12), 0 on padding
        s = c @ c.transpose(1, 2)  # (B, T, T) cosine of unit vectors
        m = (mask[:, :, None] & mask[:, None, :]).float()
        sp, mp = nn.functional.pad(s, (0, 3, 0, 3)), nn.functional.pad(m, (0, 3, 0, 3))
        num = sum(sp[:, k : k + T, k : k + T] for k in range(4))
        den = sum(mp[:, k : k + T, k : k + T] for k in range(4))
        rep = num / den.clamp(min=1.0)
        # phrase index of each bar from the one-hot bar_in_phrase columns: a new phrase
        # starts where bar_in_phrase_0 is set
        start = tokens[..., _BIP[0]] > 0.5
        ph = torch.cumsum(start.long(), dim=1)  # (B, T)
        same = (ph[:, :, None] == ph[:, None, :]).float()
        return torch.stack([rep, same], dim=1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens [shape=(B, T, F)] raw ``bar_tokens``; mask [B, T] bool (True: a bar)."""
        bias = self.structure(tokens, mask)
        x = (tokens - self.mean) / self.std
        if self.training and self.in_drop > 0:
            x = x.masked_fill(torch.rand(x.shape) < self.in_drop, 0.0)  # no single column carries a style
        x = self.inp(x)  # (B, T, dim)
        for blk in self.blocks:
            x = blk(x, bias, mask)
        return self.head(self.ln(x))  # (B, T, 3)


def _pad(songs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in songs)
    out = np.zeros((len(songs), T, songs[0].shape[1]), dtype=np.float32)
    mask = np.zeros((len(songs), T), dtype=bool)
    for i, s in enumerate(songs):
        out[i, : len(s)] = s
        mask[i, : len(s)] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def _rank_loss(logit: torch.Tensor, kept: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over songs of the mean softplus(cut - kept) over (kept, cut) bar pairs of the song."""
    pos = (kept > 0.5) & mask
    neg = (kept < 0.5) & mask
    pair = pos[:, :, None] & neg[:, None, :]  # (B, T, T): i kept, j cut
    diff = nn.functional.softplus(logit[:, None, :] - logit[:, :, None])  # (B, T, T) = softplus(l_j - l_i)
    n = pair.sum((1, 2))
    per_song = (diff * pair).sum((1, 2)) / n.clamp(min=1)
    has = n > 0
    return per_song[has].mean() if has.any() else logit.sum() * 0.0


class AttentionPlanner:
    """A fitted attention planner (``_SongTransformer`` with its standardisation)."""

    def __init__(self, cfg: AttentionConfig, net: _SongTransformer) -> None:
        self.cfg, self.net = cfg, net

    @classmethod
    def fit(cls, songs: list[tuple[np.ndarray, np.ndarray]], cfg: AttentionConfig = AttentionConfig()) -> "AttentionPlanner":
        """songs : (tokens [n_bars, len(TOKEN_FEATURES)], targets [n_bars, 3]) per training song."""
        if not songs:
            from datasets.errors import ParameterError

            raise ParameterError("AttentionPlanner.fit: no training songs")
        X = np.concatenate([x for x, _ in songs])
        mean, std = X.mean(0), X.std(0)
        std = np.where(std < 1e-6, 1.0, std)
        xt, mask = _pad([x for x, _ in songs])
        yt, _ = _pad([y.astype(np.float32) for _, y in songs])
        mf = mask.float()[..., None]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net = _SongTransformer(X.shape[1], cfg)
            net.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
            net.std.copy_(torch.from_numpy(std.astype(np.float32)))
            opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            net.train()
            for _ in range(cfg.epochs):
                opt.zero_grad()
                logit = net(xt, mask)  # (B, T, 3)
                bce = (nn.functional.binary_cross_entropy_with_logits(logit, yt, reduction="none") * mf).sum() / (mf.sum() * 3)
                loss = bce + cfg.rank_weight * _rank_loss(logit[..., 0], yt[..., 0], mask) if cfg.rank_weight > 0 else bce
                loss.backward()
                opt.step()
        net.eval()
        return cls(cfg, net)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """[shape=(n_bars, 3)] probabilities kept / repeated / faded of one song's tokens."""
        with torch.no_grad():
            x = torch.from_numpy(np.asarray(X, dtype=np.float32))[None]
            return torch.sigmoid(self.net(x, torch.ones(x.shape[:2], dtype=torch.bool)))[0].numpy()

    def prior(self, values: np.ndarray, grid: BeatGrid) -> np.ndarray:
        """The per-beat plan prior of a song (``agent.song_bars.beat_prior`` layout)."""
        X, bounds = bar_tokens(values, grid)
        return beat_prior(self.predict(X), bounds, grid)

    def to_state(self) -> dict:
        """Plain tensors, numbers and strings (loads with ``torch.load(weights_only=True)``)."""
        return {"kind": KIND, "config": asdict(self.cfg), "features": list(TOKEN_FEATURES),
                "net": {k: v.detach().clone() for k, v in self.net.state_dict().items()}}

    @classmethod
    def from_state(cls, state: dict) -> "AttentionPlanner | None":
        if tuple(state.get("features", ())) != TOKEN_FEATURES:
            return None  # tokens of another feature set: the policy runs without a prior
        cfg = AttentionConfig(**state["config"])
        net = _SongTransformer(len(TOKEN_FEATURES), cfg)
        net.load_state_dict(state["net"])
        net.eval()
        return cls(cfg, net)
