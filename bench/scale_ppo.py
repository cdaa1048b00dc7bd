"""Benchmark: PPO env steps/s with 1 and 2 rollout workers, local processes and Ray, one run.

    .venv/bin/python bench/scale_ppo.py [--epochs 3] [--workers 1 2] [--no-ray] [--songs race1-jt.ogg start1-jt.ogg]

Issue 18's "PPO env steps/s with 1 and 2 rollout workers" rows, with bench/scale.py's
columns (``Row``; ``bench_ppo`` returns the rows for scale.py's table). Every
configuration is ``rl.ppo.train`` with ``make finetune``'s defaults (16 envs x 64 steps,
KL anchor, song baseline, the env's audio reward) on the same real recordings (features
with the DSP stems, computed once), the default policy, one torch thread per process and
the learner on ``pick_device()``'s device (CUDA when present):

- ``single process``: ``rollout_workers=0, overlap=False``: the envs step in the
  learner's process, then the learner updates: the baseline;
- ``pool`` 1: ``rollout_workers=0`` with overlap, today's CPU default: one forked worker
  collects the next rollout while the learner updates;
- ``pool`` N >= 2: ``rollout_workers=N`` forked workers, each with its block of the envs,
  one update ahead;
- ``ray`` N: ``rollout_workers=N`` Ray actors (1 CPU each) with ``RAY_ADDRESS=local``:
  a local instance of N CPUs, started and stopped inside the run.

``env steps/s`` counts the env steps of epochs 1.. over the wall time from the end of
epoch 0 to the end of the last epoch (steady state: epoch 0 pays the start-up, the
worker's first, un-overlapped rollout and Ray's start); ``wall s`` is the whole run,
start-up included. ``x single`` divides by the single-process figure of this run. On a
shared machine the load average (printed) says how many cores the run really had, so
the notes also give the CPU seconds per 1000 env steps of the learner and of the
workers (``cpu_time``, ``cpu_time_worker`` of rl.ppo's rows), and from the last pool
run the ceiling N free cores would allow: an epoch takes about the longer of the
learner's time and the workers' time shared by N.
"""

from __future__ import annotations

import os

for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_k] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scale_rows import Row, print_table, scoped_env  # noqa: E402

MUSIC = ROOT / ".." / "shared" / "data" / "music"


def load_songs(paths: list[Path], *, cache: Path):
    """envs.env.Song of each recording: its features (DSP stems) on its beat grid, with audio."""
    from datasets.audio import load_audio
    from datasets.features import extract_features
    from envs.env import Song

    songs = []
    with scoped_env(EDITOR_CACHE_DIR=str(cache)):
        for p in paths:
            audio = load_audio(p)
            songs.append(Song.from_features(extract_features(audio, stems="dsp"), audio=audio, name=p.stem))
    return songs


@dataclass(frozen=True)
class Run:
    """One configuration's run: throughput, wall time and where the CPU time went."""

    sps: float  # steady-state env steps/s (epochs 1..)
    wall: float  # seconds, the whole run
    learner_cpu: float  # CPU seconds of the learner's process per 1000 env steps (epochs 1..)
    worker_cpu: float  # CPU seconds of all rollout workers together per 1000 env steps (0: none)


def ppo_run(songs, *, epochs: int, workers: int, overlap: bool, backend: str, device) -> Run:
    """``rl.ppo.train`` with ``make finetune``'s defaults in this configuration, timed."""
    import torch

    from agent.model import Policy, PolicyConfig
    from envs.env import AudioEditEnv
    from rl.ppo import PPOConfig, train

    torch.manual_seed(0)
    policy = Policy(PolicyConfig.from_layout())
    cfg = PPOConfig(epochs=epochs, save_every=0, eval_every=0, rollout_workers=workers, overlap=overlap,
                    rollout_backend=backend)
    env_fns = [lambda: AudioEditEnv(songs, target_keep=0.5)] * cfg.n_envs
    t0 = time.perf_counter()
    marks, rows = [], []  # (time, global step) at the end of every epoch; the epochs' stats
    for row in train(cfg, policy=policy, env_fns=env_fns, device=device):
        marks.append((time.perf_counter(), int(row["global_step"])))
        rows.append(row)
    wall = time.perf_counter() - t0
    (ta, sa), (tb, sb) = marks[0], marks[-1]
    per_k = 1000.0 / max(sb - sa, 1)
    return Run(sps=(sb - sa) / max(tb - ta, 1e-9), wall=wall,
               learner_cpu=per_k * sum(r["cpu_time"] for r in rows[1:]),
               worker_cpu=per_k * sum(r.get("cpu_time_worker", 0.0) for r in rows[1:]))


