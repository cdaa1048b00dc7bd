"""Alignment verdicts a user can act on (issue 13, rows 2 and 3).

Row 2: an edit of a *different* song of a similar style aligned in fragments and was
labelled (exit 0, a bare confidence number); now it is refused below the calibrated
``MIN_CONFIDENCE`` with one line naming both files and the number, and ``make align``
skips it and lists it. Row 3: the raw reversed or played twice aligned perfectly but the
labels kept 0.57 of the song (chunks reversed in the wrong order) or dropped the repeat;
now the labels play them (REVERSE chunks last-first, JUMP_BACK for the second pass) and
what the vocabulary cannot say (a third pass, past the executor's 1.5x output cap) is
reported in seconds and spans, and ``make align`` skips such a pair by its rule.
Short clips of ../shared/data (20-25 s); about 30 s in all on one core.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from alignment.align import align
from alignment.labels import MIN_CONFIDENCE, MIN_REPRODUCED, label_pair
from alignment.simulate import Span, assemble
from datasets.audio import load_audio, write_audio
from envs.actions import ActionType
from envs.executor import execute
from tests.conftest import SHARED_DATA, music_file

SR = 22050


def _track(name: str):
    p = SHARED_DATA / "tracks" / name
    if not p.exists():
        pytest.skip(f"real music not available: {p} (../shared/data is absent)")
    return p


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """raw.wav (20 s of a real recording) and its edits: a real one (a reorder), the raw
    reversed, played twice and three times; other_raw.wav / other_edit.wav: 25 s of two
    different songs from one game's soundtrack (one composer, one style)."""
    d = tmp_path_factory.mktemp("verdicts")
    a = load_audio(music_file("race1-jt.ogg"))
    y = a.y[:, 10 * a.sr : 30 * a.sr]
    write_audio(d / "raw.wav", y=y, sr=a.sr)
    write_audio(d / "reversed.wav", y=np.ascontiguousarray(y[:, ::-1]), sr=a.sr)
    write_audio(d / "twice.wav", y=np.concatenate([y, y], axis=1), sr=a.sr)
    write_audio(d / "thrice.wav", y=np.concatenate([y, y, y], axis=1), sr=a.sr)
    e, _ = assemble(y=load_audio(d / "raw.wav").y_mono, sr=SR, spans=[Span(10.0, 18.0), Span(1.0, 9.0)])
    write_audio(d / "edit.wav", y=e, sr=SR)
    for name, src in (("other_raw", "stx_arctic_breeze.ogg"), ("other_edit", "stx_battle_theme.ogg")):
        b = load_audio(_track(src))
        write_audio(d / f"{name}.wav", y=b.y[:, : 25 * b.sr], sr=b.sr)
    return d


def _beat_s(lab) -> float:
    return float(np.max(np.diff(lab.plan.grid.bounds)))


