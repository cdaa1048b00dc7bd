"""DAW projects as the edited side of a pair: exports read back, a hand-written Reaper
project, the same labels as the rendered audio, and one-line errors for bad projects."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from alignment.labels import label_pair, raw_grid
from alignment.projects import label_project, project_plan, read_otio, read_plan_json, read_project, read_rpp
from datasets.audio import load_audio, write_audio
from datasets.beats import BeatGrid
from datasets.errors import ParameterError
from envs.export import HAVE_OTIO, export_all
from envs.plan import EditPlan, Ops, Segment
from envs.render import layout, render
from tests.conftest import click_track, music_file

SR = 44100


@pytest.fixture(scope="module")
def grid() -> BeatGrid:
    """60 s at 120 BPM, 4/4, beats on the half second (beat k starts at k / 2 s)."""
    return BeatGrid.from_beat_times(np.arange(0.0, 60.0, 0.5), duration=60.0, beats_per_bar=4)


@pytest.fixture(scope="module")
def clicks(tmp_path_factory) -> Path:
    """A 60 s click track at 120 BPM: a raw recording whose beats are the ``grid``'s."""
    d = tmp_path_factory.mktemp("clicks")
    y, _ = click_track(bpm=120.0, seconds=60.0, sr=22050)
    return write_audio(d / "raw.wav", y=y, sr=22050)


def test_exports_read_back_to_the_plan(tmp_path):
    """.rpp, .otio and .plan.json from envs/export.py read back to the plan's pieces
    (joins of every kind, gain, EQ, time, reverse, reverb, fades)."""
    g = BeatGrid.from_beat_times(np.arange(0.2, 29.9, 0.5), duration=30.0, beats_per_bar=4)
    n = g.n_beats
    plan = EditPlan((
        Segment(0, 8),
        Segment(8, 12, Ops(gain_db=-3.0, eq_low_db=2.0)),  # blend (raw continues)
        Segment(12, 16),  # blend back
        Segment(20, 24, Ops(time_factor=2.0)),  # crossfade
        Segment(30, 34, Ops(reversed=True, fade_in_s=0.1)),
        Segment(n - 4, n, Ops(reverb=0.3, eq_high_db=-6.0)),
        Segment(0, 4, Ops(fade_out_s=0.5, gain_db=1.5, distortion=10.0)),  # overlap (no handle past the raw's end)
        Segment(4, 6, Ops(time_factor=0.5)),
    ), g, "ab" * 32)
    files = export_all(plan, raw_path=tmp_path / "raw.wav", sr=SR, out_dir=tmp_path, stem="song")
    want = [p.segment for p in layout(plan, SR).pieces]
    kinds = ["reaper", "json"] + (["otio"] if HAVE_OTIO else [])
    for kind in kinds:
        proj = read_project(files[kind])
        assert proj.notes == (), kind
        got = project_plan(proj, g)
        assert got.segments == tuple(want), kind
        assert got.source_sha256 == (plan.source_sha256 if kind == "json" else "")
    assert read_plan_json(files["json"]).plan == plan


HAND_RPP = """<REAPER_PROJECT 0.1 "7.0/linux-x86_64" 1700000000
  RIPPLE 0
  TEMPO 120 4 4
  SAMPLERATE 44100 0 0
  <NOTES 0 2
    |a hand edit: split, moved, faded, turned down
  >
  <TRACK {A1B2C3D4-0000-0000-0000-000000000001}
    NAME "jam"
    VOLPAN 1 0 -1 -1 1
    MUTESOLO 0 0 0
    <FXCHAIN
      SHOW 0
      LASTSEL 0
      DOCKED 0
    >
    <ITEM
      POSITION 0
      SNAPOFFS 0
      LENGTH 4.01
      LOOP 1
      ALLTAKES 0
      FADEIN 1 0.01 0 1 0 0 0
      FADEOUT 1 0 0.01 1 0 0 0
      MUTE 0 0
      SEL 0
      IGUID {00000000-0000-0000-0000-000000000011}
      IID 1
      NAME raw.wav
      VOLPAN 1 0 1 -1
      SOFFS 8
      PLAYRATE 1 1 0 -1 0 0.0025
      CHANMODE 0
      GUID {00000000-0000-0000-0000-000000000012}
      <SOURCE WAVE
        FILE "raw.wav"
      >
    >
    <ITEM
      POSITION 4
      SNAPOFFS 0
      LENGTH 8
      LOOP 1
      ALLTAKES 0
      FADEIN 1 0 0.01 1 0 0 0
      FADEOUT 1 0.01 0 1 0 0 0
      MUTE 0 0
      NAME raw.wav
      VOLPAN 1 0 1 -1
      SOFFS 0
      PLAYRATE 1 1 0 -1 0 0.0025
      <SOURCE WAVE
        FILE "raw.wav"
      >
    >
    <ITEM
      POSITION 12
      LENGTH 4
      FADEIN 1 0.01 0 1 0 0 0
      FADEOUT 1 0.01 0 1 0 0 0
      MUTE 0 0
      NAME "raw.wav (split)"
      VOLPAN 0.707946 0 1 -1
      SOFFS 12
      PLAYRATE 1 1 0 -1 0 0.0025
      <SOURCE WAVE
        FILE "raw.wav"
      >
    >
    <ITEM
      POSITION 16
      LENGTH 4
      FADEIN 1 0.01 0 1 0 0 0
      FADEOUT 1 2 0 1 0 0 0
      MUTE 0 0
      NAME "raw.wav (split)"
      VOLPAN 1 0 1 -1
      SOFFS 16
      PLAYRATE 1 1 0 -1 0 0.0025
      <SOURCE WAVE
        FILE "raw.wav"
      >
    >
    <ITEM
      POSITION 30
      LENGTH 4
      MUTE 1 0
      SOFFS 40
      <SOURCE WAVE
        FILE "raw.wav"
      >
    >
  >
>
"""


