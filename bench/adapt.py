"""Corrections change the next edit: ``make adapt`` on real recordings.

    python bench/adapt.py --out runs/bench/adapt                       # ~15 min on 2 shared cores
    python bench/adapt.py --out /tmp/adapt --songs 14 --bc-epochs 60   # a quicker look

The user is a scripted editor (bench/style_editors.py, deciding on its own grid):
"loud65" keeps the loudest phrases until 65 % of the raw is kept, the opening phrase only
when it is among them. Then they decide on a rule the tool does not follow: always keep
the first phrase. Steps:

1. songs: data/tracks and the data/music pieces of at least 30 s, shuffled (``--seed``):
   ``--train`` base songs, 3 corrected songs, the rest held out;
2. the base pairs: the editor's plans as ``edited/NAME.plan.json`` (read exactly by
   ``make align``, alignment/projects.py); ``make align`` + ``make pretrain`` (behaviour
   cloning + ``--dagger-rounds``) -> bc_best.pt, the tool;
3. the tool edits the 3 correction songs (as ``python -m agent.infer`` does); the user
   corrects each edit by the rule (their first phrase is put back, the rest of the tool's
   edit kept) and saves it as ``edited/NAME.plan.json``; ``make align``; ``make adapt`` at
   each ``--new-shares`` and, as baselines in the same run, ``make adapt --new-weight 1``
   (no upweighting) and the rule applied to the tool's edits by code (the ceiling);
4. every held-out song is edited before and after, and scored in raw seconds:
   ``rule``: the song's first phrase (the editor's) is at least 75 % played, over all
   held-out songs and over those whose old edit cut it (where the rule changes the edit);
   ``rest IoU``: raw IoU with the user's old edit after the first phrase (what the
   corrections do not touch must stay); ``target IoU``: raw IoU with the user's edit
   under the new rule (their old edit plus the first phrase).

Prints one table and writes adapt.json and adapt.md to --out.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: one BLAS thread per process
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import style_editors as se  # noqa: E402
from bench import style_metrics as sm  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
MIN_SONG_S = 30.0
#: The user's old habit: loud70's ears, no opening kept, 65 % of the raw.
OLD = replace(se.EDITORS["loud70"], name="loud65", opening=0, keep=0.65, repeat=False, fade_bars=0, delivery="wav")
#: ... and under the new rule: the first phrase always kept.
NEW = replace(OLD, name="loud65+first", opening=1)
#: A first phrase counts as kept when this share of its raw seconds is played.
RULE_KEPT = 0.75
N_CORRECTED = 3
#: The old tool's edits with the rule applied by code: what a perfect learner of the rule alone would give.
CEILING = "old tool + the rule by code (ceiling)"
#: The user's own edits under the new rule: the rest IoU a perfect learner of the new style has.
REFERENCE = "the user's edits under the rule (reference)"

log = logging.getLogger("bench.adapt")


def list_songs(data: Path, limit: int | None, seed: int) -> list[Path]:
    import soundfile as sf

    paths = sorted((data / "tracks").glob("*.ogg")) + sorted((data / "music").glob("*.ogg"))
    paths = [p for p in paths if sf.info(str(p)).duration >= MIN_SONG_S]
    if not paths:
        raise SystemExit(f"error: {data}: no songs in tracks/ or music/")
    order = np.random.default_rng(seed).permutation(len(paths))
    paths = [paths[i] for i in order]
    return paths[:limit] if limit else paths


def kept_share(spans: sm.Spans, t0: float, t1: float, duration: float) -> float:
    """Share of raw seconds [t0, t1) that ``spans`` play."""
    u = sm.usage(spans, duration) > 0
    cells = u[int(round(t0 / sm.RES)) : int(round(t1 / sm.RES))]
    return float(cells.mean()) if len(cells) else 0.0


def iou_after(pred: sm.Spans, ref: sm.Spans, t: float, duration: float) -> float:
    """Raw IoU of two edits on [t, end) only."""
    i = int(round(t / sm.RES))
    up, ur = sm.usage(pred, duration)[i:] > 0, sm.usage(ref, duration)[i:] > 0
    union = int((up | ur).sum())
    return float((up & ur).sum() / union) if union else 1.0


def with_first_phrase(plan, t1: float):
    """The user's correction of the tool's edit: raw [0, t1) first, then the tool's edit
    from t1 on (on the edit's own grid)."""
    from envs.plan import EditPlan, Segment

    end = max(1, int(np.argmin(np.abs(plan.grid.bounds - t1))))
    rest = tuple(Segment(max(s.raw_start, end), s.raw_end, s.ops) for s in plan.segments if s.raw_end > end)
    return EditPlan((Segment(0, end),) + rest, plan.grid, plan.source_sha256).validate()


def score(spans: sm.Spans, song: dict) -> dict:
    d, (t0, t1) = song["duration"], song["first"]
    kept = kept_share(spans, t0, t1, d)
    return {"first_kept": kept, "rule": kept >= RULE_KEPT, "rest_iou": iou_after(spans, song["old"], t1, d),
            "target_iou": sm.raw_iou(spans, song["new"], d), "keep": sm.keep_ratio(spans, d)}


def summarise(rows: list[dict], songs: dict) -> dict:
    changed = [r for r in rows if not songs[r["name"]]["old_rule"]]
    return {"rule": sum(r["rule"] for r in rows), "n": len(rows),
            "rule_changed": sum(r["rule"] for r in changed), "n_changed": len(changed),
            "rest_iou": float(np.mean([r["rest_iou"] for r in rows])),
            "target_iou": float(np.mean([r["target_iou"] for r in rows])),
            "keep": float(np.mean([r["keep"] for r in rows]))}


def get_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python bench/adapt.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/adapt", help="work folder (pairs, run, results)")
    ap.add_argument("--data", default=str(DATA), help="folder with tracks/ and music/")
    ap.add_argument("--songs", type=int, default=None, help="use only this many songs (after the shuffle)")
    ap.add_argument("--train", type=int, default=14, help="base training songs (the rest: 3 corrected, held out)")
    ap.add_argument("--bc-epochs", type=int, default=150, help="make pretrain's epochs (its default: 150)")
    ap.add_argument("--dagger-rounds", type=int, default=1, help="make pretrain's DAgger rounds (its default: 3)")
    ap.add_argument("--adapt-epochs", type=int, default=20)
    ap.add_argument("--new-shares", type=float, nargs="+", default=[0.75, 0.5],
                    help="make adapt --new-share values to compare (the first is the default's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse-base", action="store_true",
                    help="keep --out's base run (its bc_best.pt) from an earlier run with the same songs and seed")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from alignment.run import main as align_main
    from bench.style import Inferrer
    from datasets.audio import load_audio
    from pretrain.adapt import AdaptConfig, adapt
    from pretrain.train import PretrainConfig, run as pretrain_run

    t_start = time.perf_counter()
    out = Path(args.out).resolve()
    data, runs = out / "data", out / "runs"
    reuse = args.reuse_base and (runs / "adapt" / "checkpoints" / "bc_best.pt").is_file()
    if not reuse:
        shutil.rmtree(runs, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    (data / "raw").mkdir(parents=True, exist_ok=True)
    (data / "edited").mkdir(exist_ok=True)
    paths = list_songs(Path(args.data), args.songs, args.seed)
    if len(paths) < args.train + N_CORRECTED + 1:
        raise SystemExit(f"error: {len(paths)} songs; need --train {args.train} + {N_CORRECTED} corrected + 1 held out")

    # 1-2. the user's old edits (and their edits under the new rule), as plans
    t = time.perf_counter()
    songs: dict[str, dict] = {}
    for p in paths:
        audio = load_audio(p)
        view, _, old = se.editor_plan(OLD, audio, name=p.stem)
        new = se.decide(NEW, view, source_sha256=audio.sha256).plan
        first = (float(view.grid.bounds[view.phrases[0]]), float(view.grid.bounds[view.phrases[1]]))
        old_spans = sm.spans_of_plan(old)
        songs[p.stem] = {"raw": data / "raw" / p.name, "plan": old, "old": old_spans, "new": sm.spans_of_plan(new),
                         "first": first, "duration": audio.duration,
                         "old_rule": kept_share(old_spans, *first, audio.duration) >= RULE_KEPT}
        if not (data / "raw" / p.name).exists():
            (data / "raw" / p.name).symlink_to(p.resolve())
    names = [p.stem for p in paths]
    train, corrected, held = names[: args.train], names[args.train : args.train + N_CORRECTED], names[args.train + N_CORRECTED :]
    t_edit = time.perf_counter() - t
    for n in train:
        (data / "edited" / f"{n}.plan.json").write_text(songs[n]["plan"].to_json())
    run_args = ["--data", str(data), "--run", "adapt", "--runs-dir", str(runs), "--jobs", "2"]
    t = time.perf_counter()
    if not reuse and align_main(run_args) != 0:
        raise SystemExit("error: make align failed on the base pairs")
    t_align = time.perf_counter() - t
    t = time.perf_counter()
    if not reuse:
        pretrain_run(PretrainConfig(run="adapt", runs_dir=str(runs), epochs=args.bc_epochs,
                                    dagger_rounds=args.dagger_rounds, seed=args.seed + 1))
    t_pretrain = time.perf_counter() - t
    ck = runs / "adapt" / "checkpoints"
    tool = Inferrer(ck / "bc_best.pt")

    # 3. the user corrects the tool's edits of three songs by the rule; make align; make adapt
    by_hand = {}
    for n in corrected:
        fixed = with_first_phrase(tool.plan(songs[n]["raw"]), songs[n]["first"][1])
        (data / "edited" / f"{n}.plan.json").write_text(fixed.to_json())
    if align_main(run_args) != 0:
        raise SystemExit("error: make align failed on the corrections")
    t = time.perf_counter()
    summaries, tools = {}, {}
    for share in [*args.new_shares, None]:  # None: no upweighting
        key = f"make adapt --new-share {share:g}" if share is not None else "make adapt --new-weight 1 (no upweighting)"
        kw = {"new_share": share} if share is not None else {"new_weight": 1.0}
        summaries[key] = adapt(AdaptConfig(run="adapt", runs_dir=str(runs), checkpoint=str(ck / "bc_best.pt"),
                                           pairs=tuple(corrected), epochs=args.adapt_epochs, seed=args.seed + 1, **kw))
        kept = ck / f"adapt_{len(tools)}.pt"
        shutil.move(ck / "adapt_last.pt", kept)
        tools[key] = Inferrer(kept)
    t_adapt = (time.perf_counter() - t) / len(summaries)

    # 4. the held-out songs before and after
    rows: dict[str, list[dict]] = {k: [] for k in ("before", *tools, CEILING, REFERENCE)}
    t = time.perf_counter()
    for n in held:
        s = songs[n]
        before = tool.plan(s["raw"])
        rows["before"].append({"name": n, **score(sm.spans_of_plan(before), s)})
        by_hand[n] = with_first_phrase(before, s["first"][1])
        rows[CEILING].append({"name": n, **score(sm.spans_of_plan(by_hand[n]), s)})
        rows[REFERENCE].append({"name": n, **score(s["new"], s)})
        for k, inf in tools.items():
            rows[k].append({"name": n, **score(sm.spans_of_plan(inf.plan(s["raw"])), s)})
    t_infer = time.perf_counter() - t
    res = {k: summarise(v, songs) for k, v in rows.items()}
    old_rule = sum(songs[n]["old_rule"] for n in held)

    lines = [
        f"## make adapt on real recordings ({len(train)} base songs, {N_CORRECTED} corrected, {len(held)} held out; "
        f"seed {args.seed})",
        "",
        f"The user's old edits keep the first phrase on {old_rule}/{len(held)} held-out songs; the rule changes "
        f"{len(held) - old_rule} of them.",
        "",
        "| tool | rule followed (all held out) | rule followed (where it changes the edit) | rest IoU (old edit after the first phrase) | target IoU (edit under the rule) | keep |",
        "|---|---|---|---|---|---|",
    ]
    for k, r in res.items():
        lines.append(f"| {k} | {r['rule']}/{r['n']} | {r['rule_changed']}/{r['n_changed']} | {r['rest_iou']:.3f} | "
                     f"{r['target_iou']:.3f} | {r['keep']:.2f} |")
    lines.append("")
    for k, s in summaries.items():
        lines.append(f"{k}: a new pair weighs {s['weight']:.1f}; action accuracy on the corrected pairs "
                     f"{s['before']['new']:.3f} -> {s['after']['new']:.3f}, on the old {s['before']['old']:.3f} -> "
                     f"{s['after']['old']:.3f}.")
    lines.append(f"Time: editor {t_edit:.0f} s, align {t_align:.0f} s, pretrain {t_pretrain:.0f} s, adapt {t_adapt:.0f} s "
                 f"each, held-out edits {t_infer:.0f} s, total {time.perf_counter() - t_start:.0f} s.")
    md = "\n".join(lines) + "\n"
    print(md)
    (out / "adapt.md").write_text(md)
    (out / "adapt.json").write_text(json.dumps({"summary": res, "rows": rows, "train": train, "corrected": corrected,
                                                "held_out": held, "adapt": summaries,
                                                "args": vars(args)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
