"""Benchmark: how the per-song stages scale with workers (issue 18), measured in one run.

    .venv/bin/python bench/scale.py [--pairs 8] [--seconds 30] [--workers 1 2] [--no-ray]

Alignment (``make align``'s code path, ``alignment.run.main``) of ``--pairs`` demo pairs
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

Issue 18's other rows, BC epoch time with 1 vs 2 gloo processes (torchrun) and PPO env
steps/s with 1 vs 2 rollout workers, belong in this table too: a function per stage
that returns its :class:`Row` list, with its own single-process figure, called from
``main`` beside :func:`bench_alignment`.
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Row:
    """One measured configuration of one stage."""

    stage: str  # "alignment", ...
    config: str  # "single process", "pool", "ray", ...
    workers: int
    value: float  # in ``unit``, higher is better
    unit: str
    seconds: float  # wall time of the run
    single: float  # the single-process value of the same stage in the same run
    item_s: float  # mean seconds one item (pair, epoch, ...) took inside its worker


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


@contextlib.contextmanager
def _env(**values: str):
    """Set environment variables for the block, then put back what was there."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _align_once(data: Path, work: Path, tag: str, argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, mean seconds per pair inside its worker) of one ``alignment.run``
    over ``data`` with a fresh cache and run folder."""
    from alignment.run import main

    err = io.StringIO()
    with _env(**env, EDITOR_CACHE_DIR=str(work / f"cache-{tag}")):
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
    with _env(EDITOR_CACHE_DIR=str(work / "cache-warmup")):
        label_one(raw.stem, str(raw), str(data / "edited" / raw.name), str(work / "warmup.json"))


def ray_startup_seconds(workers: int) -> float:
    """Start a local Ray instance of ``workers`` CPUs, run one trivial task, stop it."""
    from datasets.parallel import run_items

    with _env(RAY_ADDRESS="local"):
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


def print_table(rows: list[Row], notes: list[str]) -> None:
    print(f"{'stage':<10} {'config':<15} {'workers':>7} {'value':>9} {'unit':<10} {'wall s':>7} {'x single':>8} {'s/item':>7}")
    for r in rows:
        print(f"{r.stage:<10} {r.config:<15} {r.workers:>7} {r.value:>9.1f} {r.unit:<10} {r.seconds:>7.1f} "
              f"{r.value / r.single:>8.2f} {r.item_s:>7.2f}")
    for line in notes:
        print(line)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=8, help="demo pairs aligned by every configuration")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each demo song (s)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    p.add_argument("--no-ray", action="store_true", help="the local pool only")
    p.add_argument("--keep", help="build the pairs and runs in this folder and keep them (default: a temp folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.pairs < 1 or args.seconds < 10 or min(args.workers) < 1:
        print("error: --pairs >= 1, --seconds >= 10 and --workers >= 1", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        load0 = os.getloadavg()[0]
        data = build_pairs(work / "data", n=args.pairs, seconds=args.seconds)
        _warm_up(data, work)
        rows = bench_alignment(data, work, workers=sorted(set(args.workers)), ray=not args.no_ray)
        notes = [f"{args.pairs} demo pairs of {args.seconds:.0f}-{args.seconds + 4:.0f} s; {os.cpu_count()} CPUs; "
                 f"load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after"]
        if not args.no_ray:
            notes.append(f"ray start-up (local instance, {max(args.workers)} CPUs, one trivial task, stop): "
                         f"{ray_startup_seconds(max(args.workers)):.1f} s, inside each ray row's wall time")
        print_table(rows, notes)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
