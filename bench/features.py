"""Benchmark: beats + the 121 features, one core, against a naive librosa baseline.

    .venv/bin/python bench/features.py [--music ../shared/data/music] [--repeat 3]

For every file of ../shared/data/music and for a 3-minute file (real music from that
folder, concatenated to 180 s), after a warm-up that pays numba's one-time JIT:

- ``core``: beat tracking + every non-stem feature (``datasets.features._core``: the one
  STFT, onset envelope, chroma, tracker, aggregation): goal >= 100x realtime, i.e. a
  3-minute song in <= 1.8 s;
- ``stems``: the DSP stem fallback as extract_features runs it (masks on the shared
  STFT -> per-frame stem rms/centroid/energy), and ``separate()`` as a user calls it
  (own STFT + masks + 4 inverse STFTs);
- baselines, measured in the same run on the 3-minute file: the naive pipeline where
  every librosa feature function recomputes its own STFT, and librosa's full-resolution
  HPSS (kernel 31 on 1025 bins) instead of our mel-pooled one.

Times are the median of ``--repeat`` runs; ``core cpu s`` is the process CPU time of the
same runs (wall time above CPU time means other processes shared the core). Load/decode
time is listed but not part of the realtime factor.
"""

from __future__ import annotations

import os

# One core, set before numpy/numba are imported.
for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_k] = "1"

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets import features as F  # noqa: E402
from datasets import stems as S  # noqa: E402
from datasets.audio import ANALYSIS_SR, Audio, audio_hash, load_audio  # noqa: E402
from datasets.errors import EditorError  # noqa: E402


