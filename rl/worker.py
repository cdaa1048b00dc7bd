"""The rollout worker: ``rl.rollout.collect_rollout`` in a second process, overlapped with
the learner's update (``PPOConfig.overlap``).

Why: on a CPU box one PPO epoch is two halves that each keep one core busy: stepping the
envs while the policy acts (Python and numpy) and the update (torch forward + backward).
Run one after the other they leave the second core idle. With overlap, a forked worker
collects epoch ``e + 1``'s rollout while the learner updates on epoch ``e``'s, so a
rollout is always collected with the weights from *before* the previous update (one
epoch behind). ``rl/ppo.py`` corrects for that lag with decoupled PPO (Hilton et al.,
2022, "Batch size-invariance for policy optimization"): the clip is taken around the
policy at the start of the update and each sample is weighted by
pi_prox / pi_behaviour.

The worker is forked, so the env factories (closures over songs, features and audio)
are not pickled; it dies with the learner (``datasets.procs.die_with_parent``: a killed
learner used to leave it running, holding its memory, with PPID 1); weights go to it by value (numpy) and rollouts come back by value, so
no memory is shared with the learner while it updates in place. Action sampling is
seeded per epoch (``sample_seed``), which makes a resumed run continue identically from
the checkpoint's behaviour weights (rl/ppo.py stores them).

CPU only: forking a process that holds a CUDA context is undefined, and on a GPU the
update is not the bottleneck (``rl/ppo.py`` turns overlap off there and says so).

The learner sees neither mode: ``RolloutSource.next_rollout()`` returns each epoch's
rollout, from the envs in the learner's own process or from the worker.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from datasets.procs import die_with_parent
from rl.rollout import Rollout, collect_rollout, rollout_logp

__all__ = ["EpochSeeds", "RolloutBatch", "RolloutResult", "RolloutSource", "RolloutWorker"]


class RolloutResult:
    """What the worker sends back: the rollout, the reference policy's log-probs of its
    actions (None without a reference) and the worker's own timings (seconds)."""

    def __init__(self, rollout: Any, ref_logp: torch.Tensor | None, t_reset: float, t_rollout: float, cpu: float) -> None:
        self.rollout, self.ref_logp = rollout, ref_logp
        self.t_reset, self.t_rollout, self.cpu = t_reset, t_rollout, cpu


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().numpy()
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return tree


def _to_torch(tree: Any) -> Any:
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(tree)
    if isinstance(tree, Mapping):
        return {k: _to_torch(v) for k, v in tree.items()}
    return tree


def _worker_main(
    parent_pid: int,
    learner_end: Any,
    conn: Any,
    make_envs: Callable[[], gym.vector.VectorEnv],
    policy: nn.Module,
    reference: nn.Module | None,
    steps: int,
) -> None:
    die_with_parent(parent_pid)
    # the fork copied the learner's end of the pipe: close it, so that recv() sees EOF
    # when the learner is gone instead of waiting on an end this process holds itself
    learner_end.close()
    torch.set_num_threads(1)  # one core each: the learner keeps the other
    envs = None
    try:
        envs = make_envs()
        while True:
            msg = conn.recv()
            if msg is None:
                break
            weights, seeds, sample_seed = msg
            c0 = time.process_time()
            policy.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
            policy.eval()
            t0 = time.perf_counter()
            obs, _ = envs.reset(seed=list(seeds))
            t1 = time.perf_counter()
            gen = torch.Generator().manual_seed(int(sample_seed))
            ro = collect_rollout(envs, policy, obs=obs, steps=steps, generator=gen, device="cpu")
            t2 = time.perf_counter()
            # the frozen reference's log-probs (the KL anchor) cost a forward pass: done
            # here, the learner's core is the busier one
            ref = None if reference is None else _to_numpy(rollout_logp(reference, ro.obs, ro.actions))
            payload = (_to_numpy(vars(ro)), ref)  # Rollout's fields, tensors as numpy
            conn.send(("ok", payload, t1 - t0, t2 - t1, time.process_time() - c0))
    except (KeyboardInterrupt, EOFError):
        pass
    except BaseException:  # the learner re-raises it with the worker's traceback
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if envs is not None:
            envs.close()
        conn.close()


