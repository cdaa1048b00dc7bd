"""Benchmark: a behaviour-cloning epoch with 1 and with 2 gloo processes (torchrun), one run.

    .venv/bin/python bench/scale_train.py [--samples 4096] [--procs 1 2] [--batch-size 64] [--repeat 3]

Issue 18's "BC epoch time 1 vs 2 gloo processes" row: ``bench_bc`` returns it with
bench/scale.py's columns (``Row``), and scale.py's table shows it beside alignment and
PPO; this script runs it alone, with more options (``--batch-size``, ``--repeat``).

Each configuration is its own fresh process tree, so each pays the same imports:

- ``single process``: ``python bench/scale_train.py --worker-out F`` (no torchrun
  variables: the plain training path, bit for bit the one ``make pretrain`` runs);
- ``torchrun gloo``: ``python -m torch.distributed.run --standalone --nproc_per_node N``
  of the same worker: DistributedDataParallel, each rank a disjoint half of every global
  batch (pretrain/distributed.py), rank 0 evaluating and writing the checkpoints.

The worker trains ``pretrain.train.train`` on ``--samples`` random samples of the real
observation layout (bench/gpu.py ``random_bc_data``; the speed does not depend on the
values) with the default policy and one torch thread per process, and times epochs 1-2
of a run resumed after a warm-up epoch 0, less the set-up of a resumed call (as
bench/gpu.py does). ``samples/s`` = training samples per epoch / epoch seconds (the
epoch includes rank 0's validation and checkpoints); ``x single`` divides by the
single-process figure of this run; ``wall s`` is the whole command, process start-up,
imports and rendezvous included. On a shared machine the load average (printed) says how
many cores the run really had.
"""

from __future__ import annotations

import os

for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_k] = "1"

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scale_rows import Row  # noqa: E402


def worker(out: Path, *, samples: int, batch_size: int, work: Path) -> None:
    """One process of a configuration: train, time, rank 0 writes {epoch_s, n_train} to out."""
    import torch

    from bench.gpu import random_bc_data
    from pretrain.distributed import current, init_from_env, shutdown
    from pretrain.train import PretrainConfig, train

    init_from_env("cpu")
    d = current()
    try:
        data = random_bc_data(samples)  # the same seed on every rank: the same data
        cfg = PretrainConfig(run=f"bc-{d.world}", runs_dir=str(work), device="cpu", epochs=1, batch_size=batch_size,
                             dagger_rounds=0, planner=False, stems="dsp", figure_every=1000, threads=1)
        train(cfg, data, target_keep=0.5)  # epoch 0: warm-up

        def timed(c: PretrainConfig) -> tuple[float, dict]:
            t0 = time.perf_counter()
            s = train(c, data, target_keep=0.5)
            return time.perf_counter() - t0, s

        setup, _ = timed(cfg)  # resumes at epoch 1 of 1: the set-up alone
        two, summary = timed(replace(cfg, epochs=3))
        if d.main:
            out.write_text(json.dumps({"epoch_s": (two - setup) / 2, "n_train": summary["n_train"],
                                       "threads": torch.get_num_threads()}))
    finally:
        shutdown()


def _run(procs: int, out: Path, args: argparse.Namespace, work: Path) -> tuple[dict, float]:
    me = [str(Path(__file__).resolve()), "--worker-out", str(out), "--samples", str(args.samples),
          "--batch-size", str(args.batch_size), "--work", str(work)]
    if procs == 1:
        cmd = [sys.executable, *me]
    else:  # the venv's torchrun, so no torchrun on PATH is needed
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *me]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"error: {procs} process(es) exited {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
    return json.loads(out.read_text()), wall


def bench_bc(work: Path, args: argparse.Namespace) -> tuple[list[Row], dict[int, float]]:
    """(BC epoch rows, epoch seconds per world size): each world size ``--repeat`` times,
    the sizes interleaved (1, 2, 1, 2, ...) so they share the machine's load alike; the
    median run of each."""
    work.mkdir(parents=True, exist_ok=True)  # the workers write their results here
    runs: dict[int, list[tuple[float, float, int]]] = {}
    for k in range(args.repeat):
        for n in sorted(set(args.procs)):
            r, wall = _run(n, work / f"out{n}-{k}.json", args, work / f"runs{n}-{k}")
            runs.setdefault(n, []).append((r["epoch_s"], wall, r["n_train"]))
    med = {n: sorted(v)[len(v) // 2] for n, v in runs.items()}  # (epoch s, wall, n_train) of the median epoch
    rate = {n: m[2] / m[0] for n, m in med.items()}
    single = rate[1]
    return [Row("BC epoch", "single process" if n == 1 else "torchrun gloo", n, rate[n], "samples/s", med[n][1], single)
            for n in sorted(rate)], {n: m[0] for n, m in med.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/scale_train.py", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=4096, help="random BC samples (80 %% of the songs train)")
    p.add_argument("--batch-size", type=int, default=64, help="the global batch (PretrainConfig's default: 64)")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="world sizes; 1 = the plain process")
    p.add_argument("--repeat", type=int, default=1, help="runs per world size, interleaved; the median is shown")
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_out is not None:
        worker(args.worker_out, samples=args.samples, batch_size=args.batch_size, work=args.work)
        return 0
    if args.samples < 64 or min(args.procs) < 1 or 1 not in args.procs or args.repeat < 1:
        print("error: --samples >= 64, --repeat >= 1, --procs >= 1 and including 1 (the single-process figure)", file=sys.stderr)
        return 2
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-scale-train-") as tmp:
        rows, epoch_s = bench_bc(Path(tmp), args)
    print(f"{'stage':<10} {'config':<15} {'workers':>7} {'value':>9} {'unit':<10} {'epoch s':>8} {'wall s':>7} {'x single':>8}")
    for r in rows:
        print(f"{r.stage:<10} {r.config:<15} {r.workers:>7} {r.value:>9.1f} {r.unit:<10} {epoch_s[r.workers]:>8.2f} "
              f"{r.seconds:>7.1f} {r.value / r.single:>8.2f}")
    print(f"{args.samples} random samples, global batch {args.batch_size}, 1 torch thread per process, median of {args.repeat} "
          f"run(s); {os.cpu_count()} CPUs; "
          f"load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
