"""Fine-tune the pretrained policy with Monte Carlo PPO on the run's songs (``make finetune``).

    python -m rl.train --run demo                                   # from runs/demo/checkpoints/bc_best.pt
    python -m rl.train --run demo --epochs 200 --steps 128 --n-envs 8 --lr 5e-5 --subprocess
    python -m rl.train --run demo --restart                         # start over (the log says so)
    python -m rl.train --run demo --from-scratch                    # PPO without behaviour cloning
    python -m rl.train --run demo --rollout-workers 4               # 4 CPU rollout workers, one learner (CUDA if any)
    RAY_ADDRESS=auto python -m rl.train --run demo --rollout-workers 32   # the workers as Ray actors on a cluster

Songs: every labelled pair of runs/RUN/labels/index.json (``make align``): the raw
recording, its features on the label's beat grid, and the human plan (the reward's
imitation term and, with ``--anchor bc``, the anchor's demonstrations). A fraction of the
songs (``--heldout-fraction``, whole songs) is never trained on: every ``--eval-every``
epochs the policy edits the first of them greedily and TensorBoard gets its reward, plan
IoU against the human plan, action distribution and the edited audio.

Writes runs/RUN/checkpoints/ppo_last.pt (``--save-dir`` to change the folder; every
``--save-every`` epochs and at the end), in agent/checkpoint.py's format
(``stage="finetune"``): ``python -m agent.infer`` reads it like a pretrained one.
TensorBoard: runs/RUN/tb/ppo_seedS/ (``ppo_scratch_seedS`` with ``--from-scratch``).

Resume, as in pretraining: a run that finds its own last checkpoint (SAVE_DIR/ppo_last.pt)
continues it, bit for bit as if it had never stopped (optimizer, scheduler, running
return statistics, RNG states, the overlapped worker's behaviour weights, epoch; the
epochs after the last save are redone; TensorBoard hides what the killed session logged
after it; on CUDA nondeterministic kernels make even uninterrupted runs differ in the last
bits); ``--restart`` starts over from the pretrained policy and says so. A later checkpoint is never replaced silently: starting from another
policy (``--checkpoint``) where a run's ppo_last.pt exists, or continuing a run whose
pretrained policy was retrained since, stops with an error naming ``--restart``.
``--checkpoint`` naming a fine-tuning checkpoint resumes that run; naming a pretrained
(BC) one starts from that policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import tyro

from agent.checkpoint import load_checkpoint, policy_from_checkpoint
from agent.device import pick_device
from agent.edit import edit_song
from agent.layout import observation_layout
from agent.model import Policy, PolicyConfig
from agent.planner import PlannerConfig, attach_priors
from agent.run_config import RunConfig
from alignment.label_index import keep_ratios
from datasets.audio import load_audio
from datasets.errors import EditorError, ParameterError
from datasets.features import extract_features
from envs.env import AudioEditEnv, Song
from envs.reward import plan_usage_iou, target_keep_from
from pretrain.augment import IDENTITY
from pretrain.dataset import build_bc_data, load_labels
from rl.log import log_greedy
from rl.ppo import Demos, PPOConfig, SaveTo, train

__all__ = ["TrainArgs", "load_run_songs", "split_songs", "heldout_split", "greedy_edit", "run", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainArgs(RunConfig):
    """``python -m rl.train``: PPO fine-tuning of a run's pretrained policy; the shared fields
    (run, runs_dir, seed, device, threads) are ``RunConfig``'s (``--seed`` sets
    ``PPOConfig.seed``)."""

    ppo: Annotated[PPOConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=PPOConfig)
    save_dir: str | None = None
    """checkpoint folder (default runs/RUN/checkpoints)"""
    checkpoint: str | None = None
    """resume from a fine-tuning checkpoint, or start from this pretrained checkpoint"""
    restart: bool = False
    """start over from the pretrained policy even when SAVE_DIR/ppo_last.pt exists (it is
    replaced at the first save; the log says so). Without it a run continues its own
    last checkpoint"""
    pretrained: str | None = None
    """pretrained checkpoint to start from (default runs/RUN/checkpoints/bc_best.pt)"""
    from_scratch: bool = False
    """ignore the pretrained policy: a fresh one (benchmark baseline 'PPO without BC')"""
    hidden: int = 32
    """width of a fresh policy (--from-scratch), as pretrain's default"""
    subprocess: bool = False
    """one process per env (gymnasium AsyncVectorEnv) instead of one process for all"""
    heldout_fraction: float = 0.2
    """fraction of songs never trained on (greedy evaluation); 0 = evaluate on a train song.
    Used only when the pretrained checkpoint does not name its validation songs (those are
    held out then, so neither stage trains on the evaluation songs)"""
    reward_audio: bool = True
    """the reward listens for clicks at the joins (local renders; slower)"""
    stems: str = "auto"
    """stem features: auto / demucs / dsp (datasets.features)"""
    stop_after: int = 0
    """end this session after so many epochs, with a checkpoint (0 = run all --epochs)"""
    eval_seconds: float = 30.0
    """seconds of the greedy edit logged as TensorBoard audio"""