class RolloutWorker:
    """``collect_rollout`` in a forked process: ``request(...)`` then ``result()``.

    make_envs : builds the vector env inside the worker
    policy : a CPU policy of the learner's architecture (the fork copies it; weights
        arrive with every request)
    reference : the frozen pretrained policy (CPU) whose log-probs of the sampled actions
        come back with each rollout (``RolloutResult.ref_logp``), or None
    steps : ``collect_rollout``'s steps per env
    daemon : False when the envs start processes of their own (``AsyncVectorEnv``): a
        daemonic process may not have children. ``close()`` (rl/ppo.py calls it in a
        ``finally``) stops the worker either way.
    """

    def __init__(
        self,
        make_envs: Callable[[], gym.vector.VectorEnv],
        policy: nn.Module,
        *,
        steps: int,
        reference: nn.Module | None = None,
        daemon: bool = True,
    ) -> None:
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, daemon=daemon,
                                 args=(os.getpid(), self._conn, child, make_envs, policy, reference, steps))
        self._proc.start()
        child.close()
        self._pending = False

    def request(self, weights: Mapping[str, torch.Tensor], seeds: Sequence[int], sample_seed: int) -> None:
        """Start a rollout with these weights (copied now), env reset seeds and sampling seed."""
        assert not self._pending, "RolloutWorker: result() of the previous request was not taken"
        w = {k: v.detach().cpu().numpy().copy() for k, v in weights.items()}
        self._conn.send((w, [int(s) for s in seeds], int(sample_seed)))
        self._pending = True

    def result(self) -> RolloutResult:
        """Wait for the requested rollout."""
        assert self._pending, "RolloutWorker: no rollout was requested"
        try:
            msg = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"rollout worker died (exit code {self._proc.exitcode})") from None
        self._pending = False
        if msg[0] == "error":
            raise RuntimeError(f"rollout worker failed:\n{msg[1]}")
        _, (fields, ref), t_reset, t_rollout, cpu = msg
        ro = Rollout(**_to_torch(fields))
        return RolloutResult(ro, None if ref is None else torch.from_numpy(ref), t_reset, t_rollout, cpu)

    def close(self) -> None:
        """Stop the worker (an unfinished request is abandoned)."""
        if self._proc.is_alive():
            try:
                if not self._pending:
                    self._conn.send(None)
                    self._proc.join(timeout=10)
            except (BrokenPipeError, OSError):
                pass
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout=10)
        self._conn.close()

    def __enter__(self) -> "RolloutWorker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------- one call per epoch


@dataclass(frozen=True)
class EpochSeeds:
    """The seeds of one epoch's rollout: one env reset seed each, and the seed of the
    overlapped worker's action sampling (the learner's own envs sample from its generator)."""

    envs: Sequence[int]
    sample: int


@dataclass(frozen=True)
class RolloutBatch:
    """One epoch's rollout as the learner gets it from ``RolloutSource.next_rollout``."""

    rollout: Rollout
    ref_logp: torch.Tensor | None
    """the frozen reference's log-probs of the rollout's actions [M] (None without one)"""
    lagged: bool
    """collected by the overlapped worker with the weights from before the last update:
    the update is then decoupled PPO (ratio and clip against the proximal policy)"""
    times: dict[str, float]
    """seconds: time_data (env resets), time_rollout (with overlap: the wait for the
    worker), and the worker's own time_worker_reset, time_worker_rollout, cpu_time_worker"""


