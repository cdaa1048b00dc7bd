"""Speed as a user feels it: the CLIs as fresh processes, cold and warm feature cache.

    .venv/bin/python bench/cold.py [--runs 3] [--pairs 4] [--checkpoint CK] [--out cold.json]
                                   [--only infer,align,batch,fail] [--keep DIR]

The README's other speed tables time warm functions (imports done, numba compiled and
loaded, features cached). A user runs a new process on a new song; this benchmark runs
what they type:

- ``python -m agent.infer SONG --checkpoint CK --out TMP`` on a 3-minute song;
- ``python -m alignment RAW EDITED --json TMP`` on a 3-minute raw and its edit;
- ``python -m alignment.run --data D --run R --runs-dir TMP --jobs 2`` (``make align``)
  on ``--pairs`` 3-minute pairs (pairs per minute);
- a missing and an unreadable input to both CLIs (how fast the one-line error comes).

"cold" = ``EDITOR_CACHE_DIR`` points at a fresh empty folder (every feature computed);
"warm" = at a folder the warm-up run filled. Each row is the median of ``--runs`` runs
after one warm-up run (which also leaves the OS file cache and numba's on-disk caches
as a second run finds them). Per run: wall seconds, CPU seconds (user + sys of the
child and of every process it waited for, ``os.wait4``) and peak RSS (the largest of
those processes, MB). Beside each row: the same work timed in this process after a
warm-up ("warm in-process": imports done, JIT loaded, cache warm), the figure the other
tables quote. agent.infer's own per-stage timer line is parsed into a breakdown.

Inputs (written to a temp folder, deleted unless ``--keep``): the song is
``tracks/stx_chipdisko.ogg`` (120 s) followed by the first 60 s of
``music/spunkyrace-ks.ogg`` (44.1 kHz stereo); its edit (``make_edit``) plays 12 spans
of it with cuts, a jump back, gain changes and fades, delivered as a mastered MP3 at
48 kHz, as the real pairs of issue 17 were; batch pairs are two ``tracks/stx_*``
recordings each (120 s + 60 s), edited the same way with other seeds. Checkpoint: ``--checkpoint``, else a small policy behaviour-cloned in ~10 s on the song
edited "keep two bars, cut one" (``make_checkpoint``): the speed of a step does not
depend on the weights, but what the policy does (how many joins, stretches) decides
the render's cost, so an untrained policy is no stand-in.

On this machine (2 cores shared by several jobs) wall time swings with the load; CPU
seconds are the reliable number. Goals (issue 17): cold infer <= 3 s wall and <= 600 MB,
warm cache <= 1.5 s; cold alignment of a pair <= 2 s; make align >= 40 pairs/min on
2 cores; a missing or unreadable input fails in < 0.5 s.

Measured (``--runs 3 --pairs 8``; wall / CPU s / peak MB, medians). "issue start" =
the tree before issue 17's changes, measured at load average 5-6 with the default
checkpoint of then (no editor grid); "08ce68a" (before the changes listed below) and
"now" were measured back to back on 3 December 2026 at load average 8-11 (other jobs'
training and tests on the same 2 cores; CPU seconds inflate with the load, so compare
columns measured together), with the checkpoint ``make_checkpoint`` now builds (editor
grid with pulse and phase rankers):

    what                                   issue start          08ce68a               now
    agent.infer, cold cache                32.8 / 13.3 / 899    24.5 / 8.0 / 570      17.1 / 7.5 / 570
    agent.infer, warm cache                22.4 /  5.5 / 498    32.2 / 6.6 / 500       9.9 / 3.8 / 492
    python -m alignment, cold cache        15.8 /  8.8 / 923    19.6 / 6.4 / 457       8.8 / 4.7 / 341
    python -m alignment, warm cache         7.8 /  4.8 / 620    18.0 / 4.8 / 396       4.8 / 3.1 / 291
    make align, 8 pairs, --jobs 2          63.1 / 41.2 / 927   142.1 / 51.5 / 531     71.0 / 45.6 / 445
      CPU s per pair                       5.15                 6.44                  5.71
    agent.infer, missing input              3.7 /  2.3 / 251     0.9 / 0.35 / 40       0.5 / 0.29 / 39
    python -m alignment, missing input      0.7 /  0.5 / 105     0.6 / 0.25 / 34       0.4 / 0.22 / 34

The same two trees as interleaved pairs of cold runs (``/usr/bin/time``, 3 pairs, load
6.1-7.0, nice 0), less exposed to the load's swings: agent.infer 9.7 -> 7.0 s wall,
7.2 -> 5.1 s CPU; python -m alignment 7.8 -> 4.5 s wall, 6.8 -> 4.0 s CPU, 461 -> 350 MB.
Scaled by these ratios, the figures measured at load 5-6 after the first changes (cold
infer 4.9 s CPU, alignment 3.7 s) become about 3.5 s and 2.2 s CPU.

What changed after 08ce68a (CPU s of a fresh process at load 5-6, estimated from the
paired runs and profiles): matplotlib's import and drawing (~0.6; the PNG is drawn with
Pillow), the pulse ranker's second STFT (~0.3 cold, and on every warm run; the features' onset
envelope is kept in the process and cached), numba's import and cache load in the
aligner (~0.6; the Viterbi step is numpy, as fast), and python -m alignment's 121
features and stems for a grid (~0.9; ``datasets.features.beat_grid_of``). Tried and
dropped: importing torch in a thread while the beats are tracked (interleaved with the
same code importing it first, at load 8-9: ~2.5 s more CPU, 5-9 s more wall, 40 MB more
peak; it could only pay on an idle second core).
Where the rest goes (cold agent.infer, load 5-6, estimated): torch import ~1.2, beats +
features ~1.6, other imports ~0.5 (numpy, scipy.fft/linalg/ndimage with numpy.f2py
pulled in by scipy's array-API shim, opentimelineio for the .otio, gymnasium), load
~0.2, policy ~0.2, render ~0.2, export files ~0.2. The goals of <= 3 s wall cold and
<= 1.5 s warm need torch's import (~1.2 s) off the path or hidden behind other work on
a free core; cold alignment <= 2 s needs about 0.2 s more.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"  # --data changes it
SONG_PARTS = ("tracks/stx_chipdisko.ogg", "music/spunkyrace-ks.ogg")
SONG_S = 180.0
STAGES = ("infer", "align", "batch", "fail")


@dataclass
class Sample:
    """One fresh process: wall (s), CPU (user + sys, s, itself and its reaped children),
    peak RSS (MB, the largest of those processes) and its exit status."""

    wall: float
    cpu: float
    peak_mb: float
    rc: int
    stdout: str = field(default="", repr=False)


@dataclass
class Row:
    what: str
    wall_s: float
    cpu_s: float
    peak_mb: float
    warm_inproc_s: float | None
    runs: list[dict]
    note: str = ""


#: The measured command runs under this small launcher: Linux reports a child's peak RSS
#: as at least its parent's RSS at the fork, so forking from this (large) benchmark
#: process would hide the child's own peak. The launcher (python -I -S, ~10 MB) forks,
#: execs the command, reaps it with os.wait4 and writes wall / CPU / peak RSS to a file.
_LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    json.dump({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "peak_mb": ru.ru_maxrss / 1024.0,
               "rc": os.waitstatus_to_exitcode(status)}, f)
"""


