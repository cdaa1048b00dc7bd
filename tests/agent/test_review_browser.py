"""The review page end to end in headless Chromium: open, play, toggle a phrase, hear the
preview, save (and confirm an overwrite), then ``make align`` turns the saved plan into
labels.

The folder under review is what ``agent.infer`` writes for 20 s of a real recording
(a tiny untrained policy: the edit is arbitrary, the files are real). Skipped when
Debian's ``chromium`` or ``chromium-driver`` is not installed (``make setup`` installs
both as root; ``apt-get install -y chromium chromium-driver``).
"""

import json

import pytest
import torch

from agent.checkpoint import save_checkpoint
from agent.infer import main as infer
from agent.layout import observation_layout
from agent.model import Policy, PolicyConfig
from alignment.label_index import label_file, read_index
from alignment.run import main as align
from bench.report_page import screenshot_stats
from bench.review_page import click_phrase, drag_edge, find_browser, open_browser, start_review, wait_for
from datasets.audio import load_audio, write_audio
from envs.plan import EditPlan
from tests.conftest import music_file

pytestmark = pytest.mark.skipif(
    find_browser() is None,
    reason="chromium or chromedriver is not on PATH (make setup as root, or apt-get install -y chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def edit_folder(tmp_path_factory):
    """agent.infer's output folder for 20 s of race1 edited by a tiny untrained policy."""
    a = load_audio(music_file("race1-jt.ogg"))
    d = tmp_path_factory.mktemp("edit")
    song = write_audio(d / "race1.wav", y=a.y[:, : 20 * a.sr], sr=a.sr)
    torch.manual_seed(0)
    model = Policy(PolicyConfig.from_layout(hidden=16, n_layers=1, n_heads=2, kernel_size=3))
    ckpt = save_checkpoint(d / "tiny.pt", model=model, stage="test", layout=observation_layout(), extra={"stem_method": "dsp"})
    out = d / "out"
    assert infer([str(song), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return out


@pytest.fixture
def page(edit_folder, tmp_path):
    proc, url = start_review(edit_folder, data=tmp_path / "training_data")
    browser = open_browser(width=1280, height=900)
    try:
        browser.get(url)
        wait_for(browser, "document.body.dataset.ready === '1'", what="the page's first state")
        yield browser, tmp_path / "training_data"
    finally:
        browser.quit()
        proc.terminate()
        proc.wait(timeout=10)


def _state(browser) -> dict:
    return browser.execute_script("return window.review.state();")


def test_play_toggle_preview_save_align(page, tmp_path):
    browser, data = page
    s0 = _state(browser)
    assert s0["version"] == 0 and s0["phrases"] and browser.find_element("id", "song").text == "race1.wav"

    # play: both players start and run
    for player in ("raw", "edit"):
        browser.execute_script(f"document.getElementById('{player}').play();")
        wait_for(browser, f"document.getElementById('{player}').currentTime > 0.1", what=f"the {player} player to run")
        assert not browser.execute_script(f"return document.getElementById('{player}').paused;")
        browser.execute_script(f"document.getElementById('{player}').pause();")

    # one click on the waveform toggles the phrase under it
    first = s0["phrases"][0]["status"]
    click_phrase(browser, 0)
    wait_for(browser, "window.review.state().version === 1", what="the toggle's answer")
    s1 = _state(browser)
    assert (first == "cut") == (s1["phrases"][0]["status"] != "cut")
    button = browser.find_element("css selector", "#phrases button[data-phrase='0']")
    assert button.get_attribute("class") == s1["phrases"][0]["status"]  # the page shows the new status

    # the preview arrives: the edit player loads the new render, with the new plan's length
    wait_for(browser, "window.review.timings.length && window.review.timings[0].playable_ms !== null", what="the preview")
    src, dur = browser.execute_script("const a = document.getElementById('edit'); return [a.currentSrc, a.duration];")
    assert src.endswith("/audio/preview/1") and abs(dur - s1["out_duration"]) < 0.05
    assert dur != pytest.approx(s0["out_duration"], abs=0.05)
    t = browser.execute_script("return window.review.timings[0];")
    assert t["playable_ms"] < 10_000, t  # a second or two on a free CPU; shared CI cores are slower

    # save as training pair
    browser.find_element("id", "save").click()
    wait_for(browser, "document.getElementById('status').className === 'status ok'", what="the save")
    saved = data / "edited" / "race1.plan.json"
    assert saved.is_file() and (data / "raw" / "race1.wav").is_file()

    # a different edit under the same name: the page asks, and overwrites only when told
    click_phrase(browser, len(s1["phrases"]) - 1)
    wait_for(browser, "window.review.state().version === 2", what="the second toggle")
    before = saved.read_bytes()
    browser.find_element("id", "save").click()
    wait_for(browser, "!document.getElementById('confirm').hidden", what="the overwrite question")
    assert saved.read_bytes() == before
    browser.find_element("id", "confirm-yes").click()
    wait_for(browser, "document.getElementById('status').className === 'status ok'", what="the overwrite")
    assert saved.read_bytes() != before

    # drag a cut edge two bar lines on: the beats it passes change sides
    s2 = _state(browser)
    edge = s2["edges"][0]
    to = [b for b in s2["bars"] if b > edge][1]
    drag_edge(browser, edge, to)
    wait_for(browser, "window.review.state().version === 3", what="the edge's move")
    s3 = _state(browser)
    assert edge not in s3["edges"] and to in s3["edges"], (edge, to, s2["edges"], s3["edges"])

    shot = tmp_path / "review.png"
    browser.execute_script("window.scrollTo(0, 0);")
    browser.save_screenshot(str(shot))
    st = screenshot_stats(shot)
    assert not st.blank and st.coloured > 0.02, st  # the phrase strip, wash and timeline are drawn

    # make align reads the saved plan as the pair's edit, exactly (confidence 1.0)
    plan = EditPlan.from_json(saved.read_text())
    assert plan.validate(source_sha256=load_audio(data / "raw" / "race1.wav").sha256) is plan
    assert [p["status"] for p in _state(browser)["phrases"]][-1] != [p["status"] for p in s1["phrases"]][-1]
    assert align(["--data", str(data), "--run", "r", "--runs-dir", str(tmp_path / "runs"), "--jobs", "1"]) == 0
    index = read_index(tmp_path / "runs" / "r")
    assert list(index) == ["race1"] and index["race1"]["edited_kind"] == "plan", index
    labels = json.loads(label_file(tmp_path / "runs" / "r", "race1", index["race1"]).read_text())
    assert labels["actions"] and labels["raw_sha256"] == plan.source_sha256
    assert labels["edited_path"] == str(saved)
