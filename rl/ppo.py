"""Monte Carlo PPO: fine-tunes a factored-action policy in a vector of editing envs.

One file, read top to bottom as the run goes (CleanRL's shape, no trainer class, no
callbacks): the config, the songs each epoch draws, the policy and its anchor, the
rollout, returns and advantages, the update, the log line, the checkpoint. ``train`` is a
generator that yields each epoch's statistics after its checkpoint, so a caller's own
per-epoch work (rl/train.py's greedy edit of a held-out song) is a visible loop::

    for row in train(PPOConfig(epochs=50), policy=policy, env_fns=[make_env] * 16, writer=writer,
                     save=SaveTo(Path("runs/demo/checkpoints/ppo_last.pt"))):
        print(row["epoch"], row["episode_reward"])

The steps (the spec's "Training Approach"):

1. **Songs.** Every epoch resets the N envs with seeds derived from ``(seed, epoch)``
   (``epoch_seeds``); the envs draw their songs on reset, and ``song_group`` envs share a
   seed so that every song drawn is edited several times per epoch. Resetting per epoch
   also makes a resumed run continue identically without pickling environments.
2. **Rollout** (rl/rollout.py, behind ``RolloutSource.next_rollout`` of rl/worker.py).
   The envs step until each has recorded at least ``steps`` transitions *and* finished the
   episode it is in: the reward is paid at the episode end only (Monte Carlo), and a
   half-finished episode would have no return at all. With ``overlap`` (CPU) the rollout
   comes from a forked worker that collected it while the learner updated (below); with
   ``rollout_workers`` N >= 2 from N CPU workers (forked, or Ray actors), each with its
   own block of the envs and its own seeds, concatenated in worker order.
3. **Returns.** ``rl.returns.monte_carlo_returns`` per episode, honouring ends (the
   buffer is env-major, so each env's episodes are contiguous and end with ``done``).
   Returns are clipped to ``+-return_clip`` (spec "Known Issues") and, with
   ``return_norm="welford"``, value targets are standardised with running statistics.
4. **Advantages.** ``G - mean(G)`` (the spec's mean baseline), ``G`` minus the mean
   return of the *other* episodes of the same song in the epoch (``baseline="song"``, a
   leave-one-out mean as in RLOO / GRPO: songs differ more in how much reward is
   reachable than actions do, so a batch mean mostly measures which songs were drawn),
   or ``G - V(s)`` (``baseline="value"``); then normalised to mean 0, std 1.
5. **Update.** Clipped surrogate, joint entropy bonus with a coefficient that starts high
   (spec: 0.5-0.75) and decays to a floor, value loss with a small coefficient, an anchor
   to the frozen pretrained policy so fine-tuning keeps the user's style (``anchor="kl"``:
   k3 estimate of KL(pi || pi_ref) on the rollout's actions; ``anchor="bc"``: negative
   log-likelihood of the human plans' actions), gradient accumulation over micro-batches,
   gradient-norm clipping, cosine learning rate, and an early stop when the approximate
   KL to the rollout policy exceeds ``target_kl``.
   With ``overlap`` each rollout is one update behind, and the update is decoupled PPO
   (Hilton et al. 2022): ratio and clip against the policy at the start of the update
   ("proximal", one no-grad forward pass), each sample weighted by pi_prox / pi_behaviour
   truncated at ``lag_weight_clip``. Without overlap the proximal policy is the behaviour
   policy and this is plain PPO.
6. **Log.** One line per epoch (logger ``rl.ppo``) and TensorBoard (rl/log.py); a warning
   when one action type takes over (the spec's type collapse).
7. **Save.** Every ``save_every`` epochs and at the end, through agent/checkpoint.py, the
   one checkpoint format (inference reads a fine-tuned policy like a pretrained one): the
   weights as ``model``, the optimizer as ``optimizer``, and PPO's own state in
   ``extra["ppo"]`` (scheduler, running return statistics, RNG states, the overlapped
   worker's behaviour weights, epoch, global step), so a resumed run continues bit for bit.

The policy is any ``nn.Module`` with agent/model.py's API (an ``agent.model.Policy`` when
checkpoints are saved)::

    act(obs, deterministic=False, generator=None) -> (actions [B,3] long, logp [B], value [B], entropies)
    evaluate(obs, actions) -> (logp [B], entropies, value [B])

where ``obs`` is the env's Dict observation as tensors with a leading batch axis and the
masks (``type_mask`` [18], ``size_mask`` [18,5], ``amount_mask`` [18,5]) are applied by
the policy both when sampling and in the log-probabilities. ``entropies`` is per head
(a [B,3] tensor, a sequence of three [B] tensors or a dict type/size/amount) and must
have finite gradients where choices are masked (agent/model.py's ``_entropy`` does).
Rollouts assert that no masked action was sampled.

Throughput: set ``torch.set_num_threads(1)`` for small batches on a busy CPU (rl/train.py
does); timing per epoch is logged as data sample / rollout / update (with overlap,
"rollout" is the time the learner waited for the worker and the worker's own times are
logged beside it). The CLI with real songs is rl/train.py.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import gymnasium as gym
import numpy as np
import torch
import tyro
from torch import nn

from agent.checkpoint import save_checkpoint
from agent.model import Policy
from agent.run_config import seed_everything
from datasets.errors import ParameterError
from datasets.parallel import resolve_backend
from rl.log import log_epoch
from rl.returns import RunningMeanStd, compute_advantages, explained_variance, monte_carlo_returns
from rl.rollout import HEADS, index_obs, make_vector_env, rollout_logp
from rl.worker import EpochSeeds, RolloutSource

__all__ = [
    "PPOConfig",
    "SaveTo",
    "Demos",
    "epoch_seeds",
    "entropy_coef_at",
    "head_entropies",
    "evaluate_actions",
    "train",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters of Monte Carlo PPO (saved in every checkpoint)."""

    seed: Annotated[int, tyro.conf.Suppress] = 1
    """seed of random, numpy, torch, env resets and action spaces (on the command line: the
    run's ``--seed``, agent.run_config.RunConfig)"""
    epochs: int = 60
    """number of rollout + update iterations. Measured from a DAgger-trained BC policy on
    the demo corpus (bench/finetune.py --pretrain_seed S, three splits, anchor 2): greedy
    reward vs BC +27.6 / +28.3 / -4.1 % at 60 epochs, +31.8 / - / -8.9 % at 100"""
    steps: int = 64
    """transitions recorded per env per epoch (episodes in flight are then finished)"""
    n_envs: int = 16
    """parallel environments. 16 x 64 records as many transitions per epoch as 8 x 128,
    and the policy acts on batches of 16: the rollout costs 0.33 instead of 0.43 ms CPU
    per env step (bench/finetune.py)"""
    lr: float = 6e-4
    """peak learning rate, cosine decay. The spec's 4e-5..5e-5 was for 30,000-epoch runs; over
    tens of epochs on the demo corpus 3e-4 with 4 update passes fine-tuned better than 5e-5
    (greedy reward +50 % at 30 epochs vs -13 % at 25); with 2 passes 6e-4 keeps the same
    learning per env step (bench/finetune.py: greedy +20 % vs +12 % for 3e-4 x 4 passes)"""
    lr_final_ratio: float = 0.1
    """the cosine schedule ends at lr * lr_final_ratio"""
    update_epochs: int = 2
    """passes over each rollout. The update is ~70 % of the time (forward + backward through
    the 64-beat encoder per pass): 2 passes give ~1.5x the env steps per CPU-second of 4
    with the lr doubled and as good a fine-tune on the demo corpus (bench/finetune.py)"""
    minibatch_size: int = 256
    """transitions per optimizer step (the effective batch)"""
    grad_accum: int = 2
    """micro-batches per optimizer step (spec: 2-8); micro-batch = minibatch_size / grad_accum"""
    clip_ratio: float = 0.2
    """PPO surrogate clip (spec: 0.2-0.5)"""
    ent_coef: float = 0.5
    """entropy coefficient at the start (spec: 0.5-0.75, high to explore)"""
    ent_coef_final: float = 0.01
    """entropy coefficient floor reached after ent_decay_frac of the epochs"""
    ent_schedule: Literal["linear", "cosine", "constant"] = "cosine"
    """decay shape of the entropy coefficient"""
    ent_decay_frac: float = 0.5
    """fraction of the epochs over which the entropy coefficient decays to its floor"""
    vf_coef: float = 0.05
    """value-loss coefficient (spec: 0.05-0.1, low so it does not swamp the policy loss)"""
    baseline: Literal["mean", "song", "value"] = "song"
    """advantage baseline: the batch mean return (spec), the mean return of the other
    episodes of the same song in the epoch (falls back to the batch mean for a song
    edited once), or the value head. Held-out greedy reward vs BC, mean / song (30
    epochs, anchor 0.5, bench/finetune.py splits 2 and 3): -20.5 / -0.6 % and -8.7 / -8.6 %"""
    song_group: int = 4
    """envs that share a reset seed and so edit the same songs in the same order each
    epoch (the "song" baseline compares their episodes); 1 = every env its own songs"""
    gamma: float = 1.0
    """discount inside an episode; 1.0 because the reward is paid once at the end"""
    return_clip: float = 1000.0
    """returns are clipped to +-return_clip before they reach the value loss (spec Known Issues)"""
    return_norm: Literal["welford", "clip"] = "welford"
    """value targets: standardised with Welford running stats, or only clipped"""
    target_kl: float | None = 0.05
    """stop the update early when approx KL to the rollout policy exceeds this (spec: 0.01-0.05)"""
    max_grad_norm: float = 0.5
    """gradient-norm clip"""
    anchor: Literal["kl", "bc", "none"] = "kl"
    """anchor to the pretrained policy: KL(pi || pi_ref), BC loss on human plans, or none"""
    anchor_coef: float = 2.0
    """weight of the anchor term. 0.5 let the policy drift from the user's style: held-out
    greedy reward vs BC -0.6 / -8.6 % (splits 2 / 3, 30 epochs) against +6.1 / -10.0 % with
    2.0, and +28.3 / -4.1 % with 2.0 over 60 epochs (bench/finetune.py)"""
    bc_batch_size: int = 128
    """human-plan transitions per micro-batch for anchor='bc'"""
    collapse_frac: float = 0.9
    """warn when one action type exceeds this fraction of the epoch's actions (spec: type collapse)"""
    save_every: int = 10
    """epochs between atomic checkpoints (0 = only the last)"""
    eval_every: int = 10
    """epochs between greedy edits of a held-out song (rl/train.py's loop; 0 = never)"""
    deterministic_torch: bool = False
    """torch.use_deterministic_algorithms (slower; CPU runs are already reproducible)"""
    overlap: bool = True
    """CPU: a forked worker collects the next epoch's rollout while the learner updates
    (rl/worker.py), so the envs and the update each keep a core busy; rollouts are then
    one update behind and the loss is decoupled PPO (``lag_weight_clip``). Off on CUDA
    unless the rollouts come from a RolloutPool (rollout_workers >= 2, or 1 on Ray: the
    workers run on the CPU, the learner on the GPU)"""
    lag_weight_clip: float = 2.0
    """overlap: each sample's weight pi_prox / pi_behaviour is truncated at this (V-trace's rho-bar)"""
    rollout_workers: int = 0
    """>= 2: the rollouts come from so many CPU workers (rl/worker.py's RolloutPool), each
    owning a contiguous block of the n_envs envs, their reset seeds and its own sampling
    seed (from seed, epoch, worker), all feeding this one learner (on CUDA when present),
    concatenated in worker order: deterministic for a given number of workers and seed.
    With ``overlap`` they collect one update ahead (decoupled PPO, on any learner
    device), without it with the current weights. 0 or 1: the single overlapped worker or
    the envs in this process, as before (1 on the ray backend: one Ray actor)"""
    rollout_backend: Literal["auto", "pool", "ray"] = "auto"
    """where rollout_workers >= 1 run: ``pool`` forked local processes (die with the learner),
    ``ray`` Ray actors (RAY_ADDRESS names the cluster; unset or ``local`` starts a local
    instance), ``auto`` ray exactly when RAY_ADDRESS is set (datasets/parallel.py's rule)"""


