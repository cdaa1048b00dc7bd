"""The rank planner: a within-song phrase rule learned from 5 songs, its weights-only
state, and the budget unit it learns (a ratio of the raw or an output length)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from agent.planner import Planner, PlannerConfig, bar_targets, song_inputs
from agent.planner_rank import RankPlanner, fit_budget, phrase_table
from datasets.beats import BeatGrid
from datasets.errors import ParameterError
from datasets.features import N_FEATURES, feature_index
from envs.plan import EditPlan, Segment

PHRASE = 16  # beats: 4 bars of 4


def _loud_song(seed: int, n_phrases: int) -> tuple[np.ndarray, BeatGrid, EditPlan]:
    """A song whose phrases sit at shuffled loudness levels (3 dB apart) on a per-song
    offset of +-10 dB, edited by a rule that needs the whole song: the opening phrase,
    then the 3 loudest of the others."""
    rng = np.random.default_rng(seed)
    n = n_phrases * PHRASE
    grid = BeatGrid.from_beat_times(np.arange(n) * 0.5, duration=n * 0.5, beats_per_bar=4)
    v = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    level = rng.permutation(n_phrases) * 3.0 - 40.0 + rng.uniform(-10, 10)
    v[:, feature_index("rms_db")] = np.repeat(level, PHRASE) + rng.normal(scale=0.3, size=n)
    v[:, feature_index("rms")] = 10 ** (v[:, feature_index("rms_db")] / 20)
    kept = [0, *sorted(1 + np.argsort(-level[1:])[:3])]
    segs = tuple(Segment(PHRASE * i, PHRASE * i + PHRASE) for i in kept)
    return v, grid, EditPlan(segments=segs, grid=grid)


def _tables(songs) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for v, g, plan in songs:
        X, b = song_inputs(v, g, "rank")
        out.append((X, bar_targets(plan, b)))
    return out


def test_learns_a_within_song_rank_rule_from_five_songs():
    train = [_loud_song(s, n) for s, n in zip(range(5), (8, 9, 10, 8, 11))]
    planner = Planner.fit(_tables(train), PlannerConfig(kind="rank"))
    assert isinstance(planner, RankPlanner)
    for seed, n in ((100, 12), (101, 9)):  # new songs, one longer than any training song
        v, g, plan = _loud_song(seed, n)
        X, b = song_inputs(v, g, "rank")
        _, ph_of, _ = phrase_table(X)
        kept_bar = planner.predict(X)[:, 0]
        assert kept_bar.shape == (len(b) - 1,)
        # phrase decisions: the kept probability is one value per phrase
        first = np.r_[0, np.flatnonzero(np.diff(ph_of)) + 1]
        got = kept_bar[first] > 0.5
        truth = bar_targets(plan, b)[first, 0] > 0.5
        acc = float(np.mean(got == truth))
        assert acc >= 0.9, f"song {seed}: {acc:.2f} of phrases right ({got.astype(int)} vs {truth.astype(int)})"


def test_state_round_trips_through_a_weights_only_load():
    planner = Planner.fit(_tables([_loud_song(s, 8) for s in range(3)]), PlannerConfig(kind="rank"))
    buf = io.BytesIO()
    torch.save(planner.to_state(), buf)
    buf.seek(0)
    back = Planner.from_state(torch.load(buf, weights_only=True))
    assert isinstance(back, RankPlanner) and back.budget == planner.budget
    v, g, _ = _loud_song(9, 10)
    assert np.array_equal(back.prior(v, g), planner.prior(v, g))
    # another feature set (an older state) loads as no planner, not as wrong columns
    old = planner.to_state()
    old["rank_features"] = old["rank_features"][:-1]
    assert Planner.from_state(old) is None


def _edit(n_phrases: int, keep_phrases: int) -> tuple[np.ndarray, BeatGrid, EditPlan]:
    n = n_phrases * PHRASE
    grid = BeatGrid.from_beat_times(np.arange(n) * 0.5, duration=n * 0.5, beats_per_bar=4)
    v = np.random.default_rng(n_phrases).normal(size=(n, N_FEATURES)).astype(np.float32)
    return v, grid, EditPlan(segments=(Segment(0, PHRASE * keep_phrases),), grid=grid)


def test_budget_unit_is_the_one_the_editor_holds_fixed():
    lengths = (6, 8, 10, 12, 14)  # 48 s to 112 s songs (8 s phrases)
    # an editor who always delivers 32 s (4 phrases) vs one who keeps half of every song
    duration = Planner.fit(_tables([_edit(n, 4) for n in lengths]), PlannerConfig(kind="rank"))
    ratio = Planner.fit(_tables([_edit(n, n // 2) for n in lengths]), PlannerConfig(kind="rank"))
    assert duration.budget.unit == "seconds" and duration.budget.value == pytest.approx(32.0)
    assert ratio.budget.unit == "ratio" and ratio.budget.value == pytest.approx(0.5)
    assert duration.to_state()["budget"]["unit"] == "seconds"
    # decoded on a 160 s song: 32 s is a fifth of it; on a 40 s song, capped at the
    # largest ratio the editor kept (32 / 48)
    assert duration.budget.keep_ratio(160.0) == pytest.approx(0.2)
    assert duration.budget.keep_ratio(40.0) == pytest.approx(32 / 48)
    assert ratio.budget.keep_ratio(160.0) == pytest.approx(0.5)
    # the same choice from the numbers alone, with an editor's spread
    rng = np.random.default_rng(0)
    dur = rng.uniform(60, 240, size=17)
    assert fit_budget(75 + rng.normal(0, 3, 17), dur).unit == "seconds"
    assert fit_budget(dur * (0.7 + rng.normal(0, 0.02, 17)), dur).unit == "ratio"
    with pytest.raises(ParameterError, match="fit_budget"):
        fit_budget([10.0], [0.0])


def _loudest_song(seed: int, n_phrases: int, *, opening: bool) -> tuple[np.ndarray, BeatGrid, EditPlan]:
    """A song of ``_loud_song``'s kind with its opening phrase the quietest, edited by "the
    4 loudest phrases" (``opening=False``) or "the opening, then the 3 loudest" (True)."""
    v, grid, _ = _loud_song(seed, n_phrases)
    col = feature_index("rms_db")
    level = v[::PHRASE, col].copy()
    v[:PHRASE, col] -= level[0] - level.min() + 3.0  # the opening: 3 dB below the quietest
    v[:, feature_index("rms")] = 10 ** (v[:, col] / 20)
    level = v[::PHRASE, col]
    kept = sorted(([0] if opening else []) + list(np.argsort(-level)[: 3 if opening else 4]))
    return v, grid, EditPlan(segments=tuple(Segment(PHRASE * i, PHRASE * i + PHRASE) for i in kept), grid=grid)


