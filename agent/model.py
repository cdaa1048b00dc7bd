"""The policy: a neighbourhood-attention encoder over the window of beats, three factored
action heads, a value head and two auxiliary heads (upcoming energy, section boundaries).

Observation (envs/observation.py, batched with a leading B):
  beats [B, W, F] (the first ``n_features`` columns are RAW beat features, the rest are
  edit-history channels), beat_mask [B, W] (1 = real beat), globals [B, G],
  type_mask [B, 18], size_mask [B, 18, 5], amount_mask [B, 18, 5] (size/amount masks are
  given the type).

Action distribution (SPEC.md, "3-head policy"):
  log P(t, s, a) = log P(t) + log P(s | t) + log P(a | t)
Masked choices get -inf logits, so their probability is exactly 0 and they are never
sampled. A type is only allowed when at least one size and one amount are allowed for
it, so every allowed type has a proper conditional distribution.

Encoder: it reads the rows of the window around the read head (``PolicyConfig.rows``:
8 beats behind, 24 from the head on, by default), input projection of [normalised
features, context and history channels] plus a learned position embedding of the slot (attention itself is position-blind; the slot
says where the read head is), then pre-norm blocks of neighbourhood attention + MLP
with the padding mask, then: the read-head token, a masked mean over the window and an
MLP of the globals are concatenated into the trunk.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Mapping, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from agent.natten_cpu import na1d
from datasets.errors import ParameterError

__all__ = [
    "PolicyConfig",
    "FeatureNormalizer",
    "PolicyOutput",
    "Policy",
    "obs_to_tensors",
    "OBS_KEYS",
]

log = logging.getLogger(__name__)

OBS_KEYS = ("beats", "beat_mask", "globals", "type_mask", "size_mask", "amount_mask")

# SPEC.md: 18 types x 5 sizes x 5 amounts (envs/actions.py holds the names).
N_TYPES, N_SIZES, N_AMOUNTS = 18, 5, 5


@dataclass(frozen=True)
class PolicyConfig:
    """Architecture of the policy. Saved in every checkpoint; loading rebuilds from it.

    The observation-layout fields must match envs/observation.py (``from_layout`` reads
    them from there; the defaults are its values when this was written). The width is
    small on purpose: PPO must step >= 2,000 env steps/s including updates on 2 CPU
    cores, and every beat the encoder reads (``rows``) is a token.
    """

    n_features: int = 121
    """raw beat-feature columns at the start of each row of obs["beats"]"""
    n_channels: int = 153
    """total columns of obs["beats"] (features + song-context + edit-history channels)"""
    n_globals: int = 14
    """length of obs["globals"]"""
    window: int = 64
    """W, beats in the observation window"""
    head_index: int = 16
    """slot of the read-head beat inside the window"""
    read_behind: int = 8
    """beats behind the read head the encoder reads (-1 = all of the window's). The
    encoder reads rows [head_index - read_behind, head_index + read_ahead) of the window:
    every row is an attention token, and the attention is most of the cost of PPO's
    update (fwd+bwd 0.43 ms per sample for all 64 rows, 0.19 ms for 32; bench/finetune.py).
    What lies further away is summarised by the song-context channels of the rows read."""
    read_ahead: int = 24
    """beats from the read head on (the head row included) the encoder reads (-1 = all)"""
    hidden: int = 32
    """model width; must be divisible by n_heads"""
    n_layers: int = 2
    n_heads: int = 4
    kernel_size: int = 7
    """neighbourhood size in beats; odd (natten's window is centred)"""
    dilations: tuple[int, ...] = (1, 2)
    """dilation of each layer, cycled; (1, 2) sees +-3 then +-6 beats: about two bars"""
    mlp_ratio: int = 2
    dropout: float = 0.0
    type_embed: int = 16
    """width of the type embedding that conditions the size and amount heads"""
    n_energy: int = 4
    """auxiliary head: energy (normalised rms_db) of the n_energy beats after the read head.
    The other auxiliary head (phrase-boundary detection, SPEC.md) scores every window
    beat for being a boundary of the editor's sections (pretrain/dataset.py)."""
    plan_cols: tuple[int, ...] = ()
    """columns of obs["beats"] holding the whole-song plan (envs.context.PLAN_CHANNELS,
    agent/planner.py); () = none. The step head reads them for ``plan_ahead`` beats from
    the read head directly, beside the encoder: whether to keep the chunk at the head is
    mostly the song-level plan's call, and a straight path makes following the plan a
    near-linear function that a few songs can teach (through the attention alone, a BC
    policy of 3 songs followed a perfect plan on 2 of 4 new songs; tests/pretrain/
    test_style_transfer.py)"""
    plan_budget_col: int = -1
    """column of obs["beats"] holding ``plan_budget_keep`` (-1 = none): its value at the
    read head is added to the KEEP logit and taken from the CUT logit, times a learned
    gain (``plan_gain``, initialised to ``plan_gain_init``): the policy starts as the
    budgeted plan's executor and behaviour cloning learns where to depart from it. Without
    this base a BC policy of 17 real songs followed its planner's plan on 0.83-0.84 of the
    held-out time and scored 0.70-0.73 IoU where the plan alone scored 0.82 (loud70)"""
    plan_gain_init: float = 2.0
    plan_ahead: int = 16
    """beats from the read head (itself included) whose plan the step head reads: the
    largest chunk most edits decide at once (a 4/4 phrase)"""

    def __post_init__(self) -> None:
        if self.hidden <= 0 or self.n_heads <= 0 or self.hidden % self.n_heads != 0:
            raise ParameterError(
                f"PolicyConfig: hidden={self.hidden} must be a positive multiple of n_heads={self.n_heads}"
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ParameterError(f"PolicyConfig: kernel_size={self.kernel_size} must be odd and >= 1")
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise ParameterError(f"PolicyConfig: dilations={self.dilations} must be non-empty and >= 1")
        if self.n_channels < self.n_features:
            raise ParameterError(
                f"PolicyConfig: n_channels={self.n_channels} < n_features={self.n_features}"
            )
        if not 0 <= self.head_index < self.window:
            raise ParameterError(f"PolicyConfig: head_index={self.head_index} outside window={self.window}")
        if self.n_layers < 1:
            raise ParameterError(f"PolicyConfig: n_layers={self.n_layers} must be >= 1")
        if not (-1 <= self.read_behind and (self.read_ahead == -1 or self.read_ahead >= 1)):
            raise ParameterError(
                f"PolicyConfig: read_behind={self.read_behind} / read_ahead={self.read_ahead} "
                "must be -1 (the whole window) or >= 0 / >= 1"
            )

    @property
    def rows(self) -> slice:
        """Window rows the encoder reads (clipped to the window)."""
        lo = 0 if self.read_behind < 0 else max(0, self.head_index - self.read_behind)
        hi = self.window if self.read_ahead < 0 else min(self.window, self.head_index + self.read_ahead)
        return slice(lo, hi)

    @property
    def n_rows(self) -> int:
        return self.rows.stop - self.rows.start

    @property
    def head_row(self) -> int:
        """Slot of the read head among the rows read."""
        return self.head_index - self.rows.start

    @property
    def plan_rows(self) -> slice:
        """Rows (among the rows read) whose plan channels the step head reads."""
        return slice(self.head_row, min(self.n_rows, self.head_row + self.plan_ahead))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        d["plan_cols"] = list(self.plan_cols)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "PolicyConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ParameterError(f"PolicyConfig: unknown keys {sorted(unknown)}")
        d = dict(d)
        # Checkpoints written before read_behind / read_ahead existed read the whole window.
        d.setdefault("read_behind", -1)
        d.setdefault("read_ahead", -1)
        if "dilations" in d:
            d["dilations"] = tuple(int(x) for x in d["dilations"])
        if "plan_cols" in d:
            d["plan_cols"] = tuple(int(x) for x in d["plan_cols"])
        return cls(**d)

    @classmethod
    def from_layout(cls, **overrides) -> "PolicyConfig":
        """Config whose observation fields come from envs/observation.py."""
        from agent.layout import observation_layout

        lay = observation_layout()
        base = dict(
            n_features=lay["n_features"],
            n_channels=lay["n_channels"],
            n_globals=lay["n_globals"],
            window=lay["window"],
            head_index=lay["head_index"],
            plan_cols=tuple(i for i, c in enumerate(lay["channel_names"]) if c.startswith("plan_")),
            plan_budget_col=lay["channel_names"].index("plan_budget_keep") if "plan_budget_keep" in lay["channel_names"] else -1,
        )
        base.update(overrides)
        return cls(**base)


class FeatureNormalizer(nn.Module):
    """Per-column standardisation, fitted on training data and saved in the state_dict.

    The env hands out RAW features; this is the one normaliser, used in pretraining,
    fine-tuning and inference alike (DESIGN.md lesson: normalisation once differed
    between training and inference).
    """

    # Columns with (almost) no spread are divided by this instead (constant features).
    # agent.duration.trained_keep_range reads the trained range of a global from mean and
    # std, so inference only asks the policy for values near what it saw.
    MIN_STD = 1e-3

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, x: Tensor | np.ndarray, mask: Tensor | np.ndarray | None = None) -> "FeatureNormalizer":
        """Fit mean/std over rows of x [..., n], counting only rows where mask [...] is true."""
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, dtype=torch.float64)
        x = x.reshape(-1, x.shape[-1])
        if mask is not None:
            m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask).reshape(-1).bool()
            x = x[m]
        if x.shape[0] == 0:
            raise ParameterError("FeatureNormalizer.fit: no rows to fit on")
        if not torch.isfinite(x).all():
            raise ParameterError("FeatureNormalizer.fit: features contain NaN or inf")
        self.mean.copy_(x.mean(0).to(self.mean))
        std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones(x.shape[1], dtype=x.dtype)
        self.std.copy_(std.clamp_min(self.MIN_STD).to(self.std))
        self.fitted.fill_(True)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class PolicyOutput(NamedTuple):
    """Everything one forward pass gives (masked logits: -inf where not allowed)."""

    type_logits: Tensor  # (B, 18)
    size_logits: Tensor  # (B, 18, 5): row t = size logits given type t
    amount_logits: Tensor  # (B, 18, 5): row t = amount logits given type t
    value: Tensor  # (B,)
    energy: Tensor  # (B, n_energy): predicted normalised energy of the next beats
    boundary_logits: Tensor  # (B, n_rows): logit that the editor starts/ends a segment at each beat read (cfg.rows)


