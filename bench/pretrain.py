"""Behaviour-cloning benchmark: our policy against the baselines, per persona.

    python bench/pretrain.py --data runs/demo/data            # every persona
    python bench/pretrain.py --personas tight --augment 1     # + a run with augmentation
    python bench/pretrain.py --folds 4                        # 4-fold CV, every song held out once
    python bench/pretrain.py --folds 4 --no-context           # ablation: song-context channels zeroed
    python bench/pretrain.py --folds 4 --dagger-eval-all      # ours after BC and after each DAgger round
    python bench/pretrain.py --folds 4 --dagger-rounds 0      # plain behaviour cloning
    python bench/pretrain.py --folds 2 --planner-kind mlp     # the MLP planner (default: PlannerConfig.kind)

For each persona of ``datasets.demo.editors`` the persona's plan of every raw demo song
(``plan_edit`` on the song's features: the same raw songs serve all personas) becomes
oracle actions, replayed in the env (pretrain/dataset.py). Songs are split 80/20 (by
song, seeded). On the held-out songs:

- step metrics on the persona's own states: type / size / amount accuracy (size and
  amount counted where the predicted type is right and the label's type leaves a
  choice), exact-action accuracy and macro-F1 over types;
- episode metrics: the method acts greedily in the env from the start of each held-out
  song and its plan is compared with the persona's (pretrain/evaluate.py: raw-usage
  IoU, keep-ratio error, join F-measure).

Methods: ours (the policy, pretrain/train.py, then DAgger rounds on the training songs,
pretrain/dagger.py), majority, HistGradientBoosting per head,
d3rlpy DiscreteBC and DiscreteCQL (pretrain/baselines.py). Also reported: training time,
parameter count and per-step inference time. Ratios are against the majority baseline
measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from datasets.errors import EditorError  # noqa: E402

log = logging.getLogger("bench.pretrain")


def _load_songs(data_dir: Path, n_songs: int, stems: str):
    from datasets.audio import load_audio
    from datasets.features import extract_features

    raws = sorted((data_dir / "raw").glob("*.wav"))[:n_songs]
    if not raws:
        raise EditorError(f"{data_dir}/raw: no demo songs; build them with `make demo-data` "
                          f"(python -m datasets.demo.build --out {data_dir} --n-songs 24)")
    out = []
    for p in raws:
        audio = load_audio(p)
        feats = extract_features(audio, stems=stems)
        out.append((p.stem, audio, feats))
    return out


def _persona_pairs(songs, persona: str, *, editor_grid: bool = True, stems: str = "auto"):
    from dataclasses import replace as _replace

    from alignment.grid import cut_points, fit_phase
    from datasets.demo.editors import plan_edit
    from datasets.features import extract_features
    from envs.env import Song
    from envs.executor import execute
    from envs.oracle import oracle_actions
    from pretrain.augment import IDENTITY
    from pretrain.dataset import LabeledPair

    pairs, env_songs, refs = [], {}, {}
    for name, audio, feats in songs:
        ref = plan_edit(feats, persona, source_sha256=audio.sha256).merged()
        if editor_grid:  # as make align labels it: on the phase the persona's cuts agree with
            phase = fit_phase(feats.grid, cut_points(ref.segments, feats.grid.n_beats)).phase
            feats = extract_features(audio, grid=phase.apply(feats.grid), stems=stems)
            ref = _replace(ref, grid=feats.grid)
        acts = tuple(oracle_actions(ref, strict=False))
        label_plan = execute(ref.grid, acts, source_sha256=ref.source_sha256)
        pairs.append(LabeledPair(name=name, raw_path=str(audio.path), raw_sha256=audio.sha256, actions=acts, plan=label_plan, confidence=None))
        env_songs[(name, IDENTITY.key())] = Song.from_features(feats, name=name, human_plan=ref)
        refs[name] = ref
    return pairs, env_songs, refs


def _step_metrics(pred: np.ndarray, data, idx) -> dict:
    from pretrain.losses import classification_metrics

    y = data.actions[idx]
    cls = classification_metrics(pred[:, 0], y[:, 0])
    right_t = pred[:, 0] == y[:, 0]
    s_choice = right_t & (data.size_mask[idx, y[:, 0]].sum(-1) > 1)
    a_choice = right_t & (data.amount_mask[idx, y[:, 0]].sum(-1) > 1)
    return {
        "type_acc": cls["accuracy"],
        "size_acc": float((pred[:, 1] == y[:, 1])[s_choice].mean()) if s_choice.any() else float("nan"),
        "amount_acc": float((pred[:, 2] == y[:, 2])[a_choice].mean()) if a_choice.any() else float("nan"),
        "action_acc": float((pred == y).all(1).mean()),
        "macro_f1": cls["macro_f1"],
    }


def _episode_metrics(act, test_names, env_songs, refs, target_keep) -> dict:
    from pretrain.augment import IDENTITY
    from pretrain.evaluate import plan_metrics, rollout

    rows = []
    for name in test_names:
        plan = rollout(act, env_songs[(name, IDENTITY.key())], target_keep=target_keep)
        rows.append(plan_metrics(plan, refs[name]))
    return {k: float(np.mean([r[k] for r in rows])) for k in ("iou", "keep_error", "join_f")}


def _inference_ms(model, data, idx, batch: int, repeats: int = 50) -> float:
    obs = data.obs(np.resize(idx, batch))
    with torch.no_grad():
        for _ in range(5):
            model.act(obs, deterministic=True)
        t = time.perf_counter()
        for _ in range(repeats):
            model.act(obs, deterministic=True)
    return (time.perf_counter() - t) / repeats * 1e3


def _without_context(act):
    """Wrap a policy so it sees the context channels zeroed (the --no-context ablation)."""
    from envs.observation import CONTEXT_CHANNELS, channel_index

    cols = [channel_index(c) for c in CONTEXT_CHANNELS]

    def wrapped(obs):
        obs = dict(obs)
        obs["beats"] = obs["beats"].copy()
        obs["beats"][..., cols] = 0.0
        return act(obs)

    return wrapped


def _zero_context(data):
    from envs.observation import CONTEXT_CHANNELS, channel_index

    data.beats[..., [channel_index(c) for c in CONTEXT_CHANNELS]] = 0.0
    return data


def _pretrain_config(args, runs_dir: str):
    """The PretrainConfig of one of our models, from the command line."""
    from pretrain.train import PretrainConfig

    return PretrainConfig(
        run="bench", runs_dir=runs_dir, seed=args.seed, hidden=args.hidden, n_layers=args.n_layers, n_heads=args.n_heads,
        kernel_size=args.kernel_size, dilations=tuple(args.dilations), dropout=args.dropout,
        weight_decay=args.weight_decay, epochs=args.epochs, max_minutes=args.max_minutes, val_fraction=0.15,
        patience=args.patience, restart=True, threads=args.threads, batch_size=args.batch_size, lr=args.lr,
        feature_dropout=args.feature_dropout, history_dropout=args.history_dropout, type_weight_power=args.type_weight_power, select=args.select,
        planner=args.planner, planner_kind=args.planner_kind,
    )


def run_persona(persona: str, songs, args, fold: int = 0) -> list[dict]:
    from envs.observation import HEAD_INDEX
    from pretrain.augment import IDENTITY, random_augmentations
    from pretrain.baselines import D3rlpyBaseline, HGBBaseline, MajorityBaseline
    from pretrain.dataset import BCData, build_bc_data, default_target_keep, song_for
    from pretrain.evaluate import policy_fn
    from pretrain.losses import predict
    from pretrain.train import train
    from agent.checkpoint import load_checkpoint, policy_from_checkpoint

    pairs, env_songs, refs = _persona_pairs(songs, persona, editor_grid=args.editor_grid, stems=args.stems)
    # the split: seeded permutation of songs, 20 % held out
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(pairs))
    if args.folds > 1:  # k-fold: fold f holds out every k-th song of the permutation
        test_names = {pairs[i].name for i in order[fold :: args.folds]}
    else:
        n_test = max(1, int(round(args.test_fraction * len(pairs))))
        test_names = {pairs[i].name for i in order[:n_test]}
    train_pairs = [p for p in pairs if p.name not in test_names]
    test_pairs = [p for p in pairs if p.name in test_names]
    if args.planner:  # as make pretrain: out-of-fold plans for training songs, the full planner for test songs
        from dataclasses import replace as _replace

        from agent.planner import PlannerConfig, oof_priors

        key = (lambda p: (p.name, IDENTITY.key()))
        priors, planner = oof_priors([(p.raw_sha256, env_songs[key(p)].values, p.plan.grid, p.plan) for p in train_pairs],
                                     PlannerConfig(kind=args.planner_kind))
        train_pairs = [_replace(p, plan_prior=pr) for p, pr in zip(train_pairs, priors)]
        for p in train_pairs:
            env_songs[key(p)] = _replace(env_songs[key(p)], plan_prior=p.plan_prior)
        for p in test_pairs:
            sg = env_songs[key(p)]
            env_songs[key(p)] = _replace(sg, plan_prior=planner.prior(sg.values, sg.grid))
    target_keep = default_target_keep(train_pairs)
    refine = None if args.refine < 0 else args.refine
    tr_data = build_bc_data(train_pairs, songs=env_songs, target_keep=target_keep, refine_max_size=refine)
    te_data = build_bc_data(test_pairs, songs=env_songs, target_keep=target_keep, refine_max_size=refine)
    if args.no_context:
        tr_data, te_data = _zero_context(tr_data), _zero_context(te_data)
    te_idx = np.arange(len(te_data))
    tr_idx = np.arange(len(tr_data))
    results = []
    wrap = _without_context if args.no_context else (lambda f: f)

    variants = [("ours", tr_data)]
    if args.augment > 0:
        t0 = time.perf_counter()
        augs = random_augmentations(args.augment, seed=args.seed)
        aug_songs = dict(env_songs)
        for p in train_pairs:
            for a in augs:
                aug_songs[(p.name, a.key())] = song_for(p, a, stems=args.stems)
        aug_data = build_bc_data(train_pairs, augmentations=augs, songs=aug_songs, target_keep=target_keep, refine_max_size=refine)
        variants.append((f"ours+aug{args.augment}", BCData.concat([tr_data, aug_data])))
        log.info("%s: augmented features in %.0f s", persona, time.perf_counter() - t0)

    for label, data in variants:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = _pretrain_config(args, tmp)
            t0 = time.perf_counter()
            evaluated = {"s": 0.0}  # evaluation time, not training time

            def score(r: int, summary: dict, label=label, t0=t0, evaluated=evaluated) -> None:
                e0 = time.perf_counter()
                model = policy_from_checkpoint(load_checkpoint(summary[f"{args.checkpoint}_path"], expect_layout="current")).eval()
                pred = predict(model, te_data.obs(te_idx), None)["action"].numpy()
                row = {"persona": persona, "method": label if r == 0 else f"{label}+dagger{r}", **_step_metrics(pred, te_data, te_idx),
                       **_episode_metrics(wrap(policy_fn(model)), sorted(test_names), env_songs, refs, target_keep),
                       "train_s": e0 - t0 - evaluated["s"], "params": model.n_parameters(), "epochs": summary["epoch"] + 1,
                       "infer_ms_b1": _inference_ms(model, te_data, te_idx, 1), "infer_ms_b16": _inference_ms(model, te_data, te_idx, 16)}
                results.append(row)
                log.info("%s", row)
                evaluated["s"] += time.perf_counter() - e0

            if args.dagger_rounds > 0 and label == "ours":
                from pretrain.train import train_dagger

                cfg = replace(cfg, dagger_rounds=args.dagger_rounds, dagger_epochs=args.dagger_epochs, refine_max_size=args.refine,
                              dagger_flip=args.dagger_flip, dagger_rollouts=args.dagger_rollouts)
                train_dagger(cfg, data, train_pairs, songs=env_songs, target_keep=target_keep,
                             on_round=score if args.dagger_eval_all else lambda r, sm: score(r, sm) if r == args.dagger_rounds else None)
            else:
                score(0, train(cfg, data))

    baselines = {
        "majority": lambda: MajorityBaseline(),
        "hgb": lambda: HGBBaseline(HEAD_INDEX, max_iter=args.hgb_iter, seed=args.seed),
        "d3rlpy_bc": lambda: D3rlpyBaseline("bc", HEAD_INDEX, n_steps=args.d3rlpy_steps, seed=args.seed),
        "d3rlpy_cql": lambda: D3rlpyBaseline("cql", HEAD_INDEX, n_steps=args.d3rlpy_steps, seed=args.seed),
    }
    for name in args.baselines:
        t0 = time.perf_counter()
        b = baselines[name]().fit(tr_data, tr_idx)
        train_s = time.perf_counter() - t0
        obs = {k: getattr(te_data, k)[te_idx] for k in ("beats", "globals", "type_mask", "size_mask", "amount_mask")}
        pred = b.act(obs)

        def act(o, b=b):
            return b.act(o)[0]

        row = {"persona": persona, "method": name, **_step_metrics(pred, te_data, te_idx),
               **_episode_metrics(wrap(act), sorted(test_names), env_songs, refs, target_keep), "train_s": train_s}
        results.append(row)
        log.info("%s", row)
    for r in results:
        r["n_train_songs"], r["n_test_songs"], r["n_train_steps"] = len(train_pairs), len(test_pairs), len(tr_data)
    return results


def _mean_over_folds(rows: list[dict]) -> list[dict]:
    """One row per (persona, method): numeric columns averaged (nan-aware), test songs summed."""
    out: dict[tuple, dict] = {}
    for r in rows:
        out.setdefault((r["persona"], r["method"]), []).append(r)
    merged = []
    for group in out.values():
        m = dict(group[0])
        for k, v in group[0].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                vals = np.array([g[k] for g in group], dtype=np.float64)
                m[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        m["n_test_songs"] = int(sum(g["n_test_songs"] for g in group))
        m["iou_std"] = float(np.std([g["iou"] for g in group]))
        merged.append(m)
    return merged


def _table(rows: list[dict]) -> str:
    cols = ["persona", "method", "type_acc", "size_acc", "amount_acc", "action_acc", "macro_f1", "iou", "iou/maj",
            "keep_error", "join_f", "train_s"]
    if any("iou_std" in r for r in rows):
        cols.insert(cols.index("iou/maj"), "iou_std")
    maj = {r["persona"]: r["iou"] for r in rows if r["method"] == "majority"}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = []
        for c in cols:
            if c == "iou/maj":
                m = maj.get(r["persona"])
                vals.append(f"{r['iou'] / m:.2f}" if m else "-")
            elif isinstance(r.get(c), float):
                vals.append(f"{r[c]:.1f}" if c == "train_s" else f"{r[c]:.3f}")
            else:
                vals.append(str(r.get(c, "-")))
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from agent.planner import KINDS, PlannerConfig
    from datasets.demo.editors import PERSONAS

    ap = argparse.ArgumentParser(prog="python bench/pretrain.py", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/demo/data", help="demo corpus (raw/*.wav)")
    ap.add_argument("--personas", nargs="+", default=list(PERSONAS), choices=list(PERSONAS))
    ap.add_argument("--n-songs", type=int, default=24)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=1,
                    help="k-fold cross-validation over the songs (every song held out once; means reported); "
                         "1 = one split by --test-fraction")
    ap.add_argument("--no-context", action="store_true",
                    help="ablation: zero the song-context channels (envs/context.py) for every method")
    ap.add_argument("--stems", default="auto")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--n-layers", type=int, default=2)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--kernel-size", type=int, default=7)
    ap.add_argument("--dilations", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--select", choices=("last", "nll", "action_acc"), default="last", help="PretrainConfig.select")
    ap.add_argument("--feature-dropout", type=float, default=0.5, help="PretrainConfig.feature_dropout")
    ap.add_argument("--history-dropout", type=float, default=0.0,
                    help="PretrainConfig.history_dropout: per-sample probability of blanking the edit history behind the head")
    ap.add_argument("--type-weight-power", type=float, default=0.5, help="PretrainConfig.type_weight_power")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--patience", type=int, default=15)
    ap.add_argument("--checkpoint", choices=("best", "last"), default="best",
                    help="evaluate bc_best.pt (the epoch --select picks) or bc_last.pt (after the last epoch)")
    ap.add_argument("--max-minutes", type=float, default=10.0, help="training time cap per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--refine", type=int, default=1,
                    help="label refinement max size (1 = BAR, 2 = TWO_BARS, 3 = PHRASE, -1 = oracle as is)")
    ap.add_argument("--dagger-rounds", type=int, default=3,
                    help="DAgger rounds after BC (PretrainConfig.dagger_rounds; pretrain/dagger.py), on the training "
                         "songs only; 0 = plain behaviour cloning")
    ap.add_argument("--dagger-epochs", type=int, default=30, help="PretrainConfig.dagger_epochs: epochs per DAgger round")
    ap.add_argument("--dagger-flip", type=float, default=0.1, help="PretrainConfig.dagger_flip (noise injection)")
    ap.add_argument("--dagger-rollouts", type=int, default=2, help="PretrainConfig.dagger_rollouts")
    ap.add_argument("--dagger-eval-all", action="store_true",
                    help="with --dagger-rounds R: evaluate after BC and after every round (rows ours, ours+dagger1..R)")
    ap.add_argument("--augment", type=int, default=0, help="also train with K augmented copies per training song")
    ap.add_argument("--no-editor-grid", dest="editor_grid", action="store_false",
                    help="label on the tracker's grid, not on the phase the persona's cuts agree with (alignment/grid.py)")
    ap.add_argument("--no-planner", dest="planner", action="store_false",
                    help="no whole-song planner plans in the observation (agent/planner.py)")
    ap.add_argument("--planner-kind", default=PlannerConfig.kind, choices=KINDS,
                    help="the whole-song planner's design (PlannerConfig.kind; make pretrain's --planner-kind)")
    ap.add_argument("--baselines", nargs="*", default=["majority", "hgb", "d3rlpy_bc", "d3rlpy_cql"])
    ap.add_argument("--hgb-iter", type=int, default=100)
    ap.add_argument("--d3rlpy-steps", type=int, default=3000)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("pretrain.train", "d3rlpy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        t0 = time.perf_counter()
        songs = _load_songs(Path(args.data), args.n_songs, args.stems)
        log.info("%d songs loaded (features) in %.0f s", len(songs), time.perf_counter() - t0)
        rows = []
        for persona in args.personas:
            for fold in range(max(args.folds, 1)):
                rows += run_persona(persona, songs, args, fold)
        if args.folds > 1:
            rows = _mean_over_folds(rows)
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_table(rows))
    ours = [r for r in rows if r["method"].startswith("ours")]
    for r in ours:
        print(
            f"{r['persona']}: {r['n_train_songs']} train / {r['n_test_songs']} test songs, {r['n_train_steps']} train steps; "
            f"{r['method']} {r['params']} parameters, trained {r['train_s']:.0f} s ({r['epochs']} epochs); "
            f"inference {r['infer_ms_b1']:.2f} ms/step (batch 1), {r['infer_ms_b16']:.2f} ms per batch of 16"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
