"""Baselines act legally and learn the synthetic persona."""

from __future__ import annotations

import numpy as np
import pytest

from envs.observation import HEAD_INDEX
from pretrain.baselines import D3rlpyBaseline, HGBBaseline, MajorityBaseline, to_mdp_dataset
from pretrain.dataset import build_bc_data
from tests.pretrain.synth import synth_corpus


@pytest.fixture(scope="module")
def data():
    pairs, songs = synth_corpus(range(6))
    return build_bc_data(pairs, songs=songs)


def _legal(data, a):
    b = np.arange(len(a))
    t, s, m = a.T
    return data.type_mask[b, t].astype(bool) & data.size_mask[b, t, s].astype(bool) & data.amount_mask[b, t, m].astype(bool)


def _obs(data):
    return {k: getattr(data, k) for k in ("beats", "globals", "type_mask", "size_mask", "amount_mask")}


def test_majority_and_hgb(data):
    idx = np.arange(len(data))
    maj = MajorityBaseline().fit(data, idx).act(_obs(data))
    assert _legal(data, maj).all()
    hgb = HGBBaseline(HEAD_INDEX, max_iter=30).fit(data, idx)
    pred = hgb.act(_obs(data))
    assert _legal(data, pred).all()
    # the persona is a function of the head beat's level: HGB fits its training set
    assert (pred == data.actions).all(1).mean() > (maj == data.actions).all(1).mean()


def test_d3rlpy_bc_runs_and_is_legal(data):
    idx = np.arange(len(data))
    ds, _, _ = to_mdp_dataset(data, idx, HEAD_INDEX)
    assert ds.size() == len(data.episode_names)  # one d3rlpy episode per replayed episode
    b = D3rlpyBaseline("bc", HEAD_INDEX, n_steps=30).fit(data, idx)
    assert _legal(data, b.act(_obs(data))).all()
