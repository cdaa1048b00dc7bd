"""The pieces of one behaviour-cloning step, shared by make pretrain (pretrain/train.py)
and make adapt (pretrain/adapt.py): seeding and the RNG state a checkpoint carries, a
batch as tensors, the loss denominators of a global batch under torchrun, feature and
history dropout, validation metrics and the confusion-matrix figure.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from agent.model import N_TYPES, Policy, PolicyConfig
from datasets.errors import ParameterError
from envs.observation import HEAD_INDEX, HISTORY_CHANNELS, channel_index
from pretrain.dataset import BCData
from pretrain.losses import LossWeights, bc_losses, classification_metrics, loss_denominators, predict

__all__ = ["rng_state", "set_rng_state", "data_key", "energy_column", "policy_layout", "batch_tensors",
           "batch_denominators", "drop_features", "HISTORY_DROP_COLS", "drop_history", "evaluate", "confusion_figure"]


def rng_state() -> dict:
    """Every global RNG an epoch may draw from, as checkpoint-safe types (the loop itself
    uses torch's; numpy's and python's are stored so nothing else can break resume)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, torch.as_tensor(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(extra: dict) -> None:
    torch.set_rng_state(extra["torch_rng"])
    rng = extra.get("rng")  # absent in checkpoints from before numpy / python were stored
    if rng is None:
        return
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, state, gauss_next = rng["python"]
    random.setstate((version, tuple(state), gauss_next))
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def data_key(data: BCData) -> str:
    """Fingerprint of a data set's labels: songs, episodes, actions, confidences. A
    checkpoint trained on other labels (new pairs, a new alignment) is not continued."""
    h = hashlib.blake2b(digest_size=16)
    h.update("\n".join(data.song_keys).encode() + b"\0" + "\n".join(data.episode_names).encode() + b"\0")
    for k in ("actions", "weight", "song", "episode", "step"):
        h.update(np.ascontiguousarray(getattr(data, k)).tobytes())
    return h.hexdigest()


def energy_column(cfg: PolicyConfig) -> int | None:
    try:
        from datasets.features import feature_index

        col = feature_index("rms_db")
    except (ImportError, ParameterError):
        return None
    return col if col < cfg.n_features else None


def policy_layout(cfg: PolicyConfig) -> dict | None:
    """The env's observation layout when it matches the model (None in synthetic tests)."""
    try:
        from agent.layout import observation_layout

        lay = observation_layout()
    except ImportError:
        return None
    same = all(lay[k] == getattr(cfg, k) for k in ("n_features", "n_channels", "n_globals", "window", "head_index"))
    return lay if same else None


def batch_tensors(data: BCData, idx: np.ndarray, device) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    obs = data.obs(idx, device=device)
    actions = torch.as_tensor(data.actions[idx], device=device)
    boundary = torch.as_tensor(data.boundary[idx], device=device)
    weight = torch.as_tensor(data.weight[idx], device=device)
    return obs, actions, boundary, weight


def batch_denominators(data: BCData, idx: np.ndarray, device, *, cfg: PolicyConfig, type_weights, energy_col, lw) -> dict:
    """``loss_denominators`` of the global batch idx under torchrun: every rank holds all
    the data, so each computes the whole batch's weight sums itself (no all-reduce; the
    same sums as the single process), from the masks alone (the masks as BCData.obs
    builds them; no features copied)."""
    obs = {"beat_mask": torch.as_tensor(data.beat_mask[idx], device=device) > 0.5,
           "size_mask": torch.as_tensor(data.size_mask[idx], device=device).bool(),
           "amount_mask": torch.as_tensor(data.amount_mask[idx], device=device).bool()}
    t = lambda a: torch.as_tensor(a[idx], device=device)  # noqa: E731
    return loss_denominators(cfg, obs, t(data.actions), boundary=t(data.boundary), weight=t(data.weight),
                             type_weights=type_weights, energy_col=energy_col, lw=lw)


def drop_features(beats: torch.Tensor, mean: torch.Tensor, p: float) -> torch.Tensor:
    """beats [B, W, C] with each of the first len(mean) columns replaced, per sample and
    with probability p, by its mean (0 after normalisation); torch's RNG (resumable)."""
    nf = mean.shape[0]
    drop = torch.rand(beats.shape[0], 1, nf, device=beats.device) < p
    out = beats.clone()
    out[..., :nf] = torch.where(drop, mean.to(beats.dtype), beats[..., :nf])
    return out


# Edit-history columns that history dropout blanks (is_head / rel_pos say where a row
# is, not what was decided: kept).
HISTORY_DROP_COLS = tuple(channel_index(c) for c in HISTORY_CHANNELS if c not in ("is_head", "rel_pos"))


def drop_history(beats: torch.Tensor, p: float, *, head_row: int = HEAD_INDEX) -> torch.Tensor:
    """beats [B, W, C] with, per sample and with probability p, the edit-history columns
    (``HISTORY_DROP_COLS``) of rows [0, head_row) - the beats behind the read head - set
    to 0 (raw units: history channels are not normalised); torch's RNG (resumable)."""
    drop = torch.rand(beats.shape[0], device=beats.device) < p  # (B,)
    out = beats.clone()
    cols = torch.as_tensor(HISTORY_DROP_COLS, device=beats.device)
    behind = out[:, :head_row, :].index_select(-1, cols)  # (B, head_row, n_cols)
    behind = torch.where(drop[:, None, None], torch.zeros_like(behind), behind)
    out[:, :head_row, cols] = behind
    return out


@torch.no_grad()
def evaluate(model: Policy, data: BCData, idx: np.ndarray, *, type_weights=None, lw=LossWeights(), batch_size: int = 512) -> dict:
    """Validation losses and metrics over rows idx of data."""
    model.eval()
    device = model.device
    energy_col = energy_column(model.cfg)
    sums: dict[str, float] = {}
    preds = {k: [] for k in ("action", "type", "size", "amount")}
    n = 0
    for i in range(0, len(idx), batch_size):
        j = idx[i : i + batch_size]
        obs, actions, boundary, weight = batch_tensors(data, j, device)
        _, parts = bc_losses(model, obs, actions, boundary=boundary, weight=weight, type_weights=type_weights, energy_col=energy_col, lw=lw)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(j)
        p = predict(model, obs, actions)
        for k in preds:
            preds[k].append(p[k].cpu().numpy())
        n += len(j)
    out = {f"loss_{k}": v / max(n, 1) for k, v in sums.items()}
    out["nll"] = out.get("loss_type", 0.0) + out.get("loss_size", 0.0) + out.get("loss_amount", 0.0)
    if n == 0:
        return out
    P = {k: np.concatenate(v) for k, v in preds.items()}
    y = data.actions[idx]
    cls = classification_metrics(P["type"], y[:, 0])
    s_choice = data.size_mask[idx, y[:, 0]].sum(-1) > 1
    a_choice = data.amount_mask[idx, y[:, 0]].sum(-1) > 1
    out.update(
        type_acc=cls["accuracy"],
        macro_f1=cls["macro_f1"],
        size_acc=float((P["size"] == y[:, 1])[s_choice].mean()) if s_choice.any() else 1.0,
        amount_acc=float((P["amount"] == y[:, 2])[a_choice].mean()) if a_choice.any() else 1.0,
        action_acc=float((P["action"] == y).all(-1).mean()),
        per_type_recall=cls["per_type_recall"],
        confusion=cls["confusion"],
        pred_types=P["action"][:, 0],
    )
    return out


def confusion_figure(cm: np.ndarray):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from envs.actions import ActionType

    names = [t.name for t in ActionType]
    fig, ax = plt.subplots(figsize=(7, 6))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(N_TYPES), names, rotation=90, fontsize=6)
    ax.set_yticks(range(N_TYPES), names, fontsize=6)
    ax.set_xlabel("predicted type")
    ax.set_ylabel("label type")
    for i, j in zip(*np.nonzero(cm)):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=5)
    fig.tight_layout()
    return fig