# ---------------------------------------------------------------------------- data


def load_run_songs(run_dir: Path, *, stems: str = "auto", with_audio: bool = True, planner: bool = False,
                   planner_kind: str = "mlp") -> list[tuple[Any, Any]]:
    """(LabeledPair, envs.env.Song) for every labelled pair, features on the label's grid;
    ``planner``: with the whole-song planner's out-of-fold plan (agent/planner.py) of
    design ``planner_kind``."""
    out = []
    pairs = load_labels(run_dir)
    if planner:  # the same out-of-fold plans behaviour cloning saw (deterministic)
        pairs, _ = attach_priors(pairs, stems=stems, cfg=PlannerConfig(kind=planner_kind))
    for pair in pairs:
        audio = load_audio(pair.raw_path)
        feats = extract_features(audio, grid=pair.plan.grid, stems=stems)
        song = Song.from_features(feats, audio=audio if with_audio else None, human_plan=pair.plan, name=pair.name,
                                  plan_prior=pair.plan_prior)
        out.append((pair, song))
    return out


def split_songs(n: int, *, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) song indices: whole songs, at least one of each when n >= 2."""
    if not 0.0 <= fraction < 1.0:
        raise ParameterError(f"heldout_fraction={fraction} must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(n).tolist()
    k = 0 if n < 2 or fraction == 0 else min(n - 1, max(1, int(round(fraction * n))))
    return sorted(order[k:]), sorted(order[:k])


def heldout_split(pairs, *, checkpoint: dict | None, fraction: float, seed: int) -> tuple[list[int], list[int], str]:
    """(train, held-out) song indices and where the split came from.

    A pretrained checkpoint names its validation songs (``extra["val_songs"]``, raw
    sha256s): those are held out, so PPO never trains on them either and the greedy
    evaluation is on songs neither stage saw. Otherwise (from scratch, or an older
    checkpoint) ``split_songs(fraction, seed)``. Before this, a ``--seed`` other than
    pretraining's held out songs the BC policy had trained on.
    """
    val = set((checkpoint or {}).get("extra", {}).get("val_songs") or ())
    keys = [getattr(p, "raw_sha256", "") or p.name for p in pairs]
    if val and any(k in val for k in keys):
        held = [i for i, k in enumerate(keys) if k in val]
        train = [i for i in range(len(keys)) if i not in held]
        if train:
            return train, held, "the pretrained policy's validation songs"
    train, held = split_songs(len(pairs), fraction=fraction, seed=seed)
    return train, held, f"split by seed {seed}"


def demos_from_pairs(pairs_songs) -> Demos:
    """The human plans replayed in the env: (observation, oracle action) pairs."""
    data = build_bc_data([p for p, _ in pairs_songs], songs={(p.name, IDENTITY.key()): s for p, s in pairs_songs})
    return Demos(obs=data.obs(), actions=torch.as_tensor(data.actions))


# ---------------------------------------------------------------------------- evaluation


@torch.no_grad()
def greedy_edit(policy, env, song_index: int = 0) -> dict:
    """Edit song ``song_index`` of ``env`` (an AudioEditEnv) with the policy's
    deterministic (joint-mode) actions.

    Returns reward, components, plan, actions [n, 3] and plan IoU against the song's
    human plan (nan without one).
    """
    res = edit_song(policy, env, song=song_index, deterministic=True, seed=0)
    human = env.songs[song_index].human_plan
    plan = res.plan
    iou = plan_usage_iou(plan, human) if human is not None and plan.segments else float("nan")
    return {
        "reward": float(res.reward),
        "components": dict(res.reward_components),
        "plan": plan,
        "actions": np.asarray(res.actions, dtype=np.int64).reshape(-1, 3),
        "iou": float(iou),
    }


# ---------------------------------------------------------------------------- main

# PPO fields that define a run: a resumed run keeps the checkpoint's values; the others
# (save_every, eval_every, ...) may change between sessions, and --epochs may extend a run
# (the cosine schedules then stretch to the new length from where the run is).
_RUN_DEFINING = {"seed", "steps", "n_envs", "lr", "lr_final_ratio", "update_epochs", "minibatch_size",
                 "grad_accum", "clip_ratio", "ent_coef", "ent_coef_final", "ent_schedule", "ent_decay_frac",
                 "vf_coef", "baseline", "gamma", "return_clip", "return_norm", "target_kl", "max_grad_norm",
                 "anchor", "anchor_coef", "bc_batch_size"}


def _is_finetune(ck: dict) -> bool:
    return ck.get("stage") == "finetune" and "ppo" in ck.get("extra", {})


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run(args: TrainArgs, *, log_fn=print) -> dict:
    """Load songs and policy, fine-tune, write checkpoints and logs; returns a summary."""
    # TensorBoard (and the protobuf it pulls in) only when a run starts, not for --help
    # or the tests that call this module's helpers
    from torch.utils.tensorboard import SummaryWriter

    cfg = dataclasses.replace(args.ppo, seed=args.seed)  # one --seed: RunConfig's
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.runs_dir) / args.run
    save_dir = Path(args.save_dir) if args.save_dir else run_dir / "checkpoints"
    device = pick_device(args.device)
    log_fn(f"finetune: device {device}")

    # -- starting policy: the run's own last checkpoint (or --checkpoint naming a
    # fine-tuning one) resumes; a pretrained one (or nothing: --from-scratch) starts
    resume_ck, resume_path = None, None
    start_path: Path | None = None
    start_ck = None
    own_path = save_dir / f"{'ppo_scratch' if args.from_scratch else 'ppo'}_last.pt"
    if args.checkpoint:
        ck = load_checkpoint(args.checkpoint)
        if _is_finetune(ck):
            if args.restart:
                raise ParameterError(f"--restart starts over, but --checkpoint {args.checkpoint} is a fine-tuning run to "
                                     "continue: give one of them")
            resume_ck, resume_path = ck, Path(args.checkpoint)
        else:
            start_path, start_ck = Path(args.checkpoint), ck
    elif own_path.is_file() and not args.restart:
        ck = load_checkpoint(own_path)
        if not _is_finetune(ck):
            raise ParameterError(f"{own_path}: not a fine-tuning checkpoint; --restart starts over (and replaces it)")
        resume_ck, resume_path = ck, own_path
        # a run of an earlier pretrained policy is not continued on top of a new one
        ppo_extra = ck["extra"]["ppo"].get("extra", {})
        src, sha = Path(ppo_extra.get("pretrained") or ""), ppo_extra.get("pretrained_sha256")
        if sha and src.name and src.is_file() and _file_sha256(src) != sha:
            raise ParameterError(f"{own_path} fine-tunes an earlier {src} (retrained since); --restart fine-tunes the new one "
                                 "from the start (and replaces it)")
    elif not args.from_scratch:
        start_path = Path(args.pretrained) if args.pretrained else run_dir / "checkpoints" / "bc_best.pt"
    if start_path is not None and not start_path.is_file():
        raise ParameterError(f"pretrained checkpoint not found: {start_path}; run `make pretrain RUN={args.run}` first")
    if start_path is not None and start_ck is None:
        start_ck = load_checkpoint(start_path)

    if resume_ck is not None:
        done = int(resume_ck["extra"]["ppo"]["epoch"])
        cfg = PPOConfig(**{**dataclasses.asdict(cfg),
                           **{k: v for k, v in resume_ck["extra"]["ppo"]["config"].items() if k in _RUN_DEFINING}})
        if done >= cfg.epochs:
            log_fn(f"finetune: {resume_path} has finished its {done} epochs; nothing to do (--epochs N > {done} "
                   "continues it, --restart starts over)")
            return {"history": [], "checkpoint": str(resume_path), "finished": True}
        log_fn(f"finetune: resuming {resume_path} at epoch {done} of {cfg.epochs} (--restart starts over)"
               + ("; on CUDA it matches an uninterrupted run only up to nondeterministic kernels" if device.type == "cuda" else ""))

    # -- never replace another run's later checkpoint without being told to
    was_scratch = resume_ck["stage_config"].get("from_scratch", False) if resume_ck is not None else args.from_scratch
    tag = "ppo_scratch" if was_scratch else "ppo"
    save_path = save_dir / f"{tag}_last.pt"
    if save_path.is_file() and (resume_path is None or resume_path.resolve() != save_path.resolve()):
        try:
            there = f"epoch {int(load_checkpoint(save_path)['extra']['ppo']['epoch'])}"
        except (EditorError, KeyError, TypeError, ValueError):
            there = "not a readable fine-tuning checkpoint"
        start = resume_path or start_path or "scratch"
        if not args.restart:
            raise ParameterError(f"{save_path} holds another fine-tuning run ({there}); starting from {start} would replace "
                                 "it: --restart to do so, or --save-dir for another folder")
        log_fn(f"finetune: --restart: starting over from {start}; {save_path} ({there}) is replaced at the first save")
    elif args.restart:
        log_fn(f"finetune: --restart: starting over from {start_path or 'scratch'}")

    # -- songs (data sample happens inside the envs at each reset)
    t0 = time.perf_counter()
    # a policy that learned with the whole-song planner's plans gets them here too
    planner_state = ((resume_ck if resume_ck is not None else start_ck) or {}).get("extra", {}).get("planner")
    pairs_songs = load_run_songs(run_dir, stems=args.stems, with_audio=True, planner=planner_state is not None,
                                 planner_kind=(planner_state or {}).get("kind", "mlp"))
    # the songs held out are the pretrained policy's validation songs: a resumed fine-tune
    # keeps those of the policy it started from, and from scratch holds out the same ones
    # as the run's pretrained policy, so the two compare on equal terms
    if resume_ck is not None:
        split_path = Path(resume_ck["extra"]["ppo"].get("extra", {}).get("pretrained") or "")
    elif start_ck is None:
        split_path = Path(args.pretrained) if args.pretrained else run_dir / "checkpoints" / "bc_best.pt"
    split_ck = start_ck if start_ck is not None else (
        load_checkpoint(split_path) if split_path.name and split_path.is_file() else None
    )
    train_idx, held_idx, split_from = heldout_split(
        [p for p, _ in pairs_songs], checkpoint=split_ck, fraction=args.heldout_fraction, seed=cfg.seed
    )
    train_ps = [pairs_songs[i] for i in train_idx]
    eval_song = pairs_songs[(held_idx or train_idx)[0]][1]
    log_fn(f"finetune: {len(train_ps)} training songs, {len(held_idx)} held out ({split_from}; "
           f"eval: {eval_song.name}), loaded in {time.perf_counter() - t0:.1f}s")
    scratch = args.from_scratch and resume_ck is None
    demos = demos_from_pairs(train_ps) if (cfg.anchor == "bc" or scratch) else None

    reference = None
    if resume_ck is not None:
        # architecture from the checkpoint; weights, reference and state come from resume
        policy = policy_from_checkpoint(resume_ck)
        if resume_ck["extra"]["ppo"].get("reference"):
            reference = policy_from_checkpoint(resume_ck)
    elif scratch:
        policy = Policy(PolicyConfig.from_layout(hidden=args.hidden))
        # normalisers from the training songs' replayed states: the statistics BC would use
        obs = demos.obs
        policy.normalizer.fit(obs["beats"][..., : policy.cfg.n_features], obs["beat_mask"])
        policy.global_normalizer.fit(obs["globals"])
    else:
        policy = policy_from_checkpoint(start_ck)
        reference = policy_from_checkpoint(start_ck)
    if reference is None and cfg.anchor != "none":
        cfg = dataclasses.replace(cfg, anchor="none")
        log_fn("finetune: no pretrained policy to anchor to; anchor=none")
    if cfg.anchor != "bc":
        demos = None
    log_fn(f"finetune: policy {policy.n_parameters():,} parameters, start: "
           f"{'resume' if resume_ck is not None else start_path or 'scratch'}")

    # the user's style settings travel from the pretrained checkpoint to every PPO one
    src = resume_ck if resume_ck is not None else (start_ck or {})
    style = {k: v for k, v in src.get("extra", {}).items() if k in ("target_keep", "stem_method", "editor_grid", "planner")}

    songs = [s for _, s in train_ps]
    # the episode's target keep ratio: the median of the run's labelled pairs (the env gets the number)
    env_kw = dict(target_keep=target_keep_from(keep_ratios(run_dir)), reward_audio=args.reward_audio)

    def make_env():
        return AudioEditEnv(songs, **env_kw)

    # a resumed run hides what a killed session logged after its last checkpoint
    purge = int(resume_ck["extra"]["ppo"]["global_step"]) + 1 if resume_ck is not None else None
    writer = SummaryWriter(str(run_dir / "tb" / f"{tag}_seed{cfg.seed}"), purge_step=purge)
    table = "\n".join(f"|{k}|{v}|" for k, v in {**dataclasses.asdict(cfg), "run": args.run, "songs": len(songs),
                                                  "pretrained": str(start_path)}.items())
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)

    eval_env = AudioEditEnv([eval_song], **env_kw)

    # where the run started from, kept by every session (the held-out split and the
    # "retrained since" check read it)
    if resume_ck is not None:
        pretrained_state = dict(resume_ck["extra"]["ppo"].get("extra", {}))
    else:
        pretrained_state = {"pretrained": str(start_path or ""),
                            "pretrained_sha256": _file_sha256(start_path) if start_path is not None else ""}
    save = SaveTo(save_path, stage_config={**dataclasses.asdict(cfg), "run": args.run, "from_scratch": was_scratch},
                  layout=observation_layout(), style=style, origin=pretrained_state)
    # the session's last epoch: a greedy edit of the held-out song there and every eval_every
    first = int(resume_ck["extra"]["ppo"]["epoch"]) if resume_ck is not None else 0
    last = min(cfg.epochs, first + args.stop_after) if args.stop_after > 0 else cfg.epochs
    history = []
    try:
        with contextlib.closing(train(cfg, policy=policy, env_fns=[make_env] * cfg.n_envs, reference=reference,
                                      demos=demos, writer=writer, device=device, save=save, resume=resume_ck,
                                      subprocess=args.subprocess, stop_after=args.stop_after)) as epochs:
            for row in epochs:
                history.append(row)
                done = int(row["epoch"]) + 1
                if cfg.eval_every and (done % cfg.eval_every == 0 or done == last):
                    res = greedy_edit(policy, eval_env)
                    log_greedy(writer, eval_song, res, int(row["global_step"]), seconds=args.eval_seconds)
                    log_fn(f"finetune: greedy edit of {eval_song.name} at epoch {done}: reward {res['reward']:.3f}, "
                           f"IoU {res['iou']:.3f}, {len(res['actions'])} actions")
    finally:
        writer.close()
    final = greedy_edit(policy, eval_env)
    return {"history": history, "checkpoint": str(save_path), "policy": policy, "eval_song": eval_song.name,
            "eval_reward": final["reward"], "eval_iou": final["iou"]}


def main(argv: list[str] | None = None) -> int:
    # rl.ppo's epoch lines on stdout beside this module's own
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    args = tyro.cli(TrainArgs, args=argv, description=__doc__)  # --runs-dir style, as every CLI (--runs_dir also parses)
    try:
        summary = run(args)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    h = summary["history"]
    if h:
        print(f"finetune: done, {len(h)} epochs, last mean episode reward {h[-1]['episode_reward']:.3f}; "
              f"greedy edit of {summary['eval_song']}: reward {summary['eval_reward']:.3f}, IoU {summary['eval_iou']:.3f}; "
              f"checkpoint {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
