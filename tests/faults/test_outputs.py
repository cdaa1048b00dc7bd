"""Faults in what commands write (issue 13, rows 1, 8, 9, 12).

- no command writes over one of its inputs, whatever the flags (same path, hard link,
  symlink; a folder that holds or lies in an input), and the source stays byte for byte;
- a folder given as a file output is refused in one line before the expensive work;
- outputs are named per song, and concurrent runs of one song into one folder leave a
  set of files that all describe the same edit;
- output files get the mode the user's umask gives, not mkstemp's 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from datasets.atomic import atomic_write_text, file_mode, locked_folder
from datasets.errors import ParameterError
from datasets.safety import refuse_overwrite
from tests.agent.test_infer import checkpoint  # noqa: F401 -- the shared tiny untrained policy
from tests.conftest import ROOT, music_file


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _no_call(what: str):
    def fail(*a, **k):
        pytest.fail(f"{what} ran although the command should have refused first")

    return fail


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    """15 s of a real recording: enough bars for the policy, quick to analyse and render."""
    from datasets.audio import load_audio, write_audio

    a = load_audio(music_file("race1-jt.ogg"))
    return write_audio(tmp_path_factory.mktemp("song") / "race1 clip.wav", y=a.y[:, : 15 * a.sr], sr=a.sr)


@pytest.fixture
def raw(song, tmp_path):
    """A private copy of the song: tests may try to overwrite it."""
    p = tmp_path / "take.wav"
    shutil.copyfile(song, p)
    return p


@pytest.fixture(scope="module")
def edit(song, checkpoint, tmp_path_factory):
    """One normal edit of the song (also warms the feature cache): its folder."""
    from agent.infer import main

    out = tmp_path_factory.mktemp("edit")
    with pytest.MonkeyPatch.context() as mp:  # the autouse cache fixture is per test: not set yet here
        mp.setenv("EDITOR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "feature-cache"))
        assert main([str(song), "--checkpoint", str(checkpoint), "--out", str(out), "--sample", "--seed", "1"]) == 0
    return out


# ------------------------------------------------------------------------- the guard itself
def test_refuse_overwrite_sees_links_and_folders(tmp_path):
    a = tmp_path / "a.wav"
    a.write_bytes(b"x")
    (tmp_path / "hard.wav").hardlink_to(a)
    (tmp_path / "soft.wav").symlink_to(a)
    for out in (a, tmp_path / "sub" / ".." / "a.wav", tmp_path / "hard.wav", tmp_path / "soft.wav"):
        with pytest.raises(ParameterError, match="input"):
            refuse_overwrite([out], [a])
    with pytest.raises(ParameterError, match="is a folder"):
        refuse_overwrite([tmp_path], [a])
    with pytest.raises(ParameterError, match="two outputs"):
        refuse_overwrite([tmp_path / "o.json", tmp_path / "o.json"], [a])
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ParameterError, match="input folder"):
        refuse_overwrite([], [data], folders=[data / "labels"])
    with pytest.raises(ParameterError, match="holds the input"):
        refuse_overwrite([], [a], folders=[tmp_path])
    with pytest.raises(ParameterError, match="input folder"):
        refuse_overwrite([data / "x.json"], [data])
    refuse_overwrite([tmp_path / "b.wav"], [a], folders=[tmp_path / "elsewhere"])  # fine


# ------------------------------------------------------------------------- row 1: agent.infer
@pytest.mark.parametrize("how", ["same", "hardlink", "symlink", "checkpoint"])
def test_infer_never_writes_over_its_input(how, raw, checkpoint, tmp_path, capsys, monkeypatch):
    import agent.checkpoint
    from agent.infer import main

    before = _sha(raw)
    ck = tmp_path / "ck.wav"  # an audio name, so that --output ck.wav passes the format check
    shutil.copyfile(checkpoint, ck)
    target = {"same": raw, "checkpoint": ck}.get(how, tmp_path / "link.wav")
    if how == "hardlink":
        target.hardlink_to(raw)
    elif how == "symlink":
        target.symlink_to(raw)
    ck_before = _sha(ck)
    monkeypatch.setattr(agent.checkpoint, "load_checkpoint", _no_call("loading the checkpoint"))
    assert main([str(raw), "--checkpoint", str(ck), "--output", str(target)]) == 2
    assert "refusing to write over the input" in _one_error_line(capsys)
    assert _sha(raw) == before and _sha(ck) == ck_before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["take.wav", "ck.wav"] + (["link.wav"] if how in ("hardlink", "symlink") else []))


def test_infer_cli_refuses_output_equal_to_input(raw, checkpoint):
    """The user's exact command, as a process: exit non-zero, one line, source untouched."""
    before = _sha(raw)
    r = subprocess.run(
        [sys.executable, "-m", "agent.infer", str(raw), "--checkpoint", str(checkpoint), "--output", str(raw)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert _sha(raw) == before


# ------------------------------------------------------------------------- row 9: folders as file outputs
def test_infer_output_folder_is_refused_before_the_checkpoint_loads(raw, checkpoint, tmp_path, capsys, monkeypatch):
    import agent.checkpoint
    from agent.infer import main

    folder = tmp_path / "existing"
    folder.mkdir()
    monkeypatch.setattr(agent.checkpoint, "load_checkpoint", _no_call("loading the checkpoint"))
    assert main([str(raw), "--checkpoint", str(checkpoint), "--output", str(folder)]) == 2
    assert "is a folder" in _one_error_line(capsys)
    assert list(folder.iterdir()) == []
    # and a file named as the output folder
    assert main([str(raw), "--checkpoint", str(checkpoint), "--out", str(raw)]) == 2
    assert "is a file, not a folder" in _one_error_line(capsys)


def test_alignment_json_folder_and_same_path_refused_before_aligning(raw, tmp_path, capsys, monkeypatch):
    import alignment.labels
    from alignment.__main__ import main

    edited = tmp_path / "take_edit.wav"
    shutil.copyfile(raw, edited)
    before = _sha(raw), _sha(edited)
    monkeypatch.setattr(alignment.labels, "label_pair", _no_call("the alignment"))
    assert main([str(raw), str(edited), "--json", str(tmp_path)]) == 2
    assert "is a folder" in _one_error_line(capsys)
    assert main([str(raw), str(edited), "--json", str(raw)]) == 2
    assert "refusing to write over the input" in _one_error_line(capsys)
    assert main([str(raw), str(edited), "--json", str(tmp_path / "a.json"), "--plot", str(edited)]) == 2
    assert "refusing to write over the input" in _one_error_line(capsys)
    assert (_sha(raw), _sha(edited)) == before


# ------------------------------------------------------------------------- the guard in every other CLI that writes
def test_render_and_export_never_write_over_their_inputs(raw, edit, song, tmp_path, capsys):
    from envs.export import main as export_main
    from envs.render import main as render_main

    plan = tmp_path / f"{raw.stem}.plan.json"
    d = json.loads((edit / f"{song.stem}.plan.json").read_text())  # the song's grid and hash
    d["segments"] = [{"raw_start_beat": 0, "raw_end_beat": 8}, {"raw_start_beat": 16, "raw_end_beat": 24}]
    plan.write_text(json.dumps({k: v for k, v in d.items() if k != "output"}))
    before = _sha(raw), _sha(plan)
    assert render_main([str(raw), str(plan), str(raw)]) == 2  # would write the edit over the raw
    assert "refusing to write over the input" in _one_error_line(capsys)
    assert render_main([str(raw), str(plan), str(plan)]) == 2
    _one_error_line(capsys)
    # re-exporting NAME.plan.json into its own folder would rewrite the plan it reads
    assert export_main([str(raw), str(plan), str(tmp_path)]) == 2
    assert "refusing to write over the input" in _one_error_line(capsys)
    assert (_sha(raw), _sha(plan)) == before
    # the guard does not get in the way of a normal render
    assert render_main([str(raw), str(plan), str(tmp_path / "out.wav")]) == 0
    assert sf.info(tmp_path / "out.wav").frames > 0


def test_data_writers_never_write_into_their_inputs(raw, tmp_path, capsys, monkeypatch):
    import alignment.labels
    from pretrain.d3rlpy_export import main as d3_main
    from alignment.run import main as align_run
    from datasets.demo.build import main as demo_main
    from datasets.features import main as features_main

    # make align: labels inside the data folder
    data = tmp_path / "data"
    for sub in ("raw", "edited"):
        (data / sub).mkdir(parents=True)
        shutil.copyfile(raw, data / sub / "a.wav")
    listing = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    monkeypatch.setattr(alignment.labels, "label_pair", _no_call("the alignment"))
    assert align_run(["--data", str(data), "--runs-dir", str(data / "runs"), "--run", "x", "--jobs", "1"]) == 2
    assert "input folder" in _one_error_line(capsys)
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == listing
    # features: --out over the song
    before = _sha(raw)
    assert features_main([str(raw), "--out", str(raw)]) == 2
    assert "refusing to write over the input" in _one_error_line(capsys)
    assert _sha(raw) == before
    # d3rlpy export over its own index
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "index.json").write_text("{}")
    assert d3_main(["--labels", str(labels), "--out", str(labels / "index.json")]) == 2
    assert "refusing to write over the input" in _one_error_line(capsys)
    assert (labels / "index.json").read_text() == "{}"
    # demo corpus inside the MIDI folder it reads
    midi = tmp_path / "midi"
    midi.mkdir()
    assert demo_main(["--out", str(midi / "corpus"), "--midi-dir", str(midi), "--n-songs", "1", "--quiet"]) == 2
    assert "input folder" in _one_error_line(capsys)
    assert list(midi.iterdir()) == []


# ------------------------------------------------------------------------- row 8: per-song names, concurrent runs
def _check_consistent_set(folder: Path, stem: str) -> str:
    """Every file of one edit describes the same plan; returns its edit id."""
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no temp or lock files left
    plan_path = folder / f"{stem}.plan.json"
    plan = json.loads(plan_path.read_text())["output"]
    segs = plan["segments"]
    assert sf.info(folder / f"{stem}_edited.wav").frames == plan["n_samples"]
    labels = [line.split("\t") for line in (folder / f"{stem}.labels.txt").read_text().splitlines() if line]
    assert len(labels) == len(segs)
    assert all(abs(float(a) - s["out_start_s"]) < 1e-5 and abs(float(b) - s["out_end_s"]) < 1e-5 for (a, b, *_), s in zip(labels, segs))
    assert (folder / f"{stem}.rpp").read_text().count("<ITEM") == len(segs)
    page = (folder / f"{stem}.report.html").read_text()
    edit_id = _sha(plan_path)[:12]
    assert edit_id in page
    assert len(re.findall("<tr><td>", page)) == len(segs)
    assert (folder / f"{stem}.edit.png").stat().st_size > 0
    return edit_id


def test_two_songs_share_a_folder(edit, song, checkpoint, tmp_path):
    from agent.infer import main

    other = tmp_path / "other song.wav"
    shutil.copyfile(song, other)
    out = tmp_path / "shared"
    assert main([str(song), "--checkpoint", str(checkpoint), "--out", str(out), "--sample", "--seed", "1"]) == 0
    assert main([str(other), "--checkpoint", str(checkpoint), "--out", str(out), "--sample", "--seed", "2"]) == 0
    for stem in (song.stem, other.stem):  # each song keeps its own, consistent set
        _check_consistent_set(out, stem)
        assert f"{stem}_edited.wav" in (out / f"{stem}.report.html").read_text().replace("%20", " ")
    assert not (out / "report.html").exists()


def test_concurrent_runs_of_one_song_leave_one_consistent_set(edit, song, checkpoint, tmp_path):
    """Three runs (different sampled edits) into one folder at once, under umask 022."""
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "agent.infer", str(song), "--checkpoint", str(checkpoint), "--out", str(out), "--sample"]
    procs = [
        subprocess.Popen(cmd + ["--seed", str(k)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: os.umask(0o022))
        for k in (1, 2, 3)
    ]
    ids = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr
        ids.append(re.search(r"^edit id\s+(\w+)", stdout, re.M).group(1))
    assert len(set(ids)) >= 2, ids  # the runs really wrote different edits
    assert _check_consistent_set(out, song.stem) in ids
    # row 12 end to end: a collaborator can read every output
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {oct(0o644)}


def test_locked_folder_serialises_writers(tmp_path):
    code = "import sys; from datasets.atomic import locked_folder\nwith locked_folder(sys.argv[1]): print('in', flush=True)"
    with locked_folder(tmp_path):
        p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert p.poll() is None  # waits for the lock
    assert p.communicate(timeout=30)[0] == "in\n"
    assert list(tmp_path.iterdir()) == []  # no lock file left behind


# ------------------------------------------------------------------------- row 12: file modes
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(mask, tmp_path):
    import numpy as np

    from agent.checkpoint import save_checkpoint as save_policy
    from datasets.audio import write_audio

    old = os.umask(mask)
    try:
        assert file_mode() == 0o666 & ~mask
        files = [
            atomic_write_text(tmp_path / "a.txt", "x"),
            write_audio(tmp_path / "a.wav", y=np.zeros((1, 100), np.float32), sr=8000),
            write_audio(tmp_path / "a.flac", y=np.zeros((1, 100), np.float32), sr=8000),
        ]
        from agent.layout import observation_layout
        from agent.model import Policy, PolicyConfig

        model = Policy(PolicyConfig.from_layout(hidden=8, n_layers=1, n_heads=2, kernel_size=3))
        files.append(save_policy(tmp_path / "bc.pt", model=model, stage="test", layout=observation_layout()))
    finally:
        os.umask(old)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~mask) for p in files}
