"""Exports parse back and put every segment where the renderer does."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from datasets.beats import BeatGrid
from envs.export import HAVE_OTIO, audacity_labels, export_all, reaper_project
from envs.plan import EditPlan, Ops, Segment
from envs.layout import layout
from envs.render import render

SR = 44100


@pytest.fixture(scope="module")
def plan():
    dur = 30.0
    grid = BeatGrid.from_beat_times(np.arange(0.2, dur - 0.1, 0.5), duration=dur, beats_per_bar=4)
    n = grid.n_beats
    segs = (
        Segment(0, 8),
        Segment(8, 12, Ops(gain_db=-3.0, eq_low_db=2.0)),  # blend (raw continues)
        Segment(20, 24, Ops(time_factor=2.0)),  # crossfade
        Segment(30, 34, Ops(reversed=True, fade_in_s=0.1)),
        Segment(n - 4, n, Ops(reverb=0.3)),
        Segment(0, 4, Ops(fade_out_s=0.5)),  # overlap (no handle after the raw's end)
    )
    return EditPlan(segs, grid, "ab" * 32)


def test_json_round_trips_and_carries_the_output_timeline(plan, tmp_path):
    files = export_all(plan, raw_path=tmp_path / "raw.wav", sr=SR, out_dir=tmp_path, stem="song")
    text = files["json"].read_text()
    assert EditPlan.from_json(text) == plan
    out = json.loads(text)["output"]
    lay = layout(plan, SR)
    assert out["n_samples"] == lay.n_out and out["sr"] == SR
    assert [s["out_start_sample"] for s in out["segments"]] == [p.out_start for p in lay.pieces]
    assert [j["kind"] for j in out["joins"]] == ["blend", "crossfade", "crossfade", "crossfade", "overlap"]
    assert [j["position_sample"] for j in out["joins"]] == [j.position for j in lay.joins]


def test_audacity_labels_match_the_render(plan, tmp_path):
    files = export_all(plan, raw_path=tmp_path / "raw.wav", sr=SR, out_dir=tmp_path, stem="song")
    lines = files["audacity"].read_text().splitlines()
    lay = layout(plan, SR)
    assert len(lines) == len(lay.pieces)
    for line, p in zip(lines, lay.pieces):
        start, end, label = line.split("\t")
        assert float(start) == pytest.approx(p.out_start / SR, abs=1e-6)
        assert float(end) == pytest.approx(p.out_end / SR, abs=1e-6)
        assert label.startswith(f"seg {lay.pieces.index(p)}: beats {p.segment.raw_start}-{p.segment.raw_end}")
    assert "gain -3.0 dB" in lines[1] and "reversed" in lines[3]
    # the last label ends where the rendered audio ends
    y = np.zeros((2, round(plan.grid.duration * SR)), np.float32)
    assert float(lines[-1].split("\t")[1]) == pytest.approx(render(y=y, sr=SR, plan=plan).duration, abs=1e-6)
    assert audacity_labels(plan, sr=SR) == files["audacity"].read_text()


def _parse_rpp(text):
    """Tiny RPP reader: nested <TAG ...> blocks of 'KEY values' lines -> dict tree."""
    root = {"tag": "ROOT", "args": [], "lines": [], "children": []}
    stack = [root]
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("<"):
            tok = shlex.split(line[1:])
            node = {"tag": tok[0], "args": tok[1:], "lines": [], "children": []}
            stack[-1]["children"].append(node)
            stack.append(node)
        elif line == ">":
            stack.pop()
        else:
            stack[-1]["lines"].append(shlex.split(line))
    assert len(stack) == 1, "unbalanced RPP blocks"
    return root


def _kv(node, key):
    return [float(v) if v.replace(".", "", 1).replace("-", "", 1).isdigit() else v for v in next(
        ln[1:] for ln in node["lines"] if ln[0] == key)]


def test_reaper_project_items_line_up(plan, tmp_path):
    raw = tmp_path / "raw.wav"
    files = export_all(plan, raw_path=raw, sr=SR, out_dir=tmp_path, stem="song")
    text = files["reaper"].read_text()
    assert text == reaper_project(plan, raw_path=raw, sr=SR)
    proj = _parse_rpp(text)["children"][0]
    assert proj["tag"] == "REAPER_PROJECT"
    track = proj["children"][0]
    items = [c for c in track["children"] if c["tag"] == "ITEM"]
    lay = layout(plan, SR)
    assert len(items) == len(lay.pieces)
    for it, p in zip(items, lay.pieces):
        pos, length = _kv(it, "POSITION")[0], _kv(it, "LENGTH")[0]
        assert pos == pytest.approx((p.out_start - p.head) / SR, abs=1e-8)
        assert length == pytest.approx((p.head + p.length + p.tail) / SR, abs=1e-8)
        assert _kv(it, "VOLPAN")[0] == pytest.approx(10 ** (p.ops.gain_db / 20), abs=1e-6)
        assert _kv(it, "PLAYRATE")[0] == pytest.approx(p.ops.time_factor)
        src = it["children"][0]
        if p.ops.reversed:
            assert src["tag"] == "SOURCE" and src["args"] == ["SECTION"] and _kv(src, "MODE")[0] == 2
            assert _kv(src, "STARTPOS")[0] == pytest.approx((p.raw_start - p.tail) / SR, abs=1e-8)
            src = src["children"][0]
        else:
            # at the core's first output sample the item plays the segment's first raw sample
            soffs = _kv(it, "SOFFS")[0]
            assert soffs + p.head * p.ops.time_factor / SR == pytest.approx(p.raw_start / SR, abs=2 / SR)
        assert src["args"] == ["WAVE"] and _kv(src, "FILE")[0] == str(raw.resolve())
    fin = [_kv(it, "FADEIN")[1] for it in items]
    assert fin[0] == 0.0 and fin[1] == pytest.approx(440 / SR) and fin[3] == pytest.approx(0.1)
    assert _kv(items[-1], "FADEOUT")[1] == pytest.approx(0.5)


@pytest.mark.skipif(not HAVE_OTIO, reason="opentimelineio is not installed")
def test_otio_clips_line_up(plan, tmp_path):
    import opentimelineio as otio

    files = export_all(plan, raw_path=tmp_path / "raw.wav", sr=SR, out_dir=tmp_path, stem="song")
    tl = otio.adapters.read_from_file(str(files["otio"]))
    track = tl.tracks[0]
    clips = [c for c in track if isinstance(c, otio.schema.Clip)]
    lay = layout(plan, SR)
    assert len(clips) == len(lay.pieces)
    for c, p in zip(clips, lay.pieces):
        rng = track.range_of_child(c)
        assert round(rng.start_time.rescaled_to(SR).value) == p.out_start
        assert round(c.source_range.start_time.rescaled_to(SR).value) == p.raw_start
        assert c.metadata["editor"]["ops"]["gain_db"] == p.ops.gain_db
    end = track.range_of_child(clips[-1]).end_time_exclusive().rescaled_to(SR).value
    assert round(end) == lay.n_out
    transitions = [t for t in track if isinstance(t, otio.schema.Transition)]
    assert [t.name for t in transitions] == ["blend", "crossfade", "crossfade", "crossfade", "overlap"]


def test_cli_exports_next_to_each_other(tmp_path, capsys):
    from datasets.audio import load_audio
    from envs.export import main
    from tests.conftest import music_file

    raw = music_file("raceintro-ks.ogg")
    a = load_audio(raw)
    grid = BeatGrid.from_beat_times(np.arange(0.1, a.duration - 0.1, 0.4), duration=a.duration, beats_per_bar=4)
    plan = EditPlan((Segment(0, 4), Segment(8, 12, Ops(gain_db=-2.0))), grid, a.sha256)
    (tmp_path / "p.json").write_text(plan.to_json())
    assert main([str(raw), str(tmp_path / "p.json"), str(tmp_path / "out"), "--stem", "x"]) == 0
    assert (tmp_path / "out" / "x.rpp").exists() and (tmp_path / "out" / "x.labels.txt").exists()
    assert EditPlan.from_json((tmp_path / "out" / "x.plan.json").read_text()) == plan
    bad = EditPlan(plan.segments, grid, "f" * 64)
    (tmp_path / "p.json").write_text(bad.to_json())
    assert main([str(raw), str(tmp_path / "p.json"), str(tmp_path / "out2")]) == 2
    assert capsys.readouterr().err.startswith("error: plan was made for audio")
    assert not (tmp_path / "out2").exists()
