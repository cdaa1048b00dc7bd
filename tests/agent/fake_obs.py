"""Random observations that follow the envs/observation.py contract (for agent tests)."""

from __future__ import annotations

import torch

from agent.model import N_AMOUNTS, N_SIZES, N_TYPES, PolicyConfig


def random_obs(cfg: PolicyConfig, batch: int, *, seed: int = 0, pad: bool = True, dense_masks: bool = False) -> dict:
    """Batched observation tensors with random masks in which every allowed type has at
    least one allowed size and amount (and some types have none, which must act masked)."""
    g = torch.Generator().manual_seed(seed)
    W = cfg.window
    beats = torch.randn(batch, W, cfg.n_channels, generator=g) * 3 + 1
    mask = torch.ones(batch, W)
    if pad:
        for b in range(batch):
            kind = b % 3
            n = int(torch.randint(1, cfg.head_index + 1, (1,), generator=g))
            if kind == 1:
                mask[b, :n] = 0  # song start
            elif kind == 2:
                mask[b, W - n :] = 0  # song end
    beats = beats * mask[..., None]
    if dense_masks:
        tmask = torch.ones(batch, N_TYPES, dtype=torch.int8)
        smask = torch.ones(batch, N_TYPES, N_SIZES, dtype=torch.int8)
        amask = torch.ones(batch, N_TYPES, N_AMOUNTS, dtype=torch.int8)
    else:
        tmask = (torch.rand(batch, N_TYPES, generator=g) < 0.6).to(torch.int8)
        tmask[:, 0] = 1  # KEEP is always possible
        smask = (torch.rand(batch, N_TYPES, N_SIZES, generator=g) < 0.6).to(torch.int8)
        smask[:, :, 0] = 1
        amask = (torch.rand(batch, N_TYPES, N_AMOUNTS, generator=g) < 0.4).to(torch.int8)
        amask[:, :, 2] = 1  # NEUTRAL
        # a type the env allows but whose sizes are all masked: must behave as masked
        smask[:, 5, :] = 0
        tmask[:, 5] = 1
    return {
        "beats": beats,
        "beat_mask": mask,
        "globals": torch.rand(batch, cfg.n_globals, generator=g),
        "type_mask": tmask,
        "size_mask": smask,
        "amount_mask": amask,
    }


def allowed(obs: dict, actions: torch.Tensor) -> torch.Tensor:
    """[B] bool: is each (t, s, a) allowed by the observation's masks."""
    b = torch.arange(actions.shape[0])
    t, s, a = actions.unbind(-1)
    return (
        obs["type_mask"][b, t].bool()
        & obs["size_mask"][b, t, s].bool()
        & obs["amount_mask"][b, t, a].bool()
    )
