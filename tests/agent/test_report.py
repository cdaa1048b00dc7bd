import re
from html.parser import HTMLParser
from pathlib import Path
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


def test_png_shows_each_region_kind_and_the_timeline(tmp_path):
    from PIL import Image

    from agent.report import _COLOURS, _OUT_BOX, _RAW_BOX, _hex

    plan = _plan()  # 16 s: kept 0-4 s, cut 4-8 s, looped 8-12 s, reverb 12-16 s
    y = np.random.default_rng(0).normal(0, 0.1, (2, 16 * 8000)).astype(np.float32)
    img = Image.open(plot_edit(plan, y=y, sr=8000, path=tmp_path / "edit.png")).convert("RGB")
    assert img.size == (1200, 450)
    x0, _, x1, y1 = _RAW_BOX
    for t, kind in ((2.0, "kept"), (6.0, "cut"), (10.0, "looped"), (14.0, "effect")):
        x = int(x0 + (x1 - x0) * t / 16.0)
        assert img.getpixel((x, y1 - 3)) == _hex(_COLOURS[kind], 0.35), kind  # below the waveform
    mid = (_RAW_BOX[1] + y1) // 2
    assert img.getpixel(((x0 + x1) // 2, mid)) == (34, 34, 34)  # the waveform crosses the middle
    ox0, oy0, ox1, oy1 = _OUT_BOX
    blues = {_hex("#5b8fd6"), _hex("#a9c6ee")}
    row = [img.getpixel((x, (oy0 + oy1) // 2 + 20)) for x in range(ox0 + 2, ox1 - 2)]
    assert blues <= set(row)  # both alternating segment colours on the output timeline


def test_png_needs_no_matplotlib(tmp_path):
    """Importing matplotlib cost ~0.5 s of a cold agent.infer (issue 17)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from tests.agent.test_report import _plan; from agent.report import plot_edit; "
            f"plot_edit(_plan(), y=np.zeros(16 * 8000, np.float32), sr=8000, path={str(tmp_path / 'e.png')!r}); "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
