"""Shared fixtures: real music from ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# One thread per test process: CI has 2 cores, and BLAS oversubscription only slows us.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MUSIC = SHARED_DATA / "music"
MIDI = SHARED_DATA / "midi"


def music_file(name: str) -> Path:
    """Path of a real recording in ../shared/data/music, or skip the test."""
    p = MUSIC / name
    if not p.exists():
        pytest.skip(f"real music not available: {p} (../shared/data is absent)")
    return p


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session writes its feature cache in a temp dir, never in runs/."""
    cache = tmp_path_factory.getbasetemp() / "feature-cache"
    monkeypatch.setenv("EDITOR_CACHE_DIR", str(cache))


@pytest.fixture(scope="session")
def race1_path() -> Path:
    return music_file("race1-jt.ogg")


def click_track(*, bpm: float, seconds: float, sr: int = 22050, beats_per_bar: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A click track with accented downbeats; returns (y, beat_times)."""
    period = 60.0 / bpm
    times = np.arange(0.0, seconds - 0.05, period)
    y = np.zeros(int(seconds * sr), dtype=np.float32)
    t = np.arange(int(0.03 * sr)) / sr
    for i, bt in enumerate(times):
        accent = 1.0 if i % beats_per_bar == 0 else 0.5
        f = 1500.0 if i % beats_per_bar == 0 else 1000.0
        burst = accent * np.sin(2 * np.pi * f * t) * np.exp(-t * 120)
        s = int(bt * sr)
        y[s : s + len(burst)] += burst[: len(y) - s]
    return y, times
