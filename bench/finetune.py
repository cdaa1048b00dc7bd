"""PPO fine-tuning benchmark: BC vs BC + PPO vs PPO alone, and throughput.

    python bench/finetune.py                                  # runs/demo (make demo)
    python bench/finetune.py --run demo --runs-dir runs --epochs 60
    python bench/finetune.py --pretrain-seed 2 --seed 2        # another split: BC retrained first
    python bench/finetune.py --skip-scratch --compare "old default=--update-epochs 4 --lr 3e-4"

Needs a run with labels and a pretrained policy (``make demo``, or ``make align`` +
``make pretrain``). The songs are split by song exactly as rl/train.py splits them
(same seed, same held-out fraction); the policies are trained on the training songs
only and measured on the held-out ones:

(a) the BC policy (runs/RUN/checkpoints/bc_best.pt) vs the same after PPO fine-tuning:
    mean greedy episode reward (how the tool edits), mean reward of ``--episodes``
    sampled edits per song (less noisy), and the greedy plan's IoU (raw-usage IoU
    against the human plan, ``envs.reward.plan_usage_iou``). Goal: greedy reward +10 %
    while IoU drops <= 0.02.
(b) PPO from scratch (no BC, same budget) for comparison.
(c) throughput: environment steps per second including the updates (rollout + update
    time of the fine-tuning run's epochs), with the model size.

Every method is measured in this run, on this machine; ratios are against the BC policy.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from alignment.label_index import index_path, keep_ratios, labels_dir  # noqa: E402
from datasets.errors import EditorError  # noqa: E402
from envs.reward import target_keep_from  # noqa: E402


@torch.no_grad()
def _sampled_reward(policy, env, *, episodes: int, seed: int) -> float:
    """Mean reward of ``episodes`` sampled (stochastic) edits of the env's song."""
    from agent.model import obs_to_tensors

    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(episodes):
        obs, _ = env.reset(options={"song": 0})
        done = False
        while not done:
            act = policy.act(obs_to_tensors(obs), generator=g)[0][0].numpy()
            obs, r, term, trunc, _ = env.step(act)
            total += r
            done = term or trunc
    return total / episodes


def _evaluate(policy, envs, *, episodes: int) -> dict:
    """Held-out songs: greedy edits (reward, IoU vs the human plan, type distribution)
    and the mean reward of sampled edits (less noisy than one greedy edit per song)."""
    from rl.train import greedy_edit

    policy.eval()
    res = [greedy_edit(policy, env) for env in envs]
    acts = np.concatenate([r["actions"] for r in res])
    return {
        "reward": float(np.mean([r["reward"] for r in res])),
        "sampled": float(np.mean([_sampled_reward(policy, env, episodes=episodes, seed=i) for i, env in enumerate(envs)])),
        "iou": float(np.nanmean([r["iou"] for r in res])),
        "types": np.bincount(acts[:, 0], minlength=18) / max(1, len(acts)),
        "steps": float(np.mean([len(r["actions"]) for r in res])),
    }


def _top_types(p: np.ndarray, k: int = 4) -> str:
    from envs.actions import ActionType

    order = np.argsort(-p)[:k]
    return ", ".join(f"{ActionType(int(t)).name} {p[t]:.0%}" for t in order if p[t] > 0)


def _throughput(history: list[dict]) -> float:
    """Env steps per second of a fresh run, counting data sampling, rollouts and updates."""
    secs = sum(h["time_data"] + h["time_rollout"] + h["time_update"] for h in history)
    return history[-1]["global_step"] / max(secs, 1e-9)


def _throughput_cpu(history: list[dict]) -> float:
    """Env steps per CPU-second of the learner plus its overlapped rollout worker (what
    one dedicated core would give; wall-clock steps/s on a loaded machine measure the load)."""
    cpu = sum(h["cpu_time"] + h.get("cpu_time_worker", 0.0) for h in history)
    return history[-1]["global_step"] / max(cpu, 1e-9)


def _cpu_split(history: list[dict]) -> tuple[float, float]:
    """(learner, rollout worker) CPU milliseconds per env step (worker 0 without overlap)."""
    n = max(history[-1]["global_step"], 1)
    return (1e3 * sum(h["cpu_time"] for h in history) / n,
            1e3 * sum(h.get("cpu_time_worker", 0.0) for h in history) / n)


def _ratio(x: float, ref: float) -> str:
    return "-" if not (np.isfinite(x) and np.isfinite(ref) and ref > 0) else f"{x / ref:.2f}x"


