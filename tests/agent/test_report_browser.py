"""report.html in a real browser: headless Chromium opens it from disk and draws it.

Skipped when ``chromium`` is not on PATH (CI does not install it; ``apt-get install -y
chromium`` to run it).
"""

import pytest
import torch

from agent.checkpoint import save_checkpoint
from agent.infer import main
from agent.layout import observation_layout
from agent.model import Policy, PolicyConfig
from bench.report_page import find_chromium, screenshot, screenshot_stats
from datasets.audio import load_audio, write_audio
from tests.conftest import music_file

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="chromium is not on PATH (apt-get install -y chromium); browser check skipped"
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """An edit of 20 s of a real recording by a tiny untrained policy -> NAME.report.html."""
    a = load_audio(music_file("race1-jt.ogg"))
    d = tmp_path_factory.mktemp("edit")
    song = write_audio(d / "race1 slice.wav", y=a.y[:, : 20 * a.sr], sr=a.sr)
    torch.manual_seed(0)
    model = Policy(PolicyConfig.from_layout(hidden=16, n_layers=1, n_heads=2, kernel_size=3))
    ckpt = save_checkpoint(
        d / "tiny.pt", model=model, stage="test", layout=observation_layout(), extra={"stem_method": "dsp"}
    )
    out = d / "out dir"  # a space: the page's links must be percent-encoded to load
    assert main([str(song), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return out / f"{song.stem}.report.html"


def test_page_is_drawn_with_the_edit_image(report, tmp_path):
    png = screenshot(report, tmp_path / "shot.png", width=1200, height=1600)
    st = screenshot_stats(png)
    assert (st.width, st.height) == (1200, 1600)
    assert not st.blank, st
    # The edit PNG (green/grey regions, blue output timeline) is the only strongly coloured
    # thing on the page: a broken <img> link leaves only text, tables and grey players.
    assert st.coloured > 0.005, st


def test_blank_page_reads_as_blank(tmp_path):
    page = tmp_path / "empty.html"
    page.write_text("<!doctype html><html><body></body></html>", encoding="utf-8")
    st = screenshot_stats(screenshot(page, tmp_path / "empty.png", width=400, height=300))
    assert st.blank and st.coloured == 0.0, st


def test_missing_image_shows_no_colour(report, tmp_path):
    # the same page with the image link broken: the colour check must notice
    broken = report.with_name("broken.html")
    text = report.read_text(encoding="utf-8")
    img = text.index('<img src="') + len('<img src="')
    broken.write_text(text[:img] + "missing-" + text[img:], encoding="utf-8")
    st = screenshot_stats(screenshot(broken, tmp_path / "broken.png", width=1200, height=1600))
    assert not st.blank and st.coloured < 0.005, st
