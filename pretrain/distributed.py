"""Data-parallel behaviour cloning under ``torchrun``: which rank this process is, and the
few collectives the BC loop needs.

    torchrun --nproc_per_node 2 -m pretrain.train -- --run demo       # 2 processes, one box
    python -m pretrain.train --run demo                               # 1 process, as before

(``--``: torchrun's parser would read ``--run`` as its ``--run-path``.)

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
in each process it starts. ``init_from_env`` joins the process group when WORLD_SIZE > 1
(gloo on the CPU, NCCL on CUDA, one GPU per rank: ``cuda:LOCAL_RANK``); without those
variables, or with WORLD_SIZE = 1, nothing is initialised and ``current()`` is the single
process (rank 0 of 1), so the plain run does not touch ``torch.distributed`` at all.

How pretrain/train.py uses it (the contract, tests/pretrain/test_distributed.py):
- every rank builds the same data (each box's local rank 0 first, so the box's others
  read its feature cache), checked equal across ranks by a fingerprint (``check_same``);
- each global batch (``batch_size`` samples, the single process's batch) is split into
  disjoint strided shards, one per rank (``shard``). Each loss term of a shard is divided
  by the term's weight sum over the whole global batch (``pretrain.losses.
  loss_denominators`` of it: every rank holds the data, so no all-reduce), so the
  shards' losses add up to the single process's loss of that batch; DistributedDataParallel
  averages the gradients over the ranks, so each rank scales its loss by the world size:
  one all-reduce per step, the gradients'. Without dropout the weights equal the single
  process's up to float summation order (and Adam's amplification of it; 2 gloo ranks vs
  one process: within 1e-3 after 3 epochs at lr 1e-2, tests/pretrain/test_distributed.py);
- rank 0 alone evaluates, logs, writes TensorBoard and checkpoints, collects the DAgger
  rounds' rollouts; what the others need of it (the checkpoint to resume, the
  early-stopping decision, a round's new samples) is broadcast (``share``).

The group's timeout (``TIMEOUT``) bounds how long the other ranks wait for rank 0 while it
builds features the cache does not hold yet or collects a DAgger round; for a large corpus
extract features first (``python -m datasets.features FOLDER``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from datasets.errors import EditorError, ParameterError

__all__ = ["Dist", "TIMEOUT", "current", "init_from_env", "shutdown", "share", "raise_any", "shard", "total_across",
           "check_same", "fingerprint", "DDP", "epoch_seed"]

# Rank 0 may build a corpus's features (minutes per hour of audio on a CPU) or collect a
# DAgger round while the others wait in a collective; torch's default (30 min for gloo,
# 10 min for NCCL) would kill a healthy job on a few hundred uncached songs.
TIMEOUT = timedelta(hours=3)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank r of ``world`` (1 = not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""  # "gloo" / "nccl"; "" when not distributed

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, evaluates and writes."""
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank}/{self.world} ({self.backend})" if self.active else "single process"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ParameterError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def current() -> Dist:
    """The job this process joined (``init_from_env``), or the single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=_env_int("LOCAL_RANK", 0),
                backend=str(dist.get_backend()))


def init_from_env(device: str = "auto") -> Dist:
    """Join torchrun's process group when WORLD_SIZE > 1; otherwise do nothing.

    device : the stage's ``--device`` (auto / cpu / cuda). On CUDA each rank takes
        ``cuda:LOCAL_RANK`` (an explicit index would put every rank on one GPU and is
        refused); NCCL then, gloo on the CPU.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Dist()
    if dist.is_initialized():
        return current()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if ":" in device:
        raise ParameterError(f"--device {device!r}: under torchrun every rank uses cuda:LOCAL_RANK; pass auto, cuda or cpu")
    use_cuda = device == "cuda" or (device in ("auto", "") and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ParameterError("--device cuda requested but torch sees no CUDA device")
        if local_rank >= torch.cuda.device_count():
            raise ParameterError(f"LOCAL_RANK={local_rank} but this box has {torch.cuda.device_count()} GPU(s): "
                                 "--nproc_per_node must not exceed the GPU count")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return Dist(rank=rank, world=world, local_rank=local_rank, backend=backend)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device(d: Dist) -> torch.device:
    # NCCL moves only CUDA tensors; gloo only CPU ones
    return torch.device("cuda", torch.cuda.current_device()) if d.backend == "nccl" else torch.device("cpu")


def share(obj, d: Dist | None = None):
    """rank 0's ``obj`` on every rank (pickled; the others' argument is ignored).
    An EditorError passed as obj is raised on every rank, so one rank's user error ends
    the whole job with the same message instead of leaving the others waiting."""
    d = d or current()
    if d.active:
        box = [obj if d.main else None]
        dist.broadcast_object_list(box, src=0, device=_collective_device(d))
        obj = box[0]
    if isinstance(obj, EditorError):
        raise obj
    return obj


def raise_any(err: EditorError | None, d: Dist) -> None:
    """Every rank raises the first of the ranks' errors (by rank), or none does: a user
    error found on one box ends the whole job with its message instead of leaving the
    others waiting in their next collective."""
    if not d.active:
        if err is not None:
            raise err
        return
    errs: list = [None] * d.world
    dist.all_gather_object(errs, err)
    first = next((e for e in errs if e is not None), None)
    if first is not None:
        raise first


def shard(batch: np.ndarray, d: Dist) -> tuple[np.ndarray, bool]:
    """(this rank's rows of one global batch, whether they are real).

    Rows r, r + world, ...: disjoint, together the whole batch, sizes differing by at
    most one. A rank left without a row (a last batch smaller than the world) gets one
    stand-in row, not real: it must still take part in the gradient all-reduce, with its
    loss multiplied by 0.
    """
    if not d.active:
        return batch, True
    rows = batch[d.rank :: d.world]
    if len(rows) == 0:
        return batch[:1], False
    return rows, True


def total_across(values: dict[str, float], d: Dist) -> dict[str, float]:
    """Per-key sum over ranks of floats (every rank passes the same keys): the logged
    losses, each rank's being its shard's part of the global batch's."""
    if not d.active or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_collective_device(d))
    dist.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(str((a.dtype, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def check_same(what: str, key: str, d: Dist) -> None:
    """Raise on every rank unless every rank has the same ``key`` (e.g. of its data): a
    rank training on other samples would make the shards overlap silently."""
    if not d.active:
        return
    keys: list = [None] * d.world
    dist.all_gather_object(keys, key)
    if len(set(keys)) > 1:
        odd = [r for r, k in enumerate(keys) if k != keys[0]]
        raise EditorError(f"{what} differs between ranks (ranks {odd} differ from rank 0): every node needs the same "
                          "labels, audio and feature settings")


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Torch seed of one rank's epoch under DDP: dropout and feature-dropout masks differ
    between ranks (their shards are different samples) and depend only on (seed, epoch,
    rank), so a DDP run resumed with the same world size draws the same masks."""
    return int(np.random.SeedSequence([seed, epoch, rank, 0xDD9]).generate_state(1, dtype=np.uint64)[0] % (2**63))


class DDP(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that also answers the wrapped policy's attributes
    (``cfg``, ``log_probs``, ``normalizer``: pretrain.losses.bc_losses reads them), so the
    loss code takes the wrapper or the bare policy alike."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":  # not set yet (inside DistributedDataParallel.__init__)
                raise
            return getattr(self.module, name)
