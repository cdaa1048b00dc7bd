"""Behaviour cloning of the policy on aligned labels, with auxiliary tasks.

    python -m pretrain.train --run demo                  # labels in runs/demo/labels
    python -m pretrain.train --run demo --augment 2      # + 2 augmented copies per pair
    python -m pretrain.train --run demo --restart        # start over (the log says so)
    python -m pretrain.train --run demo --dagger-rounds 0  # behaviour cloning only, no DAgger
    torchrun --nproc_per_node 2 -m pretrain.train -- --run demo  # data-parallel, 2 processes

Under torchrun (the ``--`` keeps torchrun's parser from reading ``--run`` as its own
``--run-path``) each process trains on its shard of every global batch with
DistributedDataParallel, gloo on the CPU and NCCL on CUDA, and rank 0 alone logs, writes
TensorBoard and checkpoints and collects the DAgger rounds (pretrain/distributed.py).
Without torchrun's variables nothing of this runs: a plain run is what it was, bit for bit.

Reads runs/RUN/labels (``make align``), replays every pair's oracle actions in the
environment (pretrain/dataset.py), splits BY SONG into train/validation, and trains
the three heads (weighted cross-entropy) plus the auxiliary heads. Writes
runs/RUN/checkpoints/bc_last.pt (every epoch) and bc_best.pt (the epoch ``select`` picks:
by default the last one, see PretrainConfig.select),
both atomic and loadable with ``weights_only=True``, and TensorBoard logs under
runs/RUN/tb/pretrain_seedS/.

Resume: a run started again finds its own bc_last.pt and continues it; ``--restart``
starts over (and says so). A killed run started again with the same arguments
continues bit for bit as if it had never stopped (on the CPU; tests/faults): the
checkpoint holds weights, optimizer, the torch / numpy / python RNG states and the
early-stopping counters, the shuffling of epoch e depends only on (seed, e), and each
DAgger round's data is rebuilt from the policy that collected it (stored in the
checkpoint; the rollouts are deterministic). A checkpoint trained with other settings
or other labels is never continued: the run stops with an error naming ``--restart``.
Not exact: on CUDA, kernels without a deterministic backward (natten's, scatter-adds)
make even two uninterrupted runs differ in the last bits (the resume log says so).
TensorBoard hides what the killed session logged after its last checkpoint.
Under torchrun the checkpoint holds nothing of the world size (the weights and optimizer
state every rank shares, and rank 0's RNG states), so a run of any world size, one
process included, continues it. Exact: a DDP run continued with the same world
size on the CPU (each rank reseeds torch at every epoch from (seed, epoch, rank), the
batch order depends on (seed, epoch) alone); and a single process continuing a DDP
checkpoint continues from its stored RNG state deterministically. Within noise: another
world size (other dropout masks; the same gradient summed in another order).

Then ``dagger_rounds`` DAgger rounds (``train_dagger``, below; the expert is
pretrain/dagger.py): the policy is rolled out on the labelled songs (with random
KEEP <-> CUT flips), the states it reaches are labelled by an expert that continues
toward the editor's plan from any state, and training continues on the aggregate.
"""

from __future__ import annotations

import functools
import logging
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from alignment.grid_model import load_grid_model
from alignment.label_index import index_path, keep_ratios, labels_dir
from agent.checkpoint import load_checkpoint, policy_from_checkpoint, save_checkpoint, to_plain
from agent.device import pick_device
from agent.model import N_TYPES, Policy, PolicyConfig
from agent.planner import PlannerConfig, attach_priors, fit_planner
from agent.run_config import RunConfig, seed_everything
from datasets.errors import EditorError, ParameterError
from envs.observation import HEAD_INDEX, WINDOW
from envs.reward import target_keep_from
from pretrain.bc import (batch_denominators, batch_tensors, confusion_figure, data_key, drop_features,
                         drop_history, energy_column, evaluate, policy_layout, rng_state, set_rng_state)
from pretrain.dagger import collect_dagger
from pretrain.dataset import BCData, build_bc_data, load_labels, split_by_song
from pretrain.distributed import (DDP, Dist, check_same, current, epoch_seed, fingerprint, init_from_env, raise_any, shard, share,
                                  shutdown, total_across)
from pretrain.evaluate import policy_fn
from pretrain.losses import LossWeights, bc_losses, type_class_weights