def test_hand_written_reaper_project(grid, clicks, tmp_path):
    """Raw 8-12 s moved to the start, then 0-8 s (a 10 ms crossfade), then 12-20 s split
    at 16 s with the first half at -3 dB and the second's fade-out lengthened to 2 s; a
    muted item and Reaper's 10 ms default fades are no edit."""
    rpp = tmp_path / "jam.rpp"
    rpp.write_text(HAND_RPP)
    (tmp_path / "raw.wav").write_bytes(clicks.read_bytes())  # the project's FILE is relative to it
    proj = read_rpp(rpp)
    assert [it.index for it in proj.items] == [1, 2, 3, 4] and "item 5 is muted: left out" in proj.notes
    plan = project_plan(proj, grid)
    assert plan.segments == (
        Segment(16, 24),
        Segment(0, 16),
        Segment(24, 32, Ops(gain_db=-3.0)),
        Segment(32, 40, Ops(fade_out_s=2.0)),
    )
    lab = label_project(tmp_path / "raw.wav", rpp, grid=grid, editor_grid=False)
    rec = lab.to_dict()
    assert rec["confidence"] == 1.0 and rec["edited_kind"] == "rpp" and rec["actions_exact"] is True
    assert rec["loss"]["reproduced"] == 1.0
    got = lab.plan.segments
    # the vocabulary's fade is a unit at the segment's end, faded by a fraction of it:
    # here the last bar (2 s) faded whole
    assert [(s.raw_start, s.raw_end) for s in got] == [(16, 24), (0, 16), (24, 32), (32, 36), (36, 40)]
    assert got[2].ops == Ops(gain_db=-3.0) and got[4].ops == Ops(fade_out_s=2.0) and got[3].ops == Ops()

    from alignment.__main__ import main  # python -m alignment RAW PROJECT: the same record

    assert main([str(tmp_path / "raw.wav"), str(rpp), "--json", str(tmp_path / "o.json"), "--no-fidelity"]) == 0
    cli = json.loads((tmp_path / "o.json").read_text())  # on the tracker's grid of the clicks
    assert cli["edited_kind"] == "rpp" and cli["confidence"] == 1.0 and cli["loss"]["reproduced"] == 1.0


def test_the_same_edit_as_audio_and_as_a_project_gives_the_same_labels(tmp_path):
    """A real recording edited by a plan (a far reorder, a -3 dB bar, a one-bar
    fade-out): its render aligned, and its .rpp / .otio / .plan.json read, label alike."""
    a = load_audio(music_file("race1-jt.ogg"))
    raw_path = write_audio(tmp_path / "raw.wav", y=a.y[:, : 30 * a.sr], sr=a.sr)
    raw = load_audio(raw_path)
    g = raw_grid(raw)
    bar = g.beats_per_bar
    d0 = int(np.flatnonzero(g.is_downbeat)[1])
    fade = float(g.bounds[d0 + 5 * bar] - g.bounds[d0 + 4 * bar])
    plan = EditPlan((
        Segment(d0 + 8 * bar, d0 + 12 * bar),
        Segment(d0, d0 + 2 * bar),
        Segment(d0 + 2 * bar, d0 + 3 * bar, Ops(gain_db=-3.0)),
        Segment(d0 + 3 * bar, d0 + 4 * bar),
        Segment(d0 + 4 * bar, d0 + 5 * bar, Ops(fade_out_s=fade)),
    ), g, raw.sha256)
    out = render(y=raw.y, sr=raw.sr, plan=plan)
    write_audio(tmp_path / "edit.wav", y=out.y, sr=out.sr)
    files = export_all(plan, raw_path=raw_path, sr=raw.sr, out_dir=tmp_path, stem="edit")
    audio = label_pair(raw_path, tmp_path / "edit.wav", grid=g)
    assert audio.exact and audio.plan.segments == plan.segments  # the aligner finds the plan
    for kind in ["reaper", "json"] + (["otio"] if HAVE_OTIO else []):
        proj = label_project(raw_path, files[kind], grid=g)
        assert proj.actions == audio.actions, kind
        assert proj.plan == audio.plan, kind
        assert proj.alignment.confidence == 1.0 and proj.project_notes == ()


