"""The settings every training stage shares, declared once.

``make pretrain`` (pretrain.train.PretrainConfig), ``make finetune`` (rl.train.TrainArgs)
and ``make adapt`` (pretrain.adapt.AdaptConfig) inherit these fields, so each has the same
flags with the same meaning and defaults (``--run``, ``--runs-dir``, ``--seed``,
``--device``, ``--threads``), and a change here reaches all three. (``--stems`` is not
shared: adapting must use the features its checkpoint was trained on.)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RunConfig"]


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
