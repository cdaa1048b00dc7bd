"""Monte Carlo PPO: fine-tunes a factored-action policy in a vector of editing envs.

The spec's "Training Approach", read top to bottom (CleanRL style, no trainer class):

1. **Rollout** (rl/rollout.py). Every epoch resets the N envs with seeds derived from
   ``(seed, epoch)`` and steps them until each env has recorded at least ``steps``
   transitions *and* finished the episode it is in. So every recorded episode is complete: the reward is
   paid at the episode end only (Monte Carlo), and a half-finished episode would have no
   return at all. Resetting per epoch also makes a resumed run continue identically
   without pickling environments.
2. **Returns.** ``rl.returns.monte_carlo_returns`` per episode, honouring ends (the
   spec's first implementation ran returns across an env-interleaved buffer; we order
   the buffer env-major so each env's episodes are contiguous and end with ``done``).
   Returns are clipped to ``+-return_clip`` (spec "Known Issues": FP16/large value
   losses) and, with ``return_norm="welford"``, value targets are standardised with
   Welford running statistics.
3. **Advantages.** ``G - mean(G)`` (the spec's mean baseline), ``G`` minus the mean
   return of the *other* episodes of the same song in the epoch (``baseline="song"``,
   a leave-one-out mean as in RLOO / GRPO: songs differ more in how much reward is
   reachable than actions do, so a batch mean mostly measures which songs were drawn;
   ``song_group`` envs share their reset seeds so that every song drawn is edited
   several times per epoch), or ``G - V(s)`` (``baseline="value"``); then normalised to
   mean 0, std 1.
4. **Update.** Clipped surrogate (clip 0.2), joint entropy bonus with a coefficient that
   starts high (spec: 0.5-0.75) and decays (linear or cosine) to a floor, value loss
   with a small coefficient (0.05-0.1), an anchor to the frozen pretrained policy so
   fine-tuning keeps the user's style (``anchor="kl"``: k3 estimate of
   KL(pi || pi_ref) on the rollout's actions; ``anchor="bc"``: negative log-likelihood
   of the human plans' actions), gradient accumulation over micro-batches,
   gradient-norm clipping, cosine learning rate, and an early stop when the approximate
   KL to the rollout policy exceeds ``target_kl``.
5. **Overlap** (``overlap=True``, CPU): the next rollout is collected by a forked worker
   (rl/worker.py) while the learner updates, so each rollout is one update behind. The
   update is then decoupled PPO (Hilton et al. 2022): ratio and clip are taken against
   the policy at the start of the update ("proximal", one no-grad forward pass), each
   sample is weighted by pi_prox / pi_behaviour truncated at ``lag_weight_clip``, and the
   KL early stop measures the distance to the proximal policy. Without overlap the
   proximal policy is the behaviour policy and this is plain PPO.

The policy is any ``nn.Module`` with agent/model.py's API::

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
logged beside it).

Usage (the CLI with real songs is rl/train.py)::

    stats = train(PPOConfig(epochs=50), policy=policy, env_fns=[make_env] * 8, writer=writer)
"""

from __future__ import annotations

import copy
import math
import random
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from datasets.atomic import atomic_path
from datasets.errors import ParameterError
from rl.returns import monte_carlo_returns
from rl.rollout import Rollout, collect_rollout, index_obs, make_vector_env, rollout_logp
from rl.worker import RolloutWorker