def bench_ppo(songs, *, epochs: int, workers: list[int], ray: bool, device) -> tuple[list[Row], list[str]]:
    """The single process first, then the local workers, then Ray's (see the module
    docstring): (rows, notes on where the CPU time went and what free cores would give)."""
    runs: list[tuple[str, int, Run]] = []

    def one(config: str, n: int, **kw) -> None:
        r = ppo_run(songs, epochs=epochs, device=device, **kw)
        runs.append((config, n, r))
        print(f"  ... {config} {n}: {r.sps:.0f} env steps/s ({r.wall:.0f} s); CPU s per 1000 env steps: "
              f"learner {r.learner_cpu:.2f}, workers {r.worker_cpu:.2f}", flush=True)

    with scoped_env(RAY_ADDRESS=None):  # the local rows never join a cluster named in the environment
        one("single process", 1, workers=0, overlap=False, backend="pool")
        for n in workers:
            one("pool", n, workers=0 if n == 1 else n, overlap=True, backend="pool")
    if ray:
        with scoped_env(RAY_ADDRESS="local"):
            for n in workers:
                one("ray", n, workers=n, overlap=True, backend="ray")
    single = runs[0][2].sps
    rows = [Row("PPO", c, n, r.sps, "env steps/s", r.wall, single) for c, n, r in runs]
    # What free cores would give: with N workers an epoch takes about the longer of the
    # learner's CPU time and the workers' CPU time shared by N (the two overlap), so the
    # ceiling is 1000 / max(learner, workers / N) env steps/s per 1000-step CPU costs.
    notes = [f"CPU s per 1000 env steps, {c} {n}: learner {r.learner_cpu:.2f}, rollout workers {r.worker_cpu:.2f}"
             for c, n, r in runs]
    lagged = [r for c, n, r in runs if c == "pool" and r.worker_cpu > 0]
    if lagged:
        lr, wk = lagged[-1].learner_cpu, lagged[-1].worker_cpu
        notes.append("ceiling on free cores, 1000 / max(learner, workers / N): " + ", ".join(
            f"N={n} {1000.0 / max(lr, wk / n):.0f}" for n in (1, 2, 4, 8, 16)) + " env steps/s (learner-bound from "
            f"N >= {wk / lr:.1f})")
    return rows, notes


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/scale_ppo.py", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="PPO epochs per configuration (epoch 0 is not timed)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="rollout worker counts to measure")
    p.add_argument("--no-ray", action="store_true", help="local processes only")
    p.add_argument("--songs", nargs="+", default=["race1-jt.ogg", "start1-jt.ogg"],
                   help=f"recordings the envs edit (names in {MUSIC.resolve()}, or paths)")
    p.add_argument("--device", default="auto", help="the learner's device: auto (CUDA when present), cpu, cuda")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.epochs < 2 or min(args.workers) < 1:
        print("error: --epochs >= 2 (epoch 0 is not timed) and --workers >= 1", file=sys.stderr)
        return 2
    paths = [Path(s) if Path(s).is_file() else MUSIC / s for s in args.songs]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"error: no such recording: {missing[0]}", file=sys.stderr)
        return 2
    import torch

    from agent.device import pick_device

    torch.set_num_threads(1)  # as rl/train.py: PPO's batches are small
    device = pick_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-ppo-"))
    try:
        load0 = os.getloadavg()[0]
        songs = load_songs(paths, cache=work / "cache")
        rows, cpu_notes = bench_ppo(songs, epochs=args.epochs, workers=sorted(set(args.workers)), ray=not args.no_ray,
                                    device=device)
        names = ", ".join(p.name for p in paths)
        notes = [*cpu_notes, f"learner on {device}, rollout workers on CPU; {len(songs)} songs ({names}); "
                 f"16 envs x 64 steps, {args.epochs} epochs each (epoch 0 not timed); {os.cpu_count()} CPUs; "
                 f"load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after"]
        print_table(rows, notes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
