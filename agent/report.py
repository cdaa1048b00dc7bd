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


def plot_edit(
    plan: EditPlan, *, y: np.ndarray, sr: int, path: str | os.PathLike, title: str = "", crossfade_ms: float = DEFAULT_CROSSFADE_MS
) -> Path:
    """Draw the edit to a PNG (written atomically).

    y : raw audio [shape=(channels, n) or (n,)] at rate sr, for the waveform.

    Drawn with matplotlib's object API on an Agg canvas, without pyplot (no figure
    manager, no backend selection: ~0.1 s less in a fresh process), and one span per
    run of beats of one kind instead of one per beat (a 3-minute song: ~40 spans, not
    ~480; the drawing took ~0.4 s).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    mono = y.mean(axis=0) if y.ndim == 2 else y
    # An envelope of ~2000 points: enough detail for a 10-minute song, cheap to draw.
    hop = max(1, len(mono) // 2000)
    n = len(mono) // hop
    env = np.abs(mono[: n * hop]).reshape(n, hop).max(axis=1)
    t = np.arange(n) * hop / sr

    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    ax_raw, ax_out = fig.subplots(2, 1, gridspec_kw={"height_ratios": [2, 1]})
    b = plan.grid.bounds
    for i0, i1, k in _runs(_region_kind(plan)):
        ax_raw.axvspan(b[i0], b[i1], color=_COLOURS[k], alpha=0.35, lw=0)
    ax_raw.fill_between(t, -env, env, color="#222222", lw=0)
    ax_raw.set_xlim(0, plan.grid.duration)
    ax_raw.set_ylim(-1.05, 1.05)
    ax_raw.set_yticks([])
    ax_raw.set_xlabel("raw time (s)")
    ax_raw.set_title(title or "edit")
    ax_raw.legend(handles=[Patch(color=c, label=k) for k, c in _COLOURS.items()], loc="upper right", ncol=4, fontsize=8)

    timeline = output_timeline(plan, sr=sr, crossfade_ms=crossfade_ms)
    # alternate two blues: segment colours must not be read as the raw plot's categories
    for s in timeline:
        ax_out.barh(0, s.out_end - s.out_start, left=s.out_start, color=("#5b8fd6", "#a9c6ee")[s.index % 2], edgecolor="white")
        if s.out_end - s.out_start > 0.04 * max(1e-9, timeline[-1].out_end):
            ax_out.text((s.out_start + s.out_end) / 2, 0, f"{s.raw_start:.0f}-{s.raw_end:.0f}s", ha="center", va="center", fontsize=7)
    ax_out.set_xlim(0, max(timeline[-1].out_end, 1e-3))
    ax_out.set_yticks([])
    ax_out.set_xlabel("output time (s); labels give the raw span played")
    fig.tight_layout()

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
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
