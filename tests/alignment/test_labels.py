"""Beat plans, oracle actions, the JSON record and the CLIs on a real recording."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alignment.result import SEGMENT_KEYS
from alignment.labels import label_pair, raw_grid
from alignment.simulate import Span, assemble
from datasets.audio import load_audio, write_audio
from datasets.errors import AudioError
from envs.executor import execute
from tests.conftest import music_file

SR = 22050


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A raw recording (30 s slice, written as stereo 44.1 kHz WAV) and an edit of it
    on its beat grid: a far reorder, a loop, a -3 dB bar, a fade-out."""
    d = tmp_path_factory.mktemp("pair")
    a = load_audio(music_file("race1-jt.ogg"))
    y = a.y[:, : 30 * a.sr]
    write_audio(d / "raw.wav", y=y, sr=a.sr)
    raw = load_audio(d / "raw.wav")
    grid = raw_grid(raw)
    b = grid.bounds
    bar = grid.beats_per_bar
    d0 = int(np.flatnonzero(grid.is_downbeat)[1])
    k = lambda i: float(b[d0 + i])  # noqa: E731  time of beat d0 + i
    spans = [
        Span(k(8 * bar), k(12 * bar)),  # far reorder: late bars first
        Span(k(0), k(2 * bar)),
        Span(k(0), k(2 * bar)),  # loop
        Span(k(2 * bar), k(3 * bar), gain_db=-3.0),
        Span(k(3 * bar), k(5 * bar), fade_out_s=k(5 * bar) - k(4 * bar)),  # fade over the last bar
    ]
    e, truth = assemble(y=raw.y_mono, sr=SR, spans=spans, crossfade_ms=10.0)
    write_audio(d / "edit.wav", y=e, sr=SR)
    return d, grid, truth, d0, bar


def test_beat_plan_actions_round_trip(pair):
    d, grid, truth, d0, bar = pair
    lab = label_pair(d / "raw.wav", d / "edit.wav", grid=grid)
    plan = lab.plan
    spans = [(s.raw_start, s.raw_end) for s in plan.segments]
    assert spans[0] == (d0 + 8 * bar, d0 + 12 * bar)
    assert spans[1] == spans[2] == (d0, d0 + 2 * bar)
    assert plan.segments[3].ops.gain_db == -3.0
    assert plan.segments[-1].ops.fade_out_s > 0
    assert lab.exact is True
    assert execute(plan.grid, lab.actions, source_sha256=plan.source_sha256) == plan.merged()
    assert np.array_equal(plan.grid.bounds, grid.bounds)  # the editor's phase of the same beats
    rec = lab.to_dict()
    assert all(tuple(s) == SEGMENT_KEYS for s in rec["segments"])
    assert len(rec["raw_beat_confidence"]) == grid.n_beats
    assert rec["fidelity"] < 3.0 and rec["fidelity_matched"] > 0.9
    json.dumps(rec)  # JSON-ready


def test_edited_shorter_than_a_bar_is_an_error(pair, tmp_path):
    d, grid, *_ = pair
    raw = load_audio(d / "raw.wav")
    write_audio(tmp_path / "tiny.wav", y=raw.y[:, : int(0.5 * raw.sr)], sr=raw.sr)
    with pytest.raises(AudioError, match="shorter than one bar"):
        label_pair(d / "raw.wav", tmp_path / "tiny.wav", grid=grid)


def test_cli_json_and_plot(pair, tmp_path, capsys):
    from alignment.__main__ import main

    d, *_ = pair
    rc = main([str(d / "raw.wav"), str(d / "edit.wav"), "--json", str(tmp_path / "o.json"), "--plot", str(tmp_path / "o.png")])
    assert rc == 0
    rec = json.loads((tmp_path / "o.json").read_text())
    assert len(rec["segments"]) == 5 and rec["actions"]
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"
    other = music_file("start1-jt.ogg")
    assert main([str(d / "raw.wav"), str(other), "--no-fidelity"]) == 2
    assert "error:" in capsys.readouterr().err


def test_run_over_a_folder(pair, tmp_path):
    from alignment.run import main

    d, *_ = pair
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "edited").mkdir()
    (data / "raw" / "good.wav").write_bytes((d / "raw.wav").read_bytes())
    (data / "edited" / "good.wav").write_bytes((d / "edit.wav").read_bytes())
    (data / "raw" / "bad.wav").write_bytes((d / "raw.wav").read_bytes())
    (data / "edited" / "bad.wav").write_bytes(b"not audio")
    runs = tmp_path / "runs"
    assert main(["--data", str(data), "--run", "t", "--runs-dir", str(runs), "--jobs", "1"]) == 0
    index = json.loads((runs / "t" / "labels" / "index.json").read_text())
    assert list(index) == ["good"] and index["good"]["segments"] == 5
    assert json.loads(Path(index["good"]["label"]).read_text())["actions"]  # what pretraining reads
    assert not (runs / "t" / "labels" / "train.json").exists()  # no second copy of the labels
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--data", str(empty), "--run", "t", "--runs-dir", str(runs)]) == 2


def test_d3rlpy_export_replays_the_labels(pair, tmp_path):
    from pretrain.d3rlpy_export import build_dataset, main as export_main
    from alignment.run import main as run_main
    from envs.observation import N_BEAT_CHANNELS, N_GLOBALS, WINDOW

    d, *_ = pair
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "edited").mkdir()
    (data / "raw" / "p.wav").write_bytes((d / "raw.wav").read_bytes())
    (data / "edited" / "p.wav").write_bytes((d / "edit.wav").read_bytes())
    assert run_main(["--data", str(data), "--run", "x", "--runs-dir", str(tmp_path / "runs"), "--jobs", "1"]) == 0
    labels = tmp_path / "runs" / "x" / "labels"
    ds, names = build_dataset(labels)
    rec = json.loads((labels / "p.json").read_text())
    ep = ds.episodes[0]
    assert names == ["p"] and len(ep.actions) == len(rec["actions"])
    assert ep.observations.shape[1] == WINDOW * N_BEAT_CHANNELS + N_GLOBALS
    assert set(ep.actions.ravel().tolist()) <= set(range(450))
    assert ep.terminated
    assert export_main(["--labels", str(labels), "--out", str(tmp_path / "o.h5")]) == 0
    assert (tmp_path / "o.h5").stat().st_size > 0
    assert export_main(["--labels", str(tmp_path / "none"), "--out", str(tmp_path / "o2.h5")]) == 2
