"""The episode-end reward: every component moves the right way, and nothing degenerate wins."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.beats import BeatGrid
from envs.actions import ActionType as T
from envs.scripted import PhraseEnergyPolicy, cut_all_action, keep_all_action, random_action, run_episode
from envs.env import AudioEditEnv
from envs.plan import EditPlan, Ops, Segment
from envs.reward import (
    COMPONENTS,
    DEFAULT_TARGET_KEEP,
    KEEP_RATIO_MIN,
    RewardContext,
    RewardWeights,
    episode_reward,
    target_keep_from,
)
from tests.envs._songs import real_song

N = 128  # 32 bars of 4/4 = 8 phrases


@pytest.fixture(scope="module")
def grid():
    return BeatGrid.from_beat_times(np.arange(N) * 0.5, duration=N * 0.5, beats_per_bar=4)


@pytest.fixture(scope="module")
def ctx(grid):
    # two alternating 4-phrase "sections": timbre A in phrases 0,2,4,6 and B in 1,3,5,7,
    # smooth levels, but phrase 5 is 30 dB quieter
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=6), rng.normal(size=6)
    timbre = np.stack([a if (i // 16) % 2 == 0 else b for i in range(N)]) + 0.05 * rng.normal(size=(N, 6))
    energy = np.full(N, -12.0)
    energy[80:96] = -42.0
    return RewardContext(grid=grid, energy_db=energy, timbre=timbre, target_keep=0.5)


def plan(grid, *spans, ops=None):
    return EditPlan(tuple(Segment(a, b, ops or Ops()) for a, b in spans), grid)


def score(p, ctx, types=(T.KEEP, T.CUT, T.FADE_IN, T.LOOP), weights=RewardWeights()):
    return episode_reward(p, list(types), ctx, weights)


def test_breakdown_sums_to_total(grid, ctx):
    r = score(plan(grid, (0, 32), (64, 96)), ctx, weights=RewardWeights(scale=2.0))
    assert set(r.weighted) == set(COMPONENTS) - {"imitation"} == set(r.scores)
    assert r.total == pytest.approx(2.0 * sum(r.weighted.values()))


def test_keep_ratio_band_and_cut_ratio(grid, ctx):
    inside = score(plan(grid, (0, 64)), ctx).scores
    assert inside["keep_ratio_penalty"] == 0 and inside["cut_ratio"] == pytest.approx(1.0)
    too_much = score(plan(grid, (0, 112)), ctx).scores  # keep 87.5 %
    too_little = score(plan(grid, (0, 16)), ctx).scores  # keep 12.5 %
    assert too_much["keep_ratio_penalty"] < 0 and too_little["keep_ratio_penalty"] < 0
    off_target = score(plan(grid, (0, 48)), ctx).scores  # inside the band, 12.5 points off
    assert off_target["keep_ratio_penalty"] == 0 and off_target["cut_ratio"] < inside["cut_ratio"]


def test_loop_budget(grid, ctx):
    p = plan(grid, (0, 64))
    assert score(p, ctx, [T.LOOP] * 2 + [T.KEEP]).scores["loop_budget"] == 0
    spam = score(p, ctx, [T.LOOP] * 6 + [T.KEEP]).scores["loop_budget"]
    earned = score(p, ctx, [T.LOOP] * 6 + [T.CUT] * 12).scores["loop_budget"]  # 2 + 12 // 3 = 6 allowed
    assert spam < 0 and earned == 0


def test_excessive_jumps(grid, ctx):
    p = plan(grid, (0, 64))
    assert score(p, ctx, [T.JUMP_BACK] * 2 + [T.KEEP] * 8).scores["excessive_jumps"] == 0
    assert score(p, ctx, [T.JUMP_BACK] * 5 + [T.KEEP] * 5).scores["excessive_jumps"] < 0


def test_action_diversity(grid, ctx):
    p = plan(grid, (0, 64))
    few = score(p, ctx, [T.KEEP, T.CUT]).scores
    many = score(p, ctx, [T.KEEP, T.CUT, T.LOOP, T.GAIN, T.FADE_IN, T.EQ_LOW]).scores
    assert few["diversity_penalty"] < 0 == many["diversity_penalty"]
    assert many["diversity_bonus"] > few["diversity_bonus"]


def test_section_coherence(grid, ctx):
    long_runs = plan(grid, (0, 32), (64, 96))
    choppy = plan(grid, *[(i, i + 1) for i in range(0, N, 2)])  # same keep ratio, one beat at a time
    assert score(long_runs, ctx).scores["section_coherence"] > score(choppy, ctx).scores["section_coherence"]


def test_phrase_alignment(grid, ctx):
    on_phrases = plan(grid, (0, 32), (64, 96))
    off_beat = plan(grid, (0, 33), (65, 96))
    assert score(on_phrases, ctx).scores["phrase_alignment"] > score(off_beat, ctx).scores["phrase_alignment"]


def test_edit_structure(grid, ctx):
    whole_bars = plan(grid, (0, 32), (64, 96))
    broken_meter = plan(grid, (0, 31), (66, 97))
    fx = plan(grid, (0, 32), (64, 96), ops=Ops(reverb=0.5))
    s = score(whole_bars, ctx).scores["edit_structure"]
    assert s > score(broken_meter, ctx).scores["edit_structure"]
    assert s > score(fx, ctx).scores["edit_structure"]


def test_audio_energy(grid, ctx):
    level = score(plan(grid, (0, 16), (48, 64)), ctx).scores["audio_energy"]
    into_quiet = score(plan(grid, (0, 16), (84, 96)), ctx).scores["audio_energy"]  # -12 dB -> -42 dB mid-section
    assert level > into_quiet
    # the same jump where the raw itself drops (at beat 80) is the music, not the edit
    at_natural_drop = score(plan(grid, (0, 16), (80, 96)), ctx).scores["audio_energy"]
    assert at_natural_drop > into_quiet


def test_flow(grid, ctx):
    # phrase 1 ends at 32 and was followed by phrase 2 (timbre A): joining to phrase 4 (A)
    # continues the music, joining to phrase 3 (B) does not
    similar = score(plan(grid, (0, 32), (64, 80)), ctx).scores["flow"]
    different = score(plan(grid, (0, 32), (48, 64)), ctx).scores["flow"]
    assert similar > different


def test_flow_wants_a_fade_when_the_edit_stops_early(grid, ctx):
    stop_dead = score(plan(grid, (0, 64)), ctx).scores["flow"]
    fade = EditPlan((Segment(0, 60), Segment(60, 64, Ops(fade_out_s=2.0))), grid)
    assert score(fade, ctx).scores["flow"] > stop_dead
    assert score(plan(grid, (0, 32), (96, 128)), ctx).scores["flow"] > stop_dead  # keeps the real ending


def test_reorder_quality(grid, ctx):
    none = score(plan(grid, (0, 64)), ctx).scores["reorder_quality"]
    bar_loop = score(plan(grid, (0, 32), (16, 32), (32, 48)), ctx).scores["reorder_quality"]
    offbeat_loop = score(plan(grid, (0, 31), (29, 31), (31, 48)), ctx).scores["reorder_quality"]
    spam = score(plan(grid, (0, 16), *[(12, 16)] * 6), ctx).scores["reorder_quality"]
    assert none == 0 and bar_loop > 0 > offbeat_loop
    assert spam < bar_loop


def test_audio_clicks(grid, ctx):
    sr = 22050
    t = np.arange(int(grid.duration * sr)) / sr
    y = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    y[int(round(grid.bounds[64] * sr))] += 0.8  # a click in the raw exactly at beat 64
    actx = RewardContext(grid=grid, energy_db=ctx.energy_db, timbre=ctx.timbre, target_keep=0.5, y=y, sr=sr)
    assert score(plan(grid, (0, 32), (64, 96)), actx).scores["audio_clicks"] == -1.0
    assert score(plan(grid, (0, 32), (68, 100)), actx).scores["audio_clicks"] == 1.0
    assert score(plan(grid, (0, 32), (68, 100)), ctx).scores["audio_clicks"] == 0.0  # no audio: no evidence


def test_imitation(grid, ctx):
    human = plan(grid, (0, 32), (64, 96))
    hctx = RewardContext(grid=grid, energy_db=ctx.energy_db, timbre=ctx.timbre, target_keep=0.5, human_plan=human)
    same = score(human, hctx)
    other = score(plan(grid, (32, 64), (96, 128)), hctx)
    assert same.scores["imitation"] == 1.0 and other.scores["imitation"] == -1.0
    assert same.total - other.total > 1.5
    assert "imitation" not in score(human, ctx).scores


def test_empty_plan_is_worst(grid, ctx):
    empty = score(EditPlan((), grid), ctx, [T.CUT] * 4)
    assert empty.total < score(plan(grid, (0, 128)), ctx).total
    assert all(v <= 0 for k, v in empty.scores.items() if k != "diversity_bonus")


def test_target_keep_from_is_the_clipped_median():
    assert target_keep_from([]) == DEFAULT_TARGET_KEEP
    assert target_keep_from([0.5, 0.6, 0.3]) == pytest.approx(0.5)
    assert target_keep_from([0.05, 0.1]) == pytest.approx(KEEP_RATIO_MIN)  # the keep band's floor


# -- real songs: degenerate edits lose, sensible and persona edits beat random policies --
@pytest.mark.parametrize("name", ["race1-jt.ogg", "credits1-cp.ogg"])
def test_sensible_beats_degenerate_and_random(name):
    env = AudioEditEnv(real_song(name, 40.0))
    sensible, info, _ = run_episode(env, PhraseEnergyPolicy())
    keep_all, _, _ = run_episode(env, lambda e: keep_all_action(e.action_masks()))
    cut_all, _, _ = run_episode(env, lambda e: cut_all_action(e.action_masks()))
    rng = np.random.default_rng(0)
    random = [run_episode(env, lambda e: random_action(e.action_masks(), rng), seed=i)[0] for i in range(8)]
    assert 0.2 <= info["keep_ratio"] <= 0.7
    assert keep_all < 0 and cut_all < 0 < sensible
    assert sensible > max(random)


@pytest.mark.parametrize("persona", ["tight", "radio", "extended"])
def test_persona_plan_beats_random(persona):
    from datasets.demo.editors import plan_edit
    from envs.oracle import oracle

    song = real_song("credits1-cp.ogg", 40.0)
    from datasets.features import FEATURE_NAMES, BeatFeatures

    feats = BeatFeatures(values=song.values, names=FEATURE_NAMES, grid=song.grid, stem_method="dsp", sha256=song.sha256)
    truth = plan_edit(feats, persona, source_sha256=song.sha256)
    actions = list(oracle(truth).actions)  # the closest actions when a fade is no chunk fraction
    # the user's target is their own style (the median keep ratio of their aligned pairs)
    env = AudioEditEnv(song, target_keep=truth.keep_ratio)
    r_truth, info, _ = run_episode(env, lambda e: actions[e.executor.n_steps])
    rng = np.random.default_rng(1)
    random = [run_episode(env, lambda e: random_action(e.action_masks(), rng), seed=i)[0] for i in range(8)]
    assert r_truth > max(random), (r_truth, random, info["reward_scores"])