def run_process(cmd: list[str], *, env: dict, cwd: Path = ROOT) -> Sample:
    """Run ``cmd`` as a fresh process; wall, CPU and peak RSS from os.wait4."""
    with tempfile.NamedTemporaryFile(suffix=".json") as res:
        out = subprocess.run([sys.executable, "-I", "-S", "-c", _LAUNCHER, res.name, *cmd], env=env, cwd=cwd,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
        r = json.loads(Path(res.name).read_text())
    return Sample(wall=r["wall"], cpu=r["cpu"], peak_mb=r["peak_mb"], rc=r["rc"], stdout=out)


@contextlib.contextmanager
def _cache_dir(path):
    """EDITOR_CACHE_DIR set to ``path`` for an in-process measurement, then restored."""
    old = os.environ.get("EDITOR_CACHE_DIR")
    os.environ["EDITOR_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("EDITOR_CACHE_DIR", None)
        else:
            os.environ["EDITOR_CACHE_DIR"] = old


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# ----------------------------------------------------------------------------- inputs
def _read(path: Path, sr: int) -> np.ndarray:
    """Decode to [shape=(2, n)] float32 at ``sr`` (soundfile + soxr, as datasets.audio)."""
    import soundfile as sf

    from datasets.audio import resample

    y, r = sf.read(str(path), dtype="float32", always_2d=True)
    y = y.T
    if y.shape[0] == 1:
        y = np.repeat(y, 2, axis=0)
    return resample(y[:2], sr_in=r, sr_out=sr) if r != sr else y[:2]


def make_song(parts: tuple[Path, Path], *, sr: int = 44100, seconds: float = SONG_S) -> np.ndarray:
    """The first file whole, then the second up to ``seconds`` [shape=(2, n)]."""
    a = _read(parts[0], sr)
    b = _read(parts[1], sr)
    y = np.concatenate([a, b], axis=1)[:, : int(seconds * sr)]
    if y.shape[1] < int(seconds * sr) - sr:
        raise SystemExit(f"{parts}: only {y.shape[1] / sr:.0f} s of audio, need {seconds:.0f} s")
    return np.ascontiguousarray(y)


def make_edit(y: np.ndarray, sr: int, *, seed: int) -> tuple[np.ndarray, int]:
    """A hand-edit-like version of ``y`` with known parts: 12 spans of 3-12 s
    (``alignment.simulate.assemble``), mostly in order with cuts between them, a jump
    back, gain changes of -3 / +2 dB, a fade-in and a fade-out; then delivered as a
    mastered MP3 at 48 kHz (``alignment.simulate.deliver``: shelves, compressor, level).
    Returns (mono edit, its rate)."""
    from alignment.simulate import Span, assemble, deliver

    rng = np.random.default_rng(seed)
    dur = y.shape[1] / sr
    spans: list[Span] = []
    t = float(rng.uniform(0.0, 8.0))
    while len(spans) < 12 and t < dur - 4.0:
        length = float(min(rng.uniform(3.0, 12.0), dur - t - 0.5))
        if spans and rng.random() < 0.12:  # a jump back: replay an earlier stretch
            lo = float(rng.uniform(0.0, max(t - length, 0.1)))
            spans.append(Span(lo, lo + length, gain_db=float(rng.choice([0.0, -3.0]))))
            continue
        spans.append(Span(t, t + length, gain_db=float(rng.choice([0.0, 0.0, 0.0, -3.0, 2.0]))))
        t += length + (float(rng.uniform(2.0, 15.0)) if rng.random() < 0.6 else 0.0)
    first, last = spans[0], spans[-1]
    spans[0] = Span(first.raw_start, first.raw_end, first.gain_db, fade_in_s=1.0)
    spans[-1] = Span(last.raw_start, last.raw_end, last.gain_db, fade_out_s=3.0)
    edit, _ = assemble(y=y.mean(axis=0), sr=sr, spans=spans)
    return deliver(y=edit, sr=sr)


def make_checkpoint(work: Path, song: Path) -> Path:
    """A small policy behaviour-cloned (30 epochs, ~10 s) on ``song`` edited "keep two
    bars, cut one", with stems "dsp" (what make demo records where no Demucs weights
    exist). An untrained policy is no stand-in here: it repeats beats and stretches
    (a 600 s output with 1,100 joins) and the render, not the cold start, is timed."""
    import logging

    from datasets.audio import load_audio
    from datasets.features import extract_features
    from envs.env import Song
    from envs.oracle import oracle_actions
    from envs.plan import EditPlan, Segment
    from pretrain.augment import IDENTITY
    from pretrain.dataset import LabeledPair, build_bc_data
    from pretrain.train import PretrainConfig, train

    logging.getLogger("pretrain").setLevel(logging.WARNING)
    old = os.environ.get("EDITOR_CACHE_DIR")
    os.environ["EDITOR_CACHE_DIR"] = str(work / "cache-bc")
    try:
        audio = load_audio(song)
        feats = extract_features(audio, stems="dsp")
    finally:
        if old is None:
            os.environ.pop("EDITOR_CACHE_DIR", None)
        else:
            os.environ["EDITOR_CACHE_DIR"] = old
    g = feats.grid
    bars = np.flatnonzero(g.beat_in_bar == 0).tolist() + [g.n_beats]
    segs = tuple(Segment(int(bars[k]), int(bars[min(k + 2, len(bars) - 1)])) for k in range(0, len(bars) - 2, 3))
    plan = EditPlan(segments=segs, grid=g, source_sha256=audio.sha256).merged()
    pair = LabeledPair(name="song", raw_path=audio.path, raw_sha256=audio.sha256,
                       actions=tuple(oracle_actions(plan, strict=False)), plan=plan, confidence=None)
    data = build_bc_data([pair], songs={("song", IDENTITY.key()): Song.from_features(feats, name="song", human_plan=plan)},
                         stems="dsp")
    # The editor's grid as make align fits it (RUN/labels/editor_grid.json, saved in the
    # checkpoint): a pulse ranker and a phase ranker, so inference pays for their
    # features (the onset envelope, each candidate's salience and accents) as a trained
    # checkpoint's does. Zero weights rank every candidate equal, so the product's own
    # pulse and phase (the first) win: the features are not recomputed on another grid,
    # and the timing does not hinge on which phase a ranker would pick for this song.
    from alignment.grid_model import FEATURE_NAMES as PHASE_NAMES, GRID_MODEL_FILE, TEMPO_FEATURE_NAMES, GridModel, TempoModel
    from alignment.label_index import labels_dir
    from datasets.atomic import atomic_write_json

    def zero(names):
        return dict(weights=(0.0,) * len(names), mean=(0.0,) * len(names), std=(1.0,) * len(names), n_songs=1, agreement=1.0)

    grid_model = GridModel(**zero(PHASE_NAMES), tempo=TempoModel(**zero(TEMPO_FEATURE_NAMES)))
    atomic_write_json(labels_dir(work / "bc-runs" / "bc") / GRID_MODEL_FILE, grid_model.to_dict())
    cfg = PretrainConfig(run="bc", runs_dir=str(work / "bc-runs"), epochs=30, lr=1e-2, val_fraction=0.0, patience=1000,
                         figure_every=1000, feature_dropout=0.0, hidden=16, n_layers=1, n_heads=2, kernel_size=3,
                         batch_size=32, threads=1, planner=False, stems="dsp")
    return Path(train(cfg, data, target_keep=plan.keep_ratio)["last_path"])


def make_inputs(work: Path, *, n_pairs: int, checkpoint: str | None) -> dict:
    from datasets.audio import write_audio

    sr = 44100
    song = make_song(tuple(DATA / p for p in SONG_PARTS), sr=sr)
    paths = {"song": write_audio(work / "song.wav", y=song, sr=sr)}
    ed, ed_sr = make_edit(song, sr, seed=0)
    paths["edited"] = write_audio(work / "song_edit.wav", y=ed, sr=ed_sr)
    tracks = sorted((DATA / "tracks").glob("stx_*.ogg"))
    data = work / "pairs"
    for k in range(n_pairs):
        a, b = tracks[(2 * k) % len(tracks)], tracks[(2 * k + 1) % len(tracks)]
        y = make_song((a, b), sr=sr)
        write_audio(data / "raw" / f"pair{k}.wav", y=y, sr=sr)
        ed, ed_sr = make_edit(y, sr, seed=k + 1)
        write_audio(data / "edited" / f"pair{k}.wav", y=ed, sr=ed_sr)
    paths["data"] = data
    paths["checkpoint"] = Path(checkpoint) if checkpoint else make_checkpoint(work, paths["song"])
    bad = work / "unreadable.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40)
    paths["missing"] = work / "no such song.wav"
    paths["unreadable"] = bad
    return paths


# ----------------------------------------------------------------------------- stages
_TIMES = re.compile(r"^time\s+(.*)$", re.M)


def _infer_times(stdout: str) -> dict[str, float]:
    """agent.infer's own 'time  checkpoint 0.12 s, load ...' line -> {stage: s}."""
    m = _TIMES.search(stdout)
    if not m:
        return {}
    out = {}
    for part in m.group(1).split(","):
        bits = part.strip().rsplit(" ", 2)
        if len(bits) == 3:
            try:
                out[bits[0]] = float(bits[1])
            except ValueError:
                pass
    return out


class Bench:
    def __init__(self, work: Path, paths: dict, runs: int, env: dict):
        self.work, self.paths, self.runs, self.env = work, paths, runs, env
        self.rows: list[Row] = []
        self.breakdown: dict[str, dict[str, float]] = {}
        self._n = 0

    def fresh(self, name: str) -> Path:
        self._n += 1
        p = self.work / f"{name}-{self._n}"
        p.mkdir(parents=True)
        return p

    def series(self, what: str, make_cmd, *, cache: str, warm_inproc: float | None = None, note: str = "",
               expect_rc: int = 0, warmup: bool = True) -> list[Sample]:
        """One warm-up run, then ``runs`` measured ones. ``cache``: "cold" (a fresh
        folder per run) or "warm" (one folder, filled by the warm-up run)."""
        warm_dir = self.fresh("cache-warm")
        samples = []
        for i in range(self.runs + (1 if warmup else 0)):
            cdir = warm_dir if cache == "warm" else self.fresh("cache-cold")
            env = {**self.env, "EDITOR_CACHE_DIR": str(cdir)}
            s = run_process(make_cmd(), env=env)
            if s.rc != expect_rc:
                tail = "\n".join(s.stdout.strip().splitlines()[-8:])
                raise SystemExit(f"{what}: exit status {s.rc} (expected {expect_rc}):\n{tail}")
            if i > 0 or not warmup:
                samples.append(s)
            print(f"  {what}: run {i}{' (warm-up)' if warmup and i == 0 else ''}: wall {s.wall:.2f} s, "
                  f"cpu {s.cpu:.2f} s, peak {s.peak_mb:.0f} MB", flush=True)
        self.rows.append(Row(
            what=what, wall_s=_median([s.wall for s in samples]), cpu_s=_median([s.cpu for s in samples]),
            peak_mb=_median([s.peak_mb for s in samples]), warm_inproc_s=warm_inproc, note=note,
            runs=[{"wall": round(s.wall, 3), "cpu": round(s.cpu, 3), "peak_mb": round(s.peak_mb, 1)} for s in samples],
        ))
        return samples

    # -- agent.infer
    def infer(self) -> None:
        song, ck = str(self.paths["song"]), str(self.paths["checkpoint"])
        cmd = lambda: [sys.executable, "-m", "agent.infer", song, "--checkpoint", ck, "--out", str(self.fresh("infer-out"))]  # noqa: E731
        inproc = self.infer_inproc()
        for cache in ("cold", "warm"):
            ss = self.series(f"agent.infer 3-min song, {cache} cache", cmd, cache=cache,
                             warm_inproc=inproc if cache == "warm" else None)
            stages: dict[str, list[float]] = {}
            for s in ss:
                for k, v in _infer_times(s.stdout).items():
                    stages.setdefault(k, []).append(v)
            self.breakdown[f"agent.infer {cache} cache (its own timer, s)"] = {k: round(_median(v), 3) for k, v in stages.items()}

    def infer_inproc(self) -> float:
        """agent.infer.run in this process, warm cache, after a warm-up run."""
        from agent.infer import get_parser, run

        with _cache_dir(self.fresh("cache-inproc")):
            times = []
            for _ in range(1 + self.runs):
                args = get_parser().parse_args(
                    [str(self.paths["song"]), "--checkpoint", str(self.paths["checkpoint"]), "--out", str(self.fresh("infer-out"))]
                )
                t0 = time.perf_counter()
                summary = run(args)
                times.append(time.perf_counter() - t0)
            self.breakdown["agent.infer warm in-process (its own timer, s)"] = {
                k: v for k, v in _infer_times("time  " + summary["time"]).items()
            }
            return _median(times[1:])

    # -- python -m alignment
    def align(self) -> None:
        raw, ed = str(self.paths["song"]), str(self.paths["edited"])
        cmd = lambda: [sys.executable, "-m", "alignment", raw, ed, "--json", str(self.fresh("align-out") / "pair.json")]  # noqa: E731
        inproc = self.align_inproc()
        for cache in ("cold", "warm"):
            self.series(f"python -m alignment 3-min pair, {cache} cache", cmd, cache=cache,
                        warm_inproc=inproc if cache == "warm" else None)

    def align_inproc(self) -> float:
        from alignment.labels import label_pair

        with _cache_dir(self.fresh("cache-inproc")):
            times = []
            for _ in range(1 + self.runs):
                t0 = time.perf_counter()
                label_pair(self.paths["song"], self.paths["edited"])
                times.append(time.perf_counter() - t0)
            return _median(times[1:])

    # -- make align
    def batch(self, n_pairs: int) -> None:
        data = str(self.paths["data"])
        cmd = lambda: [sys.executable, "-m", "alignment.run", "--data", data, "--run", "bench",  # noqa: E731
                       "--runs-dir", str(self.fresh("runs")), "--jobs", "2"]
        ss = self.series(f"make align, {n_pairs} 3-min pairs, --jobs 2, cold cache", cmd, cache="cold",
                         note="warm in-process: s per pair, one process")
        wall, cpu = _median([s.wall for s in ss]), _median([s.cpu for s in ss])
        self.breakdown["make align"] = {
            "pairs": n_pairs,
            "pairs per minute (wall)": round(60.0 * n_pairs / wall, 1),
            "pairs per minute on 2 idle cores (from CPU s)": round(60.0 * n_pairs * 2 / cpu, 1),
            "CPU s per pair": round(cpu / n_pairs, 2),
        }
        # warm in-process: one pair after another in this process (imports done)
        from alignment.labels import label_pair

        raws = sorted((self.paths["data"] / "raw").iterdir())
        times = []
        for r in raws:
            t0 = time.perf_counter()
            label_pair(r, self.paths["data"] / "edited" / r.name)
            times.append(time.perf_counter() - t0)
        self.rows[-1].warm_inproc_s = _median(times)

    # -- failures
    def fail(self) -> None:
        ck = str(self.paths["checkpoint"])
        for kind in ("missing", "unreadable"):
            p = str(self.paths[kind])
            self.series(f"agent.infer, {kind} input (error)",
                        lambda p=p: [sys.executable, "-m", "agent.infer", p, "--checkpoint", ck, "--out", str(self.fresh("infer-out"))],
                        cache="cold", expect_rc=2)
            self.series(f"python -m alignment, {kind} input (error)",
                        lambda p=p: [sys.executable, "-m", "alignment", p, str(self.paths["edited"]), "--json",
                                     str(self.fresh("align-out") / "pair.json")],
                        cache="cold", expect_rc=2)


def _table(rows: list[Row]) -> str:
    w = max(len(r.what) for r in rows)
    lines = [f"{'what':<{w}}  {'wall s':>7}  {'CPU s':>6}  {'peak MB':>7}  {'warm in-process s':>17}"]
    for r in rows:
        ip = "-" if r.warm_inproc_s is None else f"{r.warm_inproc_s:.2f}"
        lines.append(f"{r.what:<{w}}  {r.wall_s:>7.2f}  {r.cpu_s:>6.2f}  {r.peak_mb:>7.0f}  {ip:>17}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global DATA
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="measured runs per row (median), after one warm-up")
    ap.add_argument("--pairs", type=int, default=8, help="3-minute pairs in the make align batch")
    ap.add_argument("--checkpoint", help="policy checkpoint (default: a small untrained one)")
    ap.add_argument("--only", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--out", help="write the table as JSON here")
    ap.add_argument("--keep", help="make the inputs and outputs in this folder and keep them")
    ap.add_argument("--data", default=str(DATA), help="the real recordings (tracks/, music/)")
    args = ap.parse_args(argv)
    DATA = Path(args.data)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(STAGES))
    if unknown or args.runs < 1 or args.pairs < 1:
        ap.error(f"unknown stage(s) {unknown}" if unknown else "--runs and --pairs must be >= 1")
    missing = [str(DATA / p) for p in SONG_PARTS if not (DATA / p).exists()]
    if missing:
        print(f"error: real recordings not found: {missing}", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cold-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("EDITOR_CACHE_DIR", None)
    try:
        t0 = time.perf_counter()
        paths = make_inputs(work, n_pairs=args.pairs if "batch" in only else 0, checkpoint=args.checkpoint)
        print(f"inputs ready in {time.perf_counter() - t0:.1f} s under {work}", flush=True)
        b = Bench(work, paths, args.runs, env)
        for stage in STAGES:
            if stage in only:
                getattr(b, stage)(*((args.pairs,) if stage == "batch" else ()))
        table = _table(b.rows)
        print()
        print(f"median of {args.runs} fresh processes after one warm-up; {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f} at the end; OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}")
        print(table)
        for name, d in b.breakdown.items():
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in d.items()))
        if args.out:
            from datasets.atomic import atomic_write_json

            atomic_write_json(args.out, {
                "runs": args.runs,
                "cores": os.cpu_count(),
                "load_average_end": os.getloadavg()[0],
                "omp_num_threads": env.get("OMP_NUM_THREADS"),
                "checkpoint": str(paths["checkpoint"]) if args.checkpoint else "small untrained Policy",
                "rows": [asdict(r) for r in b.rows],
                "breakdown": b.breakdown,
            })
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
