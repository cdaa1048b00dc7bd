"""Behaviour-cloning losses and metrics of the 3-head policy (shared by train and bench).

Type: weighted cross-entropy (class weights ~ count^-power from the training split, so
rare types such as LOOP or FADE_OUT are not drowned by KEEP/CUT). Size and amount:
cross-entropy of the label given the label's type, counted only where that type
leaves more than one choice (otherwise the head has nothing to learn there).
Auxiliary: MSE on the normalised energy of the beats after the head, and BCE on the
editor's section boundaries over the real window beats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from agent.model import N_TYPES, Policy

__all__ = ["LossWeights", "type_class_weights", "bc_losses", "loss_denominators", "predict", "classification_metrics"]


@dataclass(frozen=True)
class LossWeights:
    size: float = 1.0
    amount: float = 1.0
    energy: float = 0.1
    boundary: float = 0.1


def type_class_weights(types: np.ndarray, *, power: float = 0.5) -> Tensor:
    """[18] weights ~ (count + 1)^-power, mean 1 over the types present."""
    counts = np.bincount(np.asarray(types, dtype=np.int64), minlength=N_TYPES).astype(np.float64)
    w = (counts + 1.0) ** -power
    present = counts > 0
    w = w / w[present].mean() if present.any() else np.ones(N_TYPES)
    return torch.as_tensor(w, dtype=torch.float32)


def _sample_weights(cfg, obs: dict[str, Tensor], actions: Tensor, *, weight: Tensor | None, type_weights: Tensor | None,
                    energy_col: int | None, boundary: Tensor | None, lw: LossWeights) -> dict[str, Tensor]:
    """What each loss term weighs its per-sample (or per-beat) losses by; the term is the
    weighted sum over this divided by the weights' sum. Only the data decides them."""
    B = actions.shape[0]
    b = torch.arange(B, device=actions.device)
    t = actions[:, 0]
    w = torch.ones(B, device=actions.device) if weight is None else weight
    out = {
        "type": w * (type_weights.to(w.device)[t] if type_weights is not None else 1.0),
        "size": (obs["size_mask"][b, t].sum(-1) > 1).float() * w,  # only where the type leaves a choice
        "amount": (obs["amount_mask"][b, t].sum(-1) > 1).float() * w,
    }
    mask = obs["beat_mask"]
    if energy_col is not None and lw.energy > 0:
        h = cfg.head_index
        out["energy"] = mask[:, h + 1 : h + 1 + cfg.n_energy].float()  # (B, <=n_energy) real beats after the head
    if boundary is not None and lw.boundary > 0:
        out["boundary"] = mask[:, cfg.rows].float()  # the window rows the encoder reads
    return out


def loss_denominators(cfg, obs: dict[str, Tensor], actions: Tensor, *, boundary: Tensor | None = None, weight: Tensor | None = None,
                      type_weights: Tensor | None = None, energy_col: int | None = None, lw: LossWeights = LossWeights()) -> dict[str, Tensor]:
    """{term: sum of its weights} of one minibatch (``bc_losses``' arguments, ``cfg`` the
    policy's PolicyConfig). Data-parallel training sums these over the ranks' shards and
    passes the totals to ``bc_losses(denominators=)``, so each shard's loss is its part of
    the whole batch's loss and the ranks' gradients add up to the single process's."""
    sw = _sample_weights(cfg, obs, actions, weight=weight, type_weights=type_weights, energy_col=energy_col, boundary=boundary, lw=lw)
    return {k: v.sum() for k, v in sw.items()}


