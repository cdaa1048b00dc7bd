"""AudioEditEnv: gymnasium contract, masks, observation layout, determinism, vector envs."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers AudioEdit-v0)
from envs.actions import ActionType, Amount, Size
from envs.scripted import random_action, run_episode
from envs.env import AudioEditEnv, make_vector_env
from envs.observation import (
    BEAT_CHANNELS,
    GLOBAL_NAMES,
    HEAD_INDEX,
    N_BEAT_CHANNELS,
    N_GLOBALS,
    WINDOW,
    channel_index,
    global_index,
)
from tests.envs._songs import real_song, synthetic_song


@pytest.fixture(scope="module")
def songs():
    return [synthetic_song(96, seed=0, name="a"), synthetic_song(61, seed=1, name="b")]


def test_check_env_passes(songs):
    check_env(AudioEditEnv(songs), skip_render_check=True)


def test_gymnasium_make_and_layout(songs):
    env = gymnasium.make("AudioEdit-v0", songs=songs)
    obs, info = env.reset(seed=3)
    assert obs["beats"].shape == (WINDOW, N_BEAT_CHANNELS) and obs["beats"].dtype == np.float32
    assert obs["globals"].shape == (N_GLOBALS,) and obs["beat_mask"].shape == (WINDOW,)
    assert obs["type_mask"].dtype == np.int8 and obs["size_mask"].shape == (18, 5) and obs["amount_mask"].shape == (18, 5)
    assert len(set(BEAT_CHANNELS)) == N_BEAT_CHANNELS and len(set(GLOBAL_NAMES)) == N_GLOBALS
    # head at beat 0: the rows behind it are padding, the head row is the first beat
    np.testing.assert_array_equal(obs["beat_mask"][:HEAD_INDEX], 0)
    assert obs["beat_mask"][HEAD_INDEX] == 1 and obs["beats"][HEAD_INDEX, channel_index("is_head")] == 1
    assert not obs["beats"][:HEAD_INDEX].any()
    song = env.unwrapped.song
    from envs.observation import length_free

    np.testing.assert_array_equal(obs["beats"][HEAD_INDEX, :121], length_free(song.values[:1])[0])
    masks = env.unwrapped.action_masks()
    np.testing.assert_array_equal(obs["type_mask"], masks.type.astype(np.int8))
    assert not masks.type[ActionType.JUMP_BACK]  # nothing to jump back to at beat 0


def test_masked_actions_never_reach_the_executor(songs, monkeypatch):
    env = AudioEditEnv(songs)
    env.reset(seed=0)
    seen = {"calls": 0}
    real_steps = {}
    for i in range(len(songs)):
        ex = env._state(i).executor
        real_steps[i] = ex.step

        def checked(t, s, a, _ex=ex, _real=real_steps[i]):
            m = _ex.masks()
            assert m.type[t] and m.size[t, s] and m.amount[t, a], f"masked action ({t}, {s}, {a}) reached the executor"
            seen["calls"] += 1
            return _real(t, s, a)

        monkeypatch.setattr(ex, "step", checked)
    env.action_space.seed(0)
    n_invalid = 0
    for ep in range(6):
        env.reset(seed=ep)
        while True:
            _, _, term, trunc, info = env.step(env.action_space.sample())  # unmasked: mostly invalid
            n_invalid += info["invalid_action"]
            if term or trunc:
                assert info["n_invalid"] >= 1
                break
    assert n_invalid > 10 and seen["calls"] > n_invalid


def test_invalid_action_is_replaced_by_nearest_valid(songs):
    env = AudioEditEnv(songs)
    env.reset(seed=0, options={"song": 0})
    # JUMP_BACK at beat 0 is masked -> KEEP; KEEP's amount must be NEUTRAL
    assert env.project_action(ActionType.JUMP_BACK, Size.BAR, Amount.NEG_SMALL) == (ActionType.KEEP, Size.BAR, Amount.NEUTRAL)
    assert env.project_action(ActionType.GAIN, Size.BAR, Amount.NEUTRAL)[2] == Amount.NEG_SMALL  # tie -> smaller
    _, _, _, _, info = env.step((ActionType.JUMP_BACK, Size.BAR, Amount.NEG_SMALL))
    assert info["invalid_action"] and env.executor.n_steps == 1 and env.executor.type_counts[ActionType.KEEP] == 1
    env2 = AudioEditEnv(songs, invalid_action_penalty=-0.1)
    env2.reset(seed=0)
    assert env2.step((ActionType.JUMP_BACK, 0, 0))[1] == pytest.approx(-0.1)


def test_history_channels_follow_the_plan(songs):
    env = AudioEditEnv(songs)
    rng = np.random.default_rng(1)
    env.reset(seed=1, options={"song": 0})
    used = channel_index("hist_times_used")
    for _ in range(200):
        obs, _, term, trunc, _ = env.step(random_action(env.action_masks(), rng))
        if term or trunc:
            break
        h = env.executor.head
        lo, hi = max(0, h - HEAD_INDEX), min(env.executor.n_beats, h - HEAD_INDEX + WINDOW)
        window_used = obs["beats"][lo - (h - HEAD_INDEX) : hi - (h - HEAD_INDEX), used]
        np.testing.assert_array_equal(window_used, env.executor.beat_usage[lo:hi])
        plan = env.plan()
        if plan.segments:
            assert obs["globals"][global_index("keep_ratio")] == pytest.approx(plan.keep_ratio, abs=1e-5)
        assert obs["globals"][global_index("position")] == pytest.approx(h / env.executor.n_beats)


def test_episode_end_reward_and_truncation(songs):
    env = AudioEditEnv(songs, max_steps=5)
    env.reset(seed=0, options={"song": 0})
    rewards = []
    for _ in range(5):
        _, r, term, trunc, info = env.step((ActionType.KEEP, Size.BEAT, Amount.NEUTRAL))
        rewards.append(r)
    assert trunc and not term
    assert rewards[:-1] == [0.0] * 4 and rewards[-1] != 0.0
    assert sum(info["reward_components"].values()) == pytest.approx(rewards[-1])
    env = AudioEditEnv(songs)
    total, info, steps = run_episode(env, lambda e: (ActionType.KEEP, int(np.flatnonzero(e.action_masks().size[0])[-1]), 2), song=1)
    assert "reward_components" in info and info["keep_ratio"] == pytest.approx(1.0)
    assert env.executor.head == env.executor.n_beats  # terminated at the song's end


def test_human_plan_enables_imitation(songs):
    from dataclasses import replace

    from envs.plan import EditPlan, Segment

    song = songs[0]
    human = EditPlan((Segment(0, 32), Segment(64, 96)), song.grid)
    env = AudioEditEnv(replace(song, human_plan=human))
    _, info, _ = run_episode(env, lambda e: (ActionType.KEEP, int(np.flatnonzero(e.action_masks().size[0])[-1]), 2))
    assert info["reward_scores"]["imitation"] == pytest.approx(2 * (64 / 96) - 1, abs=0.02)  # IoU of keep-all vs human
    _, info, _ = run_episode(AudioEditEnv(song), lambda e: (ActionType.KEEP, 0, 2))
    assert "imitation" not in info["reward_components"]


def test_seeded_reproducibility(songs):
    def rollout(seed):
        env = AudioEditEnv(songs)
        env.action_space.seed(seed)
        out = []
        for ep in range(3):
            obs, info = env.reset(seed=seed if ep == 0 else None)
            out.append(info["song"])
            rng = np.random.default_rng(seed + ep)
            while True:
                obs, r, term, trunc, _ = env.step(random_action(env.action_masks(), rng))
                out.append((float(obs["beats"].sum()), float(obs["globals"].sum()), r))
                if term or trunc:
                    break
        return out

    assert rollout(7) == rollout(7)
    assert rollout(7) != rollout(8)


def test_real_song_episode():
    song = real_song("race1-jt.ogg", 40.0)
    env = AudioEditEnv(song, target_keep=0.5)
    check_env(env, skip_render_check=True)
    total, info, _ = run_episode(env, lambda e: random_action(e.action_masks(), np.random.default_rng(0)), seed=0)
    assert np.isfinite(total) and set(info["reward_components"]) == set(info["reward_scores"])


@pytest.mark.parametrize("asynchronous", [False, True])
def test_vector_envs_autoreset(songs, asynchronous):
    venv = make_vector_env(songs, 2, asynchronous=asynchronous, max_steps=40)
    try:
        obs, infos = venv.reset(seed=0)
        assert obs["beats"].shape == (2, WINDOW, N_BEAT_CHANNELS) and obs["type_mask"].shape == (2, 18)
        per_env = venv.call("action_masks")  # masks per sub-env, also in the batched observation
        for i in range(2):
            np.testing.assert_array_equal(per_env[i].size, obs["size_mask"][i] > 0)
        rng = np.random.default_rng(0)
        from envs.executor import Masks

        ends = 0
        for _ in range(120):
            acts = np.array(
                [
                    random_action(Masks(obs["type_mask"][i] > 0, obs["size_mask"][i] > 0, obs["amount_mask"][i] > 0), rng)
                    for i in range(2)
                ]
            )
            obs, rew, term, trunc, infos = venv.step(acts)
            done = term | trunc
            for i in np.flatnonzero(done):
                ends += 1
                assert rew[i] != 0.0
                # SAME_STEP autoreset: the returned obs is the next episode's first
                assert obs["globals"][i, global_index("position")] == 0.0
                assert obs["globals"][i, global_index("steps_used")] == 0.0
            assert np.all(rew[~done] == 0.0)
        assert ends >= 4
    finally:
        venv.close()
