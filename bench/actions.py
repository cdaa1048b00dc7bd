"""Speed of the action executor: steps per second with random allowed actions.

Run: ``.venv/bin/python bench/actions.py [--seconds 180] [--episodes 200]``

A 3-minute grid at 120 BPM in 4/4 (360 beats). Rows:
- baseline: ``masks()`` recomputed at every step (the mask cache cleared), the cost a
  naive environment would pay;
- step + masks: what the environment pays per step (cached masks);
- step + masks + choice: plus drawing a random allowed action (the benchmark's own
  sampling, which a policy replaces);
- oracle: plans decomposed back into actions per second.
The goal is >= 20,000 environment steps/s, i.e. step + masks well under 50 us.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.beats import BeatGrid  # noqa: E402
from envs.executor import Executor  # noqa: E402
from envs.oracle import oracle  # noqa: E402


def _grid(seconds: float) -> BeatGrid:
    times = np.arange(0.21, seconds - 0.05, 0.5)  # 120 BPM, a pickup before the first beat
    return BeatGrid.from_beat_times(times, duration=seconds, beats_per_bar=4, downbeat_index=1)


def _run(ex: Executor, episodes: int, *, clear_cache: bool, seed: int) -> tuple[float, int]:
    """Seconds spent in masks() + step() and the number of steps."""
    rng = random.Random(seed)
    spent, steps = 0.0, 0
    clock = time.perf_counter
    for _ in range(episodes):
        ex.reset()
        while not ex.done:
            acts = ex.valid_actions()
            act = acts[rng.randrange(len(acts))]
            if clear_cache:
                ex._tab.mask_cache.clear()
            t0 = clock()
            ex.masks()
            ex.step(*act)
            spent += clock() - t0
            steps += 1
    return spent, steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=180.0, help="song length of the grid")
    p.add_argument("--episodes", type=int, default=200, help="random episodes per row")
    args = p.parse_args(argv)
    grid = _grid(args.seconds)
    ex = Executor(grid)
    _run(ex, 5, clear_cache=False, seed=0)  # warm-up

    rows = []
    t, n = _run(ex, max(5, args.episodes // 10), clear_cache=True, seed=1)
    base = n / t
    rows.append(("baseline: step + uncached masks", n, t / n * 1e6, base))
    t, n = _run(ex, args.episodes, clear_cache=False, seed=2)
    rows.append(("step + masks (cached)", n, t / n * 1e6, n / t))

    rng = random.Random(3)
    n = 0
    t0 = time.perf_counter()
    plans = []
    for _ in range(args.episodes):
        ex.reset()
        while not ex.done:
            ex.masks()
            acts = ex.valid_actions()
            ex.step(*acts[rng.randrange(len(acts))])
            n += 1
        plans.append(ex.plan())
    t = time.perf_counter() - t0
    rows.append(("step + masks + random choice + plan()", n, t / n * 1e6, n / t))

    t0 = time.perf_counter()
    n_exact = sum(oracle(pl).exact for pl in plans if pl.segments)
    t = time.perf_counter() - t0
    n_plans = sum(1 for pl in plans if pl.segments)

    print(f"grid: {grid.n_beats} beats, {grid.duration:.0f} s, {grid.beats_per_bar}/4")
    print(f"{'row':42s} {'steps':>8s} {'us/step':>8s} {'steps/s':>10s} {'x baseline':>10s}")
    for name, steps, us, rate in rows:
        print(f"{name:42s} {steps:8d} {us:8.2f} {rate:10.0f} {rate / base:10.1f}")
    print(f"{'oracle (plans/s)':42s} {n_plans:8d} {t / n_plans * 1e6:8.0f} {n_plans / t:10.1f}   exact {n_exact}/{n_plans}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