@dataclass(frozen=True)
class SaveTo:
    """Where ``train`` writes its checkpoints, and what goes in them beside PPO's state.

    The format is agent/checkpoint.py's (the only one), with ``stage="finetune"``.
    """

    path: Path
    """the checkpoint file, replaced atomically at every save"""
    stage_config: Mapping[str, Any] | None = None
    """the run's settings stored as ``stage_config`` (default: the PPOConfig)"""
    layout: Mapping[str, Any] | None = None
    """observation layout (agent.layout.observation_layout()); None: the model's own"""
    style: Mapping[str, Any] = field(default_factory=dict)
    """the user's style settings, stored in ``extra`` beside ``ppo`` (inference reads them)"""
    origin: Mapping[str, Any] = field(default_factory=dict)
    """where the run started (pretrained checkpoint and its sha256): ``extra["ppo"]["extra"]``"""


@dataclass(frozen=True)
class Demos:
    """Human-plan transitions (observation, oracle action) for the BC anchor.

    obs : dict of tensors, each [D, ...]; actions : int64 [D, 3]
    """

    obs: dict[str, torch.Tensor]
    actions: torch.Tensor

    def __len__(self) -> int:
        return int(self.actions.shape[0])


# ---------------------------------------------------------------------------- seeding and songs


def epoch_seeds(cfg: PPOConfig, epoch: int) -> EpochSeeds:
    """The seeds of ``epoch``'s rollout, a function of (seed, epoch) only (resume-exact).

    The envs draw their songs on reset, seeded by (seed, epoch); groups of ``song_group``
    envs share a seed, so they edit the same songs in the same order. The sample seed
    drives the overlapped worker's action sampling."""
    base = (cfg.seed * 1_000_003 + epoch * cfg.n_envs) % 2**31
    envs = [base + i // max(1, cfg.song_group) for i in range(cfg.n_envs)]
    return EpochSeeds(envs=envs, sample=(cfg.seed * 2_000_003 + epoch * 7_919 + 17) % 2**62)


def _rng_state(generator: torch.Generator, sample_gen: torch.Generator) -> dict[str, Any]:
    """Every random stream of the run, as plain tensors and lists (``weights_only`` loads it):
    a resumed run draws what the uninterrupted one would have."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.as_tensor(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
        "sample_generator": sample_gen.get_state(),
    }


def _set_rng_state(state: Mapping[str, Any], generator: torch.Generator, sample_gen: torch.Generator) -> None:
    """Restore ``_rng_state``'s streams."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])
    sample_gen.set_state(state["sample_generator"])


# ---------------------------------------------------------------------------- schedules and policy


def entropy_coef_at(cfg: PPOConfig, epoch: int) -> float:
    """Entropy coefficient at ``epoch``: decays from ent_coef to ent_coef_final."""
    if cfg.ent_schedule == "constant":
        return cfg.ent_coef
    span = max(1.0, cfg.epochs * cfg.ent_decay_frac)
    p = min(1.0, epoch / span)
    if cfg.ent_schedule == "linear":
        return cfg.ent_coef + (cfg.ent_coef_final - cfg.ent_coef) * p
    return cfg.ent_coef_final + (cfg.ent_coef - cfg.ent_coef_final) * 0.5 * (1.0 + math.cos(math.pi * p))


def _cosine_lr_lambda(cfg: PPOConfig) -> Callable[[int], float]:
    def f(epoch: int) -> float:
        p = min(1.0, epoch / max(1, cfg.epochs))
        return cfg.lr_final_ratio + (1.0 - cfg.lr_final_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))

    return f


