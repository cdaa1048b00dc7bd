"""Alignment accuracy and speed against ground truth, ours vs the predecessor's baseline.

Usage::

    .venv/bin/python bench/alignment.py [--demo runs/demo/data] [--music ../shared/data/music] [--max-pairs N]

Corpora
- demo: ``runs/demo/data`` (datasets.demo.build): raw songs, persona edits rendered by
  envs.render, truth plans; part of the edited files went through the delivery chain
  (gain, compression, MP3, 48 kHz; its codec delay is in the truth file).
- music: real recordings from ../shared/data/music, each edited by the demo personas
  ("tight", "radio") and by a scripted "shuffle" editor (far reorders, a loop, a gain
  change, a fade-out), rendered by envs.render, each once clean and once delivered
  (datasets.demo.delivery with drawn parameters).

Metrics (per pair, averaged per corpus x delivery)
- map: share of the edited timeline (every 10 ms, +-60 ms around true joins left out)
  whose predicted raw time is within 50 ms of the truth (goal >= 0.98);
- joinF: F-measure of the predicted cuts against the true cuts, 100 ms (goal >= 0.95);
- IoU: of the raw time used, on a 10 ms grid (goal >= 0.98);
- act: beat-level action accuracy: the predicted beat plan's oracle actions against the
  truth plan's, matched in order (difflib), matches / max(len) (goal >= 0.95); plans
  are made on the truth plan's grid so that only the aligner is measured, and the truth
  plan goes through the same projection onto the vocabulary as ours (a persona's
  3.8 s fade at the end of a 48-beat segment is no single action; the oracle alone
  would approximate it by fading a whole unit, ours splits off a 2-bar fade chunk);
  actraw: the same against the truth plan's own oracle actions;
- sec: aligner seconds per pair.
Baseline (the predecessor's later aligner): 2 s chunks of the edited file every 0.5 s,
each matched by log-mel correlation within +-30 s of the expected position (edited time
scaled by the duration ratio); chunks with one offset become one segment; then the same
level measurement and beat labelling as ours.
Speed: one 3-minute edit of a 3.5-minute raw, one thread, after the JIT.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import difflib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignment import levels  # noqa: E402
from alignment.align import align_signals  # noqa: E402
from alignment.result import AlignedSegment, Alignment, SegmentEffects, master_gain  # noqa: E402
from alignment.features import HOP, SR, frame_features  # noqa: E402
from alignment.labels import plan_actions, snap_plan  # noqa: E402
from datasets.audio import load_audio, resample, to_mono  # noqa: E402
from envs.oracle import oracle  # noqa: E402
from envs.plan import EditPlan, Ops, Segment  # noqa: E402
from envs.layout import layout  # noqa: E402
from envs.render import render  # noqa: E402

FR = HOP / SR


@dataclass
class Truth:
    pieces: list  # (edit_start, edit_end, raw_start, raw_end, reversed)
    cuts: np.ndarray  # edited seconds of cut joins
    bounds: np.ndarray  # edited seconds of every piece boundary
    plan: EditPlan


def truth_of(plan: EditPlan, sr: int, delay_s: float) -> Truth:
    lay = layout(plan, sr)
    pieces = []
    for p in lay.pieces:
        pieces.append((p.out_start / sr + delay_s, p.out_end / sr + delay_s, p.raw_start / sr, p.raw_end / sr, p.ops.reversed))
    cuts = np.array([j.position / sr + delay_s for j in lay.joins if j.is_cut])
    bounds = np.array([pc[0] for pc in pieces[1:]])
    return Truth(pieces, cuts, bounds, plan)


def true_raw_time(tr: Truth, t: np.ndarray) -> np.ndarray:
    out = np.full(len(t), np.nan)
    for e0, e1, r0, r1, rev in tr.pieces:
        m = (t >= e0) & (t < e1)
        f = (t[m] - e0) / max(e1 - e0, 1e-9)
        out[m] = (r1 - f * (r1 - r0)) if rev else (r0 + f * (r1 - r0))
    return out


def pred_cuts(al: Alignment) -> np.ndarray:
    out = []
    for (a, fa), (b, fb) in zip(zip(al.segments, al.effects), list(zip(al.segments, al.effects))[1:]):
        cont = abs(a.raw_end - b.raw_start) < 0.1 and not fa.reversed and not fb.reversed
        if not cont or abs(b.edit_start - a.edit_end) > 0.1:
            out.append(0.5 * (a.edit_end + b.edit_start))
    return np.array(out)


def f_measure(ref: np.ndarray, est: np.ndarray, tol: float = 0.1) -> float:
    if len(ref) == 0 and len(est) == 0:
        return 1.0
    if len(ref) == 0 or len(est) == 0:
        return 0.0
    import mir_eval

    return float(mir_eval.onset.f_measure(np.sort(ref), np.sort(est), window=tol)[0])


def raw_usage(spans, dur: float) -> np.ndarray:
    g = np.zeros(int(dur / 0.01) + 1, dtype=bool)
    for r0, r1 in spans:
        g[int(max(r0, 0) / 0.01) : int(min(r1, dur) / 0.01)] = True
    return g


def scores(al: Alignment, tr: Truth, raw_dur: float, edit_dur: float) -> dict:
    t = np.arange(0.0, edit_dur, 0.01)
    truth = true_raw_time(tr, t)
    keep = np.isfinite(truth)
    for b in tr.bounds:
        keep &= np.abs(t - b) > 0.06
    pred = al.raw_time_at(t)
    ok = np.abs(pred - truth) <= 0.05
    mapping = float(ok[keep].mean()) if keep.any() else float("nan")
    u_t = raw_usage([(p[2], p[3]) for p in tr.pieces], raw_dur)
    u_p = raw_usage([(s.raw_start, s.raw_end) for s in al.segments], raw_dur)
    iou = float((u_t & u_p).sum() / max((u_t | u_p).sum(), 1))
    return {"map": mapping, "joinF": f_measure(tr.cuts, pred_cuts(al)), "IoU": iou}


def truth_alignment(tr: Truth) -> Alignment:
    """The truth plan as an aligner output in seconds (exact spans, gains, fades)."""
    segs, fx = [], []
    for (e0, e1, r0, r1, rev), p in zip(tr.pieces, layout(tr.plan, 44100).pieces):
        o = p.ops
        segs.append(AlignedSegment(e0, e1, r0, r1, o.gain_db, o.fade_in_s, o.fade_out_s, 1.0))
        fx.append(SegmentEffects(time_factor=o.time_factor, reversed=o.reversed, eq_low_db=o.eq_low_db, eq_high_db=o.eq_high_db))
    return Alignment(tuple(segs), tuple(fx), 1.0, 0.0, (), 0.0, segs[-1].edit_end, 0.0)


def truth_actions(tr: Truth, projected: bool) -> list:
    """The truth plan's oracle actions; ``projected``: after the same projection onto
    the vocabulary that our labels go through (alignment.labels.snap_plan), so that
    the comparison measures the aligner, not how the oracle approximates a fade or
    gain that no single action expresses."""
    if not projected:
        return list(oracle(tr.plan).actions)
    plan, _ = snap_plan(truth_alignment(tr), tr.plan.grid, source_sha256=tr.plan.source_sha256)
    return [tuple(a) for a in plan_actions(plan)[0]]


def action_accuracy(al: Alignment, tr: Truth, projected: bool = True) -> float:
    true_acts = truth_actions(tr, projected)
    if not al.segments:
        return 0.0
    try:
        plan, _ = snap_plan(al, tr.plan.grid, source_sha256=tr.plan.source_sha256)
        acts, *_ = plan_actions(plan)
    except Exception as exc:  # a bad alignment that yields no plan scores 0
        logging.getLogger("bench").info("no plan: %s", exc)
        return 0.0
    sm = difflib.SequenceMatcher(a=true_acts, b=[tuple(a) for a in acts], autojunk=False)
    m = sum(b.size for b in sm.get_matching_blocks())
    return m / max(len(true_acts), len(acts), 1)


# ------------------------------------------------------------------ the baseline
def baseline_align(*, y_raw: np.ndarray, y_edit: np.ndarray) -> Alignment:
    """2 s chunks every 0.5 s, log-mel correlation within +-30 s of the expected place."""
    t0 = time.perf_counter()
    R, E = frame_features(y=y_raw), frame_features(y=y_edit)
    n_r, n_e = R.n_frames, E.n_frames
    L, H, W = int(round(2.0 / FR)), int(round(0.5 / FR)), int(round(30.0 / FR))
    chunks = []
    for c in range(0, max(n_e - L, 0) + 1, H):
        exp = int(round(c * n_r / n_e))
        lo, hi = max(0, exp - W), min(n_r - L, exp + W)
        if hi < lo:
            continue
        S = E.feat[c : c + L] @ R.feat[lo : hi + L].T  # (L, hi - lo + L)
        idx = np.arange(L)[:, None] + np.arange(hi - lo + 1)[None, :]
        corr = S[np.arange(L)[:, None], idx].mean(axis=0)
        j = int(np.argmax(corr))
        chunks.append((c, lo + j - c, float(corr[j])))
    segs: list[list[float]] = []
    for k, (c, off, cr) in enumerate(chunks):
        a = 0.0 if k == 0 else (c + L / 2 - H / 2) * FR
        b = len(y_edit) / SR if k == len(chunks) - 1 else (c + L / 2 + H / 2) * FR
        if segs and abs(segs[-1][2] - off) <= 2 and abs(segs[-1][1] - a) < 1e-6:
            segs[-1][1] = b
            segs[-1][3].append(cr)
        else:
            segs.append([a, b, off, [cr]])
    out, fx = [], []
    raw_dur = len(y_raw) / SR
    for a, b, off, crs in segs:
        r0, r1 = a + off * FR, b + off * FR
        if r0 < 0 or r1 > raw_dur or np.mean(crs) < 0.5:
            continue
        lv = levels.measure(y_edit=y_edit, y_raw=y_raw, edit_span=(a, b), raw_span=(r0, r1))
        out.append(AlignedSegment(a, b, r0, r1, lv.gain_db, lv.fade_in_s, lv.fade_out_s, float(np.mean(crs))))
        fx.append(SegmentEffects())
    return Alignment(tuple(out), tuple(fx), 1.0, 0.0, (), master_gain(out), len(y_edit) / SR, raw_dur, time.perf_counter() - t0)


# ------------------------------------------------------------------ corpora
def shuffle_plan(grid, sha: str, rng: np.random.Generator) -> EditPlan | None:
    """Far reorders, a loop, a gain change and a fade-out, on whole bars."""
    down = np.flatnonzero(grid.is_downbeat)
    if len(down) < 10:
        return None
    bars = list(zip(down[:-1], down[1:]))
    k = len(bars)
    take = lambda i, n: (int(bars[i][0]), int(bars[min(i + n, k) - 1][1]))  # noqa: E731
    i_late = int(rng.integers(k // 2, k - 2))
    i_early = int(rng.integers(0, max(1, k // 4)))
    a1 = take(i_late, 2)
    a2 = take(i_early, 2)
    a3 = take(min(i_early + 2, k - 2), 1)
    a4 = take(min(i_early + 3, k - 2), 2)
    segs = [
        Segment(*a1),
        Segment(*a2),
        Segment(*a2),  # loop
        Segment(*a3, Ops(gain_db=-3.0)),
        Segment(a4[0], a4[1], Ops(fade_out_s=float(grid.bounds[a4[1]] - grid.bounds[a4[0]]))),
    ]
    return EditPlan(segments=tuple(segs), grid=grid, source_sha256=sha).validate()


def music_pairs(music: Path, rng: np.random.Generator, tmp: Path):
    from datasets.demo.delivery import deliver, sample_delivery
    from datasets.demo.editors import plan_edit
    from datasets.features import extract_features

    for f in sorted(music.glob("*.ogg")):
        raw = load_audio(f)
        if raw.duration < 15:
            continue
        feats = extract_features(raw, stems="dsp")
        plans = {}
        for persona in ("tight", "radio"):
            try:
                plans[persona] = plan_edit(feats, persona, source_sha256=raw.sha256)
            except Exception as exc:  # a persona that cannot edit a short song
                logging.getLogger("bench").info("%s %s: %s", f.name, persona, exc)
        sp = shuffle_plan(feats.grid, raw.sha256, rng)
        if sp is not None:
            plans["shuffle"] = sp
        for name, plan in plans.items():
            res = render(y=raw.y, sr=raw.sr, plan=plan)
            y_e = resample(to_mono(res.y), sr_in=res.sr, sr_out=SR)
            yield f"{f.stem}:{name}", raw, y_e, truth_of(plan, res.sr, 0.0), False
            d = deliver(y=res.y, sr=res.sr, params=sample_delivery(rng))
            y_d = resample(to_mono(d.y), sr_in=d.sr, sr_out=SR)
            yield f"{f.stem}:{name}", raw, y_d, truth_of(plan, res.sr, d.offset_s), True


def demo_pairs(demo: Path):
    for tf in sorted((demo / "truth").glob("*.json")):
        t = json.loads(tf.read_text())
        raw = load_audio(demo / t["raw"]["path"])
        ed = load_audio(demo / t["edited"]["path"])
        plan = EditPlan.from_dict(t["plan"])
        delivered = bool(t["edited"].get("delivered"))
        delay = float((t["edited"].get("delivery") or {}).get("offset_s", 0.0)) if delivered else 0.0
        yield t["name"], raw, ed.y_mono, truth_of(plan, raw.sr, delay), delivered


def speed(music: Path) -> tuple[float, float]:
    """Seconds to align a 3-min edit of a 3.5-min raw (ours, baseline), one thread."""
    from alignment.simulate import Span, assemble

    ys = [load_audio(music / n).y_mono for n in ("calmrace-ks.ogg", "spunkyrace-ks.ogg")]
    raw = np.concatenate(ys)[: int(210 * SR)]
    rng = np.random.default_rng(1)
    spans, total = [], 0.0
    while total < 180:
        a = float(rng.uniform(0, 200))
        n = float(rng.uniform(4, 16))
        spans.append(Span(a, min(a + n, 210)))
        total += spans[-1].raw_end - a
    e, _ = assemble(y=raw, sr=SR, spans=spans)
    e = e[: int(180 * SR)]
    align_signals(y_raw=raw[: 20 * SR], y_edit=e[: 10 * SR])  # JIT warm-up
    t0 = time.perf_counter()
    align_signals(y_raw=raw, y_edit=e)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    baseline_align(y_raw=raw, y_edit=e)
    return ours, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default=str(ROOT / "runs" / "demo" / "data"))
    ap.add_argument("--music", default=str(ROOT.parent / "shared" / "data" / "music"))
    ap.add_argument("--max-pairs", type=int, default=0, help="per corpus, 0 = all")
    ap.add_argument("--json", help="write the per-pair rows here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng(0)
    import tempfile

    rows = []
    sources = []
    if (Path(args.demo) / "truth").is_dir():
        sources.append(("demo", demo_pairs(Path(args.demo))))
    else:
        print(f"bench: no demo corpus at {args.demo} (build it with python -m datasets.demo.build)")
    if Path(args.music).is_dir():
        sources.append(("music", music_pairs(Path(args.music), rng, Path(tempfile.gettempdir()))))
    for corpus, gen in sources:
        n = 0
        for name, raw, y_e, tr, delivered in gen:
            for method in ("ours", "baseline"):
                t0 = time.perf_counter()
                if method == "ours":
                    al = align_signals(y_raw=raw.y_mono, y_edit=y_e)
                else:
                    al = baseline_align(y_raw=raw.y_mono, y_edit=y_e)
                sec = time.perf_counter() - t0
                row = {"corpus": corpus, "pair": name, "delivered": delivered, "method": method, "sec": sec}
                row.update(scores(al, tr, raw.duration, len(y_e) / SR))
                row["act"] = action_accuracy(al, tr)
                row["act_raw"] = action_accuracy(al, tr, projected=False)
                rows.append(row)
            print(f"  {corpus:5} {name:32} {'deliv' if delivered else 'clean'}  ours map {rows[-2]['map']:.3f} joinF {rows[-2]['joinF']:.2f} "
                  f"IoU {rows[-2]['IoU']:.3f} act {rows[-2]['act']:.2f} | base map {rows[-1]['map']:.3f} act {rows[-1]['act']:.2f}", flush=True)
            n += 1
            if args.max_pairs and n >= args.max_pairs:
                break
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print()
    print(f"{'corpus':6} {'delivery':9} {'method':9} {'pairs':>5} {'map':>6} {'joinF':>6} {'IoU':>6} {'act':>6} {'actraw':>6} {'sec':>6}")
    for corpus in ("demo", "music"):
        for deliv in (False, True):
            base = None
            for method in ("ours", "baseline"):
                sel = [r for r in rows if r["corpus"] == corpus and r["delivered"] == deliv and r["method"] == method]
                if not sel:
                    continue
                m = {k: float(np.nanmean([r[k] for r in sel])) for k in ("map", "joinF", "IoU", "act", "act_raw", "sec")}
                print(f"{corpus:6} {'delivered' if deliv else 'clean':9} {method:9} {len(sel):>5} {m['map']:6.3f} {m['joinF']:6.3f} {m['IoU']:6.3f} {m['act']:6.3f} {m['act_raw']:6.3f} {m['sec']:6.2f}")
    if Path(args.music).is_dir():
        ours, base = speed(Path(args.music))
        print(f"\nspeed, 3-min edit of a 3.5-min raw, 1 thread: ours {ours:.2f} s, baseline {base:.2f} s (goal <= 3 s)")
    print("goals: map >= 0.98, joinF >= 0.95, IoU >= 0.98, act >= 0.95")
    return 0


if __name__ == "__main__":
    sys.exit(main())
