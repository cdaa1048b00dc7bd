"""Synthetic labelled songs for pretraining tests: a persona that keeps the loud phrases.

Each song has random features with a per-phrase level in ``rms_db``; the persona's plan
keeps the phrases whose level is positive. Labels are the plan's oracle actions, so the
data goes through the real environment exactly as aligned labels do.
"""

from __future__ import annotations

import numpy as np

from datasets.beats import BeatGrid
from datasets.features import feature_index
from envs.env import Song
from envs.oracle import oracle_actions
from envs.plan import EditPlan, Segment
from pretrain.augment import IDENTITY
from pretrain.dataset import LabeledPair


def synth_pair(seed: int, *, n_phrases: int = 6, beats_per_bar: int = 4) -> tuple[LabeledPair, Song]:
    rng = np.random.default_rng(seed)
    per = 4 * beats_per_bar
    n = n_phrases * per
    grid = BeatGrid.from_beat_times(np.arange(n) * 0.5, duration=n * 0.5, beats_per_bar=beats_per_bar)
    vals = rng.standard_normal((grid.n_beats, 121)).astype(np.float32)
    level = rng.choice([-1.0, 1.0], size=n_phrases)
    level[rng.integers(n_phrases)] = 1.0  # keep at least one phrase
    vals[:, feature_index("rms_db")] = np.repeat(level * 6.0, per)[: grid.n_beats] - 20.0
    segs = tuple(Segment(i * per, (i + 1) * per) for i in range(n_phrases) if level[i] > 0)
    sha = f"synth{seed}"
    plan = EditPlan(segments=segs, grid=grid, source_sha256=sha).merged()
    acts = tuple(oracle_actions(plan))
    name = f"song{seed}"
    pair = LabeledPair(name=name, raw_path=f"/nonexistent/{name}.wav", raw_sha256=sha, actions=acts, plan=plan, confidence=None)
    song = Song(values=vals, grid=grid, name=name, sha256=sha, human_plan=plan)
    return pair, song


def synth_corpus(seeds) -> tuple[list[LabeledPair], dict]:
    pairs, songs = [], {}
    for s in seeds:
        p, song = synth_pair(s)
        pairs.append(p)
        songs[(p.name, IDENTITY.key())] = song
    return pairs, songs
