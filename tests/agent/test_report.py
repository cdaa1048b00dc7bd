import re
from html.parser import HTMLParser
from urllib.parse import unquote

import numpy as np

from agent.report import output_timeline, plot_edit, write_report_html
from datasets.audio import write_audio
from datasets.beats import BeatGrid
from envs.plan import EditPlan, Ops, Segment


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href"):
                self.srcs.append(v)


def _plan():
    grid = BeatGrid.from_beat_times(np.arange(0, 16, 0.5), duration=16.0, beats_per_bar=4)
    segs = (Segment(0, 8), Segment(16, 24, Ops(gain_db=1.5)), Segment(16, 24), Segment(24, 32, Ops(reverb=0.3, fade_out_s=1.0)))
    return EditPlan(segments=segs, grid=grid, source_sha256="x")


def test_timeline_and_png(tmp_path):
    plan = _plan()
    tl = output_timeline(plan, sr=8000, crossfade_ms=0.0)
    assert [round(s.out_start, 6) for s in tl] == [0.0, 4.0, 8.0, 12.0]
    assert tl[1].ops == "gain +1.5 dB"
    y = np.random.default_rng(0).normal(0, 0.1, (2, 16 * 8000)).astype(np.float32)
    png = plot_edit(plan, y=y, sr=8000, path=tmp_path / "edit.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_links_resolve_from_disk(tmp_path):
    plan = _plan()
    song_dir = tmp_path / "songs with space"
    raw = write_audio(song_dir / "raw take.wav", y=np.zeros((1, 8000), np.float32), sr=8000)
    out = tmp_path / "out"
    out.mkdir()
    edited = write_audio(out / "edited.wav", y=np.zeros((1, 8000), np.float32), sr=8000)
    png = out / "edit.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    page = write_report_html(path=out / "raw take.report.html", raw_audio=raw, edited_audio=edited, png=png, plan=plan, summary={"keep ratio": "0.75"}, timeline=output_timeline(plan, sr=8000))
    p = _Links()
    p.feed(page.read_text())
    assert len(p.srcs) == 3
    for src in p.srcs:
        assert (out / unquote(src)).resolve().exists(), src
    assert len(re.findall("<tr><td>", page.read_text())) == len(plan.segments)
