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
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from datasets.procs import die_with_parent
from rl.rollout import Rollout, collect_rollout, rollout_logp

__all__ = ["RolloutWorker", "RolloutResult"]


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
