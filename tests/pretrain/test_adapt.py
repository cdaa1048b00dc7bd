"""make adapt: three corrected songs that all keep their first phrase teach the tool to keep
a fourth, held-out song's first phrase, and it still cuts the last phrase as before.

Real recordings (30 s slices of ../shared/data/tracks). The old style, as EditPlans
(NAME.plan.json, read exactly by make align): cut the first and the last phrase. The tool
trained on 3 such songs cuts the held-out song's first phrase; the user corrects the
tool's edits of 3 other songs by putting their first phrase back; after make align and
make adapt the held-out song keeps it, and its last phrase stays cut.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA

SONGS = ("stx_forest", "wz_new_dawn", "stx_theme", "wz_the_project", "stx_chipdisko", "wz_aftershocks", "stx_airship_2")
OLD, CORRECTED, HELD_OUT = SONGS[:3], SONGS[3:6], SONGS[6]
SECONDS = 30.0


def _phrases(grid) -> list[tuple[int, int]]:
    """[start, end) beats of each 4-bar phrase of the tracker's grid."""
    ids = grid.unit_ids(4)
    edges = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), grid.n_beats]
    return list(zip(edges[:-1], edges[1:]))


def _kept(plan, t0: float, t1: float) -> float:
    """Share of raw seconds [t0, t1) the plan plays."""
    used = np.zeros(1000)
    t = np.linspace(t0, t1, len(used), endpoint=False)
    for s in plan.segments:
        a, b = plan.segment_seconds(s)
        used[(t >= a) & (t < b)] = 1
    return float(used.mean())


def _infer(raw: Path, ckpt: Path, out: Path):
    from agent.infer import main as infer_main
    from envs.plan import EditPlan

    assert infer_main([str(raw), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return EditPlan.from_json((out / f"{raw.stem}.plan.json").read_text())


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """{name: (raw path, first phrase (t0, t1) s, last phrase (t0, t1) s, grid)}."""
    from alignment.labels import raw_grid
    from datasets.audio import load_audio, write_audio

    d = tmp_path_factory.mktemp("adapt")
    out = {}
    for name in SONGS:
        src = SHARED_DATA / "tracks" / f"{name}.ogg"
        if not src.is_file():
            pytest.skip(f"real music not available: {src}")
        a = load_audio(src)
        raw = write_audio(d / "data" / "raw" / f"{name}.wav", y=a.y[:, : int(SECONDS * a.sr)], sr=a.sr)
        grid = raw_grid(load_audio(raw))
        ph = _phrases(grid)
        b = grid.bounds
        out[name] = (raw, (b[ph[0][0]], b[ph[0][1]]), (b[ph[-1][0]], b[ph[-1][1]]), grid)
    return d, out


def test_three_corrections_teach_the_rule_to_a_held_out_song(songs, caplog):
    from alignment.run import main as align_main
    from datasets.audio import load_audio
    from envs.plan import EditPlan, Segment
    from pretrain.adapt import AdaptConfig, adapt
    from pretrain.train import PretrainConfig, run as pretrain_run

    caplog.set_level(logging.WARNING)
    d, info = songs
    data, runs = d / "data", d / "runs"
    (data / "edited").mkdir(exist_ok=True)
    # the old style: every phrase but the first and the last
    for name in OLD:
        raw, _, _, grid = info[name]
        ph = _phrases(grid)
        plan = EditPlan((Segment(ph[1][0], ph[-2][1]),), grid, load_audio(raw).sha256)
        (data / "edited" / f"{name}.plan.json").write_text(plan.to_json())
    assert align_main(["--data", str(data), "--run", "t", "--runs-dir", str(runs), "--jobs", "1"]) == 0
    pretrain_run(PretrainConfig(run="t", runs_dir=str(runs), epochs=60, dagger_rounds=0, hidden=16, seed=0))
    bc = runs / "t" / "checkpoints" / "bc_best.pt"

    raw, first, last, _ = info[HELD_OUT]
    before = _infer(raw, bc, d / "out_before")
    assert _kept(before, *first) < 0.5, f"the old style cuts the first phrase ({_kept(before, *first):.2f} kept)"

    # the user corrects the tool's edits of three new songs: the first phrase goes back in
    for name in CORRECTED:
        r, (t0, t1), _, _ = info[name]
        edit = _infer(r, bc, d / f"out_{name}")
        g = edit.grid
        end = int(np.argmin(np.abs(g.bounds - t1)))
        rest = tuple(Segment(max(s.raw_start, end), s.raw_end, s.ops) for s in edit.segments if s.raw_end > end)
        fixed = EditPlan((Segment(0, end),) + rest, g, edit.source_sha256)
        (data / "edited" / f"{name}.plan.json").write_text(fixed.to_json())
    assert align_main(["--data", str(data), "--run", "t", "--runs-dir", str(runs), "--jobs", "1"]) == 0
    summary = adapt(AdaptConfig(run="t", runs_dir=str(runs), epochs=20))
    assert summary["new_pairs"] == sorted(CORRECTED) and summary["found"].startswith("labels written after")

    after = _infer(raw, Path(summary["checkpoint"]), d / "out_after")
    assert _kept(after, *first) >= 0.75, f"the corrections' rule: keep the first phrase ({_kept(after, *first):.2f})"
    assert _kept(after, *last) < 0.5, f"the rest of the style: the last phrase is still cut ({_kept(after, *last):.2f})"
    # nothing changed since: a second make adapt says so in one line
    from pretrain.adapt import main as adapt_main

    assert adapt_main(["--run", "t", "--runs-dir", str(runs)]) == 2
