"""Compile numba's caches for the feature pipeline once, in one process.

Why: librosa's ``@guvectorize`` functions are compiled on first use and cached on disk.
When two processes compile them at the same time (the demo builder's and the aligner's
worker pools), the cache files can end up from different processes, and every later
call segfaults (numba issue #10128). ``make setup`` runs this once, so worker pools only
ever load a complete cache. It takes about 20 s.

    python -m datasets.warmup
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["warm_up", "main"]


def warm_up() -> float:
    """Run beats + features + the DSP stems on 12 s of a generated signal; returns seconds."""
    from datasets.audio import load_audio, write_audio
    from datasets.features import extract_features

    t0 = time.perf_counter()
    sr = 22050
    t = np.arange(12 * sr) / sr
    y = 0.3 * np.sin(2 * np.pi * 220 * t)
    y[np.arange(len(t)) % (sr // 2) < 200] += 0.5  # clicks at 120 BPM, so beats are found
    with tempfile.TemporaryDirectory() as d:
        p = write_audio(Path(d) / "warm.wav", y=np.stack([y, y]).astype(np.float32), sr=sr)
        extract_features(load_audio(p), stems="dsp", use_cache=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    print(f"warmup: numba caches for beats and features compiled in {warm_up():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
