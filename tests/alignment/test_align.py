"""Ground-truth recovery of the aligner on edits made from a real recording."""

from __future__ import annotations

import numpy as np
import pytest

from alignment.align import align_signals
from alignment.result import Alignment
from alignment.simulate import Span, assemble, codec_delay, deliver, mp3_roundtrip
from datasets.audio import load_audio, resample
from datasets.errors import AudioError
from tests.conftest import music_file

SR = 22050


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    return load_audio(music_file("race1-jt.ogg")).y_mono


#: a far reorder (50 s -> 2 s), a loop (30-34 twice), a gain change, a fade-out
SPANS = [
    Span(40.0, 48.0),
    Span(2.0, 6.0),
    Span(30.0, 34.0),
    Span(30.0, 34.0),
    Span(10.0, 16.0, gain_db=-6.0),
    Span(20.0, 30.0, fade_out_s=3.0),
]


def mapping_accuracy(al: Alignment, truth, *, tol: float = 0.05, skip: float = 0.06, delay: float = 0.0) -> float:
    """Share of edited times (every 10 ms, +-skip around joins left out) whose raw time
    is within tol of the truth."""
    t = np.arange(0.0, truth[-1].edit_end, 0.01)
    true_raw = np.full(len(t), np.nan)
    keep = np.ones(len(t), dtype=bool)
    for s in truth:
        m = (t >= s.edit_start) & (t < s.edit_end)
        true_raw[m] = s.raw_start + (t[m] - s.edit_start)
        keep &= np.abs(t - s.edit_start) > skip
    pred = al.raw_time_at(t + delay)
    ok = keep & np.isfinite(true_raw)
    return float(np.mean(np.abs(pred[ok] - true_raw[ok]) <= tol))


def match(al: Alignment, ts, tol: float = 0.1):
    for s in al.segments:
        if abs(s.edit_start - ts.edit_start) <= tol and abs(s.edit_end - ts.edit_end) <= tol:
            return s
    raise AssertionError(f"no segment for truth {ts}; got {[ (round(s.edit_start,2), round(s.edit_end,2), round(s.raw_start,2)) for s in al.segments]}")


def test_recovers_loop_reorder_gain_fade(raw):
    y, truth = assemble(y=raw, sr=SR, spans=SPANS, crossfade_ms=20.0)
    al = align_signals(y_raw=raw, y_edit=y)
    assert len(al.segments) == len(truth)
    for ts in truth:
        s = match(al, ts)
        assert abs(s.raw_start - ts.raw_start) < 0.02
        assert abs(s.raw_end - ts.raw_end) < 0.02
        assert abs(s.gain_db - ts.gain_db) < 0.75, (s, ts)
        assert abs(s.fade_out_s - ts.fade_out_s) < 0.3, (s, ts)
        assert s.fade_in_s == 0.0
    assert mapping_accuracy(al, truth) >= 0.99
    assert al.confidence > 0.9
    assert not al.unmatched


def test_mp3_edited_file(raw):
    y, truth = assemble(y=raw, sr=SR, spans=SPANS, crossfade_ms=40.0)
    enc = mp3_roundtrip(y=y, sr=SR, kbps=128)
    assert len(enc) > len(y)  # the codec's delay and padding are really there
    delay = codec_delay(ref=y, y=enc, sr=SR)
    assert 0.0 < delay < 0.1
    al = align_signals(y_raw=raw, y_edit=enc)
    assert mapping_accuracy(al, truth, delay=delay) >= 0.97
    loop = [s for s in al.segments if abs(s.raw_start - 30.0) < 0.1]
    assert len(loop) == 2, "the loop is two segments over the same raw span"


def test_delivered_file_with_mastering(raw):
    spans = [Span(2.0, 10.0, fade_in_s=1.0), Span(36.0, 44.0), Span(12.0, 18.0)]
    y, truth = assemble(y=raw, sr=SR, spans=spans, crossfade_ms=10.0)
    x, sr = deliver(y=y, sr=SR, gain_db=-4.0)
    x = resample(x, sr_in=sr, sr_out=SR)
    al = align_signals(y_raw=raw, y_edit=x)
    assert mapping_accuracy(al, truth, delay=codec_delay(ref=y, y=x, sr=SR)) >= 0.97
    assert al.master_gain_db < -1.0  # the export made it quieter
    assert match(al, truth[0]).fade_in_s > 0.2


def test_identical_pair_is_one_segment(raw):
    y = raw[: 20 * SR]
    al = align_signals(y_raw=y, y_edit=y)
    assert len(al.segments) == 1
    s = al.segments[0]
    assert s.edit_start == 0.0 and abs(s.edit_end - 20.0) < 0.01
    assert abs(s.raw_start) < 0.005 and abs(s.gain_db) < 0.1
    assert al.confidence > 0.95 and al.fidelity < 0.5


def test_unrelated_pair_low_confidence(raw):
    other = load_audio(music_file("start1-jt.ogg")).y_mono[: 30 * SR]
    al = align_signals(y_raw=raw, y_edit=other)
    assert al.confidence < 0.2
    assert al.segments == ()
    assert al.unmatched and al.unmatched[0][1] - al.unmatched[0][0] > 25


def test_unmatched_material_is_marked(raw):
    y, _ = assemble(y=raw, sr=SR, spans=[Span(2.0, 10.0), Span(20.0, 26.0)])
    other = load_audio(music_file("start1-jt.ogg")).y_mono[10 * SR : 15 * SR]
    e = np.concatenate([y[: 8 * SR], other, y[8 * SR :]])
    al = align_signals(y_raw=raw, y_edit=e)
    assert any(a <= 8.2 and b >= 12.8 for a, b in al.unmatched), al.unmatched
    assert len(al.segments) == 2


def test_reversed_and_double_time_are_detected(raw):
    y, truth = assemble(y=raw, sr=SR, spans=[Span(2.0, 8.0), Span(20.0, 24.0, reversed=True), Span(30.0, 38.0, time_factor=2.0), Span(40.0, 46.0)])
    al = align_signals(y_raw=raw, y_edit=y)
    rev = [(s, fx) for s, fx in zip(al.segments, al.effects) if fx.reversed]
    fast = [(s, fx) for s, fx in zip(al.segments, al.effects) if fx.time_factor == 2.0]
    assert rev and abs(rev[0][0].raw_start - 20.0) < 0.3 and abs(rev[0][0].edit_start - 6.0) < 0.2
    assert fast and abs(fast[0][0].raw_start - 30.0) < 0.3


def test_too_short_signal_is_an_error(raw):
    with pytest.raises(AudioError):
        align_signals(y_raw=raw, y_edit=raw[:1000])
