"""Environment speed and reward breakdowns.

    .venv/bin/python bench/env.py [--seconds 3] [--songs 3] [--demo runs/demo/data] [--breakdown-only]

1. Steps per second on a 3-minute song (../shared/data/music/calmrace-ks.ogg looped to
   180 s) with random masked actions (uniform valid type, then size and amount, as an
   untrained masked policy): the single env without the episode-end reward (its cost is
   measured separately), the single env with it, and gymnasium's SyncVectorEnv /
   AsyncVectorEnv with 2 workers (SAME_STEP autoreset). Baseline: the bare
   ``Executor.step`` on the same actions, so the ratio shows what the env adds.
2. Episode-end reward cost (ms per episode) for random, sensible and keep-all episodes,
   with the audio click check (local renders around the joins) and without.
3. Per-component reward breakdown of (ground-truth persona plan, the scripted
   phrase-energy edit, random policy, keep-all, cut-all) on demo songs:
   ``runs/demo/data/truth/*.json`` with their raw audio when the demo corpus exists;
   otherwise real songs from ../shared/data/music with the persona's plan computed by
   ``datasets.demo.editors.plan_edit``. Ground-truth plans are replayed through the env
   as their oracle actions; the target keep ratio is the median of the truth plans.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datasets.audio import audio_hash, load_audio  # noqa: E402
from datasets.features import extract_features  # noqa: E402
from envs.scripted import PhraseEnergyPolicy, cut_all_action, keep_all_action, random_action, run_episode  # noqa: E402
from envs.env import AudioEditEnv, Song, make_vector_env  # noqa: E402
from envs.executor import Executor, Masks  # noqa: E402
from envs.plan import EditPlan  # noqa: E402
from envs.reward import COMPONENTS, episode_reward  # noqa: E402

MUSIC = ROOT.parent / "shared" / "data" / "music"
DEMO = ROOT / "runs" / "demo" / "data"


def three_minute_song() -> Song:
    path = MUSIC / "calmrace-ks.ogg"
    a = load_audio(path)
    reps = int(np.ceil(180.0 / a.duration))
    y = np.tile(a.y, reps)[:, : int(180.0 * a.sr)]
    ym = np.tile(a.y_mono, reps)[: int(180.0 * 22050)]
    a = replace(a, y=np.ascontiguousarray(y), y_mono=np.ascontiguousarray(ym), sha256=audio_hash(y, a.sr))
    feats = extract_features(a, stems="dsp")
    return Song.from_features(feats, audio=a, name="calmrace-ks x180s")


class FastRandom:
    """Random masked actions without numpy's per-call overhead (python ``random``)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def __call__(self, m: Masks) -> tuple[int, int, int]:
        r = self.rng
        t = r.choice(np.flatnonzero(m.type).tolist())
        s = r.choice(np.flatnonzero(m.size[t]).tolist())
        a = r.choice(np.flatnonzero(m.amount[t]).tolist())
        return t, s, a


def bench_executor(song: Song, seconds: float) -> tuple[float, float]:
    """Bare ``Executor.step`` rate: (steps per wall second, steps per CPU second)."""
    ex = Executor(song.grid)
    pol = FastRandom(0)
    steps, wall, cpu, t_end = 0, 0.0, 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        if ex.done:
            ex.reset()
        act = pol(ex.masks())
        t0, c0 = time.perf_counter(), time.process_time()
        ex.step(*act)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - t0
        steps += 1
    return steps / wall, steps / cpu


def bench_env(song: Song, seconds: float, *, score: bool) -> tuple[float, float, float, int]:
    """``env.step`` (and reset at episode ends) rate: (steps per wall second, steps per
    CPU second, steps per wall second of the whole loop with policy sampling, episodes)."""
    env = AudioEditEnv(song, score_episodes=score)
    env.reset(seed=0)
    pol = FastRandom(0)
    steps, eps, wall, cpu = 0, 0, 0.0, 0.0
    start = time.perf_counter()
    t_end = start + seconds
    while time.perf_counter() < t_end:
        act = pol(env.action_masks())
        t0, c0 = time.perf_counter(), time.process_time()
        _, _, term, trunc, _ = env.step(act)
        if term or trunc:
            env.reset()
            eps += 1
        cpu += time.process_time() - c0
        wall += time.perf_counter() - t0
        steps += 1
    return steps / wall, steps / cpu, steps / (time.perf_counter() - start), eps


