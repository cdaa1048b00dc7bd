"""Benchmark: how the stages scale with workers (issue 18), measured in one run.

    .venv/bin/python bench/scale.py [--stages alignment bc ppo] [--workers 1 2] [--no-ray]
        [--pairs 8] [--seconds 30] [--bc-samples 4096] [--ppo-epochs 3]

One table, a row per stage, configuration and worker count, each with the single-process
figure of the same stage in the same run (``x single``).

``alignment``: ``make align``'s code path (``alignment.run.main``) on ``--pairs`` demo pairs
(procedural songs of ``--seconds`` s, edited by the 'tight' persona, built once in a temp
folder), with a fresh feature cache per configuration so every run computes the same work:

- ``single process``: ``--jobs 1``, everything in this process: the baseline;
- ``pool``: ``--backend pool --jobs N`` (local worker processes), N in ``--workers``;
- ``ray``: ``--backend ray --jobs N`` with ``RAY_ADDRESS=local``: a local Ray instance
  of N CPUs, started and stopped inside the timed run (a user pays it), and its start-up
  alone (``ray start-up``: one trivial task) measured beside it.

``pairs/min`` is pairs over wall time; ``x single`` divides it by the single-process
figure of this run. Wall time, since the point is parallelism: on a shared machine the
load average (printed) says how many cores the run really had, and ``s/item`` (the mean
seconds one pair took inside its worker) shows contention: it grows when the workers
share fewer cores than there are of them.

``bc``: a behaviour-cloning epoch, the plain process against ``torchrun`` with N gloo
processes (``bench/scale_train.py``'s ``bench_bc``: samples/s); ``ppo``: PPO env steps/s
with N rollout workers, local processes and Ray actors (``bench/scale_ppo.py``'s
``bench_ppo``, on two real recordings). Those two scripts also run alone, with more
options.
"""

from __future__ import annotations

import os

# one BLAS thread per process (the workers inherit it): the table measures processes
for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_k] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scale_rows import Row, print_table, scoped_env  # noqa: E402


STAGES = ("alignment", "bc", "ppo")


def build_pairs(folder: Path, *, n: int, seconds: float) -> Path:
    """``n`` demo pairs (procedural songs, no MP3 delivery) in ``folder``."""
    from datasets.demo import build as demo_build

    cfg = demo_build.BuildConfig(out=str(folder), n_songs=n, persona="tight", seed=11, jobs=2, min_seconds=seconds,
                                 max_seconds=seconds + 4.0, midi_fraction=0.0, delivery_fraction=0.0)
    rows = demo_build.build(cfg, progress=False)
    bad = [r for r in rows if "error" in r]
    if bad:
        raise SystemExit(f"error: demo pairs failed to build: {bad[0]['error']}")
    return folder


def _align_once(data: Path, work: Path, tag: str, argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, mean seconds per pair inside its worker) of one ``alignment.run``
    over ``data`` with a fresh cache and run folder."""
    from alignment.run import main

    err = io.StringIO()
    with scoped_env(**env, EDITOR_CACHE_DIR=str(work / f"cache-{tag}")):
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):  # its table and bar
            rc = main(["--data", str(data), "--run", tag, "--runs-dir", str(work / "runs"), "--force", *argv])
        wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"error: alignment {tag} exited {rc}: {err.getvalue()[-500:]}")
    index = json.loads((work / "runs" / tag / "labels" / "index.json").read_text())
    return wall, sum(e["seconds"] for e in index.values()) / max(1, len(index))


def _warm_up(data: Path, work: Path) -> None:
    """Align one pair in this process first: the single-process row then measures the
    work, not this process's one-time imports (each pool or Ray worker pays its own)."""
    from alignment.run import label_one

    raw = sorted((data / "raw").iterdir())[0]
    with scoped_env(EDITOR_CACHE_DIR=str(work / "cache-warmup")):
        label_one(raw.stem, str(raw), str(data / "edited" / raw.name), str(work / "warmup.json"))


def ray_startup_seconds(workers: int) -> float:
    """Start a local Ray instance of ``workers`` CPUs, run one trivial task, stop it."""
    from datasets.parallel import run_items

    with scoped_env(RAY_ADDRESS="local"):
        t0 = time.perf_counter()
        list(run_items(abs, [(-1,)], jobs=workers, backend="ray"))
        return time.perf_counter() - t0


