"""A tiny masked editing-like env whose optimum is known, and a small policy for it.

Both follow the real contracts: the env's Dict observation carries ``beats`` [W, F],
``beat_mask`` [W], ``globals`` [G], ``type_mask`` int8 [18], ``size_mask`` int8 [18, 5],
``amount_mask`` int8 [18, 5]; the action space is MultiDiscrete([18, 5, 5]); the reward
is paid only at the episode end. The policy has agent/model.py's ``act``/``evaluate`` API.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from agent.model import Policy, PolicyConfig

N_TYPES, N_SIZES, N_AMOUNTS = 18, 5, 5
W, F = 4, 3
SIZE_TARGET = 1
BANNED_SIZE = 4  # masked for every type: the masks test checks it is never sampled


class TinyMaskedEnv(gym.Env):
    """Each step shows a target type (one-hot in ``globals``); the optimum scores 1.0.

    Rewards: 0 on every step but the last; at the end the mean over steps of
    0.6 [type == target] + 0.2 [size == 1] + 0.2 [amount == wanted amount], where the
    wanted amount is POS_SMALL (3) for types >= 9 and NEUTRAL (2) otherwise (types < 9
    are NEUTRAL-only, like KEEP/CUT). A random masked policy scores about 0.2.
    """

    metadata = {"render_modes": []}

    def __init__(self, episode_len: int = 4, n_allowed: tuple[int, int] = (3, 8)) -> None:
        self.episode_len = episode_len
        self.n_allowed = n_allowed
        self.observation_space = spaces.Dict(
            {
                "beats": spaces.Box(-np.inf, np.inf, (W, F), np.float32),
                "beat_mask": spaces.Box(0.0, 1.0, (W,), np.float32),
                "globals": spaces.Box(0.0, 1.0, (N_TYPES + 1,), np.float32),
                "type_mask": spaces.Box(0, 1, (N_TYPES,), np.int8),
                "size_mask": spaces.Box(0, 1, (N_TYPES, N_SIZES), np.int8),
                "amount_mask": spaces.Box(0, 1, (N_TYPES, N_AMOUNTS), np.int8),
            }
        )
        self.action_space = spaces.MultiDiscrete([N_TYPES, N_SIZES, N_AMOUNTS])
        self._t = 0
        self._score = np.zeros(3)

    def _new_step(self) -> dict[str, np.ndarray]:
        rng = self.np_random
        k = int(rng.integers(self.n_allowed[0], self.n_allowed[1] + 1))
        allowed = rng.choice(N_TYPES, size=k, replace=False)
        self._target = int(rng.choice(allowed))
        type_mask = np.zeros(N_TYPES, np.int8)
        type_mask[allowed] = 1
        size_mask = np.ones((N_TYPES, N_SIZES), np.int8)
        size_mask[:, BANNED_SIZE] = 0
        amount_mask = np.ones((N_TYPES, N_AMOUNTS), np.int8)
        amount_mask[:9] = 0
        amount_mask[:9, 2] = 1
        self._masks = (type_mask, size_mask, amount_mask)
        glob = np.zeros(N_TYPES + 1, np.float32)
        glob[self._target] = 1.0
        glob[-1] = self._t / self.episode_len
        return {
            "beats": rng.normal(size=(W, F)).astype(np.float32),
            "beat_mask": np.ones(W, np.float32),
            "globals": glob,
            "type_mask": type_mask,
            "size_mask": size_mask,
            "amount_mask": amount_mask,
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._score = np.zeros(3)
        return self._new_step(), {}

    def step(self, action):
        t, s, a = (int(x) for x in action)
        tm, sm, am = self._masks
        if not (tm[t] and sm[t, s] and am[t, a]):
            raise ValueError(f"masked action {(t, s, a)}")
        wanted_amount = 3 if self._target >= 9 else 2
        self._score += [0.6 * (t == self._target), 0.2 * (s == SIZE_TARGET), 0.2 * (a == wanted_amount)]
        self._t += 1
        done = self._t >= self.episode_len
        if done:
            comps = self._score / self.episode_len
            info = {"reward_components": {"type": comps[0], "size": comps[1], "amount": comps[2]}}
            return self._new_step(), float(comps.sum()), True, False, info
        return self._new_step(), 0.0, False, False, {}


def _masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(mask == 0, -1e9)


class TinyPolicy(nn.Module):
    """MLP over (beats, globals) with three masked heads; size/amount conditioned on type."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(W * F + N_TYPES + 1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.type_head = nn.Linear(hidden, N_TYPES)
        self.size_head = nn.Linear(hidden, N_TYPES * N_SIZES)
        self.amount_head = nn.Linear(hidden, N_TYPES * N_AMOUNTS)
        self.value_head = nn.Linear(hidden, 1)
        for head in (self.type_head, self.size_head, self.amount_head):
            nn.init.orthogonal_(head.weight, 0.01)
            nn.init.zeros_(head.bias)

    def _heads(self, obs):
        x = torch.cat([obs["beats"].float().flatten(1), obs["globals"].float()], dim=1)
        h = self.body(x)
        b = x.shape[0]
        tl = _masked(self.type_head(h), obs["type_mask"])
        sl = _masked(self.size_head(h).view(b, N_TYPES, N_SIZES), obs["size_mask"])
        al = _masked(self.amount_head(h).view(b, N_TYPES, N_AMOUNTS), obs["amount_mask"])
        return tl, sl, al, self.value_head(h).squeeze(-1)

    @staticmethod
    def _pick(logits, deterministic, generator):
        if deterministic:
            return logits.argmax(-1)
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)

    @staticmethod
    def _logp_ent(logits, idx):
        lp = logits.log_softmax(-1)
        ent = -(lp.exp() * lp).sum(-1)
        return lp.gather(-1, idx[:, None]).squeeze(-1), ent

    def _score(self, tl, sl, al, t, s, a):
        ar = torch.arange(t.shape[0])
        lt, et = self._logp_ent(tl, t)
        ls, es = self._logp_ent(sl[ar, t], s)
        la, ea = self._logp_ent(al[ar, t], a)
        return lt + ls + la, torch.stack([et, es, ea], -1)

    def act(self, obs, deterministic=False, generator=None):
        tl, sl, al, v = self._heads(obs)
        ar = torch.arange(tl.shape[0])
        t = self._pick(tl, deterministic, generator)
        s = self._pick(sl[ar, t], deterministic, generator)
        a = self._pick(al[ar, t], deterministic, generator)
        logp, ent = self._score(tl, sl, al, t, s, a)
        return torch.stack([t, s, a], -1), logp, v, ent

    def evaluate(self, obs, actions):
        tl, sl, al, v = self._heads(obs)
        actions = actions.long()
        logp, ent = self._score(tl, sl, al, actions[:, 0], actions[:, 1], actions[:, 2])
        return logp, ent, v


def tiny_agent_policy():
    """agent/model.py's Policy sized for TinyMaskedEnv's observation (what checkpoints
    hold: agent/checkpoint.py rebuilds only this class)."""
    cfg = PolicyConfig(n_features=F, n_channels=F, n_globals=N_TYPES + 1, window=W, head_index=1, read_behind=-1,
                       read_ahead=-1, hidden=16, n_layers=1, n_heads=2, kernel_size=3, n_energy=2)
    return Policy(cfg)