def test_unrelated_pair_is_refused_in_one_line(clips, tmp_path, capsys):
    from alignment.__main__ import main

    raw, ed = clips / "other_raw.wav", clips / "other_edit.wav"
    al = align(raw=load_audio(raw), edited=load_audio(ed))
    # fragments of the other song match (what used to be labelled with exit 0) ...
    assert al.segments and 0.05 < al.confidence < MIN_CONFIDENCE
    out = tmp_path / "o.json"
    assert main([str(raw), str(ed), "--json", str(out), "--no-fidelity"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    # ... now refused: one line with both files and the number, and nothing written
    assert len(errors) == 1
    assert str(raw) in errors[0] and str(ed) in errors[0] and f"confidence {al.confidence:.2f}" in errors[0]
    assert not out.exists()
    # a user who knows better can override the threshold
    assert main([str(raw), str(ed), "--no-fidelity", "--no-actions", "--min-confidence", "0"]) == 0
    assert main([str(raw), str(ed), "--min-confidence", "nan"]) == 2


def test_real_edit_passes_without_a_warning(clips, capsys):
    from alignment.__main__ import main

    assert main([str(clips / "raw.wav"), str(clips / "edit.wav"), "--no-fidelity"]) == 0
    cap = capsys.readouterr()
    assert "warning:" not in cap.err
    assert "reproduced 1.000" in cap.out


def test_reversed_edit_is_labelled_backwards(clips):
    lab = label_pair(clips / "raw.wav", clips / "reversed.wav", with_fidelity=False)
    segs = lab.plan.segments
    n = lab.plan.grid.n_beats
    # REVERSE chunks, the last chunk first, each ending where the one before began
    assert len(segs) > 1 and all(s.ops.reversed for s in segs)
    assert all(a.raw_start == b.raw_end for a, b in zip(segs, segs[1:]))
    assert segs[-1].raw_start == 0 and segs[0].raw_end == n - 1
    assert ActionType.REVERSE in {t for t, _, _ in lab.actions} and ActionType.JUMP_BACK in {t for t, _, _ in lab.actions}
    assert execute(lab.plan.grid, lab.actions, source_sha256=lab.plan.source_sha256) == lab.plan.merged()
    # the one thing the vocabulary cannot say: the raw's last beat (reaching the song's end
    # ends the episode), reported with its spans
    loss = lab.loss
    assert 0 < loss.lost_s <= _beat_s(lab) + 0.01 and loss.reproduced >= 0.95 and loss.trains()
    (e0, e1, r0, r1, rev), = loss.spans
    assert e0 == 0.0 and rev and r1 == pytest.approx(20.0, abs=0.01)
    assert lab.exact is False and "stops at beat" in lab.notes[0]


def test_played_twice_is_labelled_as_two_passes(clips):
    lab = label_pair(clips / "raw.wav", clips / "twice.wav", with_fidelity=False)
    used = lab.plan.raw_beats_used
    assert (used[:-1] == 2).all() and used[-1] == 1  # every beat twice but the first pass's last
    assert ActionType.JUMP_BACK in {t for t, _, _ in lab.actions}
    assert execute(lab.plan.grid, lab.actions, source_sha256=lab.plan.source_sha256) == lab.plan.merged()
    loss = lab.loss
    assert 0 < loss.lost_s <= _beat_s(lab) + 0.01 and loss.reproduced >= 0.97 and loss.trains()
    (e0, e1, r0, r1, rev), = loss.spans
    assert e1 == pytest.approx(20.0, abs=0.05) and r1 == pytest.approx(20.0, abs=0.01) and not rev


def test_played_three_times_reports_what_is_lost(clips, capsys):
    from alignment.__main__ import main

    lab = label_pair(clips / "raw.wav", clips / "thrice.wav", with_fidelity=False)
    loss = lab.loss
    # two passes fit; the third starts past the executor's 1.5x output cap
    assert lab.plan.raw_beats_used.max() == 2
    assert 0.6 < loss.reproduced < MIN_REPRODUCED and not loss.trains()
    assert loss.lost_s > 19.0
    assert loss.spans[-1][1] == pytest.approx(60.0, abs=0.05) and loss.spans[-1][0] < 41.0
    assert main([str(clips / "raw.wav"), str(clips / "thrice.wav"), "--no-fidelity"]) == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1
    w = warnings[0]
    assert str(clips / "thrice.wav") in w and f"lost {loss.lost_s:.2f} s" in w and "edited " in w and "(raw " in w
    assert "1.5x" in w and "make align skips it" in w


def test_make_align_skips_and_lists_what_does_not_train(clips, tmp_path, capsys):
    from alignment.run import main

    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "edited").mkdir()
    for name, raw, ed in (("real", "raw", "edit"), ("other", "other_raw", "other_edit"), ("thrice", "raw", "thrice")):
        shutil.copy(clips / f"{raw}.wav", data / "raw" / f"{name}.wav")
        shutil.copy(clips / f"{ed}.wav", data / "edited" / f"{name}.wav")
    runs = tmp_path / "runs"
    assert main(["--data", str(data), "--run", "t", "--runs-dir", str(runs), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    labels = runs / "t" / "labels"
    index = json.loads((labels / "index.json").read_text())
    assert list(index) == ["real"] and index["real"]["reproduced"] >= 0.95
    assert list(index) == ["real"] and not (labels / "train.json").exists()  # training never sees the others
    skipped = json.loads((labels / "skipped.json").read_text())
    assert skipped["other"]["reason"] == "refused" and skipped["other"]["confidence"] < MIN_CONFIDENCE
    assert skipped["thrice"]["reason"] == "labels lose the edit" and skipped["thrice"]["reproduced"] < MIN_REPRODUCED
    assert not (labels / "other.json").exists()
    # listed at the end of the table, with the numbers
    tail = out[out.index("skipped, not trained on (2"):]
    assert "other: refused:" in tail and "thrice: labels lose the edit:" in tail and "% of the aligned edit" in tail
    # a second run reuses the cached labels and reaches the same verdicts
    assert main(["--data", str(data), "--run", "t", "--runs-dir", str(runs), "--jobs", "1"]) == 0
    assert list(json.loads((labels / "index.json").read_text())) == ["real"]
    assert set(json.loads((labels / "skipped.json").read_text())) == {"other", "thrice"}
