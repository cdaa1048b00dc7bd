"""What a musician looks at after an edit: a PNG of the edit and NAME.report.html.

The PNG draws the raw waveform with kept / cut / looped / effected regions coloured and
the output timeline below it (which raw span plays when). The HTML page opens from disk
in any browser with no server: audio players for the raw and the edited song, the PNG,
and the plan as a table.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from datasets.atomic import atomic_path, atomic_write_text
from envs.export import ops_label, output_timeline as export_timeline
from envs.layout import DEFAULT_CROSSFADE_MS
from envs.plan import EditPlan, Ops

__all__ = ["OutputSegment", "output_timeline", "plot_edit", "write_report_html"]

# Colours a musician reads at a glance: grey = cut, green = kept, orange = used more than
# once (loop/repeat), purple = an effect other than gain/fade.
_COLOURS = {"cut": "#d0d0d0", "kept": "#4caf50", "looped": "#ff9800", "effect": "#8e44ad"}


@dataclass(frozen=True)
class OutputSegment:
    """One merged plan segment placed on the output timeline (seconds)."""

    index: int
    raw_start: float
    raw_end: float
    out_start: float
    out_end: float
    ops: str


def output_timeline(plan: EditPlan, *, sr: int, crossfade_ms: float = DEFAULT_CROSSFADE_MS) -> list[OutputSegment]:
    """Each segment where the renderer places it (crossfade overlaps and time stretch
    included), from ``envs.export.output_timeline``."""
    tl = export_timeline(plan, sr=sr, crossfade_ms=crossfade_ms)
    return [
        OutputSegment(
            index=d["index"],
            raw_start=d["raw_start_sample"] / sr,
            raw_end=d["raw_end_sample"] / sr,
            out_start=d["out_start_s"],
            out_end=d["out_end_s"],
            ops=ops_label(Ops(**d["ops"])) or "-",
        )
        for d in tl["segments"]
    ]


def _region_kind(plan: EditPlan) -> list[str]:
    """Per raw beat: cut / kept / looped / effect."""
    used = plan.raw_beats_used
    effect = np.zeros(plan.grid.n_beats, dtype=bool)
    for s in plan.segments:
        if s.ops.has_effect:
            effect[s.raw_start : s.raw_end] = True
    kinds = []
    for u, e in zip(used, effect):
        kinds.append("cut" if u == 0 else "effect" if e else "looped" if u > 1 else "kept")
    return kinds


def _runs(kinds: list[str]) -> list[tuple[int, int, str]]:
    """(first beat, one past the last, kind) of each run of equal kinds."""
    runs: list[tuple[int, int, str]] = []
    for i, k in enumerate(kinds):
        if runs and runs[-1][2] == k and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1, k)
        else:
            runs.append((i, i + 1, k))
    return runs


#: The PNG's size in pixels (what matplotlib drew at figsize 12 x 4.5 in, 100 dpi) and the
#: boxes of its two panels (left, top, right, bottom): the raw song, the output timeline.
_SIZE = (1200, 450)
_RAW_BOX = (19, 36, 1172, 234)
_OUT_BOX = (19, 293, 1172, 388)
_INK = (34, 34, 34)  # "#222222": the waveform, axes and text


def _font(px: int):
    """DejaVu Sans (the face matplotlib drew with, from its data folder, found without
    importing it) at ``px`` pixels; Pillow's own face where matplotlib is absent."""
    import importlib.util

    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            return ImageFont.truetype(str(Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"), px)
        except OSError:
            pass
    return ImageFont.load_default(size=px)


def _ticks(hi: float) -> np.ndarray:
    """Round tick values on [0, hi]: a step of 1, 2, 2.5 or 5 x 10^k giving at most 10 ticks
    (matplotlib's default locator picks from the same steps)."""
    if hi <= 0:
        return np.zeros(1)
    for k in range(int(np.floor(np.log10(hi))) - 1, int(np.floor(np.log10(hi))) + 2):
        for m in (1.0, 2.0, 2.5, 5.0):
            step = m * 10.0**k
            if hi / step <= 9:
                return np.arange(0.0, hi + 1e-9 * step, step)
    return np.array([0.0, hi])


def _hex(c: str, alpha: float = 1.0) -> tuple[int, int, int]:
    """'#rrggbb' drawn with ``alpha`` over white, as RGB."""
    rgb = np.array([int(c[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
    return tuple(int(round(v)) for v in alpha * rgb + (1.0 - alpha) * 255.0)


def _x_axis(draw, box: tuple[int, int, int, int], hi: float, label: str, font, small) -> None:
    """Frame, ticks under the panel with their values, and the axis label below."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=_INK, width=1)
    for v in _ticks(hi):
        x = x0 + (x1 - x0) * v / hi
        draw.line([(x, y1), (x, y1 + 4)], fill=_INK, width=1)
        draw.text((x, y1 + 6), f"{v:g}", fill=_INK, font=small, anchor="mt")
    draw.text(((x0 + x1) / 2, y1 + 26), label, fill=_INK, font=font, anchor="mt")


def plot_edit(
    plan: EditPlan, *, y: np.ndarray, sr: int, path: str | os.PathLike, title: str = "", crossfade_ms: float = DEFAULT_CROSSFADE_MS
) -> Path:
    """Draw the edit to a PNG (written atomically), 1200 x 450 pixels.

    y : raw audio [shape=(channels, n) or (n,)] at rate sr, for the waveform.

    Top: the raw waveform (peak per pixel column) over its beats coloured by kind (one
    span per run of beats of one kind), a legend and the title; bottom: the output
    timeline (which raw span plays when). Drawn with Pillow, not matplotlib: importing
    matplotlib and drawing the same picture cost ~0.7 s CPU of a ~5 s cold
    ``agent.infer`` (issue 17); this costs ~0.08 s.
    """
    from PIL import Image, ImageDraw

    img = Image.new("RGB", _SIZE, "white")
    draw = ImageDraw.Draw(img)
    font, small, tiny = _font(14), _font(13), _font(10)

    # Raw panel: coloured beat runs, then the waveform's peak per pixel column.
    x0, y0, x1, y1 = _RAW_BOX
    dur = max(plan.grid.duration, 1e-9)

    def px(seconds: float) -> float:
        return x0 + (x1 - x0) * seconds / dur

    b = plan.grid.bounds
    for i0, i1, k in _runs(_region_kind(plan)):
        draw.rectangle([px(b[i0]), y0, px(b[i1]), y1], fill=_hex(_COLOURS[k], 0.35))
    mono = y.mean(axis=0) if y.ndim == 2 else y
    cols = x1 - x0
    n_audio = min(len(mono), int(round(dur * sr)))
    if n_audio > cols:
        edges = (np.arange(cols) * n_audio) // cols
        peak = np.maximum.reduceat(np.abs(mono[:n_audio]), edges)
        mid, half = (y0 + y1) / 2, (y1 - y0) / 2 / 1.05  # y limits +-1.05
        for c, e in enumerate(np.minimum(peak, 1.05)):
            draw.line([(x0 + c, mid - half * e), (x0 + c, mid + half * e)], fill=_INK, width=1)
    _x_axis(draw, _RAW_BOX, dur, "raw time (s)", font, small)
    draw.text(((x0 + x1) / 2, y0 - 8), title or "edit", fill=_INK, font=_font(17), anchor="ms")
    # legend, upper right: a swatch and a name per kind, in one row
    items = list(_COLOURS.items())
    w_item = 80
    lx0, ly0 = x1 - 8 - w_item * len(items), y0 + 6
    draw.rectangle([lx0, ly0, x1 - 6, ly0 + 20], fill=(255, 255, 255), outline=(204, 204, 204))
    for j, (k, c) in enumerate(items):
        sx = lx0 + 6 + j * w_item
        draw.rectangle([sx, ly0 + 6, sx + 26, ly0 + 14], fill=_hex(c))
        draw.text((sx + 32, ly0 + 10), k, fill=_INK, font=tiny, anchor="lm")

    # Output panel: one bar per segment, two alternating blues (not the raw panel's
    # categories), labelled with the raw span it plays when there is room.
    timeline = output_timeline(plan, sr=sr, crossfade_ms=crossfade_ms)
    ox0, oy0, ox1, oy1 = _OUT_BOX
    total = max(timeline[-1].out_end if timeline else 0.0, 1e-3)

    def opx(seconds: float) -> float:
        return ox0 + (ox1 - ox0) * min(seconds, total) / total

    bar_top, bar_bot = oy0 + (oy1 - oy0) * 0.05, oy1 - (oy1 - oy0) * 0.05
    for s in timeline:
        draw.rectangle([opx(s.out_start), bar_top, opx(s.out_end), bar_bot], fill=_hex(("#5b8fd6", "#a9c6ee")[s.index % 2]),
                       outline="white")
        if s.out_end - s.out_start > 0.04 * total:
            draw.text(((opx(s.out_start) + opx(s.out_end)) / 2, (oy0 + oy1) / 2), f"{s.raw_start:.0f}-{s.raw_end:.0f}s",
                      fill=(0, 0, 0), font=tiny, anchor="mm")
    _x_axis(draw, _OUT_BOX, total, "output time (s); labels give the raw span played", font, small)

    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def _src(target: Path, out_dir: Path) -> str:
    """A link from out_dir to target that a browser resolves from disk."""
    try:
        rel = os.path.relpath(target.resolve(), out_dir.resolve())
    except ValueError:  # another drive on Windows
        return target.resolve().as_uri()
    # Percent-encode each part (spaces, '#', '?') so the browser reads it as a path.
    return "/".join(quote(part) for part in Path(rel).parts)


def write_report_html(
    *,
    path: str | os.PathLike,
    raw_audio: str | os.PathLike,
    edited_audio: str | os.PathLike,
    png: str | os.PathLike,
    plan: EditPlan,
    summary: dict[str, str],
    timeline: list[OutputSegment],
) -> Path:
    """Write the page to ``path`` (atomically) and return it. Name it after the song
    (NAME.report.html) so edits of several songs can share one folder; its links to the
    audio and the PNG are relative to its folder."""
    path = Path(path)
    out_dir = path.parent
    rows = "\n".join(
        f"<tr><td>{s.index}</td><td>{s.raw_start:.2f} - {s.raw_end:.2f}</td>"
        f"<td>{s.out_start:.2f} - {s.out_end:.2f}</td><td>{html.escape(s.ops)}</td></tr>"
        for s in timeline
    )
    facts = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Edit of {html.escape(Path(raw_audio).name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}img{{max-width:100%}}</style></head>
<body>
<h1>Edit of {html.escape(Path(raw_audio).name)}</h1>
<table>{facts}</table>
<h2>Listen</h2>
<p>Raw<br><audio controls preload="metadata" src="{_src(Path(raw_audio), out_dir)}"></audio></p>
<p>Edited<br><audio controls preload="metadata" src="{_src(Path(edited_audio), out_dir)}"></audio></p>
<h2>Look</h2>
<img src="{_src(Path(png), out_dir)}" alt="raw waveform with kept, cut, looped and effected regions, and the output timeline">
<h2>Plan</h2>
<table><tr><th>segment</th><th>raw span (s)</th><th>output span (s)</th><th>ops</th></tr>
{rows}
</table>
</body></html>
"""
    return atomic_write_text(path, page)
