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

N workers (``PPOConfig.rollout_workers`` >= 2, issue 18): a ``RolloutPool`` of forked
processes (as above) or of Ray actors (``RAY_ADDRESS`` set, or ``rollout_backend=ray``;
datasets/parallel.py's rule), each owning a contiguous block of the envs, their reset
seeds and its own sampling seed (``worker_sample_seed``); every request carries the
learner's weights, and the rollouts come back concatenated in worker order, so a run is
deterministic for a given N and seed. The workers run on the CPU whatever the learner's
device: with a CUDA learner they are forked after CUDA started, which is safe as long as
they never touch CUDA (their policies are CPU copies, as for torch's DataLoader workers).

The learner sees none of these modes: ``RolloutSource.next_rollout()`` returns each
epoch's rollout, from the envs in the learner's own process or from the worker(s).
"""

from __future__ import annotations

import copy
import functools
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

__all__ = ["EpochSeeds", "RolloutBatch", "RolloutPool", "RolloutResult", "RolloutSource", "RolloutWorker", "merge_results",
           "split_envs", "worker_sample_seed"]


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


def _to_torch(tree: Any, *, copy: bool = False) -> Any:
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(np.array(tree) if copy else tree)
    if isinstance(tree, Mapping):
        return {k: _to_torch(v, copy=copy) for k, v in tree.items()}
    return tree


def _collect(
    envs: gym.vector.VectorEnv,
    policy: nn.Module,
    reference: nn.Module | None,
    steps: int,
    weights: Mapping[str, np.ndarray],
    seeds: Sequence[int],
    sample_seed: int,
) -> tuple:
    """One rollout in a worker (forked process or Ray actor) with these weights and seeds:
    ``("ok", (Rollout's fields as numpy, reference log-probs or None), t_reset, t_rollout, cpu)``."""
    c0 = time.process_time()
    policy.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
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
    return ("ok", payload, t1 - t0, t2 - t1, time.process_time() - c0)


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
            conn.send(_collect(envs, policy, reference, steps, weights, seeds, sample_seed))
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


# ---------------------------------------------------------------------------- N workers


def split_envs(n_envs: int, workers: int) -> list[range]:
    """Worker k's envs: contiguous blocks of the env indices, sizes as equal as possible
    (the first ``n_envs % workers`` one larger). Contiguous, so a ``song_group`` of envs
    that share a reset seed stays in one worker when the block size is a multiple of it."""
    base, extra = divmod(n_envs, workers)
    blocks, start = [], 0
    for k in range(workers):
        size = base + (k < extra)
        blocks.append(range(start, start + size))
        start += size
    return blocks


def worker_sample_seed(sample_seed: int, k: int) -> int:
    """Worker k's action-sampling seed for an epoch whose seed is ``sample_seed``: a
    function of (seed, epoch, worker) only, so a run is deterministic for a given number
    of workers. Worker 0 keeps the epoch's seed; the others step by 2**64 / golden ratio
    (odd, so distinct k never meet modulo 2**62)."""
    return (int(sample_seed) + k * 0x9E3779B97F4A7C15) % 2**62


def merge_results(results: Sequence[RolloutResult]) -> RolloutResult:
    """The workers' rollouts as one env-major rollout, in worker order (the learner's
    batch depends only on what each worker collected, never on which finished first).
    Episode ids are offset per worker so they stay unique (the song baseline groups by
    them); timings: the slowest worker's reset and rollout (they run side by side), the
    CPU seconds of all."""
    ros = [r.rollout for r in results]
    fields: dict[str, Any] = {"obs": {k: torch.cat([ro.obs[k] for ro in ros]) for k in ros[0].obs}}
    for name in ("actions", "logp", "values", "rewards", "dones"):
        fields[name] = torch.cat([getattr(ro, name) for ro in ros])
    ids, episodes, offset = [], [], 0
    for ro in ros:
        ep_ids = ro.episode_ids if ro.episode_ids is not None else torch.zeros(len(ro), dtype=torch.int64)
        ids.append(ep_ids + offset)
        episodes += [{**e, "id": e["id"] + offset} for e in ro.episodes]
        offset += 1 + max([int(ep_ids.max()) if len(ro) else -1] + [e["id"] for e in ro.episodes])
    merged = Rollout(**fields, episode_ids=torch.cat(ids), episodes=episodes, env_steps=sum(ro.env_steps for ro in ros))
    refs = [r.ref_logp for r in results]
    ref = None if any(x is None for x in refs) else torch.cat(refs)
    return RolloutResult(merged, ref, max(r.t_reset for r in results), max(r.t_rollout for r in results),
                         sum(r.cpu for r in results))


class _RayWorker:
    """A Ray actor's body: one block of envs, a CPU policy and the reference, one rollout
    per ``rollout`` call (``_collect``, the forked worker's own code)."""

    def __init__(self, cwd: str, make_envs: Callable[[Sequence[int]], gym.vector.VectorEnv], indices: Sequence[int],
                 policy: nn.Module, reference: nn.Module | None, steps: int) -> None:
        if os.path.isdir(cwd):  # relative paths mean what they mean to the learner (datasets.parallel)
            os.chdir(cwd)
        torch.set_num_threads(1)  # one CPU per actor (num_cpus=1)
        self.envs = make_envs(indices)
        self.policy, self.reference, self.steps = policy, reference, steps

    def rollout(self, weights: Mapping[str, np.ndarray], seeds: Sequence[int], sample_seed: int) -> tuple:
        # arrays from Ray's object store are read-only views: copy before torch takes them
        w = {k: np.array(v) for k, v in weights.items()}
        return _collect(self.envs, self.policy, self.reference, self.steps, w, seeds, sample_seed)


class RolloutPool:
    """N rollout workers feeding one learner: ``request(...)`` then ``result()``, as
    ``RolloutWorker`` (``PPOConfig.rollout_workers``).

    Each worker owns a contiguous block of the envs (``split_envs``): it builds them
    itself, resets them with their seeds and samples actions with its own seed
    (``worker_sample_seed``), with the weights sent with every request; ``result()``
    concatenates the rollouts in worker order (``merge_results``), so a run is
    deterministic for a given number of workers and seed.

    make_envs : ``make_envs(indices)`` builds the vector env of those env indices
        (called inside the worker: a forked closure, or cloudpickled to a Ray actor)
    n_envs : all envs of the learner
    workers : int >= 1 (1: one Ray actor; locally ``RolloutWorker`` alone is that)
    backend : ``pool`` (forked processes that die with the learner, as ``RolloutWorker``)
        or ``ray`` (one actor of 1 CPU each; ``RAY_ADDRESS`` names the cluster, unset or
        ``local`` starts a local instance of ``workers`` CPUs: datasets.parallel's rule,
        and every node must see the checkout and the venv at the same paths). Ray actors
        end with the learner: ``close()`` kills them, and a killed driver's actors are
        ended by Ray (they are owned by the driver).
    policy, reference : CPU copies (the learner may be on CUDA; workers never touch it)
    """

    def __init__(
        self,
        make_envs: Callable[[Sequence[int]], gym.vector.VectorEnv],
        policy: nn.Module,
        *,
        n_envs: int,
        workers: int,
        steps: int,
        reference: nn.Module | None = None,
        backend: str = "pool",
        daemon: bool = True,
    ) -> None:
        assert 1 <= workers <= n_envs, f"RolloutPool: {workers} workers for {n_envs} envs"
        self.blocks = split_envs(n_envs, workers)
        self.backend = backend
        self._local: list[RolloutWorker] = []
        self._actors: list[Any] = []
        self._refs: list[Any] = []
        self._ray, self._started = None, False
        self._pending = False
        try:
            if backend == "ray":
                from datasets.parallel import start_ray

                self._ray, self._started = start_ray(workers)
                actor = self._ray.remote(num_cpus=1)(_RayWorker)
                # into the object store once (the env factories hold the songs), not once per actor
                shared = [self._ray.put(x) for x in (make_envs, policy, reference)]
                self._actors = [actor.remote(os.getcwd(), shared[0], list(b), shared[1], shared[2], steps)
                                for b in self.blocks]
            else:
                self._local = [RolloutWorker(functools.partial(make_envs, list(b)), policy, steps=steps,
                                             reference=reference, daemon=daemon) for b in self.blocks]
        except BaseException:
            self.close()
            raise

    def request(self, weights: Mapping[str, torch.Tensor], seeds: Sequence[int], sample_seed: int) -> None:
        """Every worker starts a rollout with these weights (copied now), its block of the
        env reset ``seeds`` and its own sampling seed."""
        assert not self._pending, "RolloutPool: result() of the previous request was not taken"
        seeds = [int(s) for s in seeds]
        if self._ray is not None:
            wref = self._ray.put({k: v.detach().cpu().numpy() for k, v in weights.items()})
            self._refs = [a.rollout.remote(wref, [seeds[i] for i in b], worker_sample_seed(sample_seed, k))
                          for k, (a, b) in enumerate(zip(self._actors, self.blocks))]
        else:
            for k, (w, b) in enumerate(zip(self._local, self.blocks)):
                w.request(weights, [seeds[i] for i in b], worker_sample_seed(sample_seed, k))
        self._pending = True

    def result(self) -> RolloutResult:
        """Wait for every worker's rollout; one rollout, in worker order."""
        assert self._pending, "RolloutPool: no rollout was requested"
        self._pending = False
        n = len(self.blocks)
        if self._ray is None:
            results = []
            for k, w in enumerate(self._local):
                try:
                    results.append(w.result())
                except RuntimeError as exc:
                    raise RuntimeError(f"rollout worker {k} of {n}: {exc}") from None
            return merge_results(results)
        results = []
        for k, ref in enumerate(self._refs):
            try:
                msg = self._ray.get(ref)
            except Exception as exc:  # RayTaskError (with the actor's traceback) or RayActorError (it died)
                raise RuntimeError(f"rollout worker {k} of {n} (Ray actor) failed:\n{exc}") from None
            _, (fields, ref_lp), t_reset, t_rollout, cpu = msg
            # the object store's arrays are read-only: the learner gets its own copies
            ro = Rollout(**_to_torch(fields, copy=True))
            results.append(RolloutResult(ro, None if ref_lp is None else torch.from_numpy(np.array(ref_lp)),
                                         t_reset, t_rollout, cpu))
        self._refs = []
        return merge_results(results)

    def close(self) -> None:
        """Stop every worker (unfinished requests are abandoned); a Ray instance this pool
        started is shut down."""
        for w in self._local:
            w.close()
        self._local = []
        if self._ray is not None:
            for a in self._actors:
                try:
                    self._ray.kill(a)
                except Exception:  # already gone
                    pass
            self._actors, self._refs = [], []
            if self._started:
                self._ray.shutdown()
            self._ray = None


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
    """Each epoch's rollout, one ``next_rollout()`` call whether it is collected here, by
    a forked ``RolloutWorker`` (``overlap``) or by a ``RolloutPool`` of N workers
    (``workers >= 1``).

    make_envs : ``make_envs()`` builds the vector env of all envs (in this process, or in
        the worker); ``make_envs(indices)`` those envs only (a pool worker's block)
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
    workers : >= 1: a ``RolloutPool`` of so many workers on the CPU (any learner device),
        each with its block of the ``n_envs`` envs; with ``overlap`` they collect one
        update ahead (lagged, as the single worker), without it each epoch's rollout is
        collected with the current weights while the learner waits (plain PPO)
    backend : the pool's ``pool`` (forked processes) or ``ray`` (actors)
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
        workers: int = 0,
        n_envs: int = 0,
        backend: str = "pool",
    ) -> None:
        self.steps, self.device, self.sample_gen, self.ref_batch = steps, device, sample_gen, ref_batch
        self.reference = reference
        self._envs: gym.vector.VectorEnv | None = None
        self._worker: RolloutWorker | RolloutPool | None = None
        self._behaviour: dict[str, torch.Tensor] = {}
        self._ahead = overlap  # the worker(s) collect the next epoch while the learner updates
        if workers >= 1:
            self._worker = RolloutPool(
                make_envs, copy.deepcopy(policy).cpu(), n_envs=n_envs, workers=workers, steps=steps, backend=backend,
                reference=copy.deepcopy(reference).cpu() if reference is not None else None, daemon=daemon,
            )
            if overlap:  # kept on the CPU (a CUDA learner's checkpoint loads anywhere)
                start = behaviour or policy.state_dict()
                self._behaviour = {k: v.detach().to("cpu", copy=True) for k, v in start.items()}
                self._worker.request(self._behaviour, first.envs, first.sample)
        elif overlap:
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
        if self._worker is not None and not self._ahead:
            # -- a pool without overlap: this epoch's rollout, with the weights as they are now
            self._worker.request(policy.state_dict(), seeds.envs, seeds.sample)
            res = self._worker.result()
            times = {"time_data": 0.0, "time_rollout": time.perf_counter() - t0,
                     "time_worker_reset": res.t_reset, "time_worker_rollout": res.t_rollout, "cpu_time_worker": res.cpu}
            return RolloutBatch(res.rollout, res.ref_logp, lagged=False, times=times)
        if self._worker is not None:
            # -- rollout e (collected with the weights before update e - 1) ...
            res = self._worker.result()
            times = {"time_data": 0.0, "time_rollout": time.perf_counter() - t0,  # time waited for the worker
                     "time_worker_reset": res.t_reset, "time_worker_rollout": res.t_rollout,
                     "cpu_time_worker": res.cpu}
            # ... and rollout e + 1 starts now, with these weights, while the learner updates
            self._behaviour = {k: v.detach().to("cpu", copy=True) for k, v in policy.state_dict().items()}
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
