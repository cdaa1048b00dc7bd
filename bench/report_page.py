"""Browser check of report.html: edit a song, open the page in headless Chromium, screenshot it.

    .venv/bin/python bench/report_page.py [--song ../shared/data/music/race1-jt.ogg] [--seconds 60]
                                          [--checkpoint PATH] [--out runs/report_page]

Needs the Debian package ``chromium`` (``apt-get install -y chromium``). The edit runs
with ``agent.infer`` (stems forced to the DSP fallback) into ``--out``; the page is opened
from disk (file://, no server) and the screenshot saved beside it as report.png. Printed:
the screenshot's size, how much of it is not white, and how much is strongly coloured
(the edit PNG's kept/cut/looped regions and blue output timeline: the image loaded).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MUSIC = ROOT.parent / "shared" / "data" / "music"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

__all__ = ["ScreenshotStats", "find_chromium", "screenshot", "screenshot_stats"]


@dataclass(frozen=True)
class ScreenshotStats:
    """What a screenshot holds.

    width, height : pixels
    non_white : fraction of pixels that are not (near) white
    coloured : fraction of strongly saturated pixels (text, tables and grey players are not)
    """

    width: int
    height: int
    non_white: float
    coloured: float

    @property
    def blank(self) -> bool:
        """True when the page drew (almost) nothing."""
        return self.non_white < 0.01


def find_chromium() -> str | None:
    """Path of a Chromium executable on PATH, or None."""
    for name in CHROMIUM_NAMES:
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def screenshot(html: str | Path, png: str | Path, *, width: int = 1200, height: int = 1600, timeout: float = 120.0) -> Path:
    """Open ``html`` from disk in headless Chromium and save a ``width`` x ``height`` screenshot.

    Raises RuntimeError (with Chromium's last output lines) when no screenshot appears.
    """
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("chromium is not on PATH (apt-get install -y chromium)")
    png = Path(png).resolve()
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}",
            f"--window-size={width},{height}", Path(html).resolve().as_uri(),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}):\n{tail}")
    return png


def screenshot_stats(png: str | Path) -> ScreenshotStats:
    """Measure how much a screenshot shows (see ScreenshotStats)."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255.0
    non_white = float((rgb.min(axis=2) < 0.94).mean())
    sat = rgb.max(axis=2) - rgb.min(axis=2)
    return ScreenshotStats(width=rgb.shape[1], height=rgb.shape[0], non_white=non_white, coloured=float((sat > 0.25).mean()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--song", type=Path, default=MUSIC / "race1-jt.ogg")
    ap.add_argument("--seconds", type=float, default=60.0, help="edit the first SECONDS of the song (0 = all)")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "demo" / "checkpoints" / "bc_best.pt")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "report_page")
    args = ap.parse_args(argv)
    if find_chromium() is None:  # not an error: `make bench` runs on machines without a browser
        print("skipped: chromium is not on PATH (apt-get install -y chromium)")
        return 0
    if not args.song.is_file():
        print(f"error: {args.song}: song not found (real music lives in ../shared/data/music)", file=sys.stderr)
        return 2

    from bench.infer import dsp_checkpoint  # noqa: PLC0415 -- same folder, keeps imports light for --help
    from agent.infer import main as infer_main
    from datasets.audio import load_audio, write_audio

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="report-page-") as tmp:
        tmp = Path(tmp)
        ckpt, desc = dsp_checkpoint(args.checkpoint, tmp / "policy.pt")
        a = load_audio(args.song)
        n = a.y.shape[1] if args.seconds <= 0 else min(a.y.shape[1], int(args.seconds * a.sr))
        song = write_audio(args.out / f"{args.song.stem}.wav", y=a.y[:, :n], sr=a.sr)
        rc = infer_main([str(song), "--checkpoint", str(ckpt), "--out", str(args.out)])
        if rc != 0:
            return rc
    html = args.out / f"{args.song.stem}.report.html"
    png = screenshot(html, args.out / "report.png")
    st = screenshot_stats(png)
    print(f"checkpoint: {desc}")
    print(f"page: {html}\nscreenshot: {png}")
    print(f"{'width':<10}{'height':<10}{'non-white':>10}{'coloured':>10}  verdict")
    print(f"{st.width:<10}{st.height:<10}{st.non_white:>10.3f}{st.coloured:>10.3f}  {'BLANK' if st.blank else 'drawn'}")
    return 1 if st.blank else 0


if __name__ == "__main__":
    sys.exit(main())