def _breakdown(songs, policy, *, n_envs: int, steps: int, target_keep: float) -> dict:
    """Env steps per CPU-second: the env alone (random valid actions), and rollouts with
    the policy acting (no update)."""
    from envs.env import AudioEditEnv
    from rl.rollout import collect_rollout, make_vector_env

    envs = make_vector_env([lambda: AudioEditEnv(songs, target_keep=target_keep)] * n_envs)
    obs, _ = envs.reset(seed=list(range(n_envs)))
    rng = np.random.default_rng(0)
    c0, n = time.process_time(), 0
    while n < n_envs * steps:
        acts = []
        for i in range(n_envs):
            t = rng.choice(np.flatnonzero(obs["type_mask"][i]))
            acts.append((t, rng.choice(np.flatnonzero(obs["size_mask"][i, t])),
                         rng.choice(np.flatnonzero(obs["amount_mask"][i, t]))))
        obs, *_ = envs.step(np.asarray(acts))
        n += n_envs
    env_only = n / (time.process_time() - c0)
    obs, _ = envs.reset(seed=list(range(n_envs)))
    c0 = time.process_time()
    ro = collect_rollout(envs, policy, obs=obs, steps=steps, generator=torch.Generator().manual_seed(0))
    rollout = ro.env_steps / (time.process_time() - c0)
    envs.close()
    return {"env": env_only, "rollout": rollout}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="demo")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--epochs", type=int, default=None, help="default: PPOConfig's")
    p.add_argument("--steps", type=int, default=None, help="default: PPOConfig's")
    p.add_argument("--n-envs", type=int, default=None, help="default: PPOConfig's")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--heldout-fraction", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--episodes", type=int, default=8, help="sampled edits per held-out song")
    p.add_argument("--skip-scratch", action="store_true", help="leave out (b), PPO from scratch")
    p.add_argument("--pretrain-seed", type=int, default=None,
                   help="first behaviour-clone a policy with this seed (pretrain.train, in a temporary run that "
                        "shares the labels) and start from it: its validation songs are the held-out songs, so "
                        "each seed measures another split; default: runs/RUN/checkpoints/bc_best.pt")
    p.add_argument("--extra", default="", help="more rl.train flags for both PPO runs, e.g. '--ent-coef 0.1'")
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=FLAGS",
                   help="an extra BC + PPO row with these rl.train flags, measured in the same run (repeatable), "
                        "e.g. --compare 'old default=--update-epochs 4 --lr 3e-4'; the speed column is relative "
                        "to the first one")
    args = p.parse_args(argv)
    from rl.ppo import PPOConfig

    args.steps = PPOConfig.steps if args.steps is None else args.steps
    args.epochs = PPOConfig.epochs if args.epochs is None else args.epochs
    args.n_envs = PPOConfig.n_envs if args.n_envs is None else args.n_envs
    logging.basicConfig(level=logging.WARNING)
    compare = []
    for spec in args.compare:
        label, sep, flags = spec.partition("=")
        if not sep or not label.strip():
            print(f"error: --compare wants LABEL=FLAGS, got {spec!r}", file=sys.stderr)
            return 2
        compare.append((f"BC + PPO ({label.strip()})", flags.split()))

    from agent.checkpoint import load_checkpoint, policy_from_checkpoint
    from envs.env import AudioEditEnv
    from rl.train import TrainArgs, heldout_split, load_run_songs, run

    import tyro

    torch.set_num_threads(args.threads)
    run_dir = Path(args.runs_dir) / args.run
    bc_path = run_dir / "checkpoints" / "bc_best.pt"
    if args.pretrain_seed is not None:
        tmp_runs = tempfile.TemporaryDirectory()  # removed when main returns
        from pretrain.train import PretrainConfig
        from pretrain.train import run as pretrain  # as make pretrain: BC + DAgger rounds

        if not index_path(run_dir).is_file():
            print(f"error: no labels in {labels_dir(run_dir)}; run `make align RUN={args.run}` first", file=sys.stderr)
            return 2
        (Path(tmp_runs.name) / args.run).mkdir()
        labels_dir(Path(tmp_runs.name) / args.run).symlink_to(labels_dir(run_dir).resolve())
        t0 = time.perf_counter()
        pretrain(PretrainConfig(run=args.run, runs_dir=tmp_runs.name, seed=args.pretrain_seed, threads=args.threads))
        print(f"pretrained a BC policy with seed {args.pretrain_seed} in {time.perf_counter() - t0:.0f} s")
        args.runs_dir = tmp_runs.name
        run_dir = Path(args.runs_dir) / args.run
        bc_path = run_dir / "checkpoints" / "bc_best.pt"
    if not bc_path.is_file():
        # `make bench` runs every benchmark: a missing demo run skips this one, loudly
        print(f"bench/finetune.py: skipped: {bc_path} not found; run `make demo` "
              f"(or make align + make pretrain RUN={args.run}) first")
        return 0
    pairs_songs = load_run_songs(run_dir)
    # the songs the BC policy never trained on (rl/train.py holds out the same ones)
    _, held, split_from = heldout_split([p for p, _ in pairs_songs], checkpoint=load_checkpoint(bc_path),
                                        fraction=args.heldout_fraction, seed=args.seed)
    if not held:
        print("error: need at least 2 songs to hold one out", file=sys.stderr)
        return 2
    target_keep = target_keep_from(keep_ratios(run_dir))
    eval_envs = [AudioEditEnv([pairs_songs[i][1]], target_keep=target_keep) for i in held]

    rows = {}
    bc = policy_from_checkpoint(load_checkpoint(bc_path))
    rows["BC (pretrained)"] = {**_evaluate(bc, eval_envs, episodes=args.episodes), "params": bc.n_parameters(), "train_s": 0.0, "sps": float("nan"),
                                 "sps_cpu": float("nan")}

    common = ["--run", args.run, "--runs-dir", args.runs_dir, "--epochs", str(args.epochs), "--steps", str(args.steps),
              "--n-envs", str(args.n_envs), "--seed", str(args.seed), "--heldout-fraction", str(args.heldout_fraction),
              "--threads", str(args.threads), "--eval-every", "0", *args.extra.split()]
    with tempfile.TemporaryDirectory() as tmp:
        methods = [("BC + PPO", []), *compare]
        if not args.skip_scratch:
            methods.append(("PPO from scratch", ["--from-scratch"]))
        for name, extra in methods:
            save_dir = os.path.join(tmp, "".join(c if c.isalnum() else "_" for c in name))
            targs = tyro.cli(TrainArgs, args=[*common, "--save-dir", save_dir, *extra])
            t0 = time.perf_counter()
            out = run(targs, log_fn=lambda s: None)
            train_s = time.perf_counter() - t0
            pol = out["policy"]
            rows[name] = {**_evaluate(pol, eval_envs, episodes=args.episodes), "params": pol.n_parameters(), "train_s": train_s,
                          "sps": _throughput(out["history"]), "sps_cpu": _throughput_cpu(out["history"]),
                          "split": _cpu_split(out["history"]), "train_reward": out["history"][-1]["episode_reward"],
                          "first_reward": out["history"][0]["episode_reward"]}

    train_songs = [pairs_songs[i][1] for i in range(len(pairs_songs)) if i not in held]
    speed = _breakdown(train_songs, bc, n_envs=args.n_envs, steps=args.steps, target_keep=target_keep)

    base = rows["BC (pretrained)"]
    print(f"\nPPO fine-tuning benchmark: run {args.run}, {len(pairs_songs) - len(held)} training songs, "
          f"{len(held)} held out ({split_from}); {args.epochs} epochs x {args.n_envs} envs x >= {args.steps} steps; "
          f"torch threads {args.threads}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    ref_cpu = rows[compare[0][0]]["sps_cpu"] if compare else float("nan")
    w = max(18, *(len(n) for n in rows))
    hdr = (f"{'method':<{w}} {'greedy':>8} {'vs BC':>7} {'sampled':>8} {'vs BC':>7} {'IoU':>6} {'dIoU':>6} {'steps':>6} "
           f"{'params':>8} {'train s':>8} {'steps/s':>8} {'steps/cpu-s':>11} {'speed':>6}  top types")
    print(hdr)
    print("-" * len(hdr))
    for name, r in rows.items():
        rel = (r["reward"] - base["reward"]) / abs(base["reward"]) if base["reward"] else float("nan")
        rel_s = (r["sampled"] - base["sampled"]) / abs(base["sampled"]) if base["sampled"] else float("nan")
        print(f"{name:<{w}} {r['reward']:>8.3f} {rel:>+7.1%} {r['sampled']:>8.3f} {rel_s:>+7.1%} {r['iou']:>6.3f} {r['iou'] - base['iou']:>+6.3f} "
              f"{r['steps']:>6.1f} {r['params']:>8,} {r['train_s']:>8.1f} {r['sps']:>8.0f} {r['sps_cpu']:>11.0f} "
              f"{_ratio(r['sps_cpu'], ref_cpu):>6}  {_top_types(r['types'])}")
    if compare:
        print(f"(speed: steps per CPU-second relative to '{compare[0][0]}', same run)")
    ft = rows["BC + PPO"]
    ok_reward = ft["reward"] >= base["reward"] + 0.1 * abs(base["reward"])  # greedy: how the tool edits
    ok_iou = ft["iou"] >= base["iou"] - 0.02
    print(f"\ngoal (a) reward +10% with IoU drop <= 0.02: {'met' if ok_reward and ok_iou else 'NOT met'} "
          f"(reward {'ok' if ok_reward else 'short'}, IoU {'ok' if ok_iou else 'dropped'})")
    print(f"goal (c) >= 2,000 env steps/s incl. updates: {'met' if ft['sps'] >= 2000 else 'NOT met'} "
          f"({ft['sps']:.0f}/s wall, {ft['sps_cpu']:.0f} per CPU-second of one thread; model {ft['params']:,} parameters)")
    print(f"throughput breakdown per CPU-second of one thread ({args.n_envs} envs): env alone (random valid "
          f"actions) {speed['env']:.0f} steps/s; rollout with the policy acting {speed['rollout']:.0f}; "
          f"rollout + PPO update {ft['sps_cpu']:.0f}")
    learner_ms, worker_ms = ft["split"]
    if worker_ms > 0:
        print(f"overlap (rl/worker.py): learner {learner_ms:.3f} ms CPU per env step, rollout worker {worker_ms:.3f}; "
              f"with a core each the slower one bounds the rate at {1e3 / max(learner_ms, worker_ms):.0f} steps/s")
    print(f"training-episode reward (BC + PPO): first epoch {ft['first_reward']:.3f} -> last {ft['train_reward']:.3f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
