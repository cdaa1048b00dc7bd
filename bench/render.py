"""Render benchmark: speed on one core and clicks at joins, against a naive concatenation.

    .venv/bin/python bench/render.py [--song ../shared/data/music/spunkyrace-ks.ogg] [--repeats 5]

A real song is looped to 3 minutes (stereo, 44.1 kHz), beat-tracked, and cut into a plan
of 41 segments (40 joins, about 3 minutes of output) drawn at random with a few effects (EQ, gain, distortion,
reverb, double time, reverse, fades). Reported per song:
- render CPU time (median of ``--repeats``) on one core and thread, with the layout-only helpers
  (``output_duration``, ``join_positions``) and the reward's local check
  (``local_join_quality``) beside it;
- clicks found at the joins (``envs.quality.detect_clicks``) in our render and in a naive
  concatenation of the same raw spans with no crossfade (the baseline, same run).
Goals (issue 3): render <= 1 s, 0 clicks for our render, many for the naive one.
"""

from __future__ import annotations

import os

# one core, one thread: the goal is stated per core, and CI machines are shared
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets.audio import ANALYSIS_SR, load_audio, resample, to_mono  # noqa: E402
from datasets.beats import track_beats  # noqa: E402
from envs.plan import EditPlan, Ops, Segment  # noqa: E402
from envs.quality import click_scores  # noqa: E402
from envs.layout import join_positions, output_duration  # noqa: E402
from envs.render import render  # noqa: E402
from envs.reward import local_join_quality  # noqa: E402

MUSIC = ROOT.parent / "shared" / "data" / "music"
TARGET_S = 180.0
N_JOINS = 40

#: the "few effects": index in the plan -> ops
EFFECTS = {
    3: Ops(eq_low_db=4.0),
    7: Ops(gain_db=-3.0),
    11: Ops(eq_high_db=-4.0),
    15: Ops(distortion=15.0),
    19: Ops(reverb=0.4),
    23: Ops(time_factor=2.0),
    27: Ops(reversed=True),
    31: Ops(fade_in_s=0.3),
    35: Ops(fade_out_s=0.3),
}


def looped(path: Path, seconds: float) -> tuple[np.ndarray, int]:
    a = load_audio(path)
    reps = int(np.ceil(seconds * a.sr / a.y.shape[1]))
    y = np.tile(a.y, (1, reps))[:, : int(seconds * a.sr)]
    return np.ascontiguousarray(y), a.sr


def make_plan(grid, rng: np.random.Generator) -> EditPlan:
    segs = []
    n = grid.n_beats
    prev_end = -1
    # segment lengths around the mean that makes the edit last about TARGET_S too
    mean = max(3, int(round(TARGET_S / grid.beat_period / (N_JOINS + 1))))
    while len(segs) < N_JOINS + 1:
        length = int(rng.integers(mean - 2, mean + 3))
        a = int(rng.integers(0, n - length))
        if a == prev_end:  # keep every join a real cut
            continue
        segs.append(Segment(a, a + length, EFFECTS.get(len(segs), Ops())))
        prev_end = a + length
    return EditPlan(tuple(segs), grid, "")