def bc_losses(
    model: Policy,
    obs: dict[str, Tensor],
    actions: Tensor,
    *,
    boundary: Tensor | None = None,
    weight: Tensor | None = None,
    type_weights: Tensor | None = None,
    energy_col: int | None = None,
    lw: LossWeights = LossWeights(),
    denominators: dict[str, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """(total loss, {name: scalar}) for one minibatch. actions [B, 3] long.
    denominators : each term's weight sum over a larger batch this one is a shard of
        (``loss_denominators`` summed over the shards); None: this batch's own."""
    out = model(obs)
    lt, ls, la = model.log_probs(out, obs)
    cfg = model.cfg
    sw = _sample_weights(cfg, obs, actions, weight=weight, type_weights=type_weights, energy_col=energy_col, boundary=boundary, lw=lw)
    den = denominators if denominators is not None else {k: v.sum() for k, v in sw.items()}
    B = actions.shape[0]
    b = torch.arange(B, device=actions.device)
    t, s, a = actions[:, 0], actions[:, 1], actions[:, 2]
    tw = sw["type"]
    nll_t = -lt[b, t]
    loss_t = (tw * nll_t).sum() / den["type"].clamp_min(1e-8)
    ls_t, la_t = ls[b, t], la[b, t]  # (B, 5) conditionals of the label type
    loss_s = -(sw["size"] * ls_t[b, s]).sum() / den["size"].clamp_min(1.0)
    loss_a = -(sw["amount"] * la_t[b, a]).sum() / den["amount"].clamp_min(1.0)
    total = loss_t + lw.size * loss_s + lw.amount * loss_a
    parts = {"type": loss_t.detach(), "size": loss_s.detach(), "amount": loss_a.detach()}
    if "energy" in sw:
        h = cfg.head_index
        n = cfg.n_energy
        rows = obs["beats"][:, h + 1 : h + 1 + n, energy_col]  # (B, <=n) raw rms_db
        m = sw["energy"]
        target = (rows - model.normalizer.mean[energy_col]) / model.normalizer.std[energy_col]
        pred = out.energy[:, : rows.shape[1]]
        loss_e = ((pred - target) ** 2 * m).sum() / den["energy"].clamp_min(1.0)
        total = total + lw.energy * loss_e
        parts["energy"] = loss_e.detach()
    if "boundary" in sw:
        rows = cfg.rows  # the encoder reads these window rows
        m = sw["boundary"]
        bce = F.binary_cross_entropy_with_logits(out.boundary_logits, boundary[:, rows].float(), reduction="none")
        loss_b = (bce * m).sum() / den["boundary"].clamp_min(1.0)
        total = total + lw.boundary * loss_b
        parts["boundary"] = loss_b.detach()
    parts["total"] = total.detach()
    return total, parts


@torch.no_grad()
def predict(model: Policy, obs: dict[str, Tensor], actions: Tensor | None = None) -> dict[str, Tensor]:
    """Greedy predictions: "action" = joint mode [B, 3]; "type" = argmax type; "size",
    "amount" = argmax given the LABEL type (teacher-forced head accuracy) when actions
    are given, else given the predicted type."""
    out = model(obs)
    lt, ls, la = model.log_probs(out, obs)
    b = torch.arange(lt.shape[0], device=lt.device)
    best_s, arg_s = ls.max(-1)
    best_a, arg_a = la.max(-1)
    t_joint = (lt + best_s + best_a).argmax(-1)
    joint = torch.stack([t_joint, arg_s[b, t_joint], arg_a[b, t_joint]], -1)
    t_cond = actions[:, 0] if actions is not None else t_joint
    return {"action": joint, "type": lt.argmax(-1), "size": arg_s[b, t_cond], "amount": arg_a[b, t_cond]}


def classification_metrics(pred_types: np.ndarray, true_types: np.ndarray, n: int = N_TYPES) -> dict:
    """Accuracy, macro-F1 over the types present in the labels, per-type recall and the
    confusion matrix [true, pred]."""
    pred_types = np.asarray(pred_types, dtype=np.int64)
    true_types = np.asarray(true_types, dtype=np.int64)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (true_types, pred_types), 1)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    present = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + np.nan_to_num(recall) > 0, 2 * precision * np.nan_to_num(recall) / (precision + np.nan_to_num(recall)), 0.0)
    return {
        "accuracy": float(tp.sum() / max(1, len(true_types))),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_type_recall": recall,
        "confusion": cm,
    }
