"""Compile numba's on-disk caches once, in one process, before any worker pool runs.

Why: numba compiles a ``cache=True`` kernel on first use and writes it to disk. When
two processes compile one at the same time (the aligner's worker pool, the demo
builder's), the cache files can end up from different processes, and every later call
segfaults (numba issue #10128). ``make setup`` runs this once, so pools only ever load
a complete cache.

What is compiled (issue 17 moved the feature pipeline off librosa, see datasets/dsp.py,
so a fresh process no longer loads librosa's gufuncs at all):

- (``alignment.dp``'s Viterbi step was a numba kernel until issue 17 made it numpy:
  as fast, and a fresh process no longer imports numba to load it);
- librosa's kernels for what still calls librosa (``datasets.stems.separate``'s
  inverse STFT, the y-only fallbacks of ``datasets.beats``, benchmarks and tests);
- and the feature pipeline runs once on a generated signal, as a check.

The caches live beside the code (``__pycache__``); ``NUMBA_CACHE_DIR`` moves them, e.g.
when the virtual environment is read-only. About 10-20 s.

    python -m datasets.warmup
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["warm_up", "main"]


def _signal(sr: int = 22050, seconds: float = 12.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * 220 * t)
    y[np.arange(len(t)) % (sr // 2) < 200] += 0.5  # clicks at 120 BPM, so beats are found
    return y.astype(np.float32)


def warm_up() -> float:
    """Compile the kernels above; returns seconds."""
    from datasets.audio import load_audio, write_audio
    from datasets.features import extract_features

    t0 = time.perf_counter()
    sr = 22050
    y = _signal(sr)
    import librosa

    D = librosa.stft(y, n_fft=2048, hop_length=512)
    librosa.istft(D, hop_length=512, n_fft=2048, length=len(y))
    env = librosa.onset.onset_strength(y=y, sr=sr, hop_length=512, aggregate=np.median)
    librosa.beat.beat_track(onset_envelope=env, sr=sr, hop_length=512)
    librosa.util.peak_pick(env, pre_max=3, post_max=3, pre_avg=3, post_avg=5, delta=0.1, wait=3)
    with tempfile.TemporaryDirectory() as d:
        p = write_audio(Path(d) / "warm.wav", y=np.stack([y, y]), sr=sr)
        extract_features(load_audio(p), stems="dsp", use_cache=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    print(f"warmup: numba caches (librosa) compiled in {warm_up():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
