"""Style benchmark on real recordings: does the product edit the way its user edits?

    python bench/style.py --out runs/bench/style               # 5 editors x 2 folds + curve: 2.1 h at load 2-6
    python bench/style.py --quick --out /tmp/style-quick        # 2 editors, 6 songs cut to 40 s (< 2 min)
    python bench/style.py --editors loud70 sections8 --skip-train   # floors only
    python bench/style.py --ppo-epochs 30                       # shorter fine-tuning

Songs: the 29 real recordings of ../shared/data/tracks and the pieces of
../shared/data/music that last at least ``MIN_SONG_S`` (the jingles of 6-17 s hold less
than two phrases). Editors: bench/style_editors.py, each deciding on its own grid. Steps,
per editor:

1. every song is edited by the editor (ground truth beside each edit; kept across runs
   while the editor's style and the raw are unchanged);
2. the pairs are aligned once, as ``make align`` does (``alignment.run.main``); the labels
   serve every fold;
3. 2-fold by song (every song held out once; the same split for every editor): the
   floors are fitted on the training songs (bench/style_metrics.py); the training pairs'
   labels are copied into a fold run whose index ``alignment.run.main`` rebuilds, then
   ``pretrain.train.run`` (make pretrain: BC + DAgger -> bc_best.pt) and
   ``rl.train.run`` (make finetune: PPO -> ppo_last.pt);
4. every held-out song is edited as ``python -m agent.infer`` edits it (``edit_song`` on
   an ``AudioEditEnv`` with the checkpoint's target_keep, the keep floor, the end fade),
   checked against the CLI itself on ``--cli-check`` songs, and scored in raw seconds;
5. a learning curve (5, 10 and all training pairs of fold 0) on ``--curve-editors``.

Time (2 shared cores, load 2-6, default budgets): 127 min, of which BC + DAgger 52, PPO
26, learning curve 28, edits 9, alignment 6 (features and labels are cached for reruns;
``--curve-editors`` with no name drops the curve). ``--quick``: ~50 s of CPU.

Prints one table per editor, a summary (with what the editor's grid does to the labels:
the share of BEAT-sized label actions, LOOP vs JUMP_BACK, and how often the product's
downbeats meet the editor's) and the learning curve; writes style.json and style.md to
--out, and the total wall time.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: one BLAS thread per process
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import style_editors as se  # noqa: E402
from bench import style_metrics as sm  # noqa: E402

from datasets.errors import EditorError, ParameterError  # noqa: E402

log = logging.getLogger("bench.style")

DATA = ROOT.parent / "shared" / "data"
#: Shortest song used: two 8-bar sections at 120 BPM last 32 s; the music folder's
#: jingles (6-17 s) would only ever be kept whole.
MIN_SONG_S = 30.0
QUICK_EDITORS = ("loud70", "chorus75")
QUICK_SONGS = 6
QUICK_SECONDS = 40.0
METHODS = ("keep everything", "intro cut", "random bars", "HGB phrase", "ours BC", "ours PPO")


@dataclass(frozen=True)
class Budget:
    """Training budget of one fold (``None``: the stage's own default, as make runs it)."""

    bc_epochs: int | None = None
    dagger_rounds: int | None = None
    dagger_epochs: int | None = None
    ppo_epochs: int | None = None
    ppo_steps: int | None = None
    ppo_envs: int | None = None


QUICK_BUDGET = Budget(bc_epochs=3, dagger_rounds=1, dagger_epochs=1, ppo_epochs=2, ppo_steps=16, ppo_envs=4)


# --------------------------------------------------------------------------- songs
def list_songs(data: Path, quick: bool, out: Path, limit: int | None) -> dict[str, Path]:
    """{name: raw path}: data/tracks + the data/music pieces of at least MIN_SONG_S.
    --quick: QUICK_SONGS of them, cut to their first QUICK_SECONDS (written under --out)."""
    import soundfile as sf

    paths = sorted((data / "tracks").glob("*.ogg")) + sorted((data / "music").glob("*.ogg"))
    songs = {p.stem: p for p in paths if sf.info(str(p)).duration >= MIN_SONG_S}
    if not songs:
        raise EditorError(f"{data}: no songs in tracks/ or music/ (see --data)")
    names = sorted(songs)
    if quick:
        names = names[:: max(1, len(names) // QUICK_SONGS)][:QUICK_SONGS]
    if limit:
        names = names[:limit]
    if not quick:
        return {n: songs[n] for n in names}
    from datasets.audio import load_audio, write_audio

    cut = {}
    for n in names:
        dst = out / "songs" / f"{n}.wav"
        if not dst.is_file():
            a = load_audio(songs[n])
            write_audio(dst, y=a.y[:, : int(QUICK_SECONDS * a.sr)], sr=a.sr)
        cut[n] = dst
    return cut


def folds_of(names: list[str], k: int, seed: int) -> list[list[str]]:
    """Held-out names of each fold: a seeded permutation dealt round-robin."""
    order = np.random.default_rng(seed).permutation(len(names))
    return [sorted(names[i] for i in order[f::k]) for f in range(k)]


# --------------------------------------------------------------------------- edits + labels
#: Code an editor's edits depend on, and code the labels depend on: a change to either
#: makes the next run edit / align again (make align alone would keep labels that are
#: newer than their audio, whatever code made them).
EDIT_CODE = ("bench/style_editors.py", "envs/render.py", "envs/plan.py", "datasets/beats.py", "datasets/audio.py",
             "datasets/demo/delivery.py")
LABEL_CODE = ("alignment/*.py", "datasets/*.py", "envs/*.py")


def code_hash(patterns: tuple[str, ...]) -> str:
    """sha256 (16 hex) of the named source files' contents, in name order."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted({q for pat in patterns for q in ROOT.glob(pat)}):
        h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _edit_one(job: tuple) -> tuple[str, dict | str]:
    style, raw, folder, name, code = job
    try:
        rec = se.make_edit(style, raw, folder, name=name)
    except EditorError as exc:
        return name, str(exc)
    from datasets.atomic import atomic_write_json

    rec["code"] = code  # which editor code made it (make_edits redoes edits of older code)
    atomic_write_json(Path(folder) / f"{name}{se.TRUTH_SUFFIX}", rec)
    return name, rec


def make_edits(style: se.EditorStyle, songs: dict[str, Path], ed_dir: Path, jobs: int) -> dict[str, dict]:
    """Edit every song (kept when the truth on disk has this style and raw); {name: truth}."""
    from concurrent.futures import ProcessPoolExecutor

    raw_dir, edited_dir = ed_dir / "raw", ed_dir / "edited"
    raw_dir.mkdir(parents=True, exist_ok=True)
    edited_dir.mkdir(parents=True, exist_ok=True)
    truths, todo = {}, []
    code = code_hash(EDIT_CODE)
    for name, path in songs.items():
        link = raw_dir / f"{name}{path.suffix}"
        if not link.is_symlink() or link.resolve() != path.resolve():
            link.unlink(missing_ok=True)
            link.symlink_to(path.resolve())
        tp = edited_dir / f"{name}{se.TRUTH_SUFFIX}"
        if tp.is_file():
            rec = se.load_truth(tp)
            if (rec.get("style") == asdict(style) and rec.get("raw_path") == str(link)
                    and rec.get("code") == code and Path(rec["edited_path"]).is_file()):
                truths[name] = rec
                continue
        todo.append((style, str(link), str(edited_dir), name, code))
    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            done = list(pool.map(_edit_one, todo))
    else:
        done = [_edit_one(j) for j in todo]
    for name, rec in done:
        if isinstance(rec, str):
            log.warning("%s: %s skipped: %s", style.name, name, rec)
        else:
            truths[name] = rec
    return {n: truths[n] for n in sorted(truths)}


def _quiet(fn, *args, logfile: Path, **kw):
    """Call a stage with its stdout/stderr (tables, progress bars) sent to ``logfile``."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        return fn(*args, **kw)


def align_editor(ed_dir: Path, runs: Path, run: str, jobs: int, *, relabel_stale: bool = True) -> Path:
    """``make align DATA=ed_dir RUN=run`` (with ``relabel_stale``: ``--force`` when the
    labels were made by other alignment code); returns the labels folder."""
    from alignment.run import main as align_main
    from datasets.atomic import atomic_write_text

    stamp = runs / run / "labels" / ".bench-code"
    code = code_hash(LABEL_CODE)
    stale = not stamp.is_file() or stamp.read_text() != code
    force = ["--force"] if relabel_stale and stale else []
    rc = _quiet(align_main, ["--data", str(ed_dir), "--run", run, "--runs-dir", str(runs), "--jobs", str(jobs), *force],
                logfile=runs / run / "align.log")
    if rc != 0:
        raise EditorError(f"alignment of {ed_dir} failed (exit {rc}); see {runs / run / 'align.log'}")
    atomic_write_text(stamp, code)
    return runs / run / "labels"


def label_stats(labels: Path) -> dict:
    """What the labels say about the grid: share of BEAT-sized actions, repeats as LOOP /
    JUMP_BACK / REPEAT_PREV, confidence, exactness."""
    from envs.actions import ActionType, Size

    index = json.loads((labels / "index.json").read_text())
    acts, conf, exact = [], [], []
    for name, e in index.items():
        rec = json.loads(Path(e["label"]).read_text())
        acts += rec.get("actions") or []
        conf.append(float(rec["confidence"]))
        exact.append(bool(rec.get("actions_exact")))
    a = np.asarray(acts, dtype=np.int64).reshape(-1, 3)
    n = max(len(a), 1)
    return {
        "pairs": len(index),
        "actions": int(len(a)),
        "beat_frac": float((a[:, 1] == Size.BEAT).sum() / n),
        "loop": int((a[:, 0] == ActionType.LOOP).sum()),
        "jump_back": int((a[:, 0] == ActionType.JUMP_BACK).sum()),
        "repeat_prev": int((a[:, 0] == ActionType.REPEAT_PREV).sum()),
        "confidence_min": float(min(conf)) if conf else float("nan"),
        "confidence_mean": float(np.mean(conf)) if conf else float("nan"),
        "exact_frac": float(np.mean(exact)) if exact else float("nan"),
    }


# --------------------------------------------------------------------------- training
def _fold_run(labels: Path, ed_dir: Path, runs: Path, run: str, names: list[str]) -> None:
    """A run folder whose labels are the given pairs' (copied) and whose index make
    align rebuilds: the pairs are up to date, so nothing is aligned again."""
    data = runs / run / "data"
    shutil.rmtree(runs / run, ignore_errors=True)
    index = json.loads((labels / "index.json").read_text())
    (runs / run / "labels").mkdir(parents=True)
    for sub in ("raw", "edited"):
        (data / sub).mkdir(parents=True)
    for n in names:
        if n not in index:
            continue  # alignment failed for this pair: nothing to train on
        e = index[n]
        for sub, key in (("raw", "raw_path"), ("edited", "edited_path")):
            src = Path(e[key])
            (data / sub / src.name).symlink_to(src.resolve())
        shutil.copy(e["label"], runs / run / "labels" / f"{n}.json")
    align_editor(data, runs, run, jobs=1, relabel_stale=False)  # labels copied from this code's run


def train_fold(runs: Path, run: str, budget: Budget, *, threads: int, seed: int, planner_kind: str = "rank") -> dict:
    """make pretrain + make finetune on runs/RUN; returns timings and checkpoint paths."""
    import tyro

    from pretrain.train import PretrainConfig
    from pretrain.train import run as pretrain_run
    from rl.train import TrainArgs
    from rl.train import run as finetune_run

    cfg = PretrainConfig(run=run, runs_dir=str(runs), threads=threads, seed=seed, planner_kind=planner_kind)
    over = {k: v for k, v in (("epochs", budget.bc_epochs), ("dagger_rounds", budget.dagger_rounds),
                              ("dagger_epochs", budget.dagger_epochs)) if v is not None}
    cfg = replace(cfg, **over)
    t0 = time.perf_counter()
    _quiet(pretrain_run, cfg, logfile=runs / run / "pretrain.log")
    t1 = time.perf_counter()
    argv = ["--run", run, "--runs-dir", str(runs), "--threads", str(threads)]
    for flag, v in (("--epochs", budget.ppo_epochs), ("--steps", budget.ppo_steps), ("--n-envs", budget.ppo_envs)):
        if v is not None:
            argv += [flag, str(v)]
    targs = tyro.cli(TrainArgs, args=argv)
    _quiet(finetune_run, targs, log_fn=print, logfile=runs / run / "finetune.log")  # print: into the log
    t2 = time.perf_counter()
    ck = runs / run / "checkpoints"
    return {"bc": ck / "bc_best.pt", "ppo": ck / "ppo_last.pt", "bc_s": t1 - t0, "ppo_s": t2 - t1}


# --------------------------------------------------------------------------- inference
class Inferrer:
    """Held-out edits exactly as ``python -m agent.infer SONG --checkpoint CKPT`` makes
    them (its defaults: greedy, seed 0, the style's keep ratio, end fade), from the same
    functions, with the policy loaded once (agent.infer.run also renders and exports,
    ~2 s a song). ``cli_check`` compares the two on real songs.

    The steps agent.infer added since this benchmark was written are taken when the code
    has them, so one benchmark measures the product before and after them: the editor's
    grid (alignment/grid.py, da60a1f), the whole-song planner's prior (agent/planner.py,
    ee3f949), the length request (agent.duration.fit_length; before: fit_duration below
    the keep floor)."""

    def __init__(self, ckpt_path: Path) -> None:
        from agent.checkpoint import load_checkpoint, policy_from_checkpoint
        from agent.device import pick_device

        self.path = ckpt_path
        self.ckpt = load_checkpoint(ckpt_path)
        self.extra = self.ckpt.get("extra") or {}
        self.policy = policy_from_checkpoint(self.ckpt, device=pick_device("auto")).eval()

    def features(self, audio):
        """The song's features on the grid agent.infer edits on."""
        from datasets.features import extract_features

        stems, _, stem_model = (self.extra.get("stem_method") or "auto").partition(":")
        feats = extract_features(audio, stems=stems, stem_model=stem_model or None)
        try:
            from alignment.grid_model import editor_grid_features
        except ImportError:  # before the editor's grid: the product's own
            return feats
        return editor_grid_features(audio, feats, self.extra.get("editor_grid"), stems=stems,
                                    stem_model=stem_model or None)[0]

    def plan(self, raw_path: Path):
        from agent.ending import soften_ending
        from agent.edit import edit_song
        from datasets.audio import load_audio
        from datasets.features import feature_index
        from envs.env import AudioEditEnv, Song
        from envs.layout import output_duration
        from envs.reward import KEEP_RATIO_MIN

        audio = load_audio(raw_path)
        feats = self.features(audio)
        energy = feats.values[:, feature_index("rms_db")]

        def seconds(p):
            return output_duration(p, audio.sr, 10.0)  # agent.infer's --crossfade-ms default

        try:
            from agent.duration import LengthRequest, fit_length, policy_target_keep, trained_keep_range
        except ImportError:  # before length requests
            fit_length = None
        keep = self.extra.get("target_keep")
        if fit_length is not None:
            request = LengthRequest(target_s=None, keep_ratio=None)
            keep = policy_target_keep(request, duration_s=audio.duration, style_keep=keep,
                                      trained=trained_keep_range(self.policy))
        song_kw = {}
        try:
            from agent.planner import Planner
        except ImportError:  # before the whole-song planner
            Planner = None
        if Planner is not None:
            planner = Planner.from_state(self.extra.get("planner"))
            song_kw["plan_prior"] = None if planner is None else planner.prior(feats.values, feats.grid)
        env = AudioEditEnv([Song.from_features(feats, audio=audio, name=Path(raw_path).stem, **song_kw)], target_keep=keep)
        plan = edit_song(self.policy, env, deterministic=True, seed=0).plan
        if fit_length is not None:
            plan, _ = fit_length(plan, request, style_keep=env.target_keep, energy=energy, output_seconds=seconds,
                                 floor_keep=KEEP_RATIO_MIN)
        elif plan.keep_ratio < KEEP_RATIO_MIN:
            from agent.duration import fit_duration

            plan = fit_duration(plan, target_s=env.target_keep * audio.duration, energy=energy, output_seconds=seconds)
        return soften_ending(plan)


def cli_check(ckpt: Path, raw_paths: list[Path], inferrer: Inferrer, tmp: Path) -> str:
    """Edit songs with the real CLI and compare its plan.json with the in-process plan."""
    from agent.infer import main as infer_main
    from envs.plan import EditPlan

    same = 0
    for raw in raw_paths:
        out = tmp / raw.stem
        rc = _quiet(infer_main, [str(raw), "--checkpoint", str(ckpt), "--out", str(out)], logfile=tmp / "infer.log")
        if rc != 0:
            raise EditorError(f"python -m agent.infer failed on {raw} (exit {rc}); see {tmp / 'infer.log'}")
        cli = EditPlan.from_json((out / f"{raw.stem}.plan.json").read_text())
        mine = inferrer.plan(raw)
        same += int(cli.segments == mine.segments and np.array_equal(cli.grid.bounds, mine.grid.bounds))
    return f"{same}/{len(raw_paths)} identical"


# --------------------------------------------------------------------------- one editor
def _product_view(raw: Path):
    """(features, grid) of a song as the product sees it at inference (cached)."""
    from datasets.audio import load_audio
    from datasets.features import extract_features

    feats = extract_features(load_audio(raw))
    return feats.values, feats.grid


def run_floors(train: list[dict], test: list[dict], views: dict, seed: int) -> dict[str, list[dict]]:
    """Per method, the held-out song scores of the four floors fitted on ``train``."""
    intro = sm.IntroCut.fit(train)
    rnd = sm.RandomBars.fit(train, seed=seed)
    hgb = sm.PhraseHGB(seed=seed).fit([(*views[t["name"]], t) for t in train])
    rows: dict[str, list[dict]] = {m: [] for m in METHODS[:4]}
    for t in test:
        values, grid = views[t["name"]]
        d = float(t["duration"])
        rows["keep everything"].append(sm.song_scores(sm.keep_everything(d), t))
        rows["intro cut"].append(sm.song_scores(intro.edit(d), t))
        rows["random bars"].append(sm.song_scores(rnd.edit(grid, name=t["name"]), t))
        rows["HGB phrase"].append(sm.song_scores(hgb.edit(values, grid), t))
    return rows


def score_policy(ckpt: Path, test: list[dict]) -> tuple[list[dict], list[float]]:
    """Held-out scores of a checkpoint, and downbeat agreement of its plans' grids."""
    inf = Inferrer(ckpt)
    rows, agree = [], []
    for t in test:
        plan = inf.plan(Path(t["raw_path"]))
        rows.append(sm.song_scores(sm.spans_of_plan(plan), t))
        agree.append(sm.downbeat_agreement(np.asarray(t["downbeats"]), plan.grid.times[plan.grid.beat_in_bar == 0]))
    return rows, agree


def run_editor(style: se.EditorStyle, songs: dict[str, Path], folds: list[list[str]], args, budget: Budget,
               views: dict) -> dict:
    out = Path(args.out)
    t0 = time.perf_counter()
    ed_dir = out / "editors" / style.name
    truths = make_edits(style, songs, ed_dir, args.jobs)
    t_edit = time.perf_counter() - t0
    runs = out / "runs"
    labels = align_editor(ed_dir, runs, style.name, args.jobs)
    t_align = time.perf_counter() - t0 - t_edit
    stats = label_stats(labels)
    log.info("%s: %d edits (%.0f s), %d pairs aligned (%.0f s): BEAT-sized label actions %.1f %%, LOOP %d, "
             "JUMP_BACK %d, confidence min %.3f", style.name, len(truths), t_edit, stats["pairs"], t_align,
             100 * stats["beat_frac"], stats["loop"], stats["jump_back"], stats["confidence_min"])
    rows: dict[str, list[dict]] = {m: [] for m in METHODS}
    agree: dict[str, list[float]] = {"inference grid": [], "ours BC": [], "ours PPO": []}
    timing = {"edit_s": t_edit, "align_s": t_align, "bc_s": 0.0, "ppo_s": 0.0}
    curve: list[dict] = []
    cli = "not run"
    for f, held in enumerate(folds):
        if args.only_folds is not None and f not in args.only_folds:
            continue  # every method (floors too) is scored on the same held-out songs
        test = [truths[n] for n in held if n in truths]
        train = [truths[n] for n in truths if n not in held]
        for method, r in run_floors(train, test, views, args.seed).items():
            rows[method] += r
        for t in test:
            agree["inference grid"].append(sm.downbeat_agreement(
                np.asarray(t["downbeats"]), views[t["name"]][1].times[views[t["name"]][1].beat_in_bar == 0]))
        if args.skip_train:
            continue
        run = f"{style.name}-f{f}"
        _fold_run(labels, ed_dir, runs, run, [t["name"] for t in train])
        tr = train_fold(runs, run, budget, threads=args.threads, seed=args.seed + 1,
                        planner_kind=args.planner_kind)
        timing["bc_s"] += tr["bc_s"]
        timing["ppo_s"] += tr["ppo_s"]
        for method, key in (("ours BC", "bc"), ("ours PPO", "ppo")):
            r, a = score_policy(tr[key], test)
            rows[method] += r
            agree[method] += a
        if f == 0 and args.cli_check > 0:
            tmp = runs / run / "cli_check"
            raws = [Path(t["raw_path"]) for t in test[: args.cli_check]]
            cli = cli_check(tr["bc"], raws, Inferrer(tr["bc"]), tmp)
            log.info("%s: python -m agent.infer vs the in-process edit: %s", style.name, cli)
        log.info("%s fold %d: %d train / %d held out; BC %.0f s, PPO %.0f s; held-out IoU BC %.3f PPO %.3f", style.name,
                 f, len(train), len(test), tr["bc_s"], tr["ppo_s"], sm.mean_scores(rows["ours BC"][-len(test):])["iou"],
                 sm.mean_scores(rows["ours PPO"][-len(test):])["iou"])
        if f == 0 and style.name in args.curve_editors:
            curve += learning_curve(style, labels, ed_dir, runs, train, test, views, args, budget)
            curve.append({"editor": style.name, "pairs": len(train), **_curve_row(rows, len(test))})
    table = {m: sm.mean_scores(r) for m, r in rows.items() if r}
    return {"editor": style.name, "style": asdict(style), "songs": len(truths), "table": table, "labels": stats,
            "downbeat_agreement": {k: float(np.mean(v)) for k, v in agree.items() if v}, "timing": timing,
            "cli_check": cli, "curve": curve,
            "editor_keep": float(np.mean([sm.keep_ratio(sm.spans_of_truth(t), t["duration"]) for t in truths.values()])),
            "songs_with_repeat": int(sum(t["repeat"] is not None for t in truths.values()))}


def _curve_row(rows: dict, n_test: int) -> dict:
    """IoU and phrase accuracy of HGB / BC / PPO on fold 0 (the last n_test rows)."""
    out = {}
    for m, k in (("HGB phrase", "hgb"), ("ours BC", "bc"), ("ours PPO", "ppo")):
        s = sm.mean_scores(rows[m][-n_test:]) if m != "HGB phrase" else sm.mean_scores(rows[m][:n_test])
        out[f"{k}_iou"], out[f"{k}_phrase_acc"] = s["iou"], s["phrase_acc"]
    return out


def learning_curve(style, labels, ed_dir, runs, train, test, views, args, budget) -> list[dict]:
    """Fold 0 trained on its first 5 and 10 training pairs (seeded order), same held-out songs."""
    order = [train[i] for i in np.random.default_rng(args.seed).permutation(len(train))]
    out = []
    for n in args.curve_sizes:
        if n >= len(train):
            continue
        sub = order[:n]
        run = f"{style.name}-f0-n{n}"
        _fold_run(labels, ed_dir, runs, run, [t["name"] for t in sub])
        tr = train_fold(runs, run, budget, threads=args.threads, seed=args.seed + 1,
                        planner_kind=args.planner_kind)
        rows = {m: [] for m in METHODS}
        rows["HGB phrase"] = run_floors(sub, test, views, args.seed)["HGB phrase"]
        rows["ours BC"], _ = score_policy(tr["bc"], test)
        rows["ours PPO"], _ = score_policy(tr["ppo"], test)
        out.append({"editor": style.name, "pairs": n, **_curve_row(rows, len(test)), "bc_s": tr["bc_s"], "ppo_s": tr["ppo_s"]})
        log.info("%s curve, %d pairs: IoU HGB %.3f BC %.3f PPO %.3f", style.name, n, out[-1]["hgb_iou"],
                 out[-1]["bc_iou"], out[-1]["ppo_iou"])
    return out


# --------------------------------------------------------------------------- tables
def _fmt(v: float | None) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.3f}"


def editor_markdown(res: dict) -> str:
    lines = [f"### {res['editor']} ({res['table']['keep everything']['n']} of {res['songs']} songs held out; on all "
             f"{res['songs']} the editor keeps {res['editor_keep']:.2f} and repeats a phrase on {res['songs_with_repeat']})", "",
             "| method | IoU | phrase acc | keep err | repeat hit | join F |", "|---|---|---|---|---|---|"]
    for m in METHODS:
        s = res["table"].get(m)
        if s is None:
            continue
        rep = "-" if not s["n_repeat"] else f"{_fmt(s['repeat_hit'])} ({round(s['repeat_hit'] * s['n_repeat'])}/{s['n_repeat']})"
        lines.append(f"| {m} | {_fmt(s['iou'])} | {_fmt(s['phrase_acc'])} | {_fmt(s['keep_err'])} | {rep} | {_fmt(s['join_f'])} |")
    return "\n".join(lines)


def summary_markdown(results: list[dict]) -> str:
    lines = ["| editor | best floor IoU | HGB IoU | BC IoU | PPO IoU | HGB phrase acc | BC phrase acc | PPO phrase acc | "
             "BEAT-sized labels | LOOP / JUMP_BACK | label conf min | downbeat agr. (inference grid / PPO plan) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["table"]
        best = max(t[m]["iou"] for m in METHODS[:3])
        g = lambda m, k: _fmt(t[m][k]) if m in t else "-"  # noqa: E731
        st, da = r["labels"], r["downbeat_agreement"]
        lines.append(f"| {r['editor']} | {_fmt(best)} | {g('HGB phrase', 'iou')} | {g('ours BC', 'iou')} | "
                     f"{g('ours PPO', 'iou')} | {g('HGB phrase', 'phrase_acc')} | {g('ours BC', 'phrase_acc')} | "
                     f"{g('ours PPO', 'phrase_acc')} | {100 * st['beat_frac']:.1f} % of {st['actions']} | "
                     f"{st['loop']} / {st['jump_back']} | {_fmt(st['confidence_min'])} | "
                     f"{_fmt(da.get('inference grid'))} / {_fmt(da.get('ours PPO'))} |")
    return "\n".join(lines)


def curve_markdown(results: list[dict]) -> str:
    rows = [c for r in results for c in r["curve"]]
    if not rows:
        return ""
    lines = ["| editor | training pairs | HGB IoU | BC IoU | PPO IoU | HGB phrase acc | BC phrase acc | PPO phrase acc |",
             "|---|---|---|---|---|---|---|---|"]
    for c in sorted(rows, key=lambda c: (c["editor"], c["pairs"])):
        lines.append(f"| {c['editor']} | {c['pairs']} | {_fmt(c['hgb_iou'])} | {_fmt(c['bc_iou'])} | {_fmt(c['ppo_iou'])} | "
                     f"{_fmt(c['hgb_phrase_acc'])} | {_fmt(c['bc_phrase_acc'])} | {_fmt(c['ppo_phrase_acc'])} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def get_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python bench/style.py", description=__doc__.splitlines()[0])
    ap.add_argument("--editors", nargs="+", choices=list(se.EDITORS), help="default: all (--quick: loud70 chorus75)")
    ap.add_argument("--folds", type=int, default=2, help="k-fold by song, every song held out once")
    ap.add_argument("--only-folds", type=int, nargs="+", default=None,
                    help="evaluate these folds only (e.g. 0: half the songs held out, half the time)")
    ap.add_argument("--quick", action="store_true",
                    help=f"{len(QUICK_EDITORS)} editors, {QUICK_SONGS} songs cut to {QUICK_SECONDS:.0f} s, tiny budgets, no curve")
    ap.add_argument("--data", default=str(DATA), help="folder with tracks/ and music/ (the shared real recordings)")
    ap.add_argument("--out", default="runs/bench/style", help="work folder (edits, runs) and style.json / style.md")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every stage")
    ap.add_argument("--jobs", type=int, default=1, help="songs edited / pairs aligned in parallel")
    ap.add_argument("--skip-train", action="store_true", help="floors only (no BC / PPO)")
    ap.add_argument("--songs", type=int, default=None, help="use only the first N songs")
    ap.add_argument("--seed", type=int, default=0, help="fold split, floors, learning-curve subsets")
    ap.add_argument("--planner-kind", default="rank", choices=("rank", "mlp", "attention"),
                    help="the whole-song planner's design (make pretrain's --planner-kind)")
    ap.add_argument("--bc-epochs", type=int, default=None, help="default: PretrainConfig's (--quick: 3)")
    ap.add_argument("--dagger-rounds", type=int, default=None, help="default: PretrainConfig's (--quick: 1)")
    ap.add_argument("--ppo-epochs", type=int, default=None, help="default: PPOConfig's (--quick: 2)")
    ap.add_argument("--curve-editors", nargs="*", default=None, help="learning curve on these (default: the first two editors)")
    ap.add_argument("--curve-sizes", type=int, nargs="*", default=[5, 10], help="training pairs of the curve's extra points")
    ap.add_argument("--cli-check", type=int, default=None,
                    help="held-out songs of fold 0 also edited by the agent.infer CLI, to check the in-process path (default 2, --quick 1)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("pretrain", "rl", "alignment", "datasets", "envs", "agent", "d3rlpy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    editors = args.editors or (list(QUICK_EDITORS) if args.quick else list(se.EDITORS))
    if args.cli_check is None:
        args.cli_check = 1 if args.quick else 2
    if args.curve_editors is None:
        args.curve_editors = [] if args.quick else editors[:2]
    budget = QUICK_BUDGET if args.quick else Budget()
    budget = replace(budget, **{k: v for k, v in (("bc_epochs", args.bc_epochs), ("dagger_rounds", args.dagger_rounds),
                                                  ("ppo_epochs", args.ppo_epochs)) if v is not None})
    out = Path(args.out)
    from datasets.atomic import atomic_write_json, atomic_write_text

    try:
        if args.folds < 2:
            raise ParameterError(f"--folds {args.folds}: need at least 2 (every song held out once)")
        songs = list_songs(Path(args.data), args.quick, out, args.songs)
        if len(songs) < 2 * args.folds:
            raise ParameterError(f"{len(songs)} songs are too few for {args.folds} folds")
        folds = folds_of(sorted(songs), args.folds, args.seed)
        t0 = time.perf_counter()
        views = {n: _product_view(p) for n, p in songs.items()}
        log.info("%d songs (%s), product features in %.0f s; %d folds of %s held-out songs", len(songs),
                 "quick: first 40 s" if args.quick else "tracks + music", time.perf_counter() - t0, args.folds,
                 "/".join(str(len(f)) for f in folds))
        results = []
        for e in editors:
            results.append(run_editor(se.EDITORS[e], songs, folds, args, budget, views))
            # each editor's result as soon as it is measured: a long run that is stopped
            # keeps what it finished (the tables are made from these at the end)
            atomic_write_json(out / "results" / f"{e}.json", _plain(results[-1]))
            log.info("%s done after %.0f min: %s", e, (time.perf_counter() - t_start) / 60, out / "results" / f"{e}.json")
    except EditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t_start
    md = ["# Style benchmark (bench/style.py)", "",
          f"`python bench/style.py {' '.join(argv if argv is not None else sys.argv[1:])}`: {len(songs)} songs, "
          f"{args.folds}-fold by song, budget {asdict(budget)}; wall time {wall / 60:.1f} min", ""]
    for r in results:
        md += [editor_markdown(r), ""]
    md += ["## Summary", "", summary_markdown(results), ""]
    if any(r["curve"] for r in results):
        md += ["## Learning curve (fold 0)", "", curve_markdown(results), ""]
    md += ["in-process edit vs `python -m agent.infer`: " + ", ".join(f"{r['editor']} {r['cli_check']}" for r in results), ""]
    text = "\n".join(md)
    print(text)
    atomic_write_text(out / "style.md", text)
    atomic_write_json(out / "style.json", {"argv": argv if argv is not None else sys.argv[1:], "songs": sorted(songs),
                                           "folds": folds, "budget": asdict(budget), "wall_s": wall,
                                           "results": _plain(results)})
    print(f"total wall time {wall / 60:.1f} min ({wall:.0f} s); tables in {out / 'style.md'} and {out / 'style.json'}")
    return 0


def _plain(x):
    """JSON-ready copy (numpy scalars, paths, nan -> None)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


if __name__ == "__main__":
    sys.exit(main())
