"""BC dataset: labels replayed in the environment, split by song."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets.errors import EditorError, ParameterError
from envs.env import AudioEditEnv
from pretrain.dataset import BCData, build_bc_data, load_labels, replay_episode, split_by_song
from tests.pretrain.synth import synth_corpus, synth_pair


def test_replay_gives_the_env_states_and_reproduces_the_plan():
    pair, song = synth_pair(0)
    env = AudioEditEnv([song], score_episodes=False, reward_audio=False, target_keep=0.5)
    arr, exact = replay_episode(env, 0, pair.actions, plan=pair.plan)
    assert exact
    assert len(arr["actions"]) == len(pair.actions)
    # the states are the env's: replaying by hand gives the same observations
    obs, _ = env.reset(options={"song": 0})
    for i, a in enumerate(pair.actions):
        np.testing.assert_array_equal(arr["beats"][i], obs["beats"])
        np.testing.assert_array_equal(arr["type_mask"][i], obs["type_mask"])
        obs, *_ = env.step(np.array(a))
    # labels are legal in their states
    b = np.arange(len(arr["actions"]))
    t, s, a = arr["actions"].T
    assert arr["type_mask"][b, t].all() and arr["size_mask"][b, t, s].all() and arr["amount_mask"][b, t, a].all()
    # boundaries of the plan land on the right window rows (head row 16 of the first step is beat 0)
    from envs.observation import HEAD_INDEX

    first = pair.plan.segments[0]
    if first.raw_start > 0:
        assert arr["boundary"][0, HEAD_INDEX + first.raw_start] == 1
    assert arr["boundary"][0, HEAD_INDEX] == 0  # the song's start is not an edit


def test_masked_label_is_an_error():
    pair, song = synth_pair(1)
    env = AudioEditEnv([song], score_episodes=False, reward_audio=False, target_keep=0.5)
    obs, _ = env.reset()
    bad_t = int(np.flatnonzero(obs["type_mask"] == 0)[0])
    with pytest.raises(EditorError, match="masked"):
        replay_episode(env, 0, [(bad_t, 0, 2)])


def test_build_and_split_by_song():
    pairs, songs = synth_corpus(range(5))
    data = build_bc_data(pairs, songs=songs, refine_max_size=None)
    assert len(data.song_keys) == 5 and len(data) == sum(len(p.actions) for p in pairs)
    tr, va = split_by_song(data, val_fraction=0.4, seed=0)
    assert len(tr) + len(va) == len(data)
    assert not set(data.song[tr]) & set(data.song[va])
    assert len(set(data.song[va])) == 2
    # concat keeps song identity by key (augmented copies share the raw's key)
    both = BCData.concat([data.subset(tr), data.subset(va), data.subset(va)])
    assert len(both.song_keys) == 5
    assert len(set(both.episode_names)) == 5


def test_load_labels(tmp_path):
    pair, _ = synth_pair(2)
    labels = tmp_path / "labels"
    labels.mkdir()
    rec = {"actions": [list(a) for a in pair.actions], "plan": pair.plan.to_dict(), "raw_path": "x.wav",
           "raw_sha256": "abc", "raw_beat_confidence": [0.9] * pair.plan.grid.n_beats}
    (labels / "song2.json").write_text(json.dumps(rec))
    (labels / "index.json").write_text(json.dumps({"song2": {"label": str(labels / "song2.json")}}))
    (out,) = load_labels(tmp_path)
    assert out.actions == pair.actions and out.plan == pair.plan and out.raw_sha256 == "abc"
    assert out.confidence.shape == (pair.plan.grid.n_beats,)
    with pytest.raises(ParameterError, match="make align"):
        load_labels(tmp_path / "nothing")


def test_refine_actions_same_plan_one_decision_per_phrase():
    from envs.executor import execute
    from envs.plan import EditPlan, Segment
    from pretrain.dataset import refine_actions

    pair, _ = synth_pair(7, n_phrases=8)
    g = pair.plan.grid
    # keep 3 phrases in a row, cut 3 in a row: the oracle uses TWO_PHRASES chunks
    plan = EditPlan(segments=(Segment(0, 48), Segment(96, 128)), grid=g, source_sha256=pair.plan.source_sha256)
    from envs.oracle import oracle_actions

    acts = oracle_actions(plan)
    assert any(s == 4 for _, s, _ in acts)
    fine = refine_actions(plan, acts)
    assert execute(g, fine, source_sha256=plan.source_sha256) == execute(g, acts, source_sha256=plan.source_sha256)
    assert len(fine) > len(acts)
    assert all(s <= 3 for t, s, _ in fine if t in (0, 1))
    # replay of refined labels reproduces the plan in the env
    pairs, songs = synth_corpus([7])
    data_fine = build_bc_data(pairs, songs=songs)
    data_raw = build_bc_data(pairs, songs=songs, refine_max_size=None)
    assert len(data_fine) >= len(data_raw)