def naive_concat(y: np.ndarray, sr: int, plan: EditPlan) -> tuple[np.ndarray, np.ndarray]:
    b = plan.grid.samples(sr)
    parts = [y[:, b[s.raw_start] : b[s.raw_end]] for s in plan.segments]
    return np.concatenate(parts, axis=1), np.cumsum([p.shape[1] for p in parts])[:-1]


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median CPU seconds of this (single-threaded) process per call, and the last result.

    CPU time, not wall time: the benchmark machines are shared, and a busy neighbour
    would otherwise inflate the numbers; ``wall`` numbers are printed beside them.
    """
    times, walls, out = [], [], None
    for _ in range(repeats):
        t0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        times.append(time.process_time() - t0)
        walls.append(time.perf_counter() - w0)
    timed.last_wall = statistics.median(walls)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--song", action="append", help="song(s) to loop (default: three of ../shared/data/music)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    songs = [Path(s) for s in args.song] if args.song else [
        MUSIC / n for n in ("spunkyrace-ks.ogg", "freezingpoint.ogg", "credits1-cp.ogg")
    ]
    missing = [s for s in songs if not s.exists()]
    if missing:
        print(f"error: missing {missing[0]} (../shared/data is needed for this benchmark)", file=sys.stderr)
        return 2
    rows = []
    for song in songs:
        y, sr = looped(song, TARGET_S)
        grid = track_beats(y=resample(to_mono(y), sr_in=sr, sr_out=ANALYSIS_SR), sr=ANALYSIS_SR)
        plan = make_plan(grid, np.random.default_rng(args.seed))
        render(y=y, sr=sr, plan=plan)  # warm-up (imports, pedalboard init)
        t_render, res = timed(lambda: render(y=y, sr=sr, plan=plan), args.repeats)
        w_render = timed.last_wall
        flat = EditPlan(tuple(replace(sg, ops=replace(sg.ops, time_factor=1.0)) for sg in plan.segments), grid, "")
        t_flat, _ = timed(lambda: render(y=y, sr=sr, plan=flat), args.repeats)
        t_layout, _ = timed(lambda: (output_duration(plan, sr), join_positions(plan, sr)), args.repeats)
        t_local, q = timed(lambda: local_join_quality(y=y, sr=sr, plan=plan), args.repeats)
        t_naive, (naive, npos) = timed(lambda: naive_concat(y, sr, plan), args.repeats)
        ours, _ = click_scores(y=res.y, sr=sr, positions=res.cut_positions)
        base, _ = click_scores(y=naive, sr=sr, positions=npos)
        rows.append(
            dict(song=song.name, raw_s=y.shape[1] / sr, out_s=res.duration, joins=len(res.cut_positions),
                 t_render=t_render, w_render=w_render, t_flat=t_flat, t_layout=t_layout, t_local=t_local, t_naive=t_naive,
                 clicks=int((ours > 3.0).sum()), clicks_local=len(q.clicks), clicks_naive=int((base > 3.0).sum()),
                 max_ours=float(ours.max()), med_naive=float(np.median(base)), safety=res.safety_gain_db)
        )
    print(f"render benchmark: raw looped to {TARGET_S:.0f} s, stereo, {N_JOINS} joins, {len(EFFECTS)} effects, "
          f"1 thread, 1 core, median of {args.repeats}")
    hdr = (f"{'song':<20}{'raw s':>7}{'out s':>7}{'joins':>6}{'render s':>10}{'wall s':>8}{'no-tf s':>8}"
           f"{'layout ms':>10}{'local ms':>9}"
           f"{'naive ms':>9}{'clicks':>7}{'local':>6}{'naive':>6}{'max score':>10}{'naive med':>10}{'safety dB':>10}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['song']:<20}{r['raw_s']:>7.1f}{r['out_s']:>7.1f}{r['joins']:>6}{r['t_render']:>10.3f}"
              f"{r['w_render']:>8.3f}{r['t_flat']:>8.3f}"
              f"{r['t_layout'] * 1e3:>10.2f}{r['t_local'] * 1e3:>9.1f}{r['t_naive'] * 1e3:>9.1f}{r['clicks']:>7}"
              f"{r['clicks_local']:>6}{r['clicks_naive']:>6}{r['max_ours']:>10.2f}{r['med_naive']:>10.1f}"
              f"{r['safety']:>10.2f}")
    print("times: CPU seconds (one thread, pinned to one core), median; 'wall s' = wall-clock render; 'no-tf s' = "
          "the same plan with time factors set to 1 (the time stretcher's share); 'layout' = output_duration + "
          "join_positions; 'local' = envs.reward.local_join_quality (the reward's check).")
    print("clicks: joins scoring > 3 (envs.quality); 'local' = the reward's +-50 ms check; 'naive' = the same raw "
          "spans concatenated without crossfades (baseline, same run). Goal: render <= 1 s, 0 clicks.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