def _median_time(fn, repeat: int) -> tuple[float, object]:
    """Median wall time of ``repeat`` runs (and the last result); CPU time of this
    process accumulates in ``_CPU`` so the table can show how contended the machine was."""
    times, out = [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        _CPU.append(time.process_time() - c0)
    return statistics.median(times), out


_CPU: list[float] = []


def _stems_from_shared(audio: Audio, cfg: F.FeatureConfig):
    """What extract_features pays for DSP stems once the STFT exists."""
    a = F._analyse(audio.y_mono, cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    F._stem_frame_features(a, audio, "dsp", None, cfg, use_cache=False)
    return time.perf_counter() - t0, time.process_time() - c0


def _naive(y: np.ndarray, sr: int) -> None:
    """The obvious librosa pipeline: every call recomputes its own STFT from y."""
    import librosa

    env = librosa.onset.onset_strength(y=y, sr=sr, aggregate=np.median)
    librosa.beat.beat_track(onset_envelope=env, sr=sr, start_bpm=110.0, tightness=100)
    librosa.feature.rms(y=y)
    librosa.feature.spectral_centroid(y=y, sr=sr)
    librosa.feature.spectral_rolloff(y=y, sr=sr)
    librosa.feature.spectral_bandwidth(y=y, sr=sr)
    librosa.feature.spectral_flatness(y=y)
    librosa.feature.spectral_contrast(y=y, sr=sr)
    librosa.feature.zero_crossing_rate(y)
    librosa.feature.mfcc(y=y, sr=sr, n_mfcc=13)
    librosa.feature.chroma_stft(y=y, sr=sr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--music", default=str(ROOT.parent / "shared" / "data" / "music"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-baseline", action="store_true", help="skip the naive-librosa and full-HPSS baselines")
    args = p.parse_args(argv)
    files = sorted(Path(args.music).glob("*.ogg"))
    if not files:
        print(f"error: no .ogg files in {args.music}", file=sys.stderr)
        return 2
    cfg = F.FeatureConfig()

    # Warm-up: numba JIT of the beat tracker, librosa's lazy imports, filter banks.
    t0 = time.perf_counter()
    warm = load_audio(files[0])
    F._core(warm, None, cfg)
    _stems_from_shared(warm, cfg)
    S.separate(warm, method="dsp")
    print(f"warm-up (numba JIT, imports): {time.perf_counter() - t0:.1f} s\n")

    rows = []
    songs = []
    for f in files:
        t0 = time.perf_counter()
        audio = load_audio(f)
        load_s = time.perf_counter() - t0
        songs.append(audio.y_mono)
        rows.append((f.name, audio, load_s))
    y3 = np.concatenate(songs)
    while len(y3) < 180 * ANALYSIS_SR:
        y3 = np.concatenate([y3, y3])
    y3 = np.ascontiguousarray(y3[: 180 * ANALYSIS_SR])
    three = Audio(path="3-minute concat", y=y3[None], sr=ANALYSIS_SR, y_mono=y3, sha256=audio_hash(y3[None], ANALYSIS_SR), is_silent=False)
    rows.append(("3-minute (concatenated)", three, 0.0))

    hdr = f"{'file':<26}{'dur s':>7}{'load s':>8}{'beats':>7}{'core s':>8}{'core RTF':>10}{'stems s':>9}{'stems RTF':>10}{'separate s':>11}{'core cpu s':>11}{'stems cpu s':>12}"
    line = "-" * len(hdr)

    def measure(name: str, audio: Audio, load_s: float) -> tuple[float, float, float] | None:
        dur = audio.duration
        try:
            _CPU.clear()
            core_s, out = _median_time(lambda: F._core(audio, None, cfg), args.repeat)
            core_cpu = statistics.median(_CPU)
        except EditorError as exc:  # e.g. a 6 s clip shorter than two bars at its tempo
            print(f"{name:<26}{dur:>7.1f}{load_s:>8.2f}  error: {str(exc).replace(str(audio.path), name)}")
            return None
        stem_runs = [_stems_from_shared(audio, cfg) for _ in range(args.repeat)]
        stem_s, stem_cpu = statistics.median(r[0] for r in stem_runs), statistics.median(r[1] for r in stem_runs)
        sep_s, _ = _median_time(lambda: S.separate(audio, method="dsp"), args.repeat)
        print(
            f"{name:<26}{dur:>7.1f}{load_s:>8.2f}{out[1].n_beats:>7d}{core_s:>8.3f}{dur / core_s:>9.0f}x"
            f"{stem_s:>9.3f}{dur / stem_s:>9.0f}x{sep_s:>11.3f}{core_cpu:>10.3f}{stem_cpu:>12.3f}"
        )
        return core_s, stem_s, sep_s, core_cpu, stem_cpu

    print(hdr)
    print(line)
    tot_dur = tot_core = tot_stem = tot_sep = tot_cpu = tot_stem_cpu = 0.0
    n_ok = 0
    for name, audio, load_s in rows[:-1]:
        r = measure(name, audio, load_s)
        if r is not None:
            tot_dur, tot_core, tot_stem, tot_sep = tot_dur + audio.duration, tot_core + r[0], tot_stem + r[1], tot_sep + r[2]
            tot_cpu += r[3]
            tot_stem_cpu += r[4]
            n_ok += 1
    print(line)
    print(
        f"{f'total ({n_ok} files)':<26}{tot_dur:>7.1f}{'':>8}{'':>7}{tot_core:>8.3f}{tot_dur / tot_core:>9.0f}x"
        f"{tot_stem:>9.3f}{tot_dur / tot_stem:>9.0f}x{tot_sep:>11.3f}{tot_cpu:>10.3f}{tot_stem_cpu:>12.3f}"
    )
    print(line)
    three_core, three_stem, _, three_cpu, three_stem_cpu = measure(*rows[-1])
    # One core's cost is the process CPU time; wall time equals it on an idle core and
    # exceeds it when other processes share the core (this machine is shared).
    ok = three_cpu <= 1.8
    print(f"\ngoal: 3-minute song, beats + features, one core <= 1.8 s (100x realtime):")
    print(f"  CPU time {three_cpu:.3f} s ({180 / three_cpu:.0f}x) -> {'PASS' if ok else 'FAIL'}; "
          f"wall {three_core:.3f} s ({180 / three_core:.0f}x) at load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    both = three_cpu + three_stem_cpu
    print(f"with the DSP stem fallback: CPU {both:.3f} s ({180 / both:.0f}x realtime); "
          f"wall {three_core + three_stem:.3f} s")

    if not args.no_baseline:
        import librosa

        def cpu(fn, repeat: int) -> float:
            _CPU.clear()
            _median_time(fn, repeat)
            return statistics.median(_CPU)

        naive = cpu(lambda: _naive(y3, ANALYSIS_SR), args.repeat)
        D = np.abs(librosa.stft(y3, n_fft=2048, hop_length=512))
        hpss = cpu(lambda: librosa.decompose.hpss(D, mask=True), 1)
        ours_masks = cpu(lambda: S.dsp_masks(S=D), args.repeat)
        print("\nbaselines on the 3-minute file (same run, process CPU time):")
        print(f"{'pipeline':<58}{'cpu s':>8}{'speed-up':>10}")
        print(f"{'naive librosa (one STFT per feature; fewer features)':<58}{naive:>8.3f}{1.0:>9.2f}x")
        print(f"{'ours: shared STFT, beats + 109 non-stem features':<58}{three_cpu:>8.3f}{naive / three_cpu:>9.2f}x")
        print(f"{'librosa.decompose.hpss, full resolution (kernel 31)':<58}{hpss:>8.3f}{1.0:>9.2f}x")
        print(f"{'ours: dsp_masks on 128 mel bands (kernel 17) + splits':<58}{ours_masks:>8.3f}{hpss / ours_masks:>9.2f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
