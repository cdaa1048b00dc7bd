"""The renderer: exact cuts, documented join lengths, every op in the expected direction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets.audio import load_audio
from datasets.beats import BeatGrid
from datasets.errors import ParameterError
from envs.plan import EditPlan, Ops, Segment
from envs.layout import join_positions, layout, output_duration
from envs.render import SAFETY_CEILING, main, render, render_excerpt
from tests.conftest import music_file

SR = 44100


@pytest.fixture(scope="module")
def song():
    """20 s of a real song (peak 0.98, so no safety gain) and a 0.5 s beat grid."""
    a = load_audio(music_file("freezingpoint.ogg"))
    y = np.ascontiguousarray(a.y[:, 10 * a.sr : 30 * a.sr])
    dur = y.shape[1] / a.sr
    grid = BeatGrid.from_beat_times(np.arange(0.25, dur - 0.1, 0.5), duration=dur, beats_per_bar=4)
    return y, a.sr, grid


def _plan(grid, *segs):
    return EditPlan(tuple(Segment(a, b, ops) if ops is not None else Segment(a, b) for a, b, ops in segs), grid, "")


def _rms_db(x):
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)))


def _band_db(x, sr, lo, hi):
    spec = np.abs(np.fft.rfft(x.mean(axis=0))) ** 2
    f = np.fft.rfftfreq(x.shape[1], 1 / sr)
    return 10 * np.log10(spec[(f >= lo) & (f < hi)].sum())


def test_keep_all_is_bit_exact(song):
    y, sr, grid = song
    n = grid.n_beats
    for plan in (_plan(grid, (0, n, None)), _plan(grid, (0, 5, None), (5, 17, None), (17, n, None))):
        res = render(y=y, sr=sr, plan=plan)
        assert res.y.dtype == np.float32
        assert np.array_equal(res.y, y)
        assert res.safety_gain_db == 0.0 and len(res.cut_positions) == 0


def test_cutting_one_bar_shortens_by_exactly_that_bar(song):
    y, sr, grid = song
    b = grid.samples(sr)
    plan = _plan(grid, (0, 8, None), (12, grid.n_beats, None))
    res = render(y=y, sr=sr, plan=plan)
    # a cut with raw on both sides is a centred crossfade: it removes 0 samples
    assert [j.kind for j in res.joins] == ["crossfade"] and res.joins[0].removed == 0
    assert res.y.shape[1] == y.shape[1] - (b[12] - b[8])
    assert res.joins[0].position == b[8]
    # away from the 10 ms crossfade the audio is the raw, sample for sample
    h = 441 // 2
    assert np.array_equal(res.y[:, : b[8] - h], y[:, : b[8] - h])
    assert np.array_equal(res.y[:, b[8] + h :], y[:, b[12] + h :])


def test_overlap_join_removes_the_documented_samples(song):
    y, sr, grid = song
    n = grid.n_beats
    b = grid.samples(sr)
    # the first segment ends at the end of the raw: no handle, so the later one starts early
    plan = _plan(grid, (n - 8, n, None), (0, 8, None))
    res = render(y=y, sr=sr, plan=plan, crossfade_ms=10.0)
    x = round(10.0 * sr / 1000)
    assert [j.kind for j in res.joins] == ["overlap"]
    assert res.joins[0].removed == 2 * (x // 2)
    assert res.y.shape[1] == (b[n] - b[n - 8]) + b[8] - 2 * (x // 2)
    L = 2 * (x // 2)
    assert np.array_equal(res.y[:, -(b[8] - L) :], y[:, L : b[8]])  # after the overlap: the raw


def test_loop_twice_duplicates_the_chunk(song):
    y, sr, grid = song
    b = grid.samples(sr)
    plan = _plan(grid, (0, 8, None), (8, 12, None), (8, 12, None), (12, 20, None))
    res = render(y=y, sr=sr, plan=plan)
    lay = res.layout
    assert len(lay.pieces) == 2  # (0, 12) merged, then the repeat (8, 20) merged
    chunk = b[12] - b[8]
    h = 441 // 2
    first, second = b[8], b[12]
    assert np.array_equal(res.y[:, first : first + chunk - h], y[:, b[8] : b[12] - h])
    assert np.array_equal(res.y[:, second + h : second + chunk], y[:, b[8] + h : b[12]])
    assert res.y.shape[1] == b[20] + chunk


def test_output_duration_and_join_positions_match_the_render(song):
    y, sr, grid = song
    n = grid.n_beats
    plan = _plan(
        grid,
        (0, 4, Ops(gain_db=-2)),
        (4, 8, None),
        (20, 24, Ops(time_factor=2.0)),
        (10, 13, Ops(time_factor=0.5, eq_low_db=3)),
        (30, 34, Ops(reversed=True)),
        (n - 4, n, Ops(reverb=0.3)),
        (2, 6, Ops(fade_in_s=0.1, fade_out_s=0.2)),
    )
    for xf in (0.0, 10.0, 25.0):
        res = render(y=y, sr=sr, plan=plan, crossfade_ms=xf)
        assert output_duration(plan, sr, xf) == res.y.shape[1] / sr
        assert np.array_equal(join_positions(plan, sr, xf), res.cut_positions)
    kinds = [j.kind for j in layout(plan, sr).joins]
    assert kinds == ["blend", "crossfade", "crossfade", "crossfade", "crossfade", "overlap"]


def test_gain_minus_3_db(song):
    y, sr, grid = song
    b = grid.samples(sr)
    res = render(y=y, sr=sr, plan=_plan(grid, (0, 8, None), (8, 16, Ops(gain_db=-3.0)), (16, 24, None)))
    h = 441
    got = _rms_db(res.y[:, b[8] + h : b[16] - h]) - _rms_db(y[:, b[8] + h : b[16] - h])
    assert got == pytest.approx(-3.0, abs=0.1)
    assert [j.kind for j in res.joins] == ["blend", "blend"]  # no samples removed
    assert res.y.shape[1] == b[24]


def test_eq_shelves_raise_their_band(song):
    y, sr, grid = song
    base = render(y=y, sr=sr, plan=_plan(grid, (4, 12, None))).y
    low = render(y=y, sr=sr, plan=_plan(grid, (4, 12, Ops(eq_low_db=6.0)))).y
    high = render(y=y, sr=sr, plan=_plan(grid, (4, 12, Ops(eq_high_db=6.0)))).y
    assert _band_db(low, sr, 20, 150) - _band_db(base, sr, 20, 150) > 4.0
    assert abs(_band_db(low, sr, 1000, 3000) - _band_db(base, sr, 1000, 3000)) < 1.0
    assert _band_db(high, sr, 6000, 16000) - _band_db(base, sr, 6000, 16000) > 4.0
    assert abs(_band_db(high, sr, 50, 150) - _band_db(base, sr, 50, 150)) < 1.0


def test_reverse_reverses(song):
    y, sr, grid = song
    b = grid.samples(sr)
    res = render(y=y, sr=sr, plan=_plan(grid, (6, 14, Ops(reversed=True))))
    assert np.array_equal(res.y, y[:, b[6] : b[14]][:, ::-1])


def test_time_factor_changes_length_not_pitch():
    sr = 22050
    t = np.arange(4 * sr) / sr
    y = np.stack([0.5 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
    grid = BeatGrid.from_beat_times(np.arange(0.0, 3.9, 0.5), duration=4.0, beats_per_bar=4)
    b = grid.samples(sr)
    for tf in (2.0, 0.5):
        res = render(y=y, sr=sr, plan=_plan(grid, (0, 8, Ops(time_factor=tf))))
        assert abs(res.y.shape[1] - b[8] / tf) <= 1
        mid = res.y[0, res.y.shape[1] // 4 : 3 * res.y.shape[1] // 4]
        f = np.fft.rfftfreq(len(mid), 1 / sr)[np.argmax(np.abs(np.fft.rfft(mid)))]
        assert f == pytest.approx(440, abs=5)


def test_reverb_adds_a_tail():
    sr = 22050
    t = np.arange(sr) / sr
    y = np.zeros((1, 4 * sr), np.float32)
    y[0, :sr] = 0.5 * np.sin(2 * np.pi * 330 * t) * (t < 0.9)
    grid = BeatGrid.from_beat_times(np.arange(0.0, 3.9, 1.0), duration=4.0, beats_per_bar=4)
    dry = render(y=y, sr=sr, plan=_plan(grid, (0, 1, None), (1, 4, None))).y
    wet = render(y=y, sr=sr, plan=_plan(grid, (0, 1, Ops(reverb=0.5)), (1, 4, None))).y
    assert dry.shape == wet.shape
    after = slice(sr + 441, 2 * sr)
    assert np.abs(dry[:, after]).max() == 0.0
    assert _rms_db(wet[:, after]) > -50.0
    assert _rms_db(wet[:, : int(0.9 * sr)]) > _rms_db(dry[:, : int(0.9 * sr)])


def test_distortion_adds_harmonics():
    sr = 22050
    t = np.arange(2 * sr) / sr
    y = (0.5 * np.sin(2 * np.pi * 220 * t))[None].astype(np.float32)
    grid = BeatGrid.from_beat_times(np.arange(0.0, 1.9, 0.5), duration=2.0, beats_per_bar=4)
    clean = render(y=y, sr=sr, plan=_plan(grid, (0, 4, None))).y
    dist = render(y=y, sr=sr, plan=_plan(grid, (0, 4, Ops(distortion=20.0)))).y

    def harm_ratio(x):
        return _band_db(x, sr, 600, 700) - _band_db(x, sr, 200, 240)  # 3rd harmonic vs fundamental

    assert harm_ratio(dist) - harm_ratio(clean) > 30.0
    assert _rms_db(dist) == pytest.approx(_rms_db(clean), abs=0.5)  # level matched


def test_never_clips_and_reports_the_safety_gain(song):
    y, sr, grid = song
    res = render(y=y, sr=sr, plan=_plan(grid, (0, 8, Ops(gain_db=12.0)), (8, 16, None)))
    assert np.abs(res.y).max() <= SAFETY_CEILING + 1e-6
    assert res.peak > 1.0
    assert res.safety_gain_db == pytest.approx(20 * np.log10(SAFETY_CEILING / res.peak), abs=1e-4)
    # the limiter only touches the loud segment's neighbourhood: the rest is the raw
    b = grid.samples(sr)
    w = int(0.02 * sr)
    assert np.array_equal(res.y[:, b[8] + 2 * w :], y[:, b[8] + 2 * w : b[16]])
    assert 0.0 < res.limited_s <= (b[8] + w) / sr
    loud = y * (1.2 / np.abs(y).max())
    res = render(y=loud, sr=sr, plan=_plan(grid, (0, grid.n_beats, None)))
    assert np.abs(res.y).max() <= 1.0 and res.safety_gain_db < 0


def test_fades_are_smooth_and_start_from_silence(song):
    y, sr, grid = song
    res = render(y=y, sr=sr, plan=_plan(grid, (0, 8, Ops(fade_in_s=0.5, fade_out_s=0.5))))
    env_in = np.abs(res.y[:, :100]).max()
    assert env_in < 0.02
    assert np.abs(res.y[:, -20:]).max() < 0.01
    # the fade is the equal-power curve: at 0.25 s the gain is sin(pi/4)
    k, fi = int(0.25 * sr), int(0.5 * sr)
    assert res.y[0, k] == pytest.approx(y[0, k] * np.sin(0.5 * np.pi * (k + 0.5) / fi), rel=1e-3)


def test_excerpt_equals_the_full_render(song):
    y, sr, grid = song
    plan = _plan(
        grid, (0, 6, Ops(gain_db=2)), (6, 10, Ops(eq_high_db=-4)), (20, 24, Ops(reversed=True)), (12, 16, Ops(fade_in_s=0.2))
    )
    full = render(y=y, sr=sr, plan=plan, limit=False).y
    for j in layout(plan, sr).joins:
        ex = render_excerpt(y=y, sr=sr, plan=plan, start=j.position - 2205, end=j.position + 2205)
        ref = full[:, j.position - 2205 : j.position + 2205]
        assert np.abs(ex - ref).max() <= 1e-2 * np.abs(ref).max()
    tail = render_excerpt(y=y, sr=sr, plan=plan, start=full.shape[1] - 100, end=full.shape[1] + 100)
    assert np.array_equal(tail[:, :100], full[:, -100:]) and not tail[:, 100:].any()


def test_bad_inputs_raise_parameter_error(song):
    y, sr, grid = song
    with pytest.raises(ParameterError):
        render(y=y, sr=sr, plan=_plan(grid, (3, 3, None)))
    with pytest.raises(ParameterError):
        render(y=y, sr=sr, plan=_plan(grid, (0, 4, None)), crossfade_ms=-1)
    with pytest.raises(ParameterError):
        render(y=np.zeros((2, 0), np.float32), sr=sr, plan=_plan(grid, (0, 4, None)))


def test_cli_renders_a_hand_written_plan(tmp_path, capsys):
    raw = music_file("raceintro-ks.ogg")
    a = load_audio(raw)
    grid = BeatGrid.from_beat_times(np.arange(0.1, a.duration - 0.1, 0.4), duration=a.duration, beats_per_bar=4)
    n = grid.n_beats
    text = json.dumps(
        {
            "format_version": 1,
            "source_sha256": a.sha256,
            "grid": grid.to_dict(),
            "segments": [
                {"raw_start_beat": 0, "raw_end_beat": 4},
                {"raw_start_beat": 8, "raw_end_beat": 12, "ops": {"gain_db": -3.0, "eq_high_db": 4.0}},
                {"raw_start_beat": 4, "raw_end_beat": 8, "ops": {"reversed": True}},
                {"raw_start_beat": n - 4, "raw_end_beat": n, "ops": {"fade_out_s": 0.5}},
            ],
        }
    )
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(text)
    out = tmp_path / "out.wav"
    assert main([str(raw), str(plan_path), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "clicks at cuts: 0 of 3" in printed
    edited = load_audio(out)
    plan = EditPlan.from_json(text)
    assert edited.sr == a.sr and edited.channels == a.channels
    assert edited.y.shape[1] == round(output_duration(plan, a.sr) * a.sr)

    # a plan made for other audio, a missing plan and a broken plan: one line, exit 2
    bad = json.loads(text)
    bad["source_sha256"] = "0" * 64
    plan_path.write_text(json.dumps(bad))
    assert main([str(raw), str(plan_path), str(tmp_path / "x.wav")]) == 2
    assert capsys.readouterr().err.startswith("error: plan was made for audio")
    assert main([str(raw), str(tmp_path / "missing.json"), str(tmp_path / "x.wav")]) == 2
    plan_path.write_text('{"format_version": 1, "segments": [}')
    assert main([str(raw), str(plan_path), str(tmp_path / "x.wav")]) == 2
    assert capsys.readouterr().err.count("error:") == 2
    assert not (tmp_path / "x.wav").exists()


def test_length_follows_the_grid_when_the_audio_is_a_few_samples_off(song):
    """Grids come from the 22050 Hz analysis copy: their end may miss the native length."""
    y, sr, _ = song
    for extra in (3, -3):
        dur = (y.shape[1] + extra) / sr
        grid = BeatGrid.from_beat_times(np.arange(0.25, dur - 0.1, 0.5), duration=dur, beats_per_bar=4)
        n = grid.n_beats
        plan = _plan(grid, (n - 6, n, None), (0, 4, Ops(gain_db=-1)), (n - 3, n, Ops(reversed=True)))
        res = render(y=y, sr=sr, plan=plan)
        assert res.y.shape[1] == layout(plan, sr).n_out == round(output_duration(plan, sr) * sr)
    grid = BeatGrid.from_beat_times(np.arange(0.25, 25.0, 0.5), duration=25.0, beats_per_bar=4)
    with pytest.raises(ParameterError, match="grid lasts"):
        render(y=y, sr=sr, plan=_plan(grid, (0, 4, None)))
