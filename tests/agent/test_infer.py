"""End to end: a checkpoint + a real recording -> edited audio and every export."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from agent.checkpoint import save_checkpoint
from agent.infer import main
from agent.layout import observation_layout
from agent.model import Policy, PolicyConfig
from datasets.audio import load_audio, write_audio
from tests.conftest import music_file


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    """30 s of a real recording (the policy only needs a few bars)."""
    a = load_audio(music_file("race1-jt.ogg"))
    p = tmp_path_factory.mktemp("song") / "race1 slice.wav"
    write_audio(p, y=a.y[:, : 30 * a.sr], sr=a.sr)
    return p


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained small policy: enough to exercise the whole inference path."""
    torch.manual_seed(0)
    model = Policy(PolicyConfig.from_layout(hidden=16, n_layers=1, n_heads=2, kernel_size=3))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model=model, stage="test", layout=observation_layout())


def _files(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_edit_writes_every_output(song, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(song), "--checkpoint", str(checkpoint), "--out", str(out), "--target-duration", "18"]) == 0
    stem = song.stem
    names = _files(out)
    for n in (f"{stem}_edited.wav", f"{stem}.plan.json", f"{stem}.labels.txt", f"{stem}.rpp", f"{stem}.edit.png", f"{stem}.report.html"):
        assert n in names, names
    assert not [n for n in names if n.startswith(".")], names  # no temp files left
    y, sr = sf.read(out / f"{stem}_edited.wav", always_2d=True)
    assert sr == 44100 and y.shape[1] == 2
    assert np.abs(y).max() <= 1.0
    plan = json.loads((out / f"{stem}.plan.json").read_text())
    # the plan's output timeline and the rendered file agree to the sample
    n_out = plan.get("output", plan).get("n_samples") if isinstance(plan.get("output", plan), dict) else None
    if n_out is not None:
        assert n_out == y.shape[0]
    # the target duration is met within one bar
    grid = plan["grid"] if "grid" in plan else plan["plan"]["grid"]
    bar_s = 60.0 / grid["tempo"] * grid["beats_per_bar"]
    assert abs(y.shape[0] / sr - 18.0) <= bar_s
    # the Audacity labels parse: start <= end, inside the output
    rows = [line.split("\t") for line in (out / f"{stem}.labels.txt").read_text().splitlines() if line.strip()]
    assert rows and all(0.0 <= float(a) <= float(b) <= y.shape[0] / sr + 1e-3 for a, b, *_ in rows)
    printed = capsys.readouterr().out
    assert "keep ratio" in printed and "clicks detected" in printed


def test_output_flag_names_the_audio(song, checkpoint, tmp_path):
    target = tmp_path / "mine" / "edit.flac"
    assert main([str(song), "--checkpoint", str(checkpoint), "--output", str(target)]) == 0
    assert target.exists() and (tmp_path / "mine" / "edit.report.html").exists()


def test_bad_inputs_fail_cleanly(song, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    # missing checkpoint
    assert main([str(song), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(out)]) == 2
    # corrupt audio
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    assert main([str(bad), "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    # a checkpoint from a different feature configuration
    ck = torch.load(checkpoint, weights_only=True)
    ck["layout"]["feature_names"][3] = "something_else"
    other = tmp_path / "other.pt"
    torch.save(ck, other)
    assert main([str(song), "--checkpoint", str(other), "--out", str(out)]) == 2
    assert _files(out) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere, so a read-only folder cannot be tested")
def test_unwritable_output_folder(song, checkpoint, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert main([str(song), "--checkpoint", str(checkpoint), "--out", str(ro / "x")]) == 2


def test_a_fragment_edit_is_brought_back_to_the_style(song, checkpoint, tmp_path, monkeypatch):
    """If the policy cuts below the reward's 20 % floor, inference restores bars up to the
    style's keep ratio instead of writing a fragment."""
    import agent.infer as infer
    from agent.edit import EditResult
    from envs.plan import Segment

    real = infer.edit_song

    def fragment(policy, env, **kw):
        res = real(policy, env, **kw)
        one_beat = type(res.plan)(segments=(Segment(10, 11),), grid=res.plan.grid, source_sha256=res.plan.source_sha256)
        return EditResult(plan=one_beat, actions=res.actions, reward=res.reward, reward_components={})

    monkeypatch.setattr(infer, "edit_song", fragment)
    out = tmp_path / "out"
    assert main([str(song), "--checkpoint", str(checkpoint), "--out", str(out), "--keep-ratio", "0.5"]) == 0
    y, sr = sf.read(out / f"{song.stem}_edited.wav", always_2d=True)
    plan = json.loads((out / f"{song.stem}.plan.json").read_text())
    grid = plan["grid"] if "grid" in plan else plan["plan"]["grid"]
    bar_s = 60.0 / grid["tempo"] * grid["beats_per_bar"]
    assert abs(y.shape[0] / sr - 15.0) <= bar_s  # 0.5 x 30 s


def test_collapse_warning_is_for_collapse_not_for_a_keep_heavy_edit():
    from agent.infer import _looks_collapsed

    assert _looks_collapsed([1] * 19 + [0], keep_ratio=0.05)  # 95 % CUT: collapsed
    assert _looks_collapsed([0] * 20, keep_ratio=1.0)  # keeps everything
    assert not _looks_collapsed([0] * 19 + [1], keep_ratio=0.7)  # keep 70 % bar by bar
    assert not _looks_collapsed([1] * 9, keep_ratio=0.0)  # too few steps to say
