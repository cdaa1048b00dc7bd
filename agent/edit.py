"""The one policy rollout of the project: a policy edits one song of an environment.

Inference (agent/infer.py), PPO's greedy evaluation (rl/train.py) and the benchmarks all
edit through ``edit_song``, so what they measure is what a user gets. It lives below
agent.infer so that fine-tuning can use it without importing inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EditResult", "edit_song"]


@dataclass(frozen=True)
class EditResult:
    """The policy's edit of one song: plan, actions and the environment's verdict."""

    plan: object  # envs.plan.EditPlan
    actions: list[tuple[int, int, int]]
    reward: float
    reward_components: dict


def edit_song(policy, env, *, song: int = 0, deterministic: bool = True, seed: int = 0) -> EditResult:
    """Run ``policy`` over song ``song`` of ``env`` (an AudioEditEnv) to the end of the
    episode. The one policy rollout of the project: inference, PPO's greedy evaluation
    and the benchmarks all edit through it. Leaves the policy's train/eval mode alone."""
    # torch (~1 s to import) only once there is a policy to run: agent.infer imports this
    # module at start-up and must report a bad input before torch loads (issue 17)
    import torch

    from agent.model import obs_to_tensors

    device = next(policy.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    obs, _ = env.reset(seed=seed, options={"song": song})
    actions: list[tuple[int, int, int]] = []
    reward, info, done = 0.0, {}, False
    with torch.no_grad():
        while not done:
            a, *_ = policy.act(obs_to_tensors(obs, device), deterministic=deterministic, generator=gen)
            act = tuple(int(v) for v in a[0].tolist())
            actions.append(act)
            obs, r, terminated, truncated, info = env.step(np.asarray(act))
            reward += r
            done = terminated or truncated
    return EditResult(plan=env.last_plan, actions=actions, reward=reward, reward_components=info.get("reward_components", {}))
