"""Learn from corrections: the current policy continues on old + new labels, the new ones upweighted.

    make adapt RUN=default                                   # after make align saw the corrections
    python -m pretrain.adapt --run default --pairs jam3 jam7  # name the corrected pairs
    python -m pretrain.adapt --run default --new-weight 8 --epochs 30

A musician teaches fastest by fixing the tool's edit (the review page's
``training_data/edited/NAME.plan.json``, a Reaper project, or new audio; ``make align``
labels them). Training again from scratch would see three corrections among all the
pairs, as much as any other song, and would take as long as ``make pretrain``; fine-
tuning on the corrections alone would forget the rest of the style. So, from the
current weights (the normaliser kept, so old songs' observations mean what they meant):

1. the current checkpoint: ``--checkpoint``, else the run's newest of adapt_last.pt,
   ppo_last.pt, bc_best.pt; the pretraining settings (stems, action refinement, planner
   kind, feature dropout) from the run's bc_best.pt / bc_last.pt;
2. the run's labels (``runs/RUN/labels``) and which pairs are new or changed: ``--pairs``,
   else those whose label (actions + plan) differs from the digests an adapt checkpoint
   stores, else (a checkpoint from make pretrain / finetune) the labels written after it;
3. the whole-song planner taught by the corrections: the rank planner (the default) keeps
   its weights and adds a residual ranker fitted on the new songs alone over its scores
   (``RankPlanner.corrected``: what it already orders right gives no gradient, so only
   what the corrections change moves); other kinds are refitted with copies of the new
   songs. The style's keep ratio: the median over the pairs, each new one counted as
   many times as its weight (below); the training data's out-of-fold priors as
   pretraining computes them;
4. every pair replayed (pretrain/dataset.py); a new pair's samples weigh that many
   times their label confidence;
5. ``epochs`` epochs of the behaviour-cloning loss (pretrain/losses.py) over all samples
   from the current weights, AdamW at ``lr`` (a quarter of pretraining's);
6. writes runs/RUN/checkpoints/adapt_last.pt (atomic, written once at the end, so a killed
   run leaves the previous checkpoints as they were and starting it again redoes it) with
   the label digests; being the newest checkpoint, ``make infer`` takes it. Prints the
   action accuracy on the new and the old pairs before and after.

Measured (bench/adapt.py, real recordings): README "Correct an edit".
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from agent.checkpoint import load_checkpoint, policy_from_checkpoint, save_checkpoint
from agent.device import pick_device
from agent.planner import Planner, PlannerConfig, attach_priors, bar_targets, fit_planner
from agent.planner_rank import RankPlanner
from agent.run_config import RunConfig, seed_everything
from alignment.grid_model import load_grid_model
from alignment.label_index import label_file, labels_dir, read_index
from datasets.errors import EditorError, ParameterError
from envs.reward import target_keep_from
from pretrain.dataset import BCData, LabeledPair, build_bc_data, load_labels
from pretrain.losses import LossWeights, bc_losses, type_class_weights
from pretrain.bc import drop_features, energy_column, evaluate, policy_layout
from pretrain.train import PretrainConfig

__all__ = ["AdaptConfig", "adapt", "label_digest", "new_pairs", "current_checkpoint", "main"]

log = logging.getLogger(__name__)

#: Checkpoints a run may hold, newest stage first: where adapting starts by default.
_CURRENT = ("adapt_last.pt", "ppo_last.pt", "bc_best.pt")
ADAPT_FILE = "adapt_last.pt"


@dataclass(frozen=True)
class AdaptConfig(RunConfig):
    """``python -m pretrain.adapt`` (make adapt); the shared fields (run, runs_dir, seed,
    device, threads) are ``RunConfig``'s."""

    checkpoint: str = ""
    """checkpoint to start from (default: the run's newest of adapt_last.pt, ppo_last.pt, bc_best.pt)"""
    pairs: tuple[str, ...] = ()
    """names of the new or corrected pairs (default: found from the labels, module docstring step 2)"""
    new_share: float = 0.75
    """the share of all the pairs' weight the new pairs carry together (samples, planner, keep
    ratio): a new pair counts ``new_share / (1 - new_share) x old pairs / new pairs`` times an
    old one (3 corrections among 14 old pairs: 14 times), so corrections outweigh the old
    pairs they contradict however many old pairs there are, while the old pairs still anchor
    what the corrections do not touch (bench/adapt.py measures shares)"""
    new_weight: float = 0.0
    """a new pair's weight instead (1 = no upweighting); 0 = from ``new_share``"""
    epochs: int = 20
    """passes over all samples (old and new): ~1 s each for 20 songs on one core"""
    lr: float = 5e-4
    """a quarter of pretraining's 2e-3: move the weights, not re-learn them"""
    batch_size: int = 64
    weight_decay: float = 1e-4
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if not (self.new_weight >= 1.0 or self.new_weight == 0.0):  # also refuses nan
            raise ParameterError(f"new_weight={self.new_weight} must be >= 1 (1 = no upweighting), or 0 (from new_share)")
        if not 0.0 < self.new_share < 1.0:
            raise ParameterError(f"new_share={self.new_share} must be in (0, 1)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ParameterError(f"epochs={self.epochs} and batch_size={self.batch_size} must be >= 1")
        if not self.lr > 0:
            raise ParameterError(f"lr={self.lr} must be > 0")


def label_digest(record: dict) -> str:
    """What a pair teaches (its actions and plan segments), as a short hash: a relabelled
    pair with the same labels is not "changed"."""
    body = json.dumps({"actions": record.get("actions"), "segments": (record.get("plan") or {}).get("segments")},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def current_checkpoint(run_dir: Path) -> Path:
    """The run's newest stage's checkpoint (``_CURRENT`` order), or one line saying none."""
    for name in _CURRENT:
        p = run_dir / "checkpoints" / name
        if p.is_file():
            return p
    raise ParameterError(f"{run_dir / 'checkpoints'}: no checkpoint to adapt ({', '.join(_CURRENT)}); run make pretrain first")


def new_pairs(run_dir: Path, ckpt_path: Path, ckpt: dict, names: tuple[str, ...] = ()) -> tuple[list[str], dict, str]:
    """(new or changed pair names, {name: label digest} of every pair, how they were found)."""
    index = read_index(run_dir)
    digests = {}
    mtimes = {}
    for name, entry in index.items():
        f = label_file(run_dir, name, entry)
        digests[name] = label_digest(json.loads(f.read_text()))
        mtimes[name] = f.stat().st_mtime
    if names:
        missing = [n for n in names if n not in index]
        if missing:
            raise ParameterError(f"{run_dir / 'labels'}: no labelled pair named {', '.join(missing)} (make align first?)")
        return sorted(names), digests, "named"
    seen = (ckpt.get("extra") or {}).get("label_digests")
    if seen:
        return sorted(n for n, d in digests.items() if seen.get(n) != d), digests, f"labels changed since {ckpt_path.name}"
    t = ckpt_path.stat().st_mtime
    return sorted(n for n, m in mtimes.items() if m > t), digests, f"labels written after {ckpt_path.name}"


def _pretrain_config(run_dir: Path, ckpt: dict) -> PretrainConfig:
    """The settings the policy was pretrained with (the data must be built the same way)."""
    saved = None
    if ckpt.get("stage") == "pretrain":
        saved = ckpt.get("stage_config")
    else:
        saved = (ckpt.get("extra") or {}).get("pretrain_config")
        for name in ("bc_best.pt", "bc_last.pt"):
            p = run_dir / "checkpoints" / name
            if saved is None and p.is_file():
                saved = load_checkpoint(p, expect_layout=None).get("stage_config")
    if not saved:
        log.warning("no pretraining settings found in %s; using make pretrain's defaults", run_dir / "checkpoints")
        return PretrainConfig()
    known = {f.name for f in fields(PretrainConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known}
    return PretrainConfig(**kw)


def _rank_table(pair: LabeledPair, stems: str) -> tuple[np.ndarray, np.ndarray]:
    """(``rank_inputs`` X, bar targets) of a labelled pair, as the planner's fit reads them."""
    from agent.planner_rank import rank_inputs
    from datasets.audio import load_audio
    from datasets.features import extract_features

    feats = extract_features(load_audio(pair.raw_path), grid=pair.plan.grid, stems=stems)
    X, bounds = rank_inputs(feats.values, pair.plan.grid)
    return X, bar_targets(pair.plan, bounds)


def _accuracy(model, data: BCData, rows: np.ndarray, type_weights) -> float:
    if len(rows) == 0:
        return float("nan")
    return float(evaluate(model, data, rows, type_weights=type_weights)["action_acc"])


def adapt(cfg: AdaptConfig) -> dict:
    """Run the module's steps; returns a summary (paths, pairs, accuracies, seconds)."""
    t0 = time.perf_counter()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    run_dir = Path(cfg.runs_dir) / cfg.run
    device = pick_device(cfg.device)

    # 1. the current checkpoint and the settings its data was built with
    ckpt_path = Path(cfg.checkpoint) if cfg.checkpoint else current_checkpoint(run_dir)
    ckpt = load_checkpoint(ckpt_path)
    pcfg = _pretrain_config(run_dir, ckpt)

    # 2. every labelled pair, and the new / changed ones
    new, digests, how = new_pairs(run_dir, ckpt_path, ckpt, tuple(cfg.pairs))
    if not new:
        raise ParameterError(f"{run_dir / 'labels'}: no new or changed pair since {ckpt_path} ({how}); "
                             "add corrections and run make align, or name pairs with --pairs")
    pairs = load_labels(run_dir)
    new_set = set(new) & {p.name for p in pairs}
    if not new_set:
        raise ParameterError(f"{run_dir / 'labels'}: the new pairs {', '.join(new)} have no usable labels")
    n_old = len(pairs) - len(new_set)
    weight = cfg.new_weight or max(1.0, cfg.new_share / (1.0 - cfg.new_share) * n_old / len(new_set))
    copies = max(1, int(round(weight)))
    log.info("adapting %s on %d pair(s) (%s: %s) among %d, weight %.1f", ckpt_path, len(new_set), how,
             ", ".join(sorted(new_set)), len(pairs), weight)

    # 3. the planner taught by the corrections, and the style's keep ratio (new pairs weighted)
    weighted: list[LabeledPair] = list(pairs) + [p for p in pairs if p.name in new_set for _ in range(copies - 1)]
    planner_state = None
    if pcfg.planner:
        pairs, planner = attach_priors(pairs, stems=pcfg.stems, cfg=PlannerConfig(kind=pcfg.planner_kind))
        current = Planner.from_state((ckpt.get("extra") or {}).get("planner"))
        if isinstance(current, RankPlanner):  # what the corrections change, over the current ranking
            planner = current.corrected([_rank_table(p, pcfg.stems) for p in pairs if p.name not in new_set],
                                        [_rank_table(p, pcfg.stems) for p in pairs if p.name in new_set])
        elif planner is not None:  # other kinds: refitted with copies of the new songs
            planner = fit_planner(weighted, stems=pcfg.stems, cfg=PlannerConfig(kind=pcfg.planner_kind))
        planner_state = None if planner is None else planner.to_state()
    target_keep = target_keep_from([p.plan.keep_ratio for p in weighted])

    # 4. the samples, new pairs upweighted
    data = build_bc_data(pairs, stems=pcfg.stems, target_keep=target_keep,
                         refine_max_size=None if pcfg.refine_max_size < 0 else pcfg.refine_max_size)
    new_keys = {p.raw_sha256 or p.name for p in pairs if p.name in new_set}
    is_new = np.isin(np.asarray(data.song_keys, dtype=object)[data.song], list(new_keys))
    data = replace(data, weight=np.where(is_new, data.weight * weight, data.weight).astype(np.float32))
    rows_new, rows_old = np.flatnonzero(is_new), np.flatnonzero(~is_new)

    # 5. behaviour cloning from the current weights
    model = policy_from_checkpoint(ckpt, device=device)
    layout = policy_layout(model.cfg)
    type_weights = type_class_weights(data.actions[:, 0], power=pcfg.type_weight_power).to(device)
    lw = LossWeights(size=pcfg.size_loss, amount=pcfg.amount_loss, energy=pcfg.energy_loss, boundary=pcfg.boundary_loss)
    energy_col = energy_column(model.cfg)
    before = {"new": _accuracy(model, data, rows_new, type_weights), "old": _accuracy(model, data, rows_old, type_weights)}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = int(ckpt.get("step") or 0)
    all_rows = np.arange(len(data))
    for epoch in range(cfg.epochs):
        model.train()
        order = all_rows[np.random.default_rng([cfg.seed, epoch]).permutation(len(all_rows))]
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            j = order[i : i + cfg.batch_size]
            obs = data.obs(j, device=device)
            if pcfg.feature_dropout > 0:
                obs["beats"] = drop_features(obs["beats"], model.normalizer.mean, pcfg.feature_dropout)
            loss, _ = bc_losses(
                model, obs, torch.as_tensor(data.actions[j], device=device),
                boundary=torch.as_tensor(data.boundary[j], device=device),
                weight=torch.as_tensor(data.weight[j], device=device),
                type_weights=type_weights, energy_col=energy_col, lw=lw,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += len(j)
            total += float(loss.detach()) * len(j)
        log.info("adapt epoch %2d  loss %.3f", epoch, total / len(order))
    after = {"new": _accuracy(model, data, rows_new, type_weights), "old": _accuracy(model, data, rows_old, type_weights)}

    # 6. the adapted checkpoint: what inference needs, as pretraining stores it
    extra = dict(ckpt.get("extra") or {})
    for k in ("torch_rng", "rng", "dagger", "labels_key"):  # a resume state of another stage
        extra.pop(k, None)
    extra.update(
        target_keep=target_keep, planner=planner_state, editor_grid=load_grid_model(labels_dir(run_dir)).to_dict(),
        label_digests=digests, adapted_from=str(ckpt_path), adapted_pairs=sorted(new_set),
        pretrain_config=asdict(pcfg), adapt_accuracy={"before": before, "after": after},
    )
    out = save_checkpoint(run_dir / "checkpoints" / ADAPT_FILE, model=model, optimizer=opt, step=step, stage="adapt",
                          stage_config=cfg, layout=layout, extra=extra)
    return {"checkpoint": str(out), "from": str(ckpt_path), "new_pairs": sorted(new_set), "found": how,
            "n_pairs": len(pairs), "samples_new": int(len(rows_new)), "samples_old": int(len(rows_old)),
            "target_keep": target_keep, "weight": weight, "before": before, "after": after,
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    import tyro

    cfg = tyro.cli(AdaptConfig, args=argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        s = adapt(cfg)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"adapt: {len(s['new_pairs'])} new or changed pair(s) ({s['found']}): {', '.join(s['new_pairs'])}, "
          f"each weighing {s['weight']:.1f} old ones; {s['n_pairs']} pairs in all, from {s['from']}")
    print(f"action accuracy on the new pairs {s['before']['new']:.3f} -> {s['after']['new']:.3f}, "
          f"on the old {s['before']['old']:.3f} -> {s['after']['old']:.3f}; {s['seconds']:.0f} s; wrote {s['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
