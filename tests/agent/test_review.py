"""The review page without a browser: the plan corrections (agent.review_plan) and the
server's API through Flask's test client (toggle, move a cut edge, preview, save, refuse
to overwrite a different pair)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agent.review import ReviewSession, create_app, find_review, main, peaks
from agent.review_plan import bar_lines, cut_edges, move_edge, phrases, set_span, toggle_phrase
from alignment.projects import label_project
from datasets.audio import load_audio, write_audio
from datasets.beats import BeatGrid
from datasets.errors import EditorError, ParameterError
from datasets.pairs import find_pairs
from envs.export import export_all
from envs.plan import EditPlan, Ops, Segment
from envs.layout import output_duration
from envs.render import render

SR = 22050
BPM = 120.0  # 0.5 s beats: 4 bars of 4/4 = one 8 s phrase
SECONDS = 32.0  # 64 beats, 16 bars, 4 phrases


def _song() -> np.ndarray:
    """A tone that changes pitch every bar, with clicks on the beats [shape=(2, n)]."""
    t = np.arange(int(SECONDS * SR)) / SR
    bar = (t // 2.0).astype(int)
    y = 0.2 * np.sin(2 * np.pi * (220 + 20 * (bar % 8)) * t)
    y += 0.3 * np.exp(-(t % 0.5) * 60) * np.sin(2 * np.pi * 1000 * t)
    return np.stack([y, 0.8 * y]).astype(np.float32)


def _grid() -> BeatGrid:
    return BeatGrid.from_beat_times(np.arange(0.0, SECONDS, 0.5), duration=SECONDS, beats_per_bar=4)


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    return write_audio(tmp_path_factory.mktemp("raw") / "jam.wav", y=_song(), sr=SR)


def _folder(root: Path, song: Path, segments) -> Path:
    """What agent.infer leaves in its output folder, for a given plan."""
    a = load_audio(song)
    plan = EditPlan(segments=tuple(segments), grid=_grid(), source_sha256=a.sha256).validate()
    out = root / "out"
    export_all(plan, raw_path=song.resolve(), sr=a.sr, out_dir=out, stem=song.stem)
    write_audio(out / f"{song.stem}_edited.wav", y=render(y=a.y, sr=a.sr, plan=plan).y, sr=a.sr)
    return out


# phrase 0 kept, phrase 1 kept with +2 dB, phrase 2 cut, phrase 3 played twice
TOOL_EDIT = [Segment(0, 16), Segment(16, 32, Ops(gain_db=2.0)), Segment(48, 64), Segment(48, 64)]


@pytest.fixture
def folder(tmp_path, song) -> Path:
    return _folder(tmp_path, song, TOOL_EDIT)


def _plan(segments) -> EditPlan:
    return EditPlan(segments=tuple(segments), grid=_grid()).validate()


# ---- the corrections ---------------------------------------------------------------------
def test_phrases_and_their_status():
    plan = _plan(TOOL_EDIT)
    assert [(p.start, p.end, p.status) for p in phrases(plan)] == [
        (0, 16, "kept"), (16, 32, "kept"), (32, 48, "cut"), (48, 64, "repeated")]
    assert bar_lines(plan) == list(range(0, 65, 4))
    assert cut_edges(plan) == [32, 48]
    assert phrases(_plan([Segment(0, 8), Segment(16, 64)]))[0].status == "partial"


def test_toggle_cuts_a_phrase_everywhere_and_keeps_it_once():
    plan = _plan(TOOL_EDIT)
    once = toggle_phrase(plan, 3)  # a repeated phrase: cut both times
    assert [(s.raw_start, s.raw_end) for s in once.segments] == [(0, 16), (16, 32)]
    assert once.segments[-1].ops.fade_out_s > 0  # now ends mid-song: faded, as inference does
    back = toggle_phrase(once, 2)  # the cut phrase comes back once, after the raw before it
    assert [(s.raw_start, s.raw_end) for s in back.segments] == [(0, 16), (16, 48)]
    assert back.segments[-1].ops.gain_db == 2.0  # it continues its neighbour, +2 dB
    assert back.segments[-1].ops.fade_out_s > 0  # whose ending fade is now at the new end
    with pytest.raises(ParameterError, match="keep something"):
        toggle_phrase(_plan([Segment(0, 16)]), 0)
    with pytest.raises(ParameterError, match="phrase 9"):
        toggle_phrase(plan, 9)


def test_keep_before_everything_and_split_a_reversed_segment():
    plan = _plan([Segment(16, 32)])
    assert [(s.raw_start, s.raw_end) for s in set_span(plan, 0, 16, keep=True).segments] == [(0, 32)]
    rev = _plan([Segment(0, 32, Ops(reversed=True, fade_in_s=0.2, fade_out_s=0.3))])
    cut = set_span(rev, 8, 16, keep=False)
    # a reversed segment plays its later beats first: that piece keeps the fade-in
    assert [(s.raw_start, s.raw_end, s.ops.fade_in_s, s.ops.fade_out_s) for s in cut.segments] == [
        (16, 32, 0.2, 0.0), (0, 8, 0.0, 0.3)]


def test_move_a_cut_edge_to_another_bar_line():
    plan = _plan(TOOL_EDIT)  # cut [32, 48)
    later = move_edge(plan, 48, 56)  # the cut's end moves later: [48, 56) is cut too
    assert cut_edges(later) == [32, 56] and later.raw_beats_used[48:56].sum() == 0
    earlier = move_edge(plan, 32, 28)  # the cut's start moves earlier: [28, 32) is cut
    assert cut_edges(earlier) == [28, 48]
    shorter = move_edge(plan, 32, 40)  # its start moves later: [32, 40) plays again
    assert cut_edges(shorter) == [40, 48] and shorter.raw_beats_used[32:40].tolist() == [1] * 8
    with pytest.raises(ParameterError, match="not on a bar line"):
        move_edge(plan, 32, 33)
    with pytest.raises(ParameterError, match="not the edge"):
        move_edge(plan, 16, 20)


def test_peaks_bound_the_samples():
    y = np.sin(np.linspace(0, 60, 10_000))[None, :].astype(np.float32)
    lo, hi = peaks(y, columns=100)
    assert lo.shape == hi.shape == (100,) and (lo <= hi).all()
    assert np.isclose(hi.max(), y.max()) and np.isclose(lo.min(), y.min())


# ---- the folder ----------------------------------------------------------------------------
def test_find_review_reads_an_infer_folder(folder, song, tmp_path):
    found = find_review(folder)
    assert found.name == "jam" and found.raw.resolve() == song.resolve()
    assert found.edit_audio == folder / "jam_edited.wav"
    (folder / "jam.rpp").unlink()
    (folder / "jam.otio").unlink(missing_ok=True)
    with pytest.raises(EditorError, match="--raw"):
        find_review(folder)
    assert find_review(folder, raw=song).raw == song
    with pytest.raises(EditorError, match="no NAME.plan.json"):
        find_review(tmp_path)


def test_cli_refuses_a_raw_the_plan_was_not_made_for(folder, tmp_path, capsys):
    other = write_audio(tmp_path / "other.wav", y=_song()[:, ::-1].copy(), sr=SR)
    assert main([str(folder), "--raw", str(other), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "jam.plan.json" in err and "made for audio" in err
    assert main([str(tmp_path / "nowhere"), "--no-browser"]) == 2


# ---- the server ------------------------------------------------------------------------------
@pytest.fixture
def client(folder, tmp_path):
    session = ReviewSession(find_review(folder), data=tmp_path / "training_data")
    yield create_app(session).test_client(), session
    session.close()


def _post(c, path, body):
    return c.post(path, json=body)


def test_state_toggle_preview_save(client, song, tmp_path):
    c, session = client
    s = c.get("/api/state").get_json()
    assert [p["status"] for p in s["phrases"]] == ["kept", "kept", "cut", "repeated"]
    assert len(s["peaks"]["min"]) == 2000 and s["edges"] == [32, 48] and s["version"] == 0
    first = c.get(s["preview_url"])  # before any change: the edit agent.infer wrote
    assert first.status_code == 200 and first.data == session.found.edit_audio.read_bytes()

    r = _post(c, "/api/toggle", {"phrase": 2})  # keep the cut phrase
    assert r.status_code == 200
    s1 = r.get_json()
    assert s1["version"] == 1 and s1["changed"] and [p["status"] for p in s1["phrases"]][2] == "kept"
    assert s1["render_s"] < 2.0
    wav = c.get(s1["preview_url"])
    assert wav.status_code == 200 and wav.mimetype == "audio/wav"
    y, sr = sf.read(__import__("io").BytesIO(wav.data))
    assert sr == SR and abs(len(y) / SR - s1["out_duration"]) < 0.01
    assert abs(s1["out_duration"] - output_duration(session.plan, SR, 10.0)) < 1e-9
    ranged = c.get(s1["preview_url"], headers={"Range": "bytes=0-99"})  # seeking in the player
    assert ranged.status_code == 206 and len(ranged.data) == 100

    r = _post(c, "/api/move_edge", {"edge": 48, "to": 56})  # no cut edge at 48 any more
    assert r.status_code == 400 and "not the edge" in r.get_json()["error"]
    assert _post(c, "/api/toggle", {"phrase": "2"}).status_code == 400

    saved = _post(c, "/api/save", {}).get_json()
    data = tmp_path / "training_data"
    assert saved["plan"] == str(data / "edited" / "jam.plan.json") and saved["raw_action"] in ("linked", "copied")
    raw_copy = data / "raw" / "jam.wav"
    assert raw_copy.read_bytes() == song.read_bytes()
    back = EditPlan.from_json((data / "edited" / "jam.plan.json").read_text()).validate(
        source_sha256=load_audio(raw_copy).sha256)
    assert back == session.plan
    assert json.loads((data / "edited" / "jam.plan.json").read_text())["output"]["crossfade_ms"] == 10.0
    # make align's reader takes it as a pair, read exactly: the corrected plan's raw beats
    pairs = find_pairs(data)
    assert [(p.name, p.raw, p.edited) for p in pairs] == [("jam", raw_copy, data / "edited" / "jam.plan.json")]
    lab = label_project(pairs[0].raw, pairs[0].edited, grid=_grid(), editor_grid=False)
    assert lab.edited.kind == "plan" and set(lab.plan_confidence) == {1.0} and lab.actions
    assert np.array_equal(lab.plan.raw_beats_used, session.plan.raw_beats_used)
    # saving the same again changes nothing
    again = _post(c, "/api/save", {"name": "jam"}).get_json()
    assert again["plan_action"] == "unchanged" and again["raw_action"] == "already there"


def test_save_never_replaces_a_different_pair_silently(client, tmp_path):
    c, session = client
    data = tmp_path / "training_data"
    assert _post(c, "/api/save", {"name": "jam"}).status_code == 200
    before = (data / "edited" / "jam.plan.json").read_bytes()
    _post(c, "/api/toggle", {"phrase": 0})
    r = _post(c, "/api/save", {"name": "jam"})
    assert r.status_code == 409 and r.get_json()["overwritable"] and "different edit" in r.get_json()["conflict"]
    assert (data / "edited" / "jam.plan.json").read_bytes() == before  # untouched
    assert _post(c, "/api/save", {"name": "jam", "overwrite": "yes"}).status_code == 409  # only true overwrites
    r = _post(c, "/api/save", {"name": "jam", "overwrite": True})
    assert r.status_code == 200 and r.get_json()["plan_action"] == "replaced"
    assert EditPlan.from_json((data / "edited" / "jam.plan.json").read_text()) == session.plan

    # an edited recording of that name: the plan would take its place in make align, so ask
    write_audio(data / "edited" / "take2.wav", y=_song()[:, :SR], sr=SR)
    r = _post(c, "/api/save", {"name": "take2"})
    assert r.status_code == 409 and r.get_json()["overwritable"] and "take2.wav" in r.get_json()["conflict"]
    assert _post(c, "/api/save", {"name": "take2", "overwrite": True}).status_code == 200
    assert (data / "edited" / "take2.wav").exists()  # left alone
    # a DAW project of that name, or a different raw recording: never replaced
    (data / "edited" / "take4.rpp").write_text("<REAPER_PROJECT\n>\n")
    r = _post(c, "/api/save", {"name": "take4", "overwrite": True})
    assert r.status_code == 409 and not r.get_json()["overwritable"] and "take4.rpp" in r.get_json()["conflict"]
    other = write_audio(data / "raw" / "take3.wav", y=_song()[:, ::-1].copy(), sr=SR)
    r = _post(c, "/api/save", {"name": "take3", "overwrite": True})
    assert r.status_code == 409 and not r.get_json()["overwritable"] and "different recording" in r.get_json()["conflict"]
    assert not (data / "edited" / "take3.plan.json").exists() and load_audio(other).sha256 != session.audio.sha256
    # a name that is a path
    assert _post(c, "/api/save", {"name": "../evil"}).status_code == 400
    assert not (data / "evil.plan.json").exists()


def test_the_page_loads_nothing_from_the_network(client):
    c, _ = client
    page = c.get("/")
    assert page.status_code == 200 and b'src="/static/review.js"' in page.data
    for path in ("/", "/static/review.js", "/static/review.css"):
        body = c.get(path).data.decode()
        assert "http://" not in body and "https://" not in body and 'src="//' not in body, path


def test_requests_from_elsewhere_are_refused(client):
    c, _ = client
    assert c.post("/api/toggle", data="phrase=1").status_code == 403  # not JSON (a form post)
    assert c.post("/api/toggle", json={"phrase": 1}, headers={"Origin": "http://evil.example"}).status_code == 403
    assert c.get("/api/state", base_url="http://evil.example").status_code == 403  # DNS rebinding
    assert c.post("/api/toggle", json={"phrase": 1}, headers={"Origin": "http://localhost"}).status_code == 200


def test_undo_and_reset(client):
    c, session = client
    _post(c, "/api/toggle", {"phrase": 0})
    _post(c, "/api/toggle", {"phrase": 1})
    s = _post(c, "/api/undo", {}).get_json()
    assert [p["status"] for p in s["phrases"]][:2] == ["cut", "kept"] and s["can_undo"]
    s = _post(c, "/api/reset", {}).get_json()
    assert not s["changed"] and session.plan == session.original
