"""The BC loop: learns, checkpoints, resumes exactly, logs to TensorBoard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.checkpoint import load_checkpoint, policy_from_checkpoint
from datasets.errors import ParameterError
from pretrain.dataset import build_bc_data
from pretrain.bc import evaluate
from pretrain.train import PretrainConfig, main, train
from tests.pretrain.synth import synth_corpus

SMALL = dict(hidden=16, n_layers=1, n_heads=2, kernel_size=5, batch_size=32, threads=1)


@pytest.fixture(scope="module")
def data():
    pairs, songs = synth_corpus(range(6))
    return build_bc_data(pairs, songs=songs)


def test_overfits_tiny_dataset(tmp_path, data):
    cfg = PretrainConfig(run="t", runs_dir=str(tmp_path), epochs=60, lr=1e-2, val_fraction=0.0, patience=1000, figure_every=100, feature_dropout=0.0, **SMALL)
    summary = train(cfg, data)
    ck = load_checkpoint(summary["last_path"], expect_layout=None)
    model = policy_from_checkpoint(ck)
    m = evaluate(model, data, np.arange(len(data)))
    assert m["action_acc"] == 1.0, m
    assert m["type_acc"] == 1.0 and m["macro_f1"] == 1.0
    # checkpoint carries the stage config and the normaliser fitted on the data
    assert ck["stage"] == "pretrain" and ck["stage_config"]["epochs"] == 60
    feats = data.beats[..., : model.cfg.n_features][data.beat_mask > 0.5]
    np.testing.assert_allclose(ck["normalizer"]["mean"].numpy(), feats.mean(0), rtol=1e-4, atol=1e-4)
    tb = list((tmp_path / "t" / "tb" / "pretrain_seed1").iterdir())
    assert tb and tb[0].stat().st_size > 0


def test_resume_continues_the_same_run(tmp_path, data):
    base = dict(epochs=4, lr=3e-3, val_fraction=0.34, patience=100, dropout=0.1, **SMALL)  # dropout: RNG restored too
    full = train(PretrainConfig(run="a", runs_dir=str(tmp_path), **base), data)
    # the same run killed after 2 epochs, then started again with the same arguments
    train(PretrainConfig(run="b", runs_dir=str(tmp_path), **{**base, "epochs": 2}), data)
    resumed = train(PretrainConfig(run="b", runs_dir=str(tmp_path), **base), data)
    assert resumed["step"] == full["step"]
    a = load_checkpoint(full["last_path"], expect_layout=None)
    b = load_checkpoint(resumed["last_path"], expect_layout=None)
    assert a["extra"]["epoch"] == b["extra"]["epoch"] == 3
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    # other settings cannot silently resume
    with pytest.raises(ParameterError, match="--restart"):
        train(PretrainConfig(run="b", runs_dir=str(tmp_path), **{**base, "lr": 1e-2}), data)
    # validation split is by song and recorded
    assert len(a["extra"]["val_songs"]) == 2


def test_cli_reports_missing_labels(tmp_path, capsys):
    assert main(["--run", "none", "--runs-dir", str(tmp_path), "--epochs", "1"]) == 2
    assert "make align" in capsys.readouterr().err


def test_finished_run_started_again_does_nothing(tmp_path, data):
    cfg = PretrainConfig(run="s", runs_dir=str(tmp_path), epochs=50, lr=1e-1, val_fraction=0.34, patience=1, select="nll", **SMALL)
    first = train(cfg, data)
    assert first["stopped"] == "early stopping"
    again = train(cfg, data)
    assert again["stopped"] == "early stopping" and again["step"] == first["step"]


def test_feature_dropout_replaces_whole_columns_by_their_mean():
    from pretrain.bc import drop_features

    torch.manual_seed(0)
    beats = torch.randn(64, 8, 6)
    mean = torch.tensor([10.0, 20.0, 30.0, 40.0])
    out = drop_features(beats, mean, 0.5)
    assert torch.equal(out[..., 4:], beats[..., 4:])  # channels after the features pass through
    dropped = out[..., :4] != beats[..., :4]
    # a dropped column is dropped on every beat of the sample, and holds the mean there
    assert torch.equal(dropped.all(1), dropped.any(1))
    assert torch.equal(out[..., :4][dropped], mean.expand(64, 8, 4)[dropped])
    assert 0.3 < dropped.all(1).float().mean() < 0.7
    assert torch.equal(drop_features(beats, mean, 0.0), beats)
    with pytest.raises(ParameterError, match="feature_dropout"):
        PretrainConfig(feature_dropout=1.0)


def test_history_dropout_blanks_only_the_history_behind_the_head():
    from envs.observation import (
        BEAT_CHANNELS,
        HEAD_INDEX,
        HISTORY_CHANNELS,
        WINDOW,
        channel_index,
    )
    from pretrain.bc import drop_history

    torch.manual_seed(0)
    beats = torch.rand(200, WINDOW, len(BEAT_CHANNELS)) + 1.0  # no zeros anywhere
    out = drop_history(beats, 0.5)
    hist = [channel_index(c) for c in HISTORY_CHANNELS if c not in ("is_head", "rel_pos")]
    assert len(hist) == 8
    others = [i for i in range(len(BEAT_CHANNELS)) if i not in hist]
    changed = out != beats
    # nothing changes on or ahead of the head, nor in the other columns behind it
    assert not changed[:, HEAD_INDEX:].any()
    assert not changed[:, :, others].any()
    # a sample is either untouched or has ALL its history behind the head at exactly 0
    dropped = changed[:, :HEAD_INDEX][:, :, hist].reshape(200, -1)
    assert torch.equal(dropped.all(1), dropped.any(1))
    hit = dropped.all(1)
    assert 0.35 < hit.float().mean() < 0.65
    assert torch.all(out[hit][:, :HEAD_INDEX][:, :, hist] == 0)
    assert torch.equal(drop_history(beats, 0.0), beats)
    assert torch.all(drop_history(beats, 1.0)[:, :HEAD_INDEX][:, :, hist] == 0)
    # a cropped window: the head row is given
    out = drop_history(beats[:, :24], 1.0, head_row=8)
    assert torch.all(out[:, :8][:, :, hist] == 0) and torch.equal(out[:, 8:], beats[:, 8:24])
    with pytest.raises(ParameterError, match="history_dropout"):
        PretrainConfig(history_dropout=1.5)


def test_history_dropout_trains_and_resumes(tmp_path, data):
    cfg = PretrainConfig(run="h", runs_dir=str(tmp_path), epochs=2, val_fraction=0.0, figure_every=100, history_dropout=0.5, **SMALL)
    first = train(cfg, data)
    again = train(PretrainConfig(**{**cfg.__dict__, "epochs": 3}), data)
    assert again["epoch"] == 2 and again["step"] > first["step"]


def test_select_by_action_accuracy(tmp_path, data):
    cfg = PretrainConfig(run="acc", runs_dir=str(tmp_path), epochs=8, lr=1e-2, val_fraction=0.34, patience=1000,
                         select="action_acc", feature_dropout=0.3, figure_every=100, **SMALL)
    summary = train(cfg, data)
    best = load_checkpoint(summary["best_path"], expect_layout=None)["extra"]
    last = load_checkpoint(summary["last_path"], expect_layout=None)["extra"]
    assert best["metrics"]["action_acc"] >= last["metrics"]["action_acc"]
    assert summary["best_score"] == pytest.approx(-best["metrics"]["action_acc"] + 1e-4 * best["metrics"]["nll"])
    assert summary["best_val_nll"] == pytest.approx(best["metrics"]["nll"])
    with pytest.raises(ParameterError, match="select"):
        PretrainConfig(select="loss")