class _NeighborhoodAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.n_heads, self.kernel_size, self.dilation = n_heads, kernel_size, dilation
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.n_heads, C // self.n_heads).unbind(2)  # (B, L, H, Dh)
        y = na1d(q, k, v, kernel_size=self.kernel_size, dilation=self.dilation, key_mask=mask)
        return self.drop(self.proj(y.reshape(B, L, C)))


class _Block(nn.Module):
    """Pre-norm transformer block with neighbourhood attention (nanoGPT's Block)."""

    def __init__(self, cfg: PolicyConfig, dilation: int):
        super().__init__()
        d = cfg.hidden
        self.ln1 = nn.LayerNorm(d)
        self.attn = _NeighborhoodAttention(d, cfg.n_heads, cfg.kernel_size, dilation, cfg.dropout)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(), nn.Linear(cfg.mlp_ratio * d, d), nn.Dropout(cfg.dropout)
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x), mask)
        x = x + self.mlp(self.ln2(x))
        return x * mask[..., None]  # padding stays exactly zero


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


def obs_to_tensors(obs: Mapping, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Observation dict (numpy or torch, batched or not) -> batched tensors on device.

    Float keys become float32, masks become bool. An unbatched observation (beats of
    rank 2) gets a leading batch dim of 1.
    """
    missing = [k for k in OBS_KEYS if k not in obs]
    if missing:
        raise ParameterError(f"observation lacks keys {missing}")
    out = {}
    batched = np.ndim(obs["beats"]) == 3
    for k in OBS_KEYS:
        t = torch.as_tensor(obs[k], device=device)
        if not batched:
            t = t.unsqueeze(0)
        out[k] = t.bool() if k.endswith("mask") and k != "beat_mask" else t.float()
    out["beat_mask"] = out["beat_mask"] > 0.5
    return out


def _masked_log_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """log_softmax with -inf where mask is False; rows with nothing allowed become 0 (never
    used: their type is masked) so no NaN reaches the gradients."""
    any_ok = mask.any(-1, keepdim=True)
    logits = logits.masked_fill(~mask, float("-inf"))
    logits = torch.where(any_ok, logits, torch.zeros_like(logits))
    return torch.log_softmax(logits, dim=-1)


def _entropy(logp: Tensor) -> Tensor:
    """Entropy over the last dim from log-probs that may hold -inf (p = 0 there).

    The masked log-probs are filled with 0 *before* multiplying: ``torch.where(p > 0,
    p * logp, 0)`` would still back-propagate ``0 * -inf = nan`` through the unused
    branch into every parameter. With ``lp = 0`` there, ``exp(0) * 0 = 0`` and so is its
    gradient.
    """
    lp = logp.masked_fill(~torch.isfinite(logp), 0.0)
    return -(lp.exp() * lp).sum(-1)


class Policy(nn.Module):
    """Actor-critic over the beat window. See the module docstring for the layout."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.normalizer = FeatureNormalizer(cfg.n_features)
        self.global_normalizer = FeatureNormalizer(cfg.n_globals)
        self.inp = nn.Linear(cfg.n_channels, d)
        self.pos = nn.Embedding(cfg.n_rows, d)
        self.blocks = nn.ModuleList(
            [_Block(cfg, cfg.dilations[i % len(cfg.dilations)]) for i in range(cfg.n_layers)]
        )
        self.ln_f = nn.LayerNorm(d)
        self.glob = _mlp(max(cfg.n_globals, 1), d, d)
        trunk_in = 3 * d  # read-head token, masked mean over the window, globals
        if cfg.plan_cols:  # + the whole-song plan of the beats ahead (PolicyConfig.plan_cols)
            k = cfg.plan_rows.stop - cfg.plan_rows.start
            self.plan_in = nn.Sequential(nn.Linear(k * len(cfg.plan_cols), d), nn.GELU())
            trunk_in += d
        if cfg.plan_budget_col >= 0:
            self.plan_gain = nn.Parameter(torch.tensor(float(cfg.plan_gain_init)))
        self.trunk = nn.Sequential(nn.Linear(trunk_in, 2 * d), nn.GELU(), nn.Linear(2 * d, d), nn.GELU())
        self.type_head = nn.Linear(d, N_TYPES)
        self.type_emb_size = nn.Embedding(N_TYPES, cfg.type_embed)
        self.type_emb_amount = nn.Embedding(N_TYPES, cfg.type_embed)
        self.size_head = _mlp(d + cfg.type_embed, d, N_SIZES)
        self.amount_head = _mlp(d + cfg.type_embed, d, N_AMOUNTS)
        self.value_head = _mlp(d, d, 1)
        self.energy_head = nn.Linear(d, cfg.n_energy)
        self.boundary_head = nn.Linear(d, 1)
        # KEEP (0) and CUT (1) rows of the type logits, for the plan's vote
        self.register_buffer("_keep_cut", torch.eye(2, N_TYPES), persistent=False)
        self.apply(self._init)
        # Near-uniform initial action distribution: small last layers (CleanRL's std=0.01 policy init).
        for lin in (self.type_head, self.size_head[-1], self.amount_head[-1]):
            nn.init.normal_(lin.weight, std=0.01)
            nn.init.zeros_(lin.bias)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.inp.weight.device

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def crop_obs(self, obs: Mapping) -> dict:
        """The observation with only the window rows the encoder reads (``cfg.rows``).

        Batched numpy or torch; slicing, no copy. PPO stores its rollouts cropped: half the
        memory, and half the copying when minibatches are gathered."""
        rows = self.cfg.rows
        if rows == slice(0, self.cfg.window):
            return dict(obs)
        return {**obs, "beats": obs["beats"][:, rows], "beat_mask": obs["beat_mask"][:, rows]}

    # ------------------------------------------------------------------ encoder
    def encode(self, obs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Returns (trunk [B, d], beat tokens [B, n_rows, d]) for the rows read (``cfg.rows``)."""
        cfg = self.cfg
        beats, mask = obs["beats"], obs["beat_mask"]
        mask = mask if mask.dtype == torch.bool else mask > 0.5
        B, W, C = beats.shape
        if W not in (cfg.window, cfg.n_rows) or C != cfg.n_channels:
            raise ParameterError(
                f"observation beats {tuple(beats.shape[1:])} != model (window={cfg.window} or the "
                f"{cfg.n_rows} rows read, channels={cfg.n_channels})"
            )
        if W == cfg.window:  # else already cropped (crop_obs)
            beats, mask = beats[:, cfg.rows], mask[:, cfg.rows]
        feats = self.normalizer(beats[..., : cfg.n_features])
        x = torch.cat([feats, beats[..., cfg.n_features :]], dim=-1) * mask[..., None]  # (B, W, C)
        x = (self.inp(x) + self.pos.weight[None]) * mask[..., None]  # (B, W, d)
        for blk in self.blocks:
            x = blk(x, mask)
        x = self.ln_f(x) * mask[..., None]
        head = x[:, cfg.head_row]  # (B, d) read-head token
        n = mask.sum(-1, keepdim=True).clamp_min(1)
        pooled = x.sum(1) / n  # (B, d) masked mean
        g = obs["globals"]
        g = self.global_normalizer(g) if cfg.n_globals > 0 else torch.zeros(B, 1, device=x.device)
        parts = [head, pooled, self.glob(g)]
        if cfg.plan_cols:
            rows = cfg.plan_rows
            plan = beats[:, rows][..., list(cfg.plan_cols)] * mask[:, rows, None]  # (B, k, P), 0 past the song's end
            parts.append(self.plan_in(plan.reshape(B, -1)))
        z = self.trunk(torch.cat(parts, dim=-1))  # (B, d)
        return z, x

    # ------------------------------------------------------------------ heads
    def forward(self, obs: Mapping[str, Tensor]) -> PolicyOutput:
        """Masked logits of every head (for BC); see PolicyOutput."""
        z, x = self.encode(obs)
        B = z.shape[0]
        tmask, smask, amask = self._masks(obs)
        type_logits = self.type_head(z)
        if self.cfg.plan_budget_col >= 0:  # the budgeted plan's keep/cut call at the head, as a base
            beats = obs["beats"]
            head = self.cfg.head_row if beats.shape[1] == self.cfg.n_rows else self.cfg.head_index
            vote = self.plan_gain * (2.0 * beats[:, head, self.cfg.plan_budget_col] - 1.0)  # (B,)
            vote = vote * beats[:, head, self.cfg.plan_budget_col + 1]  # 0 where the song has no plan (plan_known)
            type_logits = type_logits + torch.stack([vote, -vote], dim=-1) @ self._keep_cut
        type_logits = type_logits.masked_fill(~tmask, float("-inf"))
        zt = z[:, None, :].expand(B, N_TYPES, z.shape[-1])  # (B, 18, d)
        es = self.type_emb_size.weight[None].expand(B, -1, -1)  # (B, 18, e)
        ea = self.type_emb_amount.weight[None].expand(B, -1, -1)
        size_logits = self.size_head(torch.cat([zt, es], -1)).masked_fill(~smask, float("-inf"))  # (B, 18, 5)
        amount_logits = self.amount_head(torch.cat([zt, ea], -1)).masked_fill(~amask, float("-inf"))
        value = self.value_head(z).squeeze(-1)
        energy = self.energy_head(z)
        boundary = self.boundary_head(x).squeeze(-1)  # (B, W)
        return PolicyOutput(type_logits, size_logits, amount_logits, value, energy, boundary)

    @staticmethod
    def _masks(obs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        smask = obs["size_mask"].bool()
        amask = obs["amount_mask"].bool()
        # A type needs at least one size and one amount to be a legal choice.
        tmask = obs["type_mask"].bool() & smask.any(-1) & amask.any(-1)
        return tmask, smask, amask

    def log_probs(self, out: PolicyOutput, obs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised log-probs: type [B, 18], size|type [B, 18, 5], amount|type [B, 18, 5]."""
        tmask, smask, amask = self._masks(obs)
        return (
            _masked_log_softmax(out.type_logits, tmask),
            _masked_log_softmax(out.size_logits, smask),
            _masked_log_softmax(out.amount_logits, amask),
        )

    def joint_log_prob(self, obs: Mapping[str, Tensor]) -> Tensor:
        """log P(t, s, a) for all 450 actions, [B, 18, 5, 5] (-inf where masked)."""
        lt, ls, la = self.log_probs(self(obs), obs)
        return lt[:, :, None, None] + ls[:, :, :, None] + la[:, :, None, :]

    @staticmethod
    def _gather(lt: Tensor, ls: Tensor, la: Tensor, actions: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        t, s, a = actions[:, 0], actions[:, 1], actions[:, 2]
        ar = torch.arange(actions.shape[0], device=actions.device)
        ls_t, la_t = ls[ar, t], la[ar, t]  # (B, 5) conditionals of the taken type
        logp = lt[ar, t] + ls_t[ar, s] + la_t[ar, a]
        # Entropies: of the type head, and of the size / amount heads given the taken type.
        ent = {"type": _entropy(lt), "size": _entropy(ls_t), "amount": _entropy(la_t)}
        return logp, ent

    def act(
        self,
        obs: Mapping[str, Tensor],
        *,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Choose actions.

        Returns
        -------
        actions : LongTensor [B, 3] (type, size, amount)
        logp : [B] log P of the chosen actions
        value : [B]
        entropy : {"type", "size", "amount"} each [B] (size/amount given the chosen type)

        ``deterministic`` picks the joint mode argmax_{t,s,a} log P(t, s, a) (exact: for
        each type the best size and amount are independent given the type).
        """
        out = self(obs)
        lt, ls, la = self.log_probs(out, obs)
        if not self._masks(obs)[0].any(-1).all():
            raise ParameterError("observation with no allowed action (type_mask/size_mask/amount_mask all False)")
        B = lt.shape[0]
        ar = torch.arange(B, device=lt.device)
        if deterministic:
            best_s, arg_s = ls.max(-1)  # (B, 18)
            best_a, arg_a = la.max(-1)
            t = (lt + best_s + best_a).argmax(-1)
            s, a = arg_s[ar, t], arg_a[ar, t]
        else:
            t = torch.multinomial(lt.exp(), 1, generator=generator).squeeze(-1)
            s = torch.multinomial(ls[ar, t].exp(), 1, generator=generator).squeeze(-1)
            a = torch.multinomial(la[ar, t].exp(), 1, generator=generator).squeeze(-1)
        actions = torch.stack([t, s, a], dim=-1)
        logp, ent = self._gather(lt, ls, la, actions)
        return actions, logp, out.value, ent

    def evaluate(self, obs: Mapping[str, Tensor], actions: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """PPO's re-evaluation: (logp [B], entropies {type,size,amount} [B], value [B])."""
        out = self(obs)
        lt, ls, la = self.log_probs(out, obs)
        logp, ent = self._gather(lt, ls, la, actions.long())
        return logp, ent, out.value
