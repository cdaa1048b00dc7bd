"""What a PPO run writes to TensorBoard: one epoch's statistics, and a greedy edit.

Scalar names follow STYLE.md (the same in every stage): ``charts/*`` (episode reward,
schedules, throughput), ``losses/*`` (the update's terms and diagnostics), ``time/*``
(seconds per phase), ``eval/*`` (the greedy edit of a held-out song), all against the
global env step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from datasets.audio import resample, to_mono
from envs.actions import ActionType
from envs.render import render
from rl.rollout import HEADS

__all__ = ["log_epoch", "log_greedy", "action_table"]

_CHART_KEYS = ("episode_reward", "episode_length", "learning_rate", "ent_coef", "sps", "top_type_frac", "episodes")
_LOSS_KEYS = ("policy_loss", "value_loss", "anchor_loss", "approx_kl", "clipfrac", "explained_variance",
              "grad_norm", "updates", "early_stop") + tuple(f"entropy_{h}" for h in HEADS)


def _bins(head: int) -> np.ndarray:
    """Histogram bins of one head's choices: 18 types, 5 sizes or amounts."""
    return np.arange(-0.5, (18 if head == 0 else 5) + 0.5)


def log_epoch(writer: Any, row: Mapping[str, float], actions: np.ndarray, step: int) -> None:
    """TensorBoard: charts/*, losses/*, time/*, reward components and action histograms
    of one epoch (``row`` is rl.ppo.train's, ``actions`` the rollout's [M, 3])."""
    for k in _CHART_KEYS:
        if k in row and not math.isnan(float(row[k])):
            writer.add_scalar(f"charts/{k}", row[k], step)
    for k in _LOSS_KEYS:
        if k in row and not math.isnan(float(row[k])):
            writer.add_scalar(f"losses/{k}", row[k], step)
    for k in ("time_data", "time_rollout", "time_update", "time_worker_reset", "time_worker_rollout"):
        if k in row:  # the worker's own times with overlap
            writer.add_scalar(f"time/{k[5:]}", row[k], step)
    for k in ("lag_weight", "lag_weight_clipped"):  # overlap: how stale the rollout was
        if k in row:
            writer.add_scalar(f"losses/{k}", row[k], step)
    for k, v in row.items():
        if k.startswith("reward/"):
            writer.add_scalar(f"charts/{k}", v, step)
    for h, name in enumerate(HEADS):
        writer.add_histogram(f"actions/{name}", actions[:, h], step, bins=_bins(h))


def action_table(actions: np.ndarray) -> str:
    """Markdown table of the type distribution of ``actions`` [n, 3] (names from envs.actions)."""
    counts = np.bincount(actions[:, 0], minlength=len(ActionType))
    rows = ["| type | count | share |", "|---|---|---|"]
    for t in np.argsort(-counts):
        if counts[t]:
            rows.append(f"| {ActionType(int(t)).name} | {counts[t]} | {counts[t] / counts.sum():.0%} |")
    return "\n".join(rows)


def log_greedy(writer: Any, song: Any, result: Mapping[str, Any], step: int, *, seconds: float) -> None:
    """Reward, IoU, action distribution and (when the song has audio) the first
    ``seconds`` of the edited audio, of a greedy edit (rl.train.greedy_edit's result)."""
    writer.add_scalar("eval/episode_reward", result["reward"], step)
    if not np.isnan(result["iou"]):
        writer.add_scalar("eval/plan_iou", result["iou"], step)
    for k, v in result["components"].items():
        writer.add_scalar(f"eval/reward/{k}", v, step)
    acts = result["actions"]
    for h, name in enumerate(HEADS):
        writer.add_histogram(f"eval/actions_{name}", acts[:, h], step, bins=_bins(h))
    writer.add_text("eval/action_distribution", f"song {song.name}, {len(acts)} actions\n\n" + action_table(acts), step)
    if song.y is not None and result["plan"].segments:
        out = render(y=song.y, sr=song.sr, plan=result["plan"]).y
        mono = resample(to_mono(out), sr_in=song.sr, sr_out=22050)[: int(seconds * 22050)]
        writer.add_audio("eval/edit", torch.as_tensor(np.clip(mono, -1, 1))[None], step, sample_rate=22050)