def bench_vector(song: Song, seconds: float, *, asynchronous: bool, copy_obs: bool = True) -> tuple[float, int]:
    venv = make_vector_env([song], 2, asynchronous=asynchronous, copy_obs=copy_obs, score_episodes=False)
    try:
        obs, _ = venv.reset(seed=0)
        pol = FastRandom(0)
        steps, eps = 0, 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            acts = np.array(
                [pol(Masks(obs["type_mask"][i] > 0, obs["size_mask"][i] > 0, obs["amount_mask"][i] > 0)) for i in range(2)]
            )
            obs, _, term, trunc, _ = venv.step(acts)
            eps += int((term | trunc).sum())
            steps += 2
        return steps / (time.perf_counter() - start), eps
    finally:
        venv.close()


def reward_cost(song: Song, n: int = 10) -> list[tuple[str, float, float, float]]:
    rows = []
    for audio in (True, False):
        env = AudioEditEnv(song, reward_audio=audio)
        rng = np.random.default_rng(0)
        for name, policy in (
            ("random", lambda e: random_action(e.action_masks(), rng)),
            ("sensible", PhraseEnergyPolicy()),
            ("keep-all", lambda e: keep_all_action(e.action_masks())),
        ):
            times, joins = [], []
            for i in range(n if name == "random" else 3):
                run_episode(env, policy, seed=i)
                plan = env.last_plan
                types = list(env._types)
                t0 = time.perf_counter()
                episode_reward(plan, types, env._st.ctx, env.weights)
                times.append(time.perf_counter() - t0)
                joins.append(sum(1 for a, b in zip(plan.segments[:-1], plan.segments[1:]) if a.raw_end != b.raw_start))
            rows.append((f"{name} ({'audio' if audio else 'features only'})", 1000 * np.mean(times), 1000 * np.max(times), np.mean(joins)))
    return rows


def demo_cases(n_songs: int, demo: Path = DEMO) -> tuple[list[tuple[Song, list[tuple[int, int, int]], str]], float]:
    """(song, ground-truth actions, label) for the breakdown, and the target keep ratio
    (the median keep ratio of the ground-truth plans, as ``default_target_keep`` takes
    the median of the user's aligned pairs)."""
    import json

    from datasets.demo.editors import plan_edit
    from envs.oracle import oracle

    def closest_actions(plan: EditPlan) -> list[tuple[int, int, int]]:
        res = oracle(plan)
        if not res.exact:
            print(f"  note: {plan.source_sha256[:8]}: oracle not exact ({'; '.join(res.notes[:1])}); closest actions used")
        return list(res.actions)

    cases, keeps = [], []
    for path in sorted(glob.glob(str(demo / "truth" / "*.json")))[:n_songs]:
        d = json.loads(Path(path).read_text())
        raw = demo / d["raw"]["path"]
        if not raw.exists():
            continue
        plan = EditPlan.from_dict(d["plan"])
        audio = load_audio(raw)
        feats = extract_features(audio, grid=plan.grid, stems="dsp")
        cases.append((Song.from_features(feats, audio=audio, name=d["name"]), closest_actions(plan), f"truth ({d['persona']})"))
        keeps.append(plan.keep_ratio)
    if not cases:
        print(f"\n(no demo corpus in {demo}: persona plans by datasets.demo.editors.plan_edit on real songs)")
        for name, persona in (("race1-jt.ogg", "tight"), ("credits1-cp.ogg", "tight"), ("spunkyrace-ks.ogg", "tight"))[:n_songs]:
            audio = load_audio(MUSIC / name)
            feats = extract_features(audio, stems="dsp")
            plan = plan_edit(feats, persona, source_sha256=audio.sha256)
            cases.append((Song.from_features(feats, audio=audio, name=name), closest_actions(plan), f"persona {persona}"))
            keeps.append(plan.keep_ratio)
    return cases, float(np.median(keeps))


_SHORT = {
    "keep_ratio_penalty": "keep_pen",
    "loop_budget": "loops",
    "excessive_jumps": "jumps",
    "diversity_penalty": "div_pen",
    "cut_ratio": "cut_ratio",
    "section_coherence": "coherence",
    "phrase_alignment": "phrase",
    "edit_structure": "structure",
    "audio_clicks": "clicks",
    "audio_energy": "energy",
    "flow": "flow",
    "reorder_quality": "reorder",
    "diversity_bonus": "div_bonus",
    "imitation": "imitation",
}


