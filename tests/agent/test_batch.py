"""Batch inference (agent/batch.py): every song of a folder edited, one index page, a
failing song named while the others finish, and a second run redoing nothing."""

from __future__ import annotations

import re

import pytest
import torch

from agent.batch import main
from agent.checkpoint import save_checkpoint
from agent.layout import observation_layout
from agent.model import Policy, PolicyConfig
from datasets.audio import load_audio, write_audio
from tests.conftest import music_file


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two 15-s slices of a real recording, and a file that is not audio."""
    a = load_audio(music_file("race1-jt.ogg"))
    d = tmp_path_factory.mktemp("songs")
    write_audio(d / "first take.wav", y=a.y[:, : 15 * a.sr], sr=a.sr)
    write_audio(d / "second.wav", y=a.y[:, 15 * a.sr : 30 * a.sr], sr=a.sr)
    (d / "broken.wav").write_text("not audio\n")
    (d / "notes.txt").write_text("not a song\n")  # not an audio extension: not a song
    return d


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = Policy(PolicyConfig.from_layout(hidden=16, n_layers=1, n_heads=2, kernel_size=3))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model=model, stage="test", layout=observation_layout())


def test_a_folder_is_edited_song_by_song_with_one_index(folder, checkpoint, tmp_path, capsys):
    out = tmp_path / "edits"
    args = [str(folder), "--checkpoint", str(checkpoint), "--out", str(out), "--jobs", "1", "--target-duration", "10"]
    assert main(args) == 2  # one song failed: the status says so
    err = capsys.readouterr().err
    # one line naming the file (after tqdm's carriage return), said when the song fails
    assert re.search(r"(?:^|\r)error: \S*broken\.wav: not a readable audio file", err, re.M), err
    for stem in ("first take", "second"):
        assert (out / stem / f"{stem}.report.html").is_file() and (out / stem / f"{stem}_edited.wav").is_file()
    assert not (out / "broken").exists() or not list((out / "broken").glob("*.report.html"))
    page = (out / "index.html").read_text()
    assert 'href="first%20take/first%20take.report.html"' in page and 'href="second/second.report.html"' in page
    assert "broken.wav" in page and "failed" in page and "2 of 3 songs edited" in page

    # resume: the broken file removed, a second run edits nothing again and exits 0
    (folder / "broken.wav").unlink()
    done = {p: p.stat().st_mtime_ns for p in out.rglob("*_edited.wav")}
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*_edited.wav")} == done
    assert "2/2 songs edited (2 already done)" in capsys.readouterr().out
    # another option is another edit: the songs are edited again
    assert main([*args[:-1], "12"]) == 0
    assert "(0 already done)" in capsys.readouterr().out


def test_bad_batch_requests_fail_before_any_work(folder, checkpoint, tmp_path, capsys):
    out = tmp_path / "edits"
    base = [str(folder), "--checkpoint", str(checkpoint), "--out", str(out)]
    assert main([*base, "--output", str(tmp_path / "x.wav")]) == 2
    assert main([str(tmp_path / "nothing-here"), "--checkpoint", str(checkpoint)]) == 2
    assert main([str(folder), "--checkpoint", str(checkpoint), "--out", str(folder / "edits")]) == 2  # inside the songs
    (folder / "second.flac").write_bytes((folder / "second.wav").read_bytes())
    try:
        assert main(base) == 2  # second.wav and second.flac would share OUT/second/
    finally:
        (folder / "second.flac").unlink()
    with pytest.raises(SystemExit):  # argparse: an option agent.infer does not know
        main([*base, "--targt-duration", "10"])
    err = capsys.readouterr().err
    assert err.count("error:") >= 5 and not out.exists(), err
