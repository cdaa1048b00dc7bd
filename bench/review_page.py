"""The review page in a real browser: serve an edit, drive it in headless Chromium, time it.

    .venv/bin/python bench/review_page.py [--song ../shared/data/music/race1-jt.ogg]
        [--seconds 60] [--out runs/review_page] [--png docs/review.png]

Needs Debian's ``chromium`` and ``chromium-driver`` (``make setup`` installs them as
root; ``apt-get install -y chromium chromium-driver``), driven with selenium through the
driver of the same version (no browser download). The edit is a scripted one on the
tracked beats of the song's first ``--seconds`` (opening kept, every third phrase cut,
the second phrase played twice, a fade at the end), written as ``agent.infer`` writes an
output folder; ``python -m agent.review`` serves it as a subprocess. Printed: how long
each step took (page drawn, raw playing, a phrase toggled, its preview playable, the pair
saved) and the screenshot's path. The functions are the browser test's too
(tests/agent/test_review_browser.py).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MUSIC = ROOT.parent / "shared" / "data" / "music"

__all__ = ["find_browser", "make_review_folder", "start_review", "open_browser", "wait_for", "click_phrase", "drag_edge", "main"]


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) on PATH, or None when either is missing."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (exe, driver) if exe and driver else None


def make_review_folder(song: str | Path, out: str | Path, *, seconds: float = 60.0) -> Path:
    """An output folder as ``agent.infer`` writes it (NAME.wav raw beside NAME_edited.wav,
    NAME.plan.json, NAME.rpp, NAME.otio) for a scripted edit of ``song``'s first
    ``seconds``: phrases 0, 1, 3, 4, 6, ... kept, phrase 1 twice, an ending fade."""
    from agent.ending import soften_ending
    from datasets.audio import load_audio, write_audio
    from datasets.beats import BARS_PER_PHRASE
    from datasets.features import extract_features
    from envs.export import export_all
    from envs.plan import EditPlan, Segment
    from envs.render import render

    out = Path(out)
    a = load_audio(song)
    n = a.y.shape[1] if seconds <= 0 else min(a.y.shape[1], int(seconds * a.sr))
    raw = write_audio(out / f"{Path(song).stem}.wav", y=a.y[:, :n], sr=a.sr)
    a = load_audio(raw)
    grid = extract_features(a, stems="dsp").grid
    ids = grid.unit_ids(BARS_PER_PHRASE)
    starts = [0] + [i for i in range(1, grid.n_beats) if ids[i] != ids[i - 1]] + [grid.n_beats]
    spans = list(zip(starts[:-1], starts[1:]))
    segs = [Segment(s, e) for k, (s, e) in enumerate(spans) if k % 3 != 2 or k == 0]
    if len(spans) > 1:
        segs.insert(2, Segment(*spans[1]))  # the second phrase, again
    plan = soften_ending(EditPlan(segments=tuple(segs), grid=grid, source_sha256=a.sha256).merged())
    export_all(plan, raw_path=raw.resolve(), sr=a.sr, out_dir=out, stem=raw.stem)
    write_audio(out / f"{raw.stem}_edited.wav", y=render(y=a.y, sr=a.sr, plan=plan).y, sr=a.sr)
    return out


def start_review(folder: str | Path, *, data: str | Path, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """``python -m agent.review FOLDER --data DATA --no-browser`` as a subprocess; returns
    it and the URL it prints. Raises RuntimeError (with its output) when no URL comes."""
    cmd = [sys.executable, "-m", "agent.review", str(folder), "--data", str(data), "--no-browser"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip())
        m = re.search(r"review page: (http://127\.0\.0\.1:\d+/)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    proc.wait()
    raise RuntimeError("agent.review printed no URL:\n" + "\n".join(seen[-10:]))


def open_browser(*, width: int = 1280, height: int = 900):
    """Headless Chromium under selenium, through Debian's matching chromedriver. Audio may
    start without a click (the test presses play from a script)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_browser()
    if found is None:
        raise RuntimeError("chromium and chromedriver are not on PATH (apt-get install -y chromium chromium-driver)")
    exe, driver = found
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--autoplay-policy=no-user-gesture-required", "--hide-scrollbars", f"--window-size={width},{height}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def wait_for(browser, script: str, *, timeout: float = 20.0, what: str = ""):
    """Poll a JavaScript expression until it is truthy; return its value (TimeoutError
    naming ``what`` otherwise)."""
    end = time.monotonic() + timeout
    while True:
        v = browser.execute_script(f"return ({script});")
        if v:
            return v
        if time.monotonic() > end:
            raise TimeoutError(f"waited {timeout:.0f} s for {what or script}")
        time.sleep(0.05)


