"""GPU against CPU in one run: what each stage costs on a 3-minute song, on both devices.

    .venv/bin/python bench/gpu.py                   # a GPU box: CPU and CUDA columns + ratio
    .venv/bin/python bench/gpu.py --bc-samples 2048 --ppo-epochs 2     # quicker

Rows, each timed on the CPU and, when torch sees a CUDA device, on it, in this process:

1. features: beats + the 121 beat features of a 3-minute song (real music from
   ../shared/data/music looped to 180 s; DSP stems, cache off). librosa / numba code:
   it runs on the CPU on either box, so the CUDA cell says so instead of repeating it.
2. Demucs (htdemucs) separation of the same song, when its weights are on disk
   (EDITOR_DEMUCS_REPO or torch hub's cache; README "Stems and Demucs weights"),
   otherwise one line says why it is skipped. The CPU cell times the first
   ``--demucs-cpu-seconds`` of the song and scales to 180 s (apply_model runs fixed-size
   chunks: its cost is linear in the length), marked "~".
3. BC epoch: one behaviour-cloning epoch of ``pretrain.train.train`` (training, validation,
   both checkpoints) on ``--bc-samples`` random samples of the real observation layout and
   the default policy (the speed does not depend on the values), at the default batch
   (64) and at 512: epochs 1-2 of a run resumed after a warm-up epoch 0.
4. PPO env steps/s: ``rl.ppo.train`` with its defaults (16 envs x 64 steps; on the CPU the
   forked rollout worker overlaps the update, on CUDA the learner runs on the GPU), an
   untrained policy on the 3-minute song, the median of the epochs after the first.
5. ``agent.infer`` of the 3-minute song end to end (``--device cpu`` / ``cuda``, cache
   off, an untrained policy, DSP stems) after a warm-up, and its policy stage alone.

Torch runs one CPU thread for training and PPO, as pretrain.train and rl/train.py set it
(small batches); inference sets its own; Demucs on the CPU gets torch's default (every core). Ratio = CPU time / CUDA time (for steps/s, CUDA /
CPU): above 1 the GPU is faster. Budget: under 5 minutes on one GPU box.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # demucs' get_model retries the network otherwise

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.infer import dsp_checkpoint, looped_wav, parse_times  # noqa: E402
from datasets.audio import load_audio  # noqa: E402
from datasets.errors import EditorError  # noqa: E402

MUSIC = ROOT.parent / "shared" / "data" / "music"
SONG_S = 180.0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- stages


def features_s(wav: Path) -> float:
    from datasets.features import extract_features

    audio = load_audio(wav)
    extract_features(audio, stems="dsp", use_cache=False)  # warm-up: numba's JIT, filter banks
    return _timed(lambda: extract_features(audio, stems="dsp", use_cache=False), "cpu")


def demucs_s(wav: Path, device: str, *, seconds: float | None) -> float:
    """Separation of the song (or of its first ``seconds``, scaled to the whole) on device."""
    from demucs.apply import apply_model

    from datasets.stems import resolve_method
    from datasets.audio import resample

    _, net = resolve_method("demucs")
    audio = load_audio(wav)
    sr = int(getattr(net, "samplerate", 44100))
    y = resample(audio.y, sr_in=audio.sr, sr_out=sr)
    if y.shape[0] != int(getattr(net, "audio_channels", 2)):
        y = np.repeat(y.mean(0, keepdims=True), int(getattr(net, "audio_channels", 2)), axis=0)
    full = y.shape[1]
    if seconds is not None:
        y = y[:, : int(seconds * sr)]
    wav_t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))[None]

    def go():
        with torch.no_grad():
            apply_model(net, wav_t, shifts=0, split=True, overlap=0.25, device=device)

    if device != "cpu":
        go()  # warm-up: cuDNN autotuning, the caching allocator
    return _timed(go, device) * full / y.shape[1]


def random_bc_data(n: int, *, seed: int = 0):
    """n samples of the real observation layout with random values, every action allowed;
    40 songs so the by-song validation split holds out some."""
    from agent.layout import observation_layout
    from pretrain.dataset import BCData

    lay = observation_layout()
    rng = np.random.default_rng(seed)
    W, C, G = lay["window"], lay["n_channels"], lay["n_globals"]
    n_songs = 40
    song = np.sort(rng.integers(0, n_songs, n)).astype(np.int32)
    return BCData(
        beats=rng.standard_normal((n, W, C), dtype=np.float32),
        beat_mask=np.ones((n, W), np.float32),
        globals=rng.standard_normal((n, G), dtype=np.float32),
        type_mask=np.ones((n, 18), np.int8),
        size_mask=np.ones((n, 18, 5), np.int8),
        amount_mask=np.ones((n, 18, 5), np.int8),
        actions=np.stack([rng.integers(0, 18, n), rng.integers(0, 5, n), rng.integers(0, 5, n)], 1).astype(np.int64),
        boundary=(rng.random((n, W)) < 0.1).astype(np.uint8),
        weight=np.ones(n, np.float32),
        song=song,
        episode=song.copy(),
        step=np.arange(n, dtype=np.int32),
        song_keys=tuple(f"song{i}" for i in range(n_songs)),
        episode_names=tuple(f"song{i}" for i in range(n_songs)),
    )


def bc_epoch_s(data, device: str, *, batch_size: int, tmp: Path) -> float:
    """Seconds per epoch of pretrain.train.train: epochs 1-2 of a run resumed after a
    warm-up epoch 0, less the set-up a resumed call pays (timed as a call with no epoch
    left to run)."""
    from pretrain.train import PretrainConfig, train

    cfg = PretrainConfig(run=f"bc-{device.replace(':', '')}-{batch_size}", runs_dir=str(tmp), device=device, epochs=1,
                         batch_size=batch_size, dagger_rounds=0, planner=False, stems="dsp", figure_every=1000)
    train(cfg, data, target_keep=0.5)
    setup = _timed(lambda: train(cfg, data, target_keep=0.5), device)  # resumes at epoch 1 of 1: nothing to train
    t = _timed(lambda: train(replace(cfg, epochs=3), data, target_keep=0.5), device)
    return (t - setup) / 2


def ppo_sps(song, device: str, *, epochs: int) -> float:
    """Median env steps/s of rl.ppo.train's epochs after the first (its defaults otherwise)."""
    from agent.model import Policy, PolicyConfig
    from envs.env import AudioEditEnv
    from rl.ppo import PPOConfig, train

    torch.manual_seed(0)
    policy = Policy(PolicyConfig.from_layout()).to(device)
    cfg = PPOConfig(epochs=epochs, save_every=0, eval_every=0)
    env_fns = [lambda: AudioEditEnv([song], target_keep=0.5)] * cfg.n_envs
    rows = list(train(cfg, policy=policy, env_fns=env_fns, device=device))
    return statistics.median(r["sps"] for r in rows[1:]) if len(rows) > 1 else rows[0]["sps"]


