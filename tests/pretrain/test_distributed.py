"""Behaviour cloning under torchrun (issue 18): the global batch split across ranks is the
single process's batch, a 2-process gloo run trains like one process, and its checkpoint
loads and resumes in one process."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.distributed import Dist, shard
from tests.conftest import ROOT

ARGS = ["--hidden", "16", "--n-heads", "2", "--n-layers", "1", "--stems", "dsp", "--no-planner", "--lr", "1e-2",
        "--epochs", "2", "--batch-size", "8", "--feature-dropout", "0", "--dagger-rounds", "1", "--dagger-epochs", "1",
        "--dagger-rollouts", "1"]


def test_shards_are_disjoint_and_cover_the_batch():
    batch = np.arange(100, 111)
    parts = [shard(batch, Dist(rank=r, world=3, backend="gloo")) for r in range(3)]
    assert all(real for _, real in parts)
    rows = np.concatenate([p for p, _ in parts])
    assert sorted(rows.tolist()) == batch.tolist()  # each row on exactly one rank
    assert {len(p) for p, _ in parts} == {3, 4}
    # a last batch smaller than the world: the rank without a row gets a stand-in
    assert shard(batch[:2], Dist(rank=2, world=3, backend="gloo"))[1] is False
    single, real = shard(batch, Dist())
    assert real and single is batch


def test_shard_losses_with_global_denominators_add_up_to_the_batch_loss():
    """What DDP sums: the shards' losses over the global batch's weight sums."""
    from pretrain.dataset import build_bc_data
    from pretrain.losses import bc_losses, loss_denominators, type_class_weights
    from pretrain.bc import batch_tensors, energy_column
    from agent.model import Policy, PolicyConfig
    from tests.pretrain.synth import synth_corpus

    pairs, songs = synth_corpus(range(4))
    data = build_bc_data(pairs, songs=songs)
    n_ch, n_gl, W = data.beats.shape[2], data.globals.shape[1], data.beats.shape[1]
    cfg = PolicyConfig(n_features=min(121, n_ch), n_channels=n_ch, n_globals=n_gl, window=W, head_index=W // 4,
                       hidden=16, n_layers=1, n_heads=2, kernel_size=5)
    torch.manual_seed(0)
    model = Policy(cfg)
    idx = np.arange(min(24, len(data)))
    data.weight[idx[::3]] = 0.5  # confidences and class weights: a plain mean per shard would differ
    kw = dict(type_weights=type_class_weights(data.actions[:, 0]), energy_col=energy_column(cfg))

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    obs, actions, boundary, weight = batch_tensors(data, idx, "cpu")
    full, _ = bc_losses(model, obs, actions, boundary=boundary, weight=weight, **kw)
    g_full = grads(full)
    shards = [batch_tensors(data, idx[r::2], "cpu") for r in range(2)]
    dens = [loss_denominators(cfg, o, a, boundary=b, weight=w, **kw) for o, a, b, w in shards]
    total = {k: dens[0][k] + dens[1][k] for k in dens[0]}
    parts = [bc_losses(model, o, a, boundary=b, weight=w, denominators=total, **kw)[0] for o, a, b, w in shards]
    torch.testing.assert_close(parts[0] + parts[1], full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads(parts[0]) + grads(parts[1]), g_full, rtol=1e-4, atol=1e-6)
    own = [bc_losses(model, o, a, boundary=b, weight=w, **kw)[0] for o, a, b, w in shards]
    assert abs(float((own[0] + own[1]).detach()) / 2 - float(full.detach())) > 1e-4  # the per-shard mean is not the batch's


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """runs/tiny: three 12-second synthetic songs (clicks over a swelling tone), labelled
    by tests.rl.corpus's keep-2-bars-cut-1 editor."""
    from datasets.audio import write_audio
    from tests.conftest import click_track
    from tests.rl.corpus import build_run

    root = tmp_path_factory.mktemp("ddp")
    (root / "src").mkdir()
    names = []
    for k, bpm in enumerate((110.0, 124.0, 98.0)):
        y, _ = click_track(bpm=bpm, seconds=12.0)
        t = np.arange(len(y)) / 22050
        y = y + 0.1 * np.sin(2 * np.pi * (220 + 40 * k) * t) * (1 + np.sin(2 * np.pi * t / 4))
        y = y + 0.01 * np.random.default_rng(k).standard_normal(len(y))
        path = root / "src" / f"s{k}.wav"
        write_audio(path, y=np.stack([y, y]).astype(np.float32), sr=22050)
        names.append(str(path))  # absolute: build_run's MUSIC / name is this path
    build_run(root, seconds=12.0, songs=tuple(names))
    return root


def test_two_gloo_processes_train_like_one_and_one_process_resumes(runs, caplog):
    from agent.checkpoint import load_checkpoint, policy_from_checkpoint
    from pretrain.train import main

    for run in ("ddp", "one"):
        shutil.copytree(runs / "tiny" / "labels", runs / run / "labels")
    common = ["--runs-dir", str(runs), *ARGS]
    # the single-process reference first: it also fills the feature cache the ranks read
    assert main(["--run", "one", *common]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    # --standalone: a free rendezvous port of its own; "--": torchrun's parser would take --run
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pretrain.train", "--", "--run", "ddp", *common]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "distributed: 2 ranks (gloo)" in out and "DAgger round 1" in out
    assert proc.stdout.count("pretrain: epochs after epoch 2") == 1, out[-3000:]  # rank 0 alone reports
    assert "INFO rank 1/2" not in out  # and logs
    ddp, one = (runs / r / "checkpoints" / "bc_last.pt" for r in ("ddp", "one"))
    tb = [len(list((runs / r / "tb" / "pretrain_seed1").iterdir())) for r in ("ddp", "one")]
    assert tb[0] == tb[1]  # event files: one writer per train() call, rank 0's alone

    # the checkpoint loads in one process; the same run as one process, up to float order
    a, b = load_checkpoint(ddp), load_checkpoint(one)
    policy_from_checkpoint(a)
    assert a["step"] == b["step"] and a["extra"]["epoch"] == b["extra"]["epoch"] == 2
    assert len(a["extra"]["dagger"]) == 1
    for k, v in b["model"].items():
        torch.testing.assert_close(a["model"][k], v, rtol=0, atol=5e-3)  # Adam steps lr 1e-2
    assert abs(a["extra"]["metrics"]["nll"] - b["extra"]["metrics"]["nll"]) < 5e-3

    # one process continues it: DAgger's round 1 rebuilt from the policy rank 0 stored
    caplog.set_level(logging.INFO)
    assert main(["--run", "ddp", *common, "--dagger-epochs", "2"]) == 0  # the last flag counts
    assert "resumed from" in caplog.text and "rebuilt from the round's stored policy" in caplog.text
    c = load_checkpoint(ddp)
    assert c["extra"]["epoch"] == 3 and c["step"] > a["step"]