def click_phrase(browser, index: int) -> None:
    """Click the middle of phrase ``index`` on the waveform canvas, as a person would."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = browser.find_element("id", "wave")
    st = browser.execute_script("return window.review.state();")
    p = st["phrases"][index]
    w = canvas.size["width"]
    x = (p["t0"] + p["t1"]) / 2 / st["duration"] * w - w / 2  # offsets from the centre
    ActionChains(browser).move_to_element_with_offset(canvas, int(x), 0).click().perform()


def drag_edge(browser, edge: int, to: int) -> None:
    """Drag the cut edge at raw beat ``edge`` to beat ``to`` on the waveform canvas."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = browser.find_element("id", "wave")
    st = browser.execute_script("return window.review.state();")
    w, h = canvas.size["width"], canvas.size["height"]
    x0 = st["beats"][edge] / st["duration"] * w - w / 2
    x1 = st["beats"][to] / st["duration"] * w - w / 2
    step = (x1 - x0) / 2
    (ActionChains(browser).move_to_element_with_offset(canvas, int(round(x0)), h // 4).click_and_hold()
     .move_by_offset(int(step), 0).move_by_offset(int(round(x1 - x0)) - int(step), 0).release().perform())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--song", type=Path, default=MUSIC / "race1-jt.ogg")
    ap.add_argument("--seconds", type=float, default=60.0, help="the song's first SECONDS (0 = all)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "review_page")
    ap.add_argument("--png", type=Path, default=None, help="screenshot (default OUT/review.png)")
    args = ap.parse_args(argv)
    if find_browser() is None:  # not an error: `make bench` runs on machines without a browser
        print("skipped: chromium + chromedriver are not on PATH (apt-get install -y chromium chromium-driver)")
        return 0
    if not args.song.is_file():
        print(f"error: {args.song}: song not found (real music lives in ../shared/data/music)", file=sys.stderr)
        return 2
    marker = args.out / ".review-page-bench"  # only a folder this script made is emptied
    if args.out.exists() and any(args.out.iterdir()) and not marker.exists():
        print(f"error: {args.out}: not empty and not made by this script; give a new --out", file=sys.stderr)
        return 2
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    marker.touch()
    t = time.perf_counter()
    folder = make_review_folder(args.song, args.out / "edit", seconds=args.seconds)
    rows = [("scripted edit + exports", time.perf_counter() - t)]
    t = time.perf_counter()
    proc, url = start_review(folder, data=args.out / "training_data")
    rows.append(("server up (fresh process)", time.perf_counter() - t))
    browser = None
    try:
        t = time.perf_counter()
        browser = open_browser()
        rows.append(("chromium started", time.perf_counter() - t))
        t = time.perf_counter()
        browser.get(url)
        wait_for(browser, "document.body.dataset.ready === '1'", what="the page's state")
        rows.append(("page drawn", time.perf_counter() - t))
        t = time.perf_counter()
        browser.execute_script("document.getElementById('raw').play();")
        wait_for(browser, "document.getElementById('raw').currentTime > 0.2", what="the raw to play")
        rows.append(("raw playing 0.2 s", time.perf_counter() - t))
        browser.execute_script("document.getElementById('raw').pause();")
        cut = next(p["index"] for p in browser.execute_script("return window.review.state().phrases;") if p["status"] == "cut")
        t = time.perf_counter()
        click_phrase(browser, cut)
        wait_for(browser, "window.review.timings.length && window.review.timings[0].playable_ms !== null",
                 what="the preview")
        rows.append(("toggle -> preview playable", time.perf_counter() - t))
        tm = browser.execute_script("return window.review.timings[0];")
        rows.append(("  of which the answer (render)", tm["answer_ms"] / 1000))
        t = time.perf_counter()
        browser.find_element("id", "save").click()
        wait_for(browser, "document.getElementById('status').className === 'status ok'", what="the save")
        rows.append(("saved as training pair", time.perf_counter() - t))
        png = args.png or args.out / "review.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        browser.execute_script("window.scrollTo(0, 0);")
        # the whole page and no more: the window grows (or shrinks) by what the viewport lacks
        extra = browser.execute_script("return Math.ceil(document.body.getBoundingClientRect().bottom) + 16 - window.innerHeight;")
        size = browser.get_window_size()
        browser.set_window_size(size["width"], size["height"] + extra)
        browser.save_screenshot(str(png))
    finally:
        if browser is not None:
            browser.quit()
        proc.terminate()
        proc.wait(timeout=10)
    print(f"song: {args.song.name}, first {args.seconds:g} s; screenshot: {png}")
    print(f"{'step':<32}{'seconds':>8}")
    for name, sec in rows:
        print(f"{name:<32}{sec:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