def _one_line_error(fn, *args, match: str):
    with pytest.raises(ParameterError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg and match in msg, msg
    return msg


def test_bad_projects_are_one_line_errors(grid, clicks, tmp_path):
    raw = str(clicks)
    p = tmp_path / "cut.rpp"
    p.write_text(HAND_RPP[: HAND_RPP.index("    <ITEM\n      POSITION 12")])
    assert str(p) in _one_line_error(read_rpp, p, match="is never closed")
    p = tmp_path / "notes.rpp"
    p.write_text("just some notes\n")
    _one_line_error(read_rpp, p, match="not a Reaper project")
    p = tmp_path / "stray.rpp"
    p.write_text("<REAPER_PROJECT 0.1\n>\n>\n")
    _one_line_error(read_rpp, p, match="line 3: '>' closes no open chunk")
    p = tmp_path / "nan.rpp"
    p.write_text(HAND_RPP.replace("POSITION 12", "POSITION twelve"))
    _one_line_error(read_rpp, p, match="POSITION field 1 is not a number ('twelve')")
    p = tmp_path / "two.rpp"
    track = HAND_RPP[HAND_RPP.index("  <TRACK"): HAND_RPP.rindex(">")]
    p.write_text(HAND_RPP[: HAND_RPP.rindex(">")] + track + ">\n")
    _one_line_error(read_rpp, p, match="items on 2 tracks")
    _one_line_error(read_project, tmp_path / "missing.rpp", match="project file not found")

    # a project over another recording, and one over no file at all
    other = write_audio(tmp_path / "other.wav", y=np.zeros(22050, dtype=np.float32) + 0.1, sr=22050)
    p = tmp_path / "other.rpp"
    p.write_text(HAND_RPP.replace('FILE "raw.wav"', f'FILE "{other}"'))
    msg = _one_line_error(label_project, raw, p, match=f"plays {other}, not the raw recording {raw}")
    assert msg.startswith(str(p))
    p = tmp_path / "empty.rpp"
    p.write_text("<REAPER_PROJECT 0.1\n  <TRACK\n    <ITEM\n      POSITION 0\n      LENGTH 4\n"
                 "      <SOURCE EMPTY\n      >\n    >\n  >\n>\n")
    _one_line_error(label_project, raw, p, match="no item plays an audio file")

    # a plan made for other audio; a file that is no plan; an OTIO file that is not one
    plan = EditPlan((Segment(0, 8),), grid, "cd" * 32)
    p = tmp_path / "x.plan.json"
    p.write_text(plan.to_json())
    _one_line_error(label_project, raw, p, match="the plan was made for other audio")
    p.write_text(json.dumps({"format_version": 1, "segments": [{"raw_start_beat": 0}]}))
    _one_line_error(read_plan_json, p, match="not an EditPlan")
    if HAVE_OTIO:
        p = tmp_path / "x.otio"
        p.write_text("{not json")
        _one_line_error(read_otio, p, match="not a readable OpenTimelineIO file")


def test_make_align_reads_projects(clicks, grid, tmp_path, capsys):
    """``make align`` over raw/ + edited/NAME.rpp, NAME.plan.json: labels with
    confidence 1.0 from the projects, one line for a project over another file."""
    from alignment.run import main

    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "edited").mkdir()
    for name in ("jam", "plan", "bad"):
        (data / "raw" / f"{name}.wav").write_bytes(clicks.read_bytes())
    # the project was made on another computer: FILE names the raw by path elsewhere
    (data / "edited" / "jam.rpp").write_text(HAND_RPP.replace('FILE "raw.wav"', 'FILE "/home/someone/music/jam.wav"'))
    raw = load_audio(data / "raw" / "plan.wav")
    plan = EditPlan((Segment(8, 24), Segment(0, 8, Ops(gain_db=-3.0))), raw_grid(raw), raw.sha256)
    (data / "edited" / "plan.plan.json").write_text(plan.to_json())
    (data / "edited" / "bad.rpp").write_text(HAND_RPP.replace('FILE "raw.wav"', 'FILE "/elsewhere/other_song.wav"'))
    runs = tmp_path / "runs"
    assert main(["--data", str(data), "--run", "t", "--runs-dir", str(runs), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    index = json.loads((runs / "t" / "labels" / "index.json").read_text())
    skipped = json.loads((runs / "t" / "labels" / "skipped.json").read_text())
    assert sorted(index) == ["jam", "plan"]
    assert all(index[n]["confidence"] == 1.0 for n in index)
    assert index["jam"]["edited_kind"] == "rpp" and index["plan"]["edited_kind"] == "plan"
    assert "project (.rpp)" in out and "project (.plan)" in out
    rec = json.loads(Path(index["plan"]["label"]).read_text())
    segs = [(s["raw_start_s"], s["raw_end_s"], s["ops"]["gain_db"]) for s in rec["plan"]["segments"]]
    want = [(*plan.segment_seconds(s), s.ops.gain_db) for s in plan.segments]
    assert len(segs) == 2 and all(math.isclose(a, b, abs_tol=1e-6) for x, y in zip(segs, want) for a, b in zip(x, y))
    assert skipped["bad"]["reason"] == "failed"
    assert "/elsewhere/other_song.wav, not the raw recording" in skipped["bad"]["message"]