__all__ = ["PretrainConfig", "build_run_data", "evaluate", "main", "run", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig(RunConfig):
    """``python -m pretrain.train`` (make pretrain): behaviour cloning + DAgger on a run's labels;
    the shared fields (run, runs_dir, seed, device, threads) are ``RunConfig``'s."""

    hidden: int = 32
    """policy width (PolicyConfig.hidden); divisible by n_heads"""
    n_layers: int = 2
    n_heads: int = 4
    kernel_size: int = 7
    """neighbourhood size in beats (odd)"""
    dilations: tuple[int, ...] = (1, 2)
    """dilation of each attention layer (cycled)"""
    dropout: float = 0.0
    """dropout in the attention and MLP blocks"""
    augment: int = 0
    """augmented copies of each pair (pitch, noise, gain, EQ tilt; pretrain/augment.py)"""
    refine_max_size: int = 1
    """split the oracle's KEEP/CUT/effect chunks above this size (1 = BAR, 2 = TWO_BARS,
    3 = PHRASE) into one decision per unit (pretrain/dataset.py refine_actions); -1 = as
    labelled. One decision per bar: sections often start a bar or two off the grid's
    phrase lines, and per-bar decisions put a decision at every point a section can start
    (demo corpus, 4-fold CV, plan IoU for refine 3 / 2 / 1: tight 0.55 / 0.62 / 0.67,
    radio 0.66 / 0.71 / ~0.72; /work/notes/bc-quality.md)"""
    stems: str = "auto"
    """stem features: auto / demucs / dsp (datasets.features)"""
    planner: bool = True
    """show the policy the whole-song planner's plan of each song (agent/planner.py): out
    of fold for training songs, the planner fitted on all of them (saved in the
    checkpoint) at fine-tuning and inference"""
    planner_kind: str = "rank"
    """the planner's design (agent/planner.py ``KINDS``): "rank", a sparse within-song
    phrase ranker (the default, best on real music); "mlp", pointwise on whole-song bar
    features; "attention", a listwise transformer over the song's bars
    (bench/planner_cv.py and bench/style.py --planner-kind compare them)"""
    plan_gain: float = 2.0
    """initial weight of the budgeted plan's keep/cut vote in the policy's type logits
    (PolicyConfig.plan_gain_init; learned from there)"""
    val_fraction: float = 0.2
    """fraction of songs held out for validation (split by song)"""
    epochs: int = 150
    batch_size: int = 64
    accum_steps: int = 1
    """gradient accumulation: minibatches per optimizer step"""
    lr: float = 2e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    type_weight_power: float = 0.5
    """type-loss class weights ~ count^-power (0 = unweighted, 1 = fully balanced)"""
    size_loss: float = 1.0
    amount_loss: float = 1.0
    energy_loss: float = 0.1
    """weight of the auxiliary upcoming-energy loss"""
    boundary_loss: float = 0.1
    """weight of the auxiliary section-boundary loss"""
    feature_dropout: float = 0.5
    """training only: probability that a raw feature column (the same column on every beat
    of a sample's window) is replaced by its training mean, so the policy cannot lean on
    a few incidental features of a small corpus"""
    history_dropout: float = 0.0
    """training only: probability, per sample, that the edit-history channels
    (``envs.observation.HISTORY_CHANNELS`` except ``is_head`` / ``rel_pos``) of the window
    rows BEHIND the read head are set to 0 - the value of a beat nothing has happened to
    yet (every row ahead of the head, and padding, holds it), i.e. "history unknown" -
    so the policy cannot copy "the previous bar was cut, so cut" from its own past
    decisions (copycat / causal confusion: one closed-loop mistake then compounds).
    The head row and the globals (keep ratio so far, ...) are left as they are.
    Measured (bench/pretrain.py, demo24, 4-fold CV, BC + 3 flip-DAgger rounds, plan IoU;
    /work/notes/history-dropout.md): 0 / 0.5 / 1.0: tight 0.677 / 0.637 / 0.625, radio
    0.754 / 0.701 / - (lower mean on both, no fold better by more than 0.02), so it is
    off by default."""
    patience: int = 12
    """early stopping: epochs without a better validation score (see ``select``)"""
    select: str = "last"
    """which epoch becomes bc_best.pt (and drives early stopping): "last" (every epoch:
    fixed-length training, no early stopping), "nll" (lowest validation type+size+amount
    NLL) or "action_acc" (highest validation exact-action accuracy, ties to the lower
    NLL). Measured on the demo corpus (bench/pretrain.py, 4-fold CV, /work/notes/bc-quality.md):
    the NLL minimum comes after ~25 epochs, when the policy still fits only ~60 % of its
    training decisions (mostly KEEP); 150 epochs with feature dropout generalise better
    (held-out type accuracy 0.60 -> 0.76 on `tight`), and the 3-song validation split is
    too small for accuracy-based selection to help."""
    dagger_rounds: int = 3
    """DAgger rounds after behaviour cloning (pretrain/dagger.py): roll the policy out on
    the training songs, label the states it reaches with the expert (what the editor's
    plan says to do from there), add them to the data and train ``dagger_epochs`` more
    epochs. 0 = plain behaviour cloning. Measured (bench/pretrain.py, 24 demo songs,
    4-fold CV, plan IoU; /work/notes/dagger.md): BC / + 3 rounds with flips 0.1 x 2
    rollouts: tight 0.660 / 0.677, radio 0.692 / 0.754; greedy rollouts without flips
    did not help (tight 0.607, radio 0.703 after 3 rounds). Training time ~3x BC's."""
    dagger_epochs: int = 30
    """epochs per DAgger round (the run continues from bc_last.pt)"""
    dagger_flip: float = 0.1
    """DAgger rollouts: probability that a step takes the opposite unit decision
    (KEEP <-> CUT) instead of the policy's (noise injection; pretrain/dagger.py): a
    policy that memorised its training songs rarely leaves their label trajectories
    by itself"""
    dagger_rollouts: int = 2
    """DAgger rollouts per training song and round"""
    max_minutes: float = 0.0
    """stop after this much training time (0 = no limit)"""
    restart: bool = False
    """start over even when runs/RUN/checkpoints/bc_last.pt exists (it is replaced at the
    first epoch's end; the log says so). Without it a run continues its own last
    checkpoint, and refuses one trained with other settings or labels"""
    figure_every: int = 10
    """epochs between confusion-matrix images and action histograms in TensorBoard"""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.accum_steps < 1 or self.epochs < 0:
            raise ParameterError(f"batch_size={self.batch_size}, accum_steps={self.accum_steps}, epochs={self.epochs} must be positive")
        if self.augment < 0:
            raise ParameterError(f"augment={self.augment} must be >= 0")
        if self.select not in ("last", "nll", "action_acc"):
            raise ParameterError(f"select={self.select!r}: choose last, nll or action_acc")
        if not 0.0 <= self.feature_dropout < 1.0:
            raise ParameterError(f"feature_dropout={self.feature_dropout} must be in [0, 1)")
        if not 0.0 <= self.history_dropout <= 1.0:
            raise ParameterError(f"history_dropout={self.history_dropout} must be in [0, 1]")


# Fields that may change between a run and its resumption without changing the run.
# The DAgger fields too: the behaviour-cloning epochs do not depend on them (and runs
# trained before they existed still resume).
_RESUMABLE_CHANGES = {"epochs", "restart", "max_minutes", "device", "threads", "patience", "figure_every",
                      "dagger_rounds", "dagger_epochs", "dagger_flip", "dagger_rollouts"}


# Fields added after runs were trained: a checkpoint without the field was trained with
# this value (so runs/demo, trained before history_dropout existed, still resumes).
_ADDED_FIELDS = {"history_dropout": 0.0}


def _run_planner_state(cfg: PretrainConfig, run_dir: Path) -> dict | None:
    """The planner fitted on the run's labelled pairs (None: off, or no labels)."""
    index = index_path(run_dir)
    if not cfg.planner or not index.is_file():
        return None
    return _planner_state_for(str(index.resolve()), index.stat().st_mtime_ns, cfg.stems, cfg.planner_kind)


@functools.lru_cache(maxsize=4)
def _planner_state_for(index: str, mtime_ns: int, stems: str, kind: str = "mlp") -> dict | None:
    """Fitted once per labels version: DAgger calls ``train`` once per round."""
    planner = fit_planner(load_labels(Path(index).parent.parent), stems=stems,
                          cfg=PlannerConfig(kind=kind))  # no out-of-fold fits needed here
    return None if planner is None else planner.to_state()


def build_run_data(cfg: PretrainConfig) -> tuple[BCData, list, float]:
    """(data, pairs, target_keep) of a run: its labels (runs/RUN/labels) replayed in the
    env, x (1 + cfg.augment) versions, with the env's target keep ratio as fine-tuning and
    inference will set it for this run."""
    from pretrain.augment import IDENTITY, random_augmentations

    run_dir = Path(cfg.runs_dir) / cfg.run
    pairs = load_labels(run_dir)
    if cfg.planner:
        pairs, _ = attach_priors(pairs, stems=cfg.stems, cfg=PlannerConfig(kind=cfg.planner_kind))
    augs = [IDENTITY] + random_augmentations(cfg.augment, seed=cfg.seed)
    target_keep = target_keep_from(keep_ratios(run_dir))
    data = build_bc_data(
        pairs, augmentations=augs, stems=cfg.stems, target_keep=target_keep,
        refine_max_size=None if cfg.refine_max_size < 0 else cfg.refine_max_size,
    )
    log.info("replayed %d pairs x %d versions: %d samples", len(pairs), len(augs), len(data))
    return data, pairs, target_keep


def _from_main(d: Dist, fn: Callable[[], object]):
    """fn() run by rank 0 alone, its result on every rank (a user error of rank 0's is
    raised on every rank); a single process just runs fn."""
    if not d.active:
        return fn()
    out = None
    if d.main:
        try:
            out = fn()
        except EditorError as exc:
            out = exc
    return share(out, d)


def _build_run_data_ranked(cfg: PretrainConfig, d: Dist) -> tuple[BCData, list, float]:
    """``build_run_data`` on every rank, each box's local rank 0 first: the box's other
    ranks then read the features it computed from its feature cache instead of
    computing them at once."""
    if not d.active:
        return build_run_data(cfg)
    out, err = None, None
    if d.local_rank == 0:
        try:
            out = build_run_data(cfg)
        except EditorError as exc:
            err = exc
    raise_any(err, d)  # the others wait here; one box's error ends every rank
    return out if d.local_rank == 0 else build_run_data(cfg)


def train(cfg: PretrainConfig, data: BCData | None = None, *, target_keep: float | None = None,
          labels_key: str | None = None, extra_state: dict | None = None) -> dict:
    """Run (or resume) behaviour cloning; returns a summary dict.

    data : the replayed dataset; None builds it from runs/RUN/labels (``build_run_data``).
    target_keep : the env's target keep ratio the data was replayed with, recorded in the
        checkpoints for fine-tuning and inference (set from the run when data is None).
    labels_key : ``data_key`` of the labels the run trains on, checked on resume (default:
        of ``data``; DAgger passes its base data's, as its rounds add samples)
    extra_state : stored in every checkpoint's ``extra`` (DAgger's rounds)
    ``cfg.dagger_rounds`` is not run here: see ``train_dagger``.

    Under torchrun (pretrain/distributed.py) every rank runs this with the same data, on
    its own shard of each global batch; rank 0 alone evaluates and writes.
    """
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    d = current()
    if d.active:
        if device.type == "cuda":
            device = torch.device("cuda", d.local_rank)  # one GPU per rank
        _log_ranks(d, device)
    run_dir = Path(cfg.runs_dir) / cfg.run
    ckpt_dir = run_dir / "checkpoints"
    # where this editor hears bars and phrases (make align fitted it); inference uses it
    editor_grid = load_grid_model(labels_dir(run_dir)).to_dict()
    # the whole-song planner inference will use: fitted on every labelled song (the
    # training data carries out-of-fold plans, build_run_data)
    planner_state = _run_planner_state(cfg, run_dir) if d.main else None  # only rank 0 saves it
    last_path, best_path = ckpt_dir / "bc_last.pt", ckpt_dir / "bc_best.pt"
    t_start = time.perf_counter()

    # 1. data: replay the labels in the env, split by song
    if data is None:
        data, _, target_keep = _build_run_data_ranked(cfg, d)
    labels_key = labels_key or data_key(data)
    # the shards are disjoint only if every rank holds the same samples in the same order
    if d.active:
        check_same("the training data", labels_key + fingerprint(data.beats, data.globals), d)
    # inference must compute stems the way training did (DESIGN.md: stems were zeros in
    # training but real at inference in the predecessor); record the method that ran
    from datasets.stems import resolve_method

    stem_method = resolve_method(cfg.stems)[0]
    train_idx, val_idx = split_by_song(data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if len(train_idx) == 0:
        raise ParameterError("no training samples")
    eval_idx = val_idx if len(val_idx) else train_idx  # one song: early-stop on train

    # 2. model, normaliser (fitted on the training split only), optimiser
    n_ch, n_gl, W = data.beats.shape[2], data.globals.shape[1], data.beats.shape[1]
    lay = None
    try:
        from agent.layout import observation_layout

        lay = observation_layout()
    except ImportError:
        pass
    if lay is not None and (lay["n_channels"], lay["window"]) == (n_ch, W):
        pcfg = PolicyConfig.from_layout(
            hidden=cfg.hidden, n_layers=cfg.n_layers, n_heads=cfg.n_heads, kernel_size=cfg.kernel_size, dilations=tuple(cfg.dilations),
            dropout=cfg.dropout, plan_gain_init=cfg.plan_gain,
        )
    else:  # synthetic data (tests): layout from the arrays, read head as the env puts it
        pcfg = PolicyConfig(
            n_features=min(121, n_ch), n_channels=n_ch, n_globals=n_gl, window=W, head_index=W // 4,
            hidden=cfg.hidden, n_layers=cfg.n_layers, n_heads=cfg.n_heads, kernel_size=cfg.kernel_size,
            dilations=tuple(cfg.dilations), dropout=cfg.dropout,
        )
    layout = policy_layout(pcfg)
    model = Policy(pcfg)
    tr = data.subset(train_idx)
    model.normalizer.fit(tr.beats[..., : pcfg.n_features], tr.beat_mask)
    model.global_normalizer.fit(tr.globals)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    type_weights = type_class_weights(data.actions[train_idx, 0], power=cfg.type_weight_power).to(device)
    lw = LossWeights(size=cfg.size_loss, amount=cfg.amount_loss, energy=cfg.energy_loss, boundary=cfg.boundary_loss)
    energy_col = energy_column(pcfg)

    start_epoch, global_step, best, bad_epochs = 0, 0, float("inf"), 0
    best_nll = float("inf")
    if cfg.restart and last_path.is_file() and d.main:
        log.info("--restart: starting over; %s (%s) is replaced at the end of the first epoch", last_path, _describe(last_path))
    # under torchrun rank 0 reads the checkpoint and the others receive it (a second box
    # need not see rank 0's disk)
    ck = _from_main(d, lambda: _resumable(cfg, last_path, layout, labels_key))
    if ck is not None:
        model = policy_from_checkpoint(ck, device=device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        opt.load_state_dict(ck["optimizer"])
        ex = ck["extra"]
        start_epoch, global_step = int(ex["epoch"]) + 1, int(ck["step"])
        best, bad_epochs = float(ex["best"]), int(ex["bad_epochs"])
        best_nll = float(ex.get("best_nll", best))
        set_rng_state(ex)
        log.info("resumed from %s at epoch %d (step %d)%s", last_path, start_epoch, global_step,
                 "; on CUDA it matches an uninterrupted run only up to nondeterministic kernels" if device.type == "cuda" else "")

    # 3. logging (rank 0 alone under torchrun)
    from torch.utils.tensorboard import SummaryWriter

    # a resumed run hides what a killed session logged after its last checkpoint
    writer = SummaryWriter(str(run_dir / "tb" / f"pretrain_seed{cfg.seed}"), purge_step=global_step + 1 if start_epoch else None) if d.main else None
    if start_epoch == 0 and writer is not None:
        writer.add_text(
            "hyperparameters",
            "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in {**asdict(cfg), **pcfg.to_dict()}.items()),
        )
        log.info(
            "model %d parameters; %d train / %d val samples (%d songs); device %s",
            model.n_parameters(), len(train_idx), len(val_idx), len(data.song_keys), device,
        )
    # under torchrun: the policy as DistributedDataParallel sees it (its construction
    # copies rank 0's weights and buffers to every rank). The value head is in the output
    # but gets no gradient in BC: without find_unused_parameters DDP waits for it and
    # fails (torch then warns, wrongly, that no parameter was unused). The normalisers
    # are fitted before this and never trained: no buffer sync per forward.
    net = model
    if d.active:
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=True, forward_sync_buffers=False)

    # 4. epochs
    stopped = "epochs"
    last_metrics: dict = {}
    epoch = start_epoch - 1
    if bad_epochs >= cfg.patience:  # a finished run started again: nothing left to do
        log.info("%s already stopped early at epoch %d", last_path, start_epoch - 1)
        stopped = "early stopping"
    for epoch in range(start_epoch, cfg.epochs if stopped == "epochs" else start_epoch):
        net.train()
        if d.active:  # each rank its own dropout masks, a function of (seed, epoch, rank) only
            torch.manual_seed(epoch_seed(cfg.seed, epoch, d.rank))
        order = train_idx[np.random.default_rng([cfg.seed, epoch]).permutation(len(train_idx))]
        sums: dict[str, float] = {}
        n_batches = 0
        opt.zero_grad(set_to_none=True)
        for bi, i in enumerate(range(0, len(order), cfg.batch_size)):
            j = order[i : i + cfg.batch_size]  # the global batch
            rows, real = shard(j, d)  # this rank's part of it (all of it in one process)
            obs, actions, boundary, weight = batch_tensors(data, rows, device)
            if cfg.feature_dropout > 0:
                obs["beats"] = drop_features(obs["beats"], model.normalizer.mean, cfg.feature_dropout)
            if cfg.history_dropout > 0:  # after feature dropout: runs without it keep their RNG stream
                head_row = HEAD_INDEX if obs["beats"].shape[1] == WINDOW else pcfg.head_row
                obs["beats"] = drop_history(obs["beats"], cfg.history_dropout, head_row=head_row)
            den = None
            if d.active:  # each term over the global batch's weight sums: the shards' losses add up
                den = batch_denominators(data, j, device, cfg=model.cfg, type_weights=type_weights, energy_col=energy_col, lw=lw)
            loss, parts = bc_losses(net, obs, actions, boundary=boundary, weight=weight, type_weights=type_weights, energy_col=energy_col, lw=lw,
                                    denominators=den)
            if d.active:  # DDP averages the ranks' gradients; a stand-in row counts for nothing
                loss = loss * (d.world if real else 0.0)
                parts = parts if real else {k: v * 0 for k, v in parts.items()}
            (loss / cfg.accum_steps).backward()
            last_in_epoch = i + cfg.batch_size >= len(order)
            if (bi + 1) % cfg.accum_steps == 0 or last_in_epoch:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            global_step += len(j)
            n_batches += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        # under DDP each rank's parts are its shard's share of the batch loss: added up
        train_losses = total_across({k: v / max(n_batches, 1) for k, v in sums.items()}, d)

        stop = None
        if d.main:
            for k, v in train_losses.items():
                writer.add_scalar(f"losses/{k}", v, global_step)
            m = evaluate(model, data, eval_idx, type_weights=type_weights, lw=lw)
            last_metrics = m
            for k in ("nll", "loss_type", "loss_size", "loss_amount", "loss_energy", "loss_boundary"):
                if k in m:
                    writer.add_scalar(f"losses/val_{k.removeprefix('loss_')}", m[k], global_step)
            for k in ("type_acc", "size_acc", "amount_acc", "action_acc", "macro_f1"):
                writer.add_scalar(f"charts/val_{k}", m[k], global_step)
            from envs.actions import ActionType

            for t in ActionType:
                r = m["per_type_recall"][int(t)]
                if np.isfinite(r):
                    writer.add_scalar(f"charts/val_type_acc/{t.name}", r, global_step)
            writer.add_scalar("charts/epoch", epoch, global_step)
            writer.add_scalar("charts/minutes", (time.perf_counter() - t_start) / 60, global_step)

            if cfg.select == "last":
                score = -float(epoch)
            elif cfg.select == "nll":
                score = m["nll"]
            else:
                score = -m["action_acc"] + 1e-4 * min(m["nll"], 100.0)
            improved = score < best - 1e-6
            if improved:
                best, best_nll, bad_epochs = score, m["nll"], 0
            else:
                bad_epochs += 1
            rng = rng_state()
            extra = {**(extra_state or {}), "epoch": epoch, "best": best, "best_nll": best_nll, "bad_epochs": bad_epochs,
                     "torch_rng": rng.pop("torch"), "rng": rng, "labels_key": labels_key,
                     "val_songs": [data.song_keys[s] for s in np.unique(data.song[val_idx])], "metrics": _plain_metrics(m),
                     "target_keep": target_keep, "stem_method": stem_method, "editor_grid": editor_grid,
                     "planner": planner_state}
            common = dict(model=model, optimizer=opt, step=global_step, stage="pretrain", stage_config=cfg, layout=layout, extra=extra)
            if improved:
                save_checkpoint(best_path, **common)
            save_checkpoint(last_path, **common)
            if epoch % cfg.figure_every == 0 or epoch == cfg.epochs - 1:
                writer.add_figure("charts/confusion", confusion_figure(m["confusion"]), global_step)
                writer.add_histogram("charts/pred_types", m["pred_types"], global_step, bins=np.arange(N_TYPES + 1) - 0.5)
                writer.add_histogram("charts/label_types", data.actions[eval_idx, 0], global_step, bins=np.arange(N_TYPES + 1) - 0.5)
            log.info(
                "epoch %3d  loss %.3f  val nll %.3f  type %.3f size %.3f amount %.3f action %.3f F1 %.3f%s",
                epoch, train_losses.get("total", 0), m["nll"], m["type_acc"], m["size_acc"],
                m["amount_acc"], m["action_acc"], m["macro_f1"], "  *" if improved else "",
            )
            if bad_epochs >= cfg.patience:
                stop = "early stopping"
            elif cfg.max_minutes > 0 and (time.perf_counter() - t_start) / 60 >= cfg.max_minutes:
                stop = "time limit"
        if d.active:  # rank 0's decision (its clock, its evaluation), after its checkpoint is written
            stop, best, best_nll, bad_epochs, last_metrics = share((stop, best, best_nll, bad_epochs, _plain_metrics(last_metrics)), d)
        if stop is not None:
            stopped = stop
            break
    if writer is not None:
        writer.close()
    return {
        "stopped": stopped,
        "epoch": epoch,
        "step": global_step,
        "best_val_nll": best_nll,
        "best_score": best,
        "seconds": time.perf_counter() - t_start,
        "n_parameters": model.n_parameters(),
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "metrics": _plain_metrics(last_metrics),
        "best_path": str(best_path),
        "last_path": str(last_path),
    }


def train_dagger(cfg: PretrainConfig, data: BCData, pairs, *, songs: dict | None = None, target_keep: float,
                 on_round: Callable[[int, dict], None] | None = None) -> dict:
    """Behaviour cloning (``train``) then ``cfg.dagger_rounds`` DAgger rounds.

    Round r (1..R): load bc_last.pt, roll it out greedily on every pair (all of ``pairs``:
    pass the training songs only; ``cfg.dagger_rollouts`` times each, a step replaced by
    the opposite unit decision with probability ``cfg.dagger_flip``), relabel the visited
    states with ``pretrain.dagger.expert_action`` (``collect_dagger``), append them to the
    data (aggregated over rounds), and continue the same run (resumed from bc_last.pt:
    weights, optimiser, normaliser) for ``cfg.dagger_epochs`` more epochs. on_round(r, summary) is called after round 0 (plain BC) and every round.
    Returns the last round's summary plus "dagger_samples" (new samples per round);
    "seconds" covers the whole run.

    Resume: the weights each round collected with are stored in every later checkpoint
    (``extra["dagger"]``), so a run killed in round r and started again rebuilds rounds
    1..r's data exactly (the rollouts are deterministic given the weights and the seed)
    instead of collecting it with the later weights it finds in bc_last.pt.
    """
    if cfg.dagger_rounds < 0 or cfg.dagger_epochs < 1:
        raise ParameterError(f"dagger_rounds={cfg.dagger_rounds} must be >= 0 and dagger_epochs={cfg.dagger_epochs} >= 1")
    refine = None if cfg.refine_max_size < 0 else cfg.refine_max_size
    t0 = time.perf_counter()
    labels_key = data_key(data)  # of the labels: the rounds add samples, not labels
    summary = train(cfg, data, target_keep=target_keep, labels_key=labels_key)
    if on_round is not None:
        on_round(0, summary)
    added: list[int] = []
    rounds: list[dict] = []  # per round: the weights it collected with, and its sample count
    d = current()  # under torchrun rank 0 reads the checkpoints and collects; the others receive

    def finished() -> list[int] | None:
        ck = load_checkpoint(summary["last_path"])
        stored = ck["extra"].get("dagger") or []
        if len(stored) == cfg.dagger_rounds and int(ck["extra"]["epoch"]) >= cfg.epochs + cfg.dagger_rounds * cfg.dagger_epochs - 1:
            return [int(s["samples"]) for s in stored]
        return None

    done = _from_main(d, finished)
    if done is not None:
        log.info("DAgger: all %d rounds of %s are done; nothing to do", cfg.dagger_rounds, summary["last_path"])
        return {**summary, "dagger_samples": done, "seconds": time.perf_counter() - t0}
    for r in range(1, cfg.dagger_rounds + 1):

        def collect(r: int = r) -> tuple:
            ck = load_checkpoint(summary["last_path"])
            stored = ck["extra"].get("dagger") or []
            resumed = len(stored) >= r  # this round was started by an earlier, killed session
            weights = stored[r - 1]["weights"] if resumed else ck["model"]
            model = policy_from_checkpoint({**ck, "model": weights}).eval()
            extra = collect_dagger(policy_fn(model), pairs, songs or {}, target_keep=target_keep, refine_max_size=refine,
                                   flip_prob=cfg.dagger_flip, n_rollouts=cfg.dagger_rollouts, seed=cfg.seed * 1000 + r,
                                   stems=cfg.stems)
            n = 0 if extra is None else len(extra)
            if resumed and int(stored[r - 1]["samples"]) != n:
                log.warning("DAgger round %d: rebuilt %d samples where the interrupted session had %d "
                            "(DAgger settings changed); the round continues on the new data", r, n, stored[r - 1]["samples"])
            return extra, weights, resumed

        extra, weights, resumed = _from_main(d, collect)  # the round's samples on every rank
        added.append(0 if extra is None else len(extra))
        rounds.append({"weights": weights, "samples": added[-1]})
        if extra is not None:
            data = BCData.concat([data, extra])
        log.info("DAgger round %d: %d new samples, %d in all%s", r, added[-1], len(data),
                 " (rebuilt from the round's stored policy)" if resumed else "")
        rcfg = replace(cfg, epochs=cfg.epochs + r * cfg.dagger_epochs, restart=False)
        summary = train(rcfg, data, target_keep=target_keep, labels_key=labels_key, extra_state={"dagger": rounds})
        if on_round is not None:
            on_round(r, summary)
    summary["dagger_samples"] = added
    summary["seconds"] = time.perf_counter() - t0  # BC + every round, rollouts included
    return summary


def _resumable(cfg: PretrainConfig, last_path: Path, layout: dict | None, labels_key: str) -> dict | None:
    """The run's own last checkpoint to continue (None: none, or --restart); raises
    ParameterError for one trained with other settings or labels."""
    if cfg.restart or not last_path.is_file():
        return None
    ck = load_checkpoint(last_path, expect_layout=layout)
    saved = ck["stage_config"]
    now = to_plain(cfg)  # as stored (tuples become lists)
    diff = {k for k, v in now.items() if saved.get(k, _ADDED_FIELDS.get(k)) != v and k not in _RESUMABLE_CHANGES}
    if diff:
        raise ParameterError(f"{last_path}: was trained with other settings ({', '.join(sorted(diff))}); --restart starts over")
    if ck["extra"].get("labels_key", labels_key) != labels_key:
        raise ParameterError(f"{last_path}: was trained on other labels (pairs or alignments changed since); --restart starts over")
    return ck


def _log_ranks(d: Dist, device: torch.device) -> None:
    """One line on rank 0 naming every rank's device (each stage says where it runs)."""
    devices = [None] * d.world
    import torch.distributed as tdist

    tdist.all_gather_object(devices, f"{socket.gethostname()}:{device}")
    log.info("distributed: %d ranks (%s), global batch split across them; rank: device = %s",
             d.world, d.backend, ", ".join(f"{r}: {v}" for r, v in enumerate(devices)))


def _describe(path: Path) -> str:
    """ "epoch N" of a pretraining checkpoint, for log lines."""
    try:
        return f"epoch {int(load_checkpoint(path, expect_layout=None)['extra']['epoch'])}"
    except (EditorError, KeyError, TypeError, ValueError):
        return "unreadable"


def _plain_metrics(m: dict) -> dict:
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float, np.floating))}