__all__ = [
    "PPOConfig",
    "Demos",
    "RunningMeanStd",
    "seed_everything",
    "pick_device",
    "entropy_coef_at",
    "compute_advantages",
    "song_baseline",
    "explained_variance",
    "head_entropies",
    "evaluate_actions",
    "save_checkpoint",
    "load_checkpoint",
    "train",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "rl-ppo-1"
MASK_KEYS = ("type_mask", "size_mask", "amount_mask")
HEADS = ("type", "size", "amount")


@dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters of Monte Carlo PPO (saved in every checkpoint)."""

    seed: int = 1
    """seed of random, numpy, torch, env resets and action spaces"""
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
    """epochs between greedy edits of a held-out song (0 = never)"""
    deterministic_torch: bool = False
    """torch.use_deterministic_algorithms (slower; CPU runs are already reproducible)"""
    overlap: bool = True
    """CPU: a forked worker collects the next epoch's rollout while the learner updates
    (rl/worker.py), so the envs and the update each keep a core busy; rollouts are then
    one update behind and the loss is decoupled PPO (``lag_weight_clip``). Off on CUDA"""
    lag_weight_clip: float = 2.0
    """overlap: each sample's weight pi_prox / pi_behaviour is truncated at this (V-trace's rho-bar)"""


@dataclass(frozen=True)
class Demos:
    """Human-plan transitions (observation, oracle action) for the BC anchor.

    obs : dict of tensors, each [D, ...]; actions : int64 [D, 3]
    """

    obs: dict[str, torch.Tensor]
    actions: torch.Tensor

    def __len__(self) -> int:
        return int(self.actions.shape[0])


class RunningMeanStd:
    """Welford / Chan running mean and variance of a scalar stream (spec: reward stats)."""

    def __init__(self, eps: float = 1e-4) -> None:
        # eps as a pseudo-count keeps the first update from dividing by zero
        self.mean = 0.0
        self.var = 1.0
        self.count = eps

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).ravel()
        if x.size == 0:
            return
        b_mean, b_var, b_n = float(x.mean()), float(x.var()), x.size
        delta = b_mean - self.mean
        tot = self.count + b_n
        self.mean += delta * b_n / tot
        m2 = self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / tot
        self.var = m2 / tot
        self.count = tot

    @property
    def std(self) -> float:
        return math.sqrt(self.var + 1e-8)

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


# ---------------------------------------------------------------------------- setup


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed random, numpy, torch (CPU and CUDA) and cudnn."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if deterministic:
        torch.use_deterministic_algorithms(True)


def pick_device(name: str = "auto") -> torch.device:
    """``cuda`` when available (never silently CPU on a GPU box), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


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


def _sample_seed(cfg: PPOConfig, epoch: int) -> int:
    """Seed of the overlapped worker's action sampling in ``epoch`` (resume-exact)."""
    return (cfg.seed * 2_000_003 + epoch * 7_919 + 17) % 2**62


# ---------------------------------------------------------------------------- advantages


