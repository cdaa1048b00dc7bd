"""Episode-level evaluation: run a policy greedily in the env and compare its plan with
the editor's.

Metrics (``plan_metrics``), all against the reference (human / persona) plan:
- ``iou``: raw-usage IoU, |used_pred & used_ref| / |used_pred | used_ref| over raw
  beats (a beat is used when the plan plays it at least once), duration-weighted: the
  one plan IoU of the project, ``envs.reward.plan_usage_iou``.
- ``keep_error``: |keep_ratio(pred) - keep_ratio(ref)|.
- ``join_f``: F-measure of the plans' edit points (raw beats where a merged segment
  starts or ends, the song's own ends excluded), matched within +-1 beat.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from agent.model import Policy, obs_to_tensors
from envs.reward import plan_usage_iou

__all__ = ["plan_metrics", "edit_points", "rollout", "policy_fn"]


def edit_points(plan) -> np.ndarray:
    """Sorted raw-beat positions where the merged plan starts or ends a segment."""
    n = plan.grid.n_beats
    pts = set()
    for s in plan.merged().segments:
        if s.raw_start > 0:
            pts.add(s.raw_start)
        if s.raw_end < n:
            pts.add(s.raw_end)
    return np.array(sorted(pts), dtype=np.int64)


def _f_measure(ref: np.ndarray, est: np.ndarray, tol: float) -> float:
    if len(ref) == 0 and len(est) == 0:
        return 1.0
    if len(ref) == 0 or len(est) == 0:
        return 0.0
    # one-to-one greedy matching by distance (events are few; exact enough at +-1 beat)
    pairs = sorted((abs(r - e), i, j) for i, r in enumerate(ref) for j, e in enumerate(est) if abs(r - e) <= tol)
    used_r, used_e, hits = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_r and j not in used_e:
            used_r.add(i)
            used_e.add(j)
            hits += 1
    p, r = hits / len(est), hits / len(ref)
    return 0.0 if hits == 0 else 2 * p * r / (p + r)


def plan_metrics(pred, ref, *, tol_beats: float = 1.0) -> dict:
    """{"iou", "keep_error", "join_f"} of a predicted plan against the reference plan
    (both on the same grid)."""
    kp = pred.keep_ratio if pred.segments else 0.0
    return {
        "iou": plan_usage_iou(ref, pred),  # the reward's imitation IoU, weighted by ref's beats
        "keep_error": abs(kp - ref.keep_ratio),
        "join_f": _f_measure(edit_points(ref), edit_points(pred) if pred.segments else np.array([]), tol_beats),
    }


def rollout(act: Callable[[dict], np.ndarray], song, *, target_keep: float = 0.5):
    """Run ``act(obs) -> (t, s, a)`` on one song until the episode ends; returns the plan."""
    from envs.env import AudioEditEnv

    env = AudioEditEnv([song], score_episodes=False, reward_audio=False, target_keep=target_keep)
    obs, _ = env.reset(options={"song": 0})
    done = False
    while not done:
        a = np.asarray(act(obs)).reshape(-1)[:3]
        obs, _, term, trunc, _ = env.step(a)
        done = term or trunc
    return env.last_plan if env.last_plan is not None else env.plan()


def policy_fn(model: Policy, *, deterministic: bool = True) -> Callable[[dict], np.ndarray]:
    """Wrap the policy as ``act(obs) -> (t, s, a)`` for one unbatched env observation."""
    model.eval()

    @torch.no_grad()
    def act(obs: dict) -> np.ndarray:
        actions = model.act(obs_to_tensors(obs, model.device), deterministic=deterministic)[0]
        return actions[0].cpu().numpy()

    return act