def breakdown(cases, target_keep: float, n_random: int = 10) -> None:
    for song, actions, label in cases:
        env = AudioEditEnv(song, target_keep=target_keep)
        rows = []
        acts = list(actions)
        r, info, _ = run_episode(env, lambda e: acts[e.executor.n_steps])
        rows.append((label, r, info))
        r, info, _ = run_episode(env, PhraseEnergyPolicy())
        rows.append(("phrase-energy script", r, info))
        rng = np.random.default_rng(0)
        rand = [run_episode(env, lambda e: random_action(e.action_masks(), rng), seed=i) for i in range(n_random)]
        mean_terms = {k: float(np.mean([x[1]["reward_components"][k] for x in rand])) for k in rand[0][1]["reward_components"]}
        mean_keep = float(np.mean([x[1]["keep_ratio"] for x in rand]))
        rows.append((f"random (mean of {n_random})", float(np.mean([x[0] for x in rand])), {"reward_components": mean_terms, "keep_ratio": mean_keep}))
        rows.append(("keep-all",) + run_episode(env, lambda e: keep_all_action(e.action_masks()))[:2])
        rows.append(("cut-all",) + run_episode(env, lambda e: cut_all_action(e.action_masks()))[:2])
        comps = [c for c in COMPONENTS if c in rows[0][2]["reward_components"]]
        print(f"\n{song.name} ({song.grid.n_beats} beats, target keep {target_keep:.2f}, best random {max(x[0] for x in rand):.2f}); weighted terms:")
        short = {c: _SHORT.get(c, c)[:9] for c in comps}
        print(f"| {'policy':22s} | {'total':>6s} | {'keep':>5s} | " + " | ".join(f"{short[c]:>9s}" for c in comps) + " |")
        print("|" + "---|" * (3 + len(comps)))
        for name, total, info in rows:
            rc = info["reward_components"]
            print(f"| {name:22s} | {total:6.2f} | {info['keep_ratio']:5.2f} | " + " | ".join(f"{rc[c]:9.2f}" for c in comps) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="time per speed measurement")
    p.add_argument("--songs", type=int, default=3, help="songs in the breakdown")
    p.add_argument("--demo", type=Path, default=DEMO, help="demo corpus folder (datasets.demo.build --out)")
    p.add_argument("--breakdown-only", action="store_true", help="skip the speed measurements")
    args = p.parse_args(argv)

    if args.breakdown_only:
        cases, target = demo_cases(args.songs, args.demo)
        breakdown(cases, target)
        return 0
    song = three_minute_song()
    print(f"song: {song.name}, {song.grid.duration:.0f} s, {song.grid.n_beats} beats, {song.grid.tempo:.0f} BPM")
    load = os.getloadavg()[0]
    base, base_cpu = bench_executor(song, args.seconds)
    env_rate, env_cpu, loop_rate, eps = bench_env(song, args.seconds, score=False)
    env_rate_r, env_cpu_r, _, eps_r = bench_env(song, args.seconds, score=True)
    sync_rate, _ = bench_vector(song, args.seconds, asynchronous=False)
    sync_nocopy, _ = bench_vector(song, args.seconds, asynchronous=False, copy_obs=False)
    async_rate, _ = bench_vector(song, args.seconds, asynchronous=True)
    print(f"\nload average {load:.1f} on {os.cpu_count()} cores: wall-clock rates include waiting for a core;")
    print("per-CPU-second rates are what the code costs.")
    print("\n| what (random masked actions, 3-min song) | steps/s (wall) | steps/s (CPU) | vs bare executor (CPU) |")
    print("|---|---|---|---|")
    print(f"| bare Executor.step (baseline) | {base:,.0f} | {base_cpu:,.0f} | 1.00 |")
    print(f"| AudioEditEnv.step, no episode-end reward | {env_rate:,.0f} | {env_cpu:,.0f} | {env_cpu / base_cpu:.2f} |")
    print(f"| same, whole loop incl. policy sampling | {loop_rate:,.0f} | - | - |")
    print(f"| AudioEditEnv.step with episode-end reward ({eps_r} episodes) | {env_rate_r:,.0f} | {env_cpu_r:,.0f} | {env_cpu_r / base_cpu:.2f} |")
    print(f"| SyncVectorEnv, 2 workers (total steps) | {sync_rate:,.0f} | - | - |")
    print(f"| SyncVectorEnv, 2 workers, copy_obs=False | {sync_nocopy:,.0f} | - | - |")
    print(f"| AsyncVectorEnv, 2 workers (total steps) | {async_rate:,.0f} | - | - |")

    print("\n| episode-end reward cost | mean ms | max ms | mean joins |")
    print("|---|---|---|---|")
    for name, mean, mx, joins in reward_cost(song):
        print(f"| {name} | {mean:.1f} | {mx:.1f} | {joins:.0f} |")

    cases, target = demo_cases(args.songs, args.demo)
    breakdown(cases, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