def song_baseline(returns: torch.Tensor, episode_ids: torch.Tensor, episodes: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Per transition [M]: the mean return of the other episodes of the same song.

    An episode's return is its first transition's (Monte Carlo, reward at the end). A
    song edited once in the batch gets the mean over all episodes instead."""
    ids = episode_ids.numpy()
    g = returns.double().numpy()
    first: dict[int, float] = {}
    for k in range(len(ids) - 1, -1, -1):  # the first transition of each episode wins
        first[int(ids[k])] = g[k]
    song_of = {int(e["id"]): e.get("song", "") for e in episodes}
    by_song: dict[str, list[int]] = {}
    for e in first:
        by_song.setdefault(song_of.get(e, f"#{e}"), []).append(e)
    overall = float(np.mean(list(first.values()))) if first else 0.0
    base: dict[int, float] = {}
    for eps in by_song.values():
        tot = sum(first[e] for e in eps)
        for e in eps:
            base[e] = (tot - first[e]) / (len(eps) - 1) if len(eps) > 1 else overall
    return torch.as_tensor(np.array([base[int(e)] for e in ids]), dtype=returns.dtype)


def compute_advantages(
    returns: torch.Tensor,
    values: torch.Tensor | None,
    *,
    baseline: str,
    episode_ids: torch.Tensor | None = None,
    episodes: Sequence[Mapping[str, Any]] = (),
) -> torch.Tensor:
    """Normalised advantages [M] from returns [M], values [M] (``baseline="value"``) or
    the episodes' songs (``baseline="song"``: ``episode_ids`` [M] and ``episodes``)."""
    if baseline == "value":
        assert values is not None, "value baseline needs values"
        adv = returns - values
    elif baseline == "song":
        assert episode_ids is not None, "song baseline needs episode ids"
        adv = returns - song_baseline(returns, episode_ids, episodes)
    else:
        adv = returns - returns.mean()
    if adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - pred] / Var[target] (nan when the target is constant)."""
    var_y = float(target.var()) if target.numel() > 1 else 0.0
    if var_y == 0.0:
        return float("nan")
    return 1.0 - float((target - pred).var()) / var_y


# ---------------------------------------------------------------------------- checkpoint


def _rng_state(generator: torch.Generator, sample_gen: torch.Generator) -> dict[str, Any]:
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
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])
    sample_gen.set_state(state["sample_generator"])


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """torch.save through the one atomic writer (datasets.atomic: never a half file, the
    user's umask)."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a PPO checkpoint with ``weights_only=True``; checks its format tag."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ParameterError(f"not a PPO checkpoint ({CHECKPOINT_FORMAT}): {path}")
    return state


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
    save_path: str | Path | None = None,
    save_fn: Callable[[Path, dict[str, Any]], None] | None = None,
    resume: str | Path | Mapping[str, Any] | None = None,
    subprocess: bool = False,
    stop_after: int = 0,
    greedy_eval: Callable[[nn.Module, int, int], None] | None = None,
    extra_state: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Fine-tune ``policy`` in place with Monte Carlo PPO; returns one stats dict per epoch.

    reference : frozen pretrained policy for the KL anchor (default: a copy of ``policy``
        as given, i.e. the pretrained weights)
    demos : human-plan transitions, required for ``anchor="bc"``
    writer : a TensorBoard SummaryWriter (or None)
    save_path : atomic checkpoint written every ``save_every`` epochs and at the end
    save_fn : ``f(path, state)`` writes the state dict (default ``save_checkpoint``);
        rl/train.py passes one that writes agent/checkpoint.py's format, so inference
        reads fine-tuned checkpoints like pretrained ones
    resume : a checkpoint path or loaded dict; restores weights, optimizer, scheduler,
        running stats, RNG states, epoch and global step
    stop_after : end this session after so many epochs (0 = run to ``cfg.epochs``), with
        a checkpoint, so that a time-boxed run resumes later exactly where it stopped
    greedy_eval : ``f(policy, epoch, global_step)`` called every ``eval_every`` epochs
    extra_state : stored verbatim in each checkpoint (e.g. the model's config)
    """
    if len(env_fns) != cfg.n_envs:
        raise ParameterError(f"n_envs={cfg.n_envs} but {len(env_fns)} env factories were given")
    if cfg.minibatch_size % cfg.grad_accum:
        raise ParameterError(f"minibatch_size={cfg.minibatch_size} is not a multiple of grad_accum={cfg.grad_accum}")
    if cfg.anchor == "bc" and (demos is None or len(demos) == 0):
        raise ParameterError("anchor='bc' needs human-plan demos (none were given)")

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
    start_epoch, global_step = 0, 0
    resume_behaviour = None
    if resume is not None:
        ck = resume if isinstance(resume, Mapping) else load_checkpoint(resume, map_location="cpu")
        policy.load_state_dict(ck["policy"])
        if reference is not None and ck.get("reference"):
            reference.load_state_dict(ck["reference"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        rms.load_state_dict(ck["rms"])
        _set_rng_state(ck["rng"], generator, sample_gen)
        start_epoch, global_step = int(ck["epoch"]), int(ck["global_step"])
        resume_behaviour = ck.get("behaviour") or None
        log(f"ppo: resumed at epoch {start_epoch}, global step {global_step}")

    def checkpoint_state(epoch: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(cfg),
            "policy": policy.state_dict(),
            "reference": reference.state_dict() if reference is not None else {},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rms": rms.state_dict(),
            "behaviour": behaviour if use_overlap else {},
            "rng": _rng_state(generator, sample_gen),
            "epoch": epoch,
            "global_step": global_step,
            "extra": dict(extra_state or {}),
        }

    def make_envs() -> gym.vector.VectorEnv:
        v = make_vector_env(env_fns, subprocess=subprocess)
        v.action_space.seed(cfg.seed)
        v.observation_space.seed(cfg.seed)
        return v

    def env_seeds(epoch: int) -> list[int]:
        # the envs draw their songs on reset, seeded by (seed, epoch); groups of
        # song_group envs share a seed, so they edit the same songs in the same order
        base = (cfg.seed * 1_000_003 + epoch * cfg.n_envs) % 2**31
        return [base + i // max(1, cfg.song_group) for i in range(cfg.n_envs)]

    use_overlap = cfg.overlap and device.type == "cpu"
    if cfg.overlap and not use_overlap:
        log(f"ppo: overlap off on {device} (the worker would fork a CUDA context); rollouts run in this process")
    envs: gym.vector.VectorEnv | None = None
    worker: RolloutWorker | None = None
    # overlap: the weights the in-flight rollout is collected with (a checkpoint stores them)
    behaviour = {k: v.detach().clone() for k, v in (resume_behaviour or policy.state_dict()).items()}
    if use_overlap:
        worker = RolloutWorker(
            make_envs, copy.deepcopy(policy).cpu(), steps=cfg.steps, daemon=not subprocess,
            reference=copy.deepcopy(reference).cpu() if cfg.anchor == "kl" and reference is not None else None,
        )
        worker.request(behaviour, env_seeds(start_epoch), _sample_seed(cfg, start_epoch))
    else:
        envs = make_envs()
    micro = cfg.minibatch_size // cfg.grad_accum
    history: list[dict[str, float]] = []
    log(f"ppo: device {device}, {cfg.n_envs} envs ({'subprocess' if subprocess else 'sync'}"
        f"{', in an overlapped worker' if use_overlap else ''}), "
        f"{sum(p.numel() for p in policy.parameters()):,} parameters, anchor={cfg.anchor}, baseline={cfg.baseline}")
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0, c0 = time.perf_counter(), time.process_time()
            ent_coef = entropy_coef_at(cfg, epoch)
            lr_now = optimizer.param_groups[0]["lr"]

            is_last = epoch + 1 == cfg.epochs or (stop_after > 0 and epoch + 1 - start_epoch >= stop_after)
            worker_times: dict[str, float] = {}
            if worker is not None:
                # -- rollout e (collected with the weights before update e - 1) ...
                res = worker.result()
                ro = res.rollout
                t_data, t_rollout = 0.0, time.perf_counter() - t0  # time waited for the worker
                worker_times = {"time_worker_reset": res.t_reset, "time_worker_rollout": res.t_rollout,
                                "cpu_time_worker": res.cpu}
                # ... and rollout e + 1 starts now, with these weights, while we update
                behaviour = {k: v.detach().clone() for k, v in policy.state_dict().items()}
                if not is_last:
                    worker.request(behaviour, env_seeds(epoch + 1), _sample_seed(cfg, epoch + 1))
            else:
                # -- data sample: the envs draw their songs on reset, seeded by (seed, epoch)
                obs, _ = envs.reset(seed=env_seeds(epoch))
                t_data = time.perf_counter() - t0

                # -- rollout
                t1 = time.perf_counter()
                ro = collect_rollout(envs, policy, obs=obs, steps=cfg.steps, generator=sample_gen, device=device)
                t_rollout = time.perf_counter() - t1
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
            ref_logp = None
            if cfg.anchor == "kl" and reference is not None:
                if worker is not None and res.ref_logp is not None:
                    ref_logp = res.ref_logp.to(device)  # computed by the worker
                else:
                    ref_logp = rollout_logp(reference, obs_d, actions_d, batch=max(micro, 256))
            # decoupled PPO: ratio and clip against the policy as it is now (the proximal
            # policy); samples weighted by pi_prox / pi_behaviour (1 without overlap)
            if worker is not None:
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

            # -- bookkeeping
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
                time_data=t_data,
                time_rollout=t_rollout,
                time_update=t_update,
                sps=ro.env_steps / max(elapsed, 1e-9),
                # CPU seconds of this process: on a shared machine wall time measures the load
                cpu_time=time.process_time() - c0,
                **worker_times,
            )
            if lag_w is not None:
                row["lag_weight"] = float(lag_w.mean())
                row["lag_weight_clipped"] = float((lag_w >= cfg.lag_weight_clip).float().mean())
            comp_names = sorted({k for e in ro.episodes for k in e["components"]})
            for k in comp_names:
                row[f"reward/{k}"] = float(np.mean([e["components"][k] for e in ro.episodes if k in e["components"]]))
            history.append(row)
            if top_frac > cfg.collapse_frac:
                msg = f"type collapse: type {top} is {top_frac:.0%} of actions at epoch {epoch}"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                log(f"ppo: WARNING {msg}")
            if writer is not None:
                _log_epoch(writer, row, act_np, global_step)
            log(
                f"ppo: epoch {epoch} step {global_step} reward {row['episode_reward']:.4f} "
                f"kl {row.get('approx_kl', 0):.4f} ev {ev:.3f} ent_coef {ent_coef:.3f} "
                f"sps {row['sps']:.0f} (rollout {t_rollout:.2f}s update {t_update:.2f}s)"
            )
            done_epochs = epoch + 1
            last = is_last
            if save_path is not None and ((cfg.save_every and done_epochs % cfg.save_every == 0) or last):
                (save_fn or save_checkpoint)(Path(save_path), checkpoint_state(done_epochs))
            if greedy_eval is not None and cfg.eval_every and (
                done_epochs % cfg.eval_every == 0 or last
            ):
                greedy_eval(policy, done_epochs, global_step)
            if last:
                break
    finally:
        if envs is not None:
            envs.close()
        if worker is not None:
            worker.close()
    return history


def _log_epoch(writer: Any, row: Mapping[str, float], actions: np.ndarray, step: int) -> None:
    """TensorBoard: charts/*, losses/*, time/*, reward components and action histograms."""
    chart_keys = ("episode_reward", "episode_length", "learning_rate", "ent_coef", "sps", "top_type_frac", "episodes")
    loss_keys = ("policy_loss", "value_loss", "anchor_loss", "approx_kl", "clipfrac", "explained_variance",
                 "grad_norm", "updates", "early_stop") + tuple(f"entropy_{h}" for h in HEADS)
    for k in chart_keys:
        if k in row and not math.isnan(float(row[k])):
            writer.add_scalar(f"charts/{k}", row[k], step)
    for k in loss_keys:
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
        writer.add_histogram(f"actions/{name}", actions[:, h], step, bins=np.arange(-0.5, (18 if h == 0 else 5) + 0.5))
