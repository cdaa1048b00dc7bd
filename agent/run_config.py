"""The settings every training stage shares, declared once, and the one way a stage applies
its seed (``seed_everything``).

``make pretrain`` (pretrain.train.PretrainConfig), ``make finetune`` (rl.train.TrainArgs)
and ``make adapt`` (pretrain.adapt.AdaptConfig) inherit these fields, so each has the same
flags with the same meaning and defaults (``--run``, ``--runs-dir``, ``--seed``,
``--device``, ``--threads``), and a change here reaches all three. (``--stems`` is not
shared: adapting must use the features its checkpoint was trained on.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

__all__ = ["RunConfig", "seed_everything"]


@dataclass(frozen=True)
class RunConfig:
    run: str = "default"
    """run name: labels from runs/RUN/labels (make align), checkpoints and TensorBoard logs
    in runs/RUN/"""
    runs_dir: str = "runs"
    """where runs live"""
    seed: int = 1
    """seeds python, numpy, torch, the split and the env resets; part of the TensorBoard run name"""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda[:N]"""
    threads: int = 1
    """torch CPU threads (0 = torch's default). 1: the batches are small, and with 2 threads
    on a 2-core machine that is busy with anything else each small matmul spin-waits
    (make demo's BC took 5 min 47 s instead of ~36 s with one thread; PPO's small matmuls
    were 100x slower)"""


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (CPU and CUDA) and make cudnn deterministic;
    ``deterministic`` also asks torch for deterministic algorithms everywhere."""
    import torch  # here, not at import: RunConfig is read by CLIs before they need torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if deterministic:
        torch.use_deterministic_algorithms(True)