class RolloutSource:
    """Each epoch's rollout, one ``next_rollout()`` call whether it is collected here or
    by a forked ``RolloutWorker`` (``overlap``).

    make_envs : builds the vector env (in this process, or in the worker)
    policy : the learner's policy (the worker gets a CPU copy of its architecture)
    reference : frozen policy whose log-probs of the sampled actions come with each
        rollout (the KL anchor), or None
    steps : transitions recorded per env and epoch (``collect_rollout``)
    overlap : collect in a forked worker while the learner updates (CPU only)
    device : the learner's device (rollouts here act on it)
    sample_gen : the learner's action-sampling generator (rollouts here; part of its RNG
        state, so a resumed run continues identically)
    behaviour : overlap: the weights the first rollout is collected with (a resumed
        run's checkpoint stores them; otherwise the policy's)
    first : seeds of the first epoch's rollout
    daemon : False when the envs start processes of their own (see ``RolloutWorker``)
    ref_batch : batch of the reference's no-grad forward passes here
    """

    def __init__(
        self,
        make_envs: Callable[[], gym.vector.VectorEnv],
        policy: nn.Module,
        *,
        reference: nn.Module | None,
        steps: int,
        overlap: bool,
        device: torch.device,
        sample_gen: torch.Generator,
        behaviour: Mapping[str, torch.Tensor] | None,
        first: EpochSeeds,
        daemon: bool = True,
        ref_batch: int = 256,
    ) -> None:
        self.steps, self.device, self.sample_gen, self.ref_batch = steps, device, sample_gen, ref_batch
        self.reference = reference
        self._envs: gym.vector.VectorEnv | None = None
        self._worker: RolloutWorker | None = None
        self._behaviour: dict[str, torch.Tensor] = {}
        if overlap:
            # the weights the in-flight rollout is collected with (a checkpoint stores them)
            self._behaviour = {k: v.detach().clone() for k, v in (behaviour or policy.state_dict()).items()}
            self._worker = RolloutWorker(
                make_envs, copy.deepcopy(policy).cpu(), steps=steps, daemon=daemon,
                reference=copy.deepcopy(reference).cpu() if reference is not None else None,
            )
            self._worker.request(self._behaviour, first.envs, first.sample)
        else:
            self._envs = make_envs()

    @property
    def behaviour(self) -> dict[str, torch.Tensor]:
        """overlap: the weights of the rollout in flight (a checkpoint stores them); {} without."""
        return self._behaviour

    def next_rollout(self, policy: nn.Module, *, seeds: EpochSeeds, next_seeds: EpochSeeds | None) -> RolloutBatch:
        """This epoch's rollout (``seeds``); with overlap, the worker starts the next one
        (``next_seeds``, None after the session's last epoch) with ``policy``'s weights now.
        """
        t0 = time.perf_counter()
        if self._worker is not None:
            # -- rollout e (collected with the weights before update e - 1) ...
            res = self._worker.result()
            times = {"time_data": 0.0, "time_rollout": time.perf_counter() - t0,  # time waited for the worker
                     "time_worker_reset": res.t_reset, "time_worker_rollout": res.t_rollout,
                     "cpu_time_worker": res.cpu}
            # ... and rollout e + 1 starts now, with these weights, while the learner updates
            self._behaviour = {k: v.detach().clone() for k, v in policy.state_dict().items()}
            if next_seeds is not None:
                self._worker.request(self._behaviour, next_seeds.envs, next_seeds.sample)
            return RolloutBatch(res.rollout, res.ref_logp, lagged=True, times=times)
        # -- data sample: the envs draw their songs on reset, seeded by (seed, epoch)
        obs, _ = self._envs.reset(seed=list(seeds.envs))
        t1 = time.perf_counter()
        ro = collect_rollout(self._envs, policy, obs=obs, steps=self.steps, generator=self.sample_gen, device=self.device)
        times = {"time_data": t1 - t0, "time_rollout": time.perf_counter() - t1}
        ref_logp = None
        if self.reference is not None:
            ref_logp = rollout_logp(self.reference, {k: v.to(self.device) for k, v in ro.obs.items()},
                                    ro.actions.to(self.device), batch=self.ref_batch)
        return RolloutBatch(ro, ref_logp, lagged=False, times=times)

    def close(self) -> None:
        """Close the envs or stop the worker."""
        if self._envs is not None:
            self._envs.close()
        if self._worker is not None:
            self._worker.close()
