"""Inference benchmark: time per stage of ``agent.infer`` on a 3-minute song, on CPU.

    .venv/bin/python bench/infer.py [--song ../shared/data/music/race1-jt.ogg] [--repeats 3]
                                    [--checkpoint runs/demo/checkpoints/bc_best.pt]

A real song is looped to 3 minutes at its native rate and channels and written to a
temporary WAV. ``agent.infer.run`` edits it with stems forced to the DSP fallback (no
Demucs) and the feature cache off, so every run pays for beats and features. The first
run warms up the one-time numba JIT and imports; the table gives the median of the
next ``--repeats`` runs per stage (checkpoint load, audio load, beats+features, policy,
render, exports).

Baseline, same run: what any editing tool must pay on the same song -- load, beats +
features and the render of a keep-all plan (one segment, no ops).

Checkpoint: runs/demo/checkpoints/bc_best.pt when present, else an untrained
``Policy(PolicyConfig.from_layout())`` saved to a temp file (the speed does not depend on
the weights). Goal (issue 9): <= 5 s in total after the JIT.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from agent.checkpoint import save_checkpoint  # noqa: E402
from agent.infer import get_parser, run  # noqa: E402
from datasets.audio import load_audio, write_audio  # noqa: E402
from datasets.features import extract_features  # noqa: E402
from envs.plan import EditPlan, Ops, Segment  # noqa: E402
from envs.render import render  # noqa: E402

MUSIC = ROOT.parent / "shared" / "data" / "music"
TARGET_S = 180.0
GOAL_S = 5.0
STAGES = ("checkpoint", "load", "beats+features", "policy", "render", "exports", "total")
#: process CPU seconds of the whole call, all threads: on a shared machine the wall-clock
#: stages stretch with the load, this row does not (much)
ROWS = (*STAGES, "cpu")


def looped_wav(song: Path, seconds: float, out: Path) -> Path:
    """Loop ``song`` to ``seconds`` at its native rate/channels and write a WAV."""
    a = load_audio(song)
    n = int(round(seconds * a.sr))
    reps = -(-n // a.y.shape[1])
    write_audio(out, y=np.tile(a.y, (1, reps))[:, :n], sr=a.sr)
    return out


def dsp_checkpoint(src: Path | None, out: Path) -> tuple[Path, str]:
    """A checkpoint whose recorded stem method is "dsp" (so no Demucs runs).

    src : a trained checkpoint to copy (weights kept), or None for an untrained policy.
    """
    from agent.checkpoint import load_checkpoint
    from datasets.errors import EditorError

    why = "none given"
    if src is not None and src.is_file():
        try:
            load_checkpoint(src)  # same feature/observation layout as this code?
        except EditorError as exc:
            why = f"{src} unusable: {exc}"
        else:
            ckpt = torch.load(src, map_location="cpu", weights_only=True)
            ckpt["extra"] = {**(ckpt.get("extra") or {}), "stem_method": "dsp"}
            torch.save(ckpt, out)
            return out, f"{src} (stem method forced to dsp)"
    elif src is not None:
        why = f"{src} not found"
    from agent.layout import observation_layout
    from agent.model import Policy, PolicyConfig

    save_checkpoint(
        out, model=Policy(PolicyConfig.from_layout()), stage="bench", layout=observation_layout(), extra={"stem_method": "dsp"}
    )
    return out, f"untrained Policy(PolicyConfig.from_layout()) ({why})"


def parse_times(text: str) -> dict[str, float]:
    """``run()``'s "time" entry ("checkpoint 0.10 s, load 0.20 s, ...") as a dict."""
    return {k: float(v) for k, v in re.findall(r"([\w+]+) ([0-9.]+) s", text)}


def baseline(wav: Path) -> dict[str, float]:
    """Load + beats/features + keep-all render of the same song; seconds per stage."""
    c0, t0 = time.process_time(), time.perf_counter()
    audio = load_audio(wav)
    t1 = time.perf_counter()
    feats = extract_features(audio, stems="dsp", use_cache=False)
    t2 = time.perf_counter()
    plan = EditPlan(segments=(Segment(0, feats.grid.n_beats, Ops()),), grid=feats.grid, source_sha256=audio.sha256)
    render(y=audio.y, sr=audio.sr, plan=plan)
    t3 = time.perf_counter()
    cpu = time.process_time() - c0
    return {"load": t1 - t0, "beats+features": t2 - t1, "render": t3 - t2, "total": t3 - t0, "cpu": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--song", type=Path, default=MUSIC / "race1-jt.ogg")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "demo" / "checkpoints" / "bc_best.pt")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if not args.song.is_file():
        print(f"error: {args.song}: song not found (real music lives in ../shared/data/music)", file=sys.stderr)
        return 2

    threads0 = torch.get_num_threads()  # agent.infer may lower it for the policy stage
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        tmp = Path(tmp)
        wav = looped_wav(args.song, TARGET_S, tmp / f"{args.song.stem}_3min.wav")
        ckpt, ckpt_desc = dsp_checkpoint(args.checkpoint, tmp / "policy.pt")

        def one(i: int) -> dict[str, float]:
            a = get_parser().parse_args([str(wav), "--checkpoint", str(ckpt), "--out", str(tmp / f"out{i}"), "--no-cache"])
            c = time.process_time()
            times = parse_times(run(a)["time"])
            return {**times, "cpu": time.process_time() - c}

        t = time.perf_counter()
        warm = one(0)  # numba JIT, imports, first torch call
        warm_wall = time.perf_counter() - t
        # interleaved, so both columns see the same load on a shared machine
        runs, base = [], []
        for i in range(args.repeats):
            runs.append(one(i + 1))
            base.append(baseline(wav))

    med = {s: statistics.median(r.get(s, float("nan")) for r in runs) for s in ROWS}
    bmed = {s: statistics.median(b[s] for b in base) for s in base[0]}
    print(f"song: {args.song.name} looped to {TARGET_S:.0f} s; checkpoint: {ckpt_desc}")
    print(f"device: CPU, torch threads {threads0} at start, {torch.get_num_threads()} after; warm-up run (JIT) {warm_wall:.2f} s wall "
          f"(its stages: {warm.get('total', float('nan')):.2f} s); median of {args.repeats} runs below")
    print(f"{'stage':<16}{'agent.infer (s)':>16}{'baseline (s)':>14}{'ratio':>8}")
    for s in ROWS:
        b = bmed.get(s)
        ratio = f"{med[s] / b:.2f}" if b else "-"
        print(f"{s:<16}{med[s]:>16.3f}{(f'{b:.3f}' if b is not None else '-'):>14}{ratio:>8}")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    ok = med["total"] <= GOAL_S
    print(f"goal: total <= {GOAL_S:.0f} s after the JIT: {'met' if ok else 'NOT met'} ({med['total']:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
