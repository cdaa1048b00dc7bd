"""Checkpoint I/O: one file holds everything needed to rebuild and resume a policy.

Contents (only tensors and plain Python types, so ``torch.load(weights_only=True)``
reads it; STYLE.md, nanoGPT's checkpoint):

=================  ===============================================================
``format``         CHECKPOINT_FORMAT
``model``          the policy's state_dict (normalisers included, as buffers)
``policy_config``  PolicyConfig.to_dict(): the architecture is rebuilt from it
``normalizer``     {"mean", "std", "global_mean", "global_std"} (also in ``model``;
                   kept separately so tools can read it without building the model)
``optimizer``      optimizer.state_dict() or None
``step``           global step (int)
``stage``          "pretrain", "finetune", ...
``stage_config``   the stage's config dataclass as a plain dict
``layout``         agent.layout.observation_layout(): the 121 feature names, the
                   beat-channel and global names, window, head row
``extra``          plain dict (epoch, best metric, RNG states, ...)
=================  ===============================================================

Writes are atomic (temp file + os.replace): a run killed mid-save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from agent.layout import check_layout
from agent.model import Policy, PolicyConfig
from datasets.atomic import atomic_path
from datasets.errors import ParameterError

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "policy_from_checkpoint", "to_plain"]

CHECKPOINT_FORMAT = 1


def to_plain(obj: Any) -> Any:
    """Dataclasses, paths, tuples, numpy scalars/arrays -> dict/str/list/int/float/tensor,
    the types ``weights_only`` loading accepts."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return to_plain(obj.value)
    if isinstance(obj, (Path, os.PathLike)):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    raise ParameterError(f"checkpoint: cannot store a value of type {type(obj).__name__}")


def save_checkpoint(
    path: str | Path,
    *,
    model: Policy,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    stage: str = "",
    stage_config: Any = None,
    layout: Mapping | None = None,
    extra: Mapping | None = None,
) -> Path:
    """Write a checkpoint atomically; returns its path.

    layout : observation layout (agent.layout.observation_layout()); None stores the
        layout implied by the model config only (no names), for tests and tools.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    if layout is None:
        layout = {
            "n_features": cfg.n_features,
            "n_channels": cfg.n_channels,
            "n_globals": cfg.n_globals,
            "window": cfg.window,
            "head_index": cfg.head_index,
        }
    for key in ("n_features", "n_channels", "n_globals", "window", "head_index"):
        if key in layout and layout[key] != getattr(cfg, key):
            raise ParameterError(f"save_checkpoint: layout {key}={layout[key]} but the model has {getattr(cfg, key)}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model": state,
        "policy_config": cfg.to_dict(),
        "normalizer": {
            "mean": state["normalizer.mean"],
            "std": state["normalizer.std"],
            "global_mean": state["global_normalizer.mean"],
            "global_std": state["global_normalizer.std"],
        },
        "optimizer": _to_cpu(optimizer.state_dict()) if optimizer is not None else None,
        "step": int(step),
        "stage": str(stage),
        "stage_config": to_plain(stage_config) if stage_config is not None else {},
        "layout": to_plain(dict(layout)),
        "extra": to_plain(dict(extra or {})),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
    return path


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def load_checkpoint(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    expect_layout: Mapping | str | None = "current",
) -> dict:
    """Read a checkpoint with ``weights_only=True`` and check its observation layout.

    expect_layout : "current" (agent.layout.observation_layout() of this code), a layout
        dict, or None (no check). A different feature configuration raises ParameterError.
    """
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ParameterError(f"{path}: not a readable checkpoint (the file is empty, 0 bytes)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file or a pickle with non-plain objects
        raise ParameterError(f"{path}: not a readable checkpoint ({_load_problem(e)})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ParameterError(f"{path}: unknown checkpoint format {ckpt.get('format') if isinstance(ckpt, dict) else None}")
    if expect_layout == "current":
        from agent.layout import observation_layout

        expect_layout = observation_layout()
    if expect_layout is not None:
        check_layout(ckpt["layout"], expect_layout, source=str(path))
    return ckpt


def _load_problem(e: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words. torch's own message
    spans lines, carries terminal escape codes and advises ``weights_only=False``, which
    would run whatever code a malicious file's pickle names: never repeat that advice."""
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it would call {found.group(1)} when loaded, which a checkpoint of weights never does; refused without running it"
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if detail:
        return f"corrupt, or not a PyTorch file: {detail.group(1).strip()}"
    first = text.strip().splitlines()
    return f"{type(e).__name__}: {first[0]}" if first else f"{type(e).__name__}: the file is cut short or corrupt"


def policy_from_checkpoint(ckpt: Mapping, *, device: str | torch.device = "cpu") -> Policy:
    """Rebuild the policy from a loaded checkpoint (architecture from its config)."""
    cfg = PolicyConfig.from_dict(ckpt["policy_config"])
    model = Policy(cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(device)