def run(cfg: PretrainConfig) -> dict:
    """``make pretrain``: behaviour cloning on the run's labels, then ``cfg.dagger_rounds``
    DAgger rounds (``train_dagger``); returns the summary."""
    last = Path(cfg.runs_dir) / cfg.run / "checkpoints" / "bc_last.pt"
    d = current()
    if d.main and last.is_file() and not cfg.restart:
        log.info("continuing %s (%s); --restart starts over", last, _describe(last))
    if cfg.dagger_rounds <= 0:
        return train(cfg)
    data, pairs, target_keep = _build_run_data_ranked(cfg, d)
    return train_dagger(cfg, data, pairs, target_keep=target_keep)


def main(argv: list[str] | None = None) -> int:
    import tyro

    cfg = tyro.cli(PretrainConfig, args=argv)
    try:
        d = init_from_env(cfg.device)  # torchrun's process group; nothing in a plain run
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not d.active:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:  # rank 0 logs; the others say only what goes wrong, and which rank they are
        logging.basicConfig(level=logging.INFO if d.main else logging.WARNING,
                            format=f"%(asctime)s %(levelname)s rank {d.rank}/{d.world} %(name)s: %(message)s")
    try:
        summary = run(cfg)
    except EditorError as exc:
        print(f"error{f' (rank {d.rank})' if d.active else ''}: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    if not d.main:
        return 0
    print(
        f"pretrain: {summary['stopped']} after epoch {summary['epoch']} ({summary['seconds']:.0f} s); "
        f"val NLL at bc_best.pt {summary['best_val_nll']:.3f} (select={cfg.select}); checkpoints {summary['best_path']}, {summary['last_path']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
