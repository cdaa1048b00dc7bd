"""The whole-song planner: bar features, targets, a learned phrase rule, priors, state."""

from __future__ import annotations

import io

import numpy as np
import torch

from agent.planner import BAR_FEATURES, Planner, PlannerConfig, bar_features, bar_targets, beat_prior, oof_priors
from datasets.beats import BeatGrid
from datasets.features import N_FEATURES, feature_index
from envs.context import PLAN_CHANNELS, budget_keep, plan_channels
from envs.plan import EditPlan, Ops, Segment


def _song(seed: int, n_phrases: int = 8) -> tuple[np.ndarray, BeatGrid]:
    """4/4, 4-bar phrases, each phrase at its own random loudness."""
    rng = np.random.default_rng(seed)
    n = n_phrases * 16
    grid = BeatGrid.from_beat_times(np.arange(n) * 0.5, duration=n * 0.5, beats_per_bar=4)
    v = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    loud = rng.uniform(-30, -10, size=n_phrases)
    v[:, feature_index("rms_db")] = np.repeat(loud, 16) + rng.normal(scale=0.3, size=n)
    return v, grid


def _editor(values: np.ndarray, grid: BeatGrid) -> EditPlan:
    """Keeps the opening phrase, cuts the two quietest others, fades the last bar."""
    loud = values[:, feature_index("rms_db")].reshape(-1, 16).mean(1)
    order = [i for i in np.argsort(loud) if i != 0][:2]
    keep = [i for i in range(len(loud)) if i not in order]
    segs = [Segment(16 * i, 16 * i + 16) for i in keep]
    last = segs[-1]
    segs[-1] = Segment(last.raw_start, last.raw_end - 4)
    segs.append(Segment(last.raw_end - 4, last.raw_end, Ops(fade_out_s=2.0)))
    return EditPlan(segments=tuple(segs), grid=grid)


def test_bar_features_and_targets():
    v, g = _song(0)
    X, bounds = bar_features(v, g)
    assert X.shape == (32, len(BAR_FEATURES)) and np.isfinite(X).all()
    assert bounds[0] == 0 and bounds[-1] == g.n_beats and len(bounds) == 33
    Y = bar_targets(_editor(v, g), bounds)
    assert Y.shape == (32, 3)
    assert Y[:4, 0].all()  # the opening phrase is kept
    assert Y[:, 0].sum() == 24 and Y[:, 1].sum() == 0 and Y[:, 2].sum() == 1
    prior = beat_prior(Y, bounds, g)
    assert prior.shape == (g.n_beats, 5) and np.allclose(prior[:, 0], np.repeat(Y[:, 0], 4))
    ranked = beat_prior(np.full_like(Y, 0.5), bounds, g, kept=Y[:, 0] > 0.5)  # training songs: the editor's bars first
    assert (ranked[Y[np.repeat(np.arange(32), 4), 0] > 0.5, 4] > ranked[Y[np.repeat(np.arange(32), 4), 0] < 0.5, 4].max()).all()


def test_planner_learns_a_whole_song_phrase_rule_from_three_songs():
    songs = [_song(s) for s in range(3)]
    tables = []
    for v, g in songs:
        X, b = bar_features(v, g)
        tables.append((X, bar_targets(_editor(v, g), b)))
    planner = Planner.fit(tables, PlannerConfig(epochs=400, kind="mlp"))  # bar_features are the MLP's inputs
    v, g = _song(11)
    X, b = bar_features(v, g)
    truth = bar_targets(_editor(v, g), b)[:, 0] > 0.5
    pred = planner.predict(X)[:, 0] > 0.5
    assert (pred == truth).mean() >= 0.9
    # the state survives a weights-only round trip
    buf = io.BytesIO()
    torch.save(planner.to_state(), buf)
    buf.seek(0)
    back = Planner.from_state(torch.load(buf, weights_only=True))
    assert np.allclose(back.predict(X), planner.predict(X), atol=1e-6)


def test_oof_priors_are_deterministic_and_exclude_the_song():
    songs = [(f"s{i}", *_song(i)) for i in range(5)]
    songs = [(k, v, g, _editor(v, g)) for k, v, g in songs]
    p1, full = oof_priors(songs, PlannerConfig(epochs=50))
    p2, _ = oof_priors(songs, PlannerConfig(epochs=50))
    assert all(np.array_equal(a, b) for a, b in zip(p1, p2))
    v, g = songs[0][1], songs[0][2]
    assert p1[0].shape == (g.n_beats, 5)
    assert not np.allclose(p1[0][:, :4], full.prior(v, g)[:, :4])  # the song's own prior is out of fold


def test_plan_channels_budget_fills_the_target():
    v, g = _song(0)
    score = np.repeat(np.linspace(1, 0, 32), 4)  # earlier bars rank first
    keep = budget_keep(score, g, 0.5)
    assert keep[: g.n_beats // 2].all() and not keep[g.n_beats // 2 :].any()
    ch = plan_channels(np.stack([score] * 5, 1), g, target_keep=0.25)
    assert ch.shape == (g.n_beats, len(PLAN_CHANNELS))
    assert ch[:, PLAN_CHANNELS.index("plan_known")].all()
    assert np.isclose(ch[:, PLAN_CHANNELS.index("plan_budget_keep")].mean(), 0.25)
    assert not plan_channels(None, g, target_keep=0.5).any()