def infer_s(wav: Path, ckpt: Path, device: str, tmp: Path) -> tuple[float, float]:
    """(total, policy stage) seconds of agent.infer on the song, after a warm-up run."""
    from agent.infer import get_parser, run

    def one(i: int) -> dict[str, float]:
        a = get_parser().parse_args([str(wav), "--checkpoint", str(ckpt), "--out", str(tmp / f"infer-{device}-{i}"),
                                     "--no-cache", "--device", device])
        return parse_times(run(a)["time"])

    one(0)
    t = one(1)
    return t.get("total", float("nan")), t.get("policy", float("nan"))


# ---------------------------------------------------------------------------- table


def _fmt(v, unit: str) -> str:
    if isinstance(v, str):
        return v
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.0f}" if unit == "steps/s" else f"{v:.2f}"


def _ratio(cpu, gpu, unit: str) -> str:
    if not all(isinstance(v, (int, float)) and np.isfinite(v) and v > 0 for v in (cpu, gpu)):
        return "-"
    r = gpu / cpu if unit == "steps/s" else cpu / gpu
    return f"{r:.2f}x"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--song", type=Path, default=MUSIC / "race1-jt.ogg", help="real music, looped to 180 s")
    ap.add_argument("--bc-samples", type=int, default=8192, help="samples of the BC epoch rows")
    ap.add_argument("--ppo-epochs", type=int, default=3, help="PPO epochs per device (the first is dropped)")
    ap.add_argument("--demucs-cpu-seconds", type=float, default=30.0, help="CPU Demucs times this much of the song")
    ap.add_argument("--skip", default="", help="comma-separated rows to leave out: features,demucs,bc,ppo,infer")
    args = ap.parse_args(argv)
    if not args.song.is_file():
        print(f"error: {args.song}: song not found (real music lives in ../shared/data/music)", file=sys.stderr)
        return 2
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    threads0 = torch.get_num_threads()
    torch.set_num_threads(1)
    has_cuda = torch.cuda.is_available()
    devices = ["cpu", "cuda"] if has_cuda else ["cpu"]
    print(f"torch {torch.__version__}; CPU: {os.cpu_count()} cores, torch threads 1 for training and PPO")
    if has_cuda:
        print(f"CUDA: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} device(s)); CUDA column measured")
    else:
        print("CUDA: absent (torch sees no CUDA device): the CPU column only; run this script as is on a GPU box")
    t_all = time.perf_counter()
    rows: list[tuple[str, str, object, object]] = []  # (stage, unit, cpu, cuda)
    notes: list[str] = []

    def stage(name: str) -> None:
        print(f"  ... {name} ({time.perf_counter() - t_all:.0f} s so far)", flush=True)

    # Order: PPO's CPU run forks its rollout worker, so it comes before anything that
    # initialises CUDA in this process (a CPU-pinned run of another stage can: torch's RNG
    # state and device names touch it); then each row on the CPU, then on CUDA.
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        tmp = Path(tmp)
        wav = looped_wav(args.song, SONG_S, tmp / f"{args.song.stem}_3min.wav")

        if "features" not in skip:
            stage("features")
            rows.append(("features, 3-min song", "s", features_s(wav), "CPU code"))

        if "ppo" not in skip:
            from datasets.features import extract_features
            from envs.env import Song

            audio = load_audio(wav)
            song = Song.from_features(extract_features(audio, stems="dsp"), audio=audio)
            vals = {}
            for d in devices:
                stage(f"PPO on {d}")
                vals[d] = ppo_sps(song, d, epochs=args.ppo_epochs)
            rows.append(("PPO env steps/s (16 envs x 64 steps)", "steps/s", vals["cpu"], vals.get("cuda")))

        if "infer" not in skip:
            ckpt, _ = dsp_checkpoint(None, tmp / "policy.pt")
            vals = {}
            for d in devices:
                stage(f"agent.infer on {d}")
                vals[d] = infer_s(wav, ckpt, d, tmp)
            rows.append(("agent.infer, 3-min song", "s", vals["cpu"][0], vals["cuda"][0] if has_cuda else None))
            rows.append(("  its policy stage", "s", vals["cpu"][1], vals["cuda"][1] if has_cuda else None))

        if "bc" not in skip:
            data = random_bc_data(args.bc_samples)
            for bs in (64, 512):
                vals = {}
                for d in devices:
                    stage(f"BC epoch, batch {bs}, on {d}")
                    vals[d] = bc_epoch_s(data, d, batch_size=bs, tmp=tmp)
                rows.append((f"BC epoch, {args.bc_samples} samples, batch {bs}", "s", vals["cpu"], vals.get("cuda")))

        if "demucs" not in skip:
            stage("demucs")
            try:
                from datasets.stems import resolve_method

                resolve_method("demucs")
            except EditorError as exc:
                notes.append(f"Demucs: skipped ({exc})")
            else:
                torch.set_num_threads(threads0)  # separation on the CPU gets every core, as in a plain process
                cpu = demucs_s(wav, "cpu", seconds=args.demucs_cpu_seconds)
                torch.set_num_threads(1)
                gpu = demucs_s(wav, "cuda", seconds=None) if has_cuda else None
                rows.append((f"Demucs htdemucs, 3-min song (CPU ~ from {args.demucs_cpu_seconds:.0f} s)", "s", cpu, gpu))

    print()
    cuda_hdr = "CUDA" if has_cuda else "CUDA (absent)"
    print(f"{'stage':<52}{'unit':>8}{'CPU':>10}{cuda_hdr:>15}{'CPU/CUDA':>10}")
    print("-" * 95)
    for name, unit, cpu, gpu in rows:
        print(f"{name:<52}{unit:>8}{_fmt(cpu, unit):>10}{_fmt(gpu, unit):>15}{_ratio(cpu, gpu, unit):>10}")
    for n in notes:
        print(n)
    print(f"wall {time.perf_counter() - t_all:.0f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