def test_corrections_teach_a_rule_and_keep_the_rest():
    """Fitted on 8 songs edited "the 4 loudest phrases" (the quiet opening always cut),
    then corrected by 3 songs edited "the opening, then the 3 loudest": held-out songs
    keep their opening and still rank the rest by loudness."""
    old = _tables([_loudest_song(s, n, opening=False) for s, n in zip(range(8), (8, 9, 10, 8, 11, 9, 10, 12))])
    new = _tables([_loudest_song(s, n, opening=True) for s, n in zip(range(20, 23), (9, 10, 8))])
    planner = Planner.fit(old, PlannerConfig(kind="rank"))
    fixed = planner.corrected(old, new)
    for seed, n in ((100, 12), (101, 9), (102, 10)):
        v, g, plan = _loudest_song(seed, n, opening=True)
        X, b = song_inputs(v, g, "rank")
        _, ph_of, _ = phrase_table(X)
        first = np.r_[0, np.flatnonzero(np.diff(ph_of)) + 1]
        truth = bar_targets(plan, b)[first, 0] > 0.5
        before, after = planner.predict(X)[first, 0] > 0.5, fixed.predict(X)[first, 0] > 0.5
        assert not before[0] and after[0], "the opening: cut before, kept after"
        assert float(np.mean(after == truth)) >= 0.9, (after, truth)
    assert torch.equal(fixed.repeat, planner.repeat)  # what the corrections do not say stays