def bench_alignment(data: Path, work: Path, *, workers: list[int], ray: bool) -> list[Row]:
    n = sum(1 for _ in (data / "raw").iterdir())
    rate = lambda s: 60.0 * n / s  # noqa: E731  pairs per minute
    runs: list[tuple[str, int, tuple[float, float]]] = [("single process", 1, _align_once(data, work, "single", ["--jobs", "1"], {}))]
    for w in workers:
        if w > 1:  # --jobs 1 on the pool is the single process above
            runs.append(("pool", w, _align_once(data, work, f"pool{w}", ["--jobs", str(w), "--backend", "pool"], {})))
    if ray:
        for w in workers:
            runs.append(("ray", w, _align_once(data, work, f"ray{w}", ["--jobs", str(w), "--backend", "ray"], {"RAY_ADDRESS": "local"})))
    single = rate(runs[0][2][0])
    return [Row("alignment", c, w, rate(s), "pairs/min", s, single, item) for c, w, (s, item) in runs]


def bench_bc(work: Path, *, workers: list[int], samples: int) -> tuple[list, list[str]]:
    """BC epoch rows (bench/scale_train.py: each world size a fresh process tree)."""
    from bench import scale_train

    ns = argparse.Namespace(samples=samples, batch_size=64, procs=sorted({1, *workers}), repeat=1)
    rows, epoch_s = scale_train.bench_bc(work, ns)
    return rows, ["BC epoch seconds: " + ", ".join(f"{n} process(es) {s:.2f}" for n, s in sorted(epoch_s.items()))
                  + f" ({samples} random samples, global batch 64)"]


def bench_ppo(work: Path, *, workers: list[int], epochs: int, ray: bool) -> tuple[list, list[str]]:
    """PPO env steps/s rows (bench/scale_ppo.py) on its default recordings."""
    import torch

    from agent.device import pick_device
    from bench import scale_ppo

    torch.set_num_threads(1)  # as rl/train.py: PPO's batches are small
    paths = [scale_ppo.MUSIC / n for n in ("race1-jt.ogg", "start1-jt.ogg")]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return [], [f"ppo: skipped, no such recording: {missing[0]}"]
    songs = scale_ppo.load_songs(paths, cache=work / "cache")
    return scale_ppo.bench_ppo(songs, epochs=epochs, workers=workers, ray=ray, device=pick_device("auto"))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__.splitlines()[0])
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="what to measure (default: all)")
    p.add_argument("--pairs", type=int, default=8, help="demo pairs aligned by every configuration")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each demo song (s)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    p.add_argument("--no-ray", action="store_true", help="the local pool only")
    p.add_argument("--bc-samples", type=int, default=4096, help="random BC samples per epoch (bc)")
    p.add_argument("--ppo-epochs", type=int, default=3, help="PPO epochs per configuration, epoch 0 not timed (ppo)")
    p.add_argument("--keep", help="build the pairs and runs in this folder and keep them (default: a temp folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.pairs < 1 or args.seconds < 10 or min(args.workers) < 1 or args.bc_samples < 64 or args.ppo_epochs < 2:
        print("error: --pairs >= 1, --seconds >= 10, --workers >= 1, --bc-samples >= 64 and --ppo-epochs >= 2", file=sys.stderr)
        return 2
    workers = sorted(set(args.workers))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        load0 = os.getloadavg()[0]
        rows: list = []
        notes: list[str] = []
        if "alignment" in args.stages:
            data = build_pairs(work / "data", n=args.pairs, seconds=args.seconds)
            _warm_up(data, work)
            rows += bench_alignment(data, work, workers=workers, ray=not args.no_ray)
            notes.append(f"alignment: {args.pairs} demo pairs of {args.seconds:.0f}-{args.seconds + 4:.0f} s; "
                         "s/item: seconds per pair inside its worker")
            if not args.no_ray:
                notes.append(f"ray start-up (local instance, {max(workers)} CPUs, one trivial task, stop): "
                             f"{ray_startup_seconds(max(workers)):.1f} s, inside each ray row's wall time")
        if "bc" in args.stages:
            r, n = bench_bc(work / "bc", workers=workers, samples=args.bc_samples)
            rows, notes = rows + r, notes + n
        if "ppo" in args.stages:
            r, n = bench_ppo(work / "ppo", workers=workers, epochs=args.ppo_epochs, ray=not args.no_ray)
            rows, notes = rows + r, notes + n
        notes.append(f"{os.cpu_count()} CPUs; load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after")
        print_table(rows, notes)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
