"""The attention planner: a whole-song rank rule, its weights-only state, its receptive field."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from agent.planner import Planner, PlannerConfig, bar_targets, song_inputs
from agent.planner_attention import TOKEN_FEATURES, AttentionConfig, AttentionPlanner, bar_tokens
from datasets.beats import BeatGrid
from datasets.errors import ParameterError
from datasets.features import N_FEATURES, feature_index
from envs.plan import EditPlan, Segment

_LOUD = TOKEN_FEATURES.index("raw_rms_db_z")
_BIP = [TOKEN_FEATURES.index(f"bar_in_phrase_{k}") for k in range(4)]


def _rank_song(rng: np.random.Generator, n_phrases: int = 8, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of a song whose phrases sit at evenly spaced levels (1.5 apart, shuffled) on
    a per-song offset of +-15 (so one bar's level says little), and the editor's targets:
    the k loudest phrases kept."""
    level = rng.permutation(n_phrases) * 1.5 + rng.uniform(-15, 15)
    X = np.zeros((4 * n_phrases, len(TOKEN_FEATURES)), dtype=np.float32)
    X[:, _LOUD] = np.repeat(level, 4) + rng.normal(scale=0.1, size=4 * n_phrases)
    X[np.arange(4 * n_phrases), np.tile(_BIP, n_phrases)] = 1.0
    kept = np.argsort(-level)[:k]
    Y = np.zeros((4 * n_phrases, 3), dtype=np.float32)
    Y[:, 0] = np.repeat(np.isin(np.arange(n_phrases), kept), 4)
    return X, Y


def test_attention_learns_a_rank_rule_that_one_bar_cannot_show():
    rng = np.random.default_rng(0)
    train = [_rank_song(rng) for _ in range(12)]
    test = [_rank_song(rng) for _ in range(6)]
    attn = AttentionPlanner.fit(train, AttentionConfig(epochs=200))
    mlp = Planner.fit(train, PlannerConfig(epochs=200, kind="mlp"))  # pointwise: the same bar rows, one at a time

    def acc(model) -> float:
        return float(np.mean([((model.predict(X)[:, 0] > 0.5) == (Y[:, 0] > 0.5)).mean() for X, Y in test]))

    a, m = acc(attn), acc(mlp)
    assert a >= 0.9, f"attention planner: {a:.3f} of held-out bars right"
    assert a >= m + 0.15, f"attention {a:.3f} vs pointwise MLP {m:.3f}: the rule needs the other bars"


def _song(seed: int, n_beats: int = 128) -> tuple[np.ndarray, BeatGrid, EditPlan]:
    rng = np.random.default_rng(seed)
    grid = BeatGrid.from_beat_times(np.arange(n_beats) * 0.5, duration=n_beats * 0.5, beats_per_bar=4)
    v = rng.normal(size=(n_beats, N_FEATURES)).astype(np.float32)
    loud = rng.uniform(-30, -10, size=-(-n_beats // 16))  # one level per 4-bar phrase
    v[:, feature_index("rms_db")] = np.repeat(loud, 16)[:n_beats]
    keep = [i for i in range(len(loud)) if i == 0 or loud[i] > np.median(loud)]  # the louder half
    segs = tuple(Segment(16 * i, min(16 * i + 16, n_beats)) for i in keep)
    return v, grid, EditPlan(segments=segs, grid=grid)


def test_state_round_trips_weights_only_and_old_mlp_states_still_load():
    tables = []
    for s in range(3):
        v, g, plan = _song(s)
        X, b = song_inputs(v, g, "attention")
        tables.append((X, bar_targets(plan, b)))
    planner = Planner.fit(tables, PlannerConfig(kind="attention"))
    assert isinstance(planner, AttentionPlanner) and planner.cfg.seed == 0
    v, g, _ = _song(7)
    buf = io.BytesIO()
    torch.save(planner.to_state(), buf)
    buf.seek(0)
    back = Planner.from_state(torch.load(buf, weights_only=True))
    assert isinstance(back, AttentionPlanner)
    assert np.array_equal(back.prior(v, g), planner.prior(v, g))
    # a checkpoint written before the kinds existed: an MLP state without "kind"
    mlp_tables = [(song_inputs(*_song(s)[:2], "mlp")[0], Y) for s, (_, Y) in enumerate(tables)]
    mlp = Planner.fit(mlp_tables, PlannerConfig(epochs=20, kind="mlp"))
    old = mlp.to_state()
    del old["config"]["kind"]
    buf = io.BytesIO()
    torch.save(old, buf)
    buf.seek(0)
    back = Planner.from_state(torch.load(buf, weights_only=True))
    assert isinstance(back, Planner) and back.cfg.kind == "mlp"
    assert np.array_equal(back.prior(v, g), mlp.prior(v, g))


def test_receptive_field_is_the_whole_song():
    v, g, plan = _song(1, n_beats=1000)
    X, b = bar_tokens(v, g)
    assert X.shape == (250, len(TOKEN_FEATURES))
    planner = AttentionPlanner.fit([(X, bar_targets(plan, b))], AttentionConfig(epochs=5))
    Z = X.copy()
    Z[-1, :] += 3.0  # only the last bar's token changes (its features, its chroma)
    p, q = planner.predict(X), planner.predict(Z)
    assert not np.allclose(p[0], q[0], atol=1e-7), "the first bar does not hear the last one"
    # through the whole pipeline too: new audio in the last bar moves the first bar's plan
    v2 = v.copy()
    v2[-4:] += 2.0
    assert not np.allclose(planner.prior(v, g)[0], planner.prior(v2, g)[0])


def test_unknown_kind_is_one_clear_error():
    v, g, _ = _song(0)
    with pytest.raises(ParameterError, match="planner kind 'gru'"):
        song_inputs(v, g, "gru")
    with pytest.raises(ParameterError, match="planner kind 'gru'"):
        Planner.fit([(np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32))], PlannerConfig(kind="gru"))