def head_entropies(ent: Any) -> torch.Tensor:
    """Per-head entropies in any of the policy's forms -> float tensor [B, 3]."""
    if isinstance(ent, Mapping):
        ent = [ent[h] for h in HEADS]
    if isinstance(ent, (list, tuple)):
        ent = torch.stack(list(ent), dim=-1)
    assert ent.ndim == 2 and ent.shape[-1] == 3, f"entropies must be [B, 3], got {tuple(ent.shape)}"
    return ent


def evaluate_actions(policy: nn.Module, obs: Mapping[str, torch.Tensor], actions: torch.Tensor):
    """(logp [B], entropies [B, 3], value [B]) of ``actions`` under ``policy.evaluate``."""
    logp, ent, value = policy.evaluate(obs, actions)
    return logp, head_entropies(ent), value


# ---------------------------------------------------------------------------- training loop


def train(
    cfg: PPOConfig,
    *,
    policy: nn.Module,
    env_fns: Sequence[Callable[[], gym.Env]],
    reference: nn.Module | None = None,
    demos: Demos | None = None,
    writer: Any = None,
    device: torch.device | str = "cpu",
    save: SaveTo | None = None,
    resume: Mapping[str, Any] | None = None,
    subprocess: bool = False,
    stop_after: int = 0,
) -> Iterator[dict[str, float]]:
    """Fine-tune ``policy`` in place with Monte Carlo PPO; yields one stats dict per epoch
    (after that epoch's checkpoint), so ``list(train(...))`` is the run's history.

    env_fns : ``cfg.n_envs`` env factories (closures: the overlapped worker is forked)
    reference : frozen pretrained policy for the KL anchor (default: a copy of ``policy``
        as given, i.e. the pretrained weights)
    demos : human-plan transitions, required for ``anchor="bc"``
    writer : a TensorBoard SummaryWriter (or None)
    save : where checkpoints go (every ``save_every`` epochs and at the end); None = none
    resume : a fine-tuning checkpoint as ``agent.checkpoint.load_checkpoint`` returns it;
        restores weights, reference, optimizer, scheduler, running stats, RNG states, the
        worker's behaviour weights, epoch and global step
    subprocess : one process per env (gymnasium AsyncVectorEnv)
    stop_after : end this session after so many epochs (0 = run to ``cfg.epochs``), with
        a checkpoint, so that a time-boxed run resumes later exactly where it stopped
    """
    if len(env_fns) != cfg.n_envs:
        raise ParameterError(f"n_envs={cfg.n_envs} but {len(env_fns)} env factories were given")
    if cfg.minibatch_size % cfg.grad_accum:
        raise ParameterError(f"minibatch_size={cfg.minibatch_size} is not a multiple of grad_accum={cfg.grad_accum}")
    if cfg.anchor == "bc" and (demos is None or len(demos) == 0):
        raise ParameterError("anchor='bc' needs human-plan demos (none were given)")
    if save is not None and not isinstance(policy, Policy):
        raise ParameterError(f"checkpoints are agent/checkpoint.py's format, which needs an agent.model.Policy, "
                             f"not a {type(policy).__name__}: train without save")
    if not 0 <= cfg.rollout_workers <= cfg.n_envs:
        raise ParameterError(f"rollout_workers={cfg.rollout_workers} must be in [0, n_envs={cfg.n_envs}]: "
                             "each worker owns at least one env")
    if resume is not None and "ppo" not in (resume.get("extra") or {}):
        raise ParameterError("resume: not a fine-tuning checkpoint of agent/checkpoint.py's format (no extra['ppo'])")

    # -- policy, its frozen anchor, optimizer and the seeded state
    device = torch.device(device)
    seed_everything(cfg.seed, deterministic=cfg.deterministic_torch)
    policy.to(device)
    # dropout off everywhere: the ratio must compare the same function at rollout and update
    policy.eval()
    if reference is None and cfg.anchor == "kl":
        reference = copy.deepcopy(policy)
    if reference is not None:
        reference.to(device).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_lr_lambda(cfg))
    rms = RunningMeanStd()
    # permutations / BC indices on the CPU; action sampling on the policy's device
    # (torch.multinomial on CUDA needs a CUDA generator)
    generator = torch.Generator().manual_seed(cfg.seed)
    sample_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    start_epoch, global_step, behaviour = 0, 0, None
    if resume is not None:
        st = resume["extra"]["ppo"]
        policy.load_state_dict(resume["model"])
        if reference is not None and st.get("reference"):
            reference.load_state_dict(st["reference"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        rms.load_state_dict(st["rms"])
        _set_rng_state(st["rng"], generator, sample_gen)
        start_epoch, global_step = int(st["epoch"]), int(st["global_step"])
        behaviour = st.get("behaviour") or None
        log.info(f"ppo: resumed at epoch {start_epoch}, global step {global_step}")

    # -- the rollouts: the envs here, (overlap, CPU) a forked worker one update ahead, or
    # (rollout_workers >= 2) N CPU workers, each with its block of the envs
    # (or one Ray actor: rollout_workers=1 on the ray backend)
    backend = resolve_backend(cfg.rollout_backend) if cfg.rollout_workers >= 1 else "pool"  # Ray only when asked for
    use_pool = cfg.rollout_workers >= 2 or (cfg.rollout_workers == 1 and backend == "ray")
    n_workers = cfg.rollout_workers if use_pool else 1
    use_overlap = cfg.overlap and (device.type == "cpu" or use_pool)
    if cfg.overlap and not use_overlap:
        log.info(f"ppo: overlap off on {device} (the worker would fork a CUDA context); rollouts run in this process")

    def make_envs(indices: Sequence[int] | None = None) -> gym.vector.VectorEnv:
        v = make_vector_env(env_fns if indices is None else [env_fns[i] for i in indices], subprocess=subprocess)
        v.action_space.seed(cfg.seed)
        v.observation_space.seed(cfg.seed)
        return v

    micro = cfg.minibatch_size // cfg.grad_accum
    rollouts = RolloutSource(
        make_envs, policy, reference=reference if cfg.anchor == "kl" else None, steps=cfg.steps, overlap=use_overlap,
        device=device, sample_gen=sample_gen, behaviour=behaviour, first=epoch_seeds(cfg, start_epoch),
        daemon=not subprocess, ref_batch=max(micro, 256), workers=n_workers if use_pool else 0, n_envs=cfg.n_envs,
        backend=backend,
    )
    if use_pool:
        where = (f"{n_workers} rollout workers on CPU ({'Ray actors' if backend == 'ray' else 'local processes'}"
                 f"{', one update ahead' if use_overlap else ''})")
    else:
        where = "an overlapped worker" if use_overlap else "this process"
    log.info(f"ppo: learner on {device}, {cfg.n_envs} envs ({'subprocess' if subprocess else 'sync'}, in {where}), "
             f"{sum(p.numel() for p in policy.parameters()):,} parameters, anchor={cfg.anchor}, baseline={cfg.baseline}")
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0, c0 = time.perf_counter(), time.process_time()
            ent_coef = entropy_coef_at(cfg, epoch)
            lr_now = optimizer.param_groups[0]["lr"]
            is_last = epoch + 1 == cfg.epochs or (stop_after > 0 and epoch + 1 - start_epoch >= stop_after)

            # -- rollout (songs drawn at the envs' reset)
            batch = rollouts.next_rollout(policy, seeds=epoch_seeds(cfg, epoch),
                                          next_seeds=None if is_last else epoch_seeds(cfg, epoch + 1))
            ro = batch.rollout
            global_step += ro.env_steps

            # -- returns and advantages
            t2 = time.perf_counter()
            returns = torch.as_tensor(
                monte_carlo_returns(ro.rewards.numpy(), ro.dones.numpy(), gamma=cfg.gamma), dtype=torch.float32
            )
            returns = returns.clamp(-cfg.return_clip, cfg.return_clip)
            if cfg.return_norm == "welford":
                rms.update(returns.numpy())
                targets = (returns - rms.mean) / rms.std
                values_raw = ro.values * rms.std + rms.mean
            else:
                targets, values_raw = returns, ro.values
            adv = compute_advantages(returns, values_raw, baseline=cfg.baseline,
                                     episode_ids=ro.episode_ids, episodes=ro.episodes)
            obs_d = {k: v.to(device) for k, v in ro.obs.items()}
            actions_d, old_logp = ro.actions.to(device), ro.logp.to(device)
            adv, targets = adv.to(device), targets.to(device)
            ref_logp = batch.ref_logp.to(device) if batch.ref_logp is not None else None
            # decoupled PPO: ratio and clip against the policy as it is now (the proximal
            # policy); samples weighted by pi_prox / pi_behaviour (1 without overlap)
            if batch.lagged:
                prox_logp = rollout_logp(policy, obs_d, actions_d, batch=max(micro, 256))
                lag_w = (prox_logp - old_logp).exp().clamp(max=cfg.lag_weight_clip)
            else:
                prox_logp, lag_w = old_logp, None

            # -- update
            m = len(ro)
            stats: Counter = Counter()
            n_mb = 0
            stop = False
            for _ in range(cfg.update_epochs):
                perm = torch.randperm(m, generator=generator).to(device)
                for start in range(0, m, cfg.minibatch_size):
                    mb = perm[start : start + cfg.minibatch_size]
                    if mb.numel() < 2:
                        continue
                    optimizer.zero_grad(set_to_none=True)
                    mb_kl = 0.0
                    for idx in mb.split(micro):
                        w = idx.numel() / mb.numel()
                        logp, ent3, value = evaluate_actions(policy, index_obs(obs_d, idx), actions_d[idx])
                        log_ratio = logp - prox_logp[idx]
                        ratio = log_ratio.exp()
                        a = adv[idx] if lag_w is None else adv[idx] * lag_w[idx]
                        pg_loss = torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip_ratio, 1 + cfg.clip_ratio)).mean()
                        v_loss = 0.5 * (value.float() - targets[idx]).pow(2).mean()
                        entropy = ent3.sum(-1).mean()
                        if cfg.anchor == "kl" and ref_logp is not None:
                            lr_ref = ref_logp[idx] - logp
                            anchor_loss = (lr_ref.exp() - 1 - lr_ref).mean()  # k3 estimate of KL(pi||ref)
                        elif cfg.anchor == "bc" and demos is not None:
                            j = torch.randint(len(demos), (cfg.bc_batch_size,), generator=generator)
                            d_logp = evaluate_actions(
                                policy,
                                {k: v[j].to(device) for k, v in demos.obs.items()}, demos.actions[j].to(device)
                            )[0]
                            anchor_loss = -d_logp.mean()
                        else:
                            anchor_loss = torch.zeros((), device=device)
                        loss = pg_loss - ent_coef * entropy + cfg.vf_coef * v_loss + cfg.anchor_coef * anchor_loss
                        (loss * w).backward()
                        with torch.no_grad():
                            kl = ((ratio - 1) - log_ratio).mean().item()
                            mb_kl += kl * w
                            stats["policy_loss"] += pg_loss.item() * w
                            stats["value_loss"] += v_loss.item() * w
                            stats["anchor_loss"] += anchor_loss.item() * w
                            stats["approx_kl"] += kl * w
                            stats["clipfrac"] += ((ratio - 1).abs() > cfg.clip_ratio).float().mean().item() * w
                            for h, name in enumerate(HEADS):
                                stats[f"entropy_{name}"] += ent3[:, h].mean().item() * w
                    grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                    if not torch.isfinite(grad_norm):
                        # never let one bad batch poison the weights; counted and logged
                        optimizer.zero_grad(set_to_none=True)
                        stats["nonfinite_updates"] += 1
                        continue
                    stats["grad_norm"] += float(grad_norm)
                    optimizer.step()
                    n_mb += 1
                    if cfg.target_kl is not None and mb_kl > cfg.target_kl:
                        stop = True
                        break
                if stop:
                    break
            scheduler.step()
            t_update = time.perf_counter() - t2

            # -- log
            with torch.no_grad():
                ev = explained_variance(ro.values, targets.cpu())
            row = {k: v / max(1, n_mb) for k, v in stats.items()}
            rewards = [e["reward"] for e in ro.episodes]
            act_np = ro.actions.numpy()
            type_counts = np.bincount(act_np[:, 0], minlength=18)
            top = int(type_counts.argmax())
            top_frac = float(type_counts[top] / max(1, type_counts.sum()))
            elapsed = time.perf_counter() - t0
            row.update(
                epoch=epoch,
                global_step=global_step,
                episode_reward=float(np.mean(rewards)) if rewards else float("nan"),
                episode_length=float(np.mean([e["length"] for e in ro.episodes])) if rewards else float("nan"),
                episodes=len(rewards),
                explained_variance=ev,
                learning_rate=lr_now,
                ent_coef=ent_coef,
                updates=n_mb,
                early_stop=float(stop),
                top_type=top,
                top_type_frac=top_frac,
                time_data=batch.times["time_data"],
                time_rollout=batch.times["time_rollout"],
                time_update=t_update,
                sps=ro.env_steps / max(elapsed, 1e-9),
                # CPU seconds of this process: on a shared machine wall time measures the load
                cpu_time=time.process_time() - c0,
                **{k: v for k, v in batch.times.items() if k not in ("time_data", "time_rollout")},
            )
            if lag_w is not None:
                row["lag_weight"] = float(lag_w.mean())
                row["lag_weight_clipped"] = float((lag_w >= cfg.lag_weight_clip).float().mean())
            comp_names = sorted({k for e in ro.episodes for k in e["components"]})
            for k in comp_names:
                row[f"reward/{k}"] = float(np.mean([e["components"][k] for e in ro.episodes if k in e["components"]]))
            if top_frac > cfg.collapse_frac:
                msg = f"type collapse: type {top} is {top_frac:.0%} of actions at epoch {epoch}"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                log.warning(f"ppo: WARNING {msg}")
            if writer is not None:
                log_epoch(writer, row, act_np, global_step)
            log.info(
                f"ppo: epoch {epoch} step {global_step} reward {row['episode_reward']:.4f} "
                f"kl {row.get('approx_kl', 0):.4f} ev {ev:.3f} ent_coef {ent_coef:.3f} "
                f"sps {row['sps']:.0f} (rollout {row['time_rollout']:.2f}s update {t_update:.2f}s)"
            )

            # -- save (agent/checkpoint.py's format; PPO's own state in extra["ppo"])
            done = epoch + 1
            if save is not None and ((cfg.save_every and done % cfg.save_every == 0) or is_last):
                ppo_state = {
                    "config": asdict(cfg),
                    "reference": reference.state_dict() if reference is not None else {},
                    "scheduler": scheduler.state_dict(),
                    "rms": rms.state_dict(),
                    "behaviour": rollouts.behaviour,
                    "rng": _rng_state(generator, sample_gen),
                    "epoch": done,
                    "global_step": global_step,
                    "extra": dict(save.origin),
                }
                save_checkpoint(save.path, model=policy, optimizer=optimizer, step=global_step, stage="finetune",
                                stage_config=asdict(cfg) if save.stage_config is None else save.stage_config,
                                layout=save.layout, extra={"ppo": ppo_state, **save.style})
            yield row
            if is_last:
                break
    finally:
        rollouts.close()
