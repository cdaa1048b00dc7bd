"""The editor's grid: phase from cut points, phrase-level labels, the audio ranker."""

from __future__ import annotations

import numpy as np
import pytest

from alignment.grid import GridPhase, cut_points, fit_phase
from alignment.grid_model import GridModel, candidate_features
from alignment.labels import plan_actions
from datasets.beats import BeatGrid
from datasets.features import FEATURE_NAMES, N_FEATURES, BeatFeatures, feature_index
from envs.actions import ActionType, Size
from envs.plan import EditPlan, Segment


def _grid(n_beats: int = 160, pickup: int = 0) -> BeatGrid:
    """4/4 at 120 BPM; the tracker's downbeat on beat ``pickup``."""
    return BeatGrid.from_beat_times(np.arange(n_beats) * 0.5, duration=n_beats * 0.5, beats_per_bar=4,
                                    downbeat_index=pickup)


def _phrase_starts(g: BeatGrid, bars: int = 4) -> np.ndarray:
    return np.flatnonzero((g.beat_in_bar == 0) & (g.bar % bars == 0))


def _editor_plan(base: BeatGrid, editor: BeatGrid) -> EditPlan:
    """Keeps the intro, cuts the 2nd and 4th of the editor's phrases, plays the 3rd twice."""
    p = _phrase_starts(editor)
    n = base.n_beats
    segs = [Segment(0, int(p[1])), Segment(int(p[2]), int(p[3])), Segment(int(p[2]), int(p[3])), Segment(int(p[4]), n)]
    return EditPlan(segments=tuple(segs), grid=base)


def test_rephased_grid_moves_bars_and_phrases():
    g = _grid()
    r = g.rephased(downbeat_shift=1, bar_offset=3)
    assert np.array_equal(r.bounds, g.bounds)
    assert np.array_equal(np.flatnonzero(r.beat_in_bar == 0), np.flatnonzero(g.beat_in_bar == 1))
    assert r.bar[0] == 3  # beat 0 is a pickup beat of bar 0 + offset
    first_phrase = _phrase_starts(r)[0]
    assert first_phrase == 1  # the pickup is bar 3, so the first downbeat (beat 1) is bar 4: a phrase start
    assert _phrase_starts(r)[1] == 1 + 16
    assert GridPhase().apply(g) is g


@pytest.mark.parametrize("shift,offset", [(0, 0), (1, 3), (3, 6), (2, 1)])
def test_fit_phase_recovers_a_known_offset(shift, offset):
    base = _grid()
    editor = base.rephased(downbeat_shift=shift, bar_offset=offset)
    plan = _editor_plan(base, editor)
    cuts = cut_points(plan.segments, base.n_beats)
    fit = fit_phase(base, cuts)
    # phrase-level cuts fix the downbeat and the 4-bar phase; the 8-bar parity may tie
    assert GridPhase(shift, offset) in fit.ties
    assert fit.phase.downbeat_shift == shift and fit.phase.bar_offset % 4 == offset % 4
    assert fit.on_bar_after == 1.0
    assert fit.on_bar_before == (1.0 if shift == 0 else 0.0)


def test_cut_points_ignore_continuations():
    g = _grid(64)
    segs = (Segment(0, 8), Segment(8, 16), Segment(24, 32), Segment(24, 32), Segment(40, 64))
    assert cut_points(segs, g.n_beats).tolist() == [16, 24, 32, 40]
    assert cut_points((Segment(0, 64),), 64).tolist() == []
    fit = fit_phase(g, np.array([], dtype=np.int64))
    assert fit.phase == GridPhase() and fit.n_cuts == 0  # no evidence: the product's own phase


def test_phrase_edit_on_offset_grid_becomes_phrase_actions():
    base = _grid()
    editor = base.rephased(downbeat_shift=1, bar_offset=2)
    plan = _editor_plan(base, editor)
    fit = fit_phase(base, cut_points(plan.segments, base.n_beats))
    before, _, exact_b, _ = plan_actions(plan)
    after, _, exact_a, _ = plan_actions(EditPlan(segments=plan.segments, grid=fit.phase.apply(base)))
    assert exact_b and exact_a
    assert sum(a[1] == Size.BEAT for a in before) > 0  # off-phase: beat-level fiddling
    assert sum(a[1] == Size.BEAT for a in after) == 0
    assert any(a[0] == ActionType.LOOP for a in after)
    assert not any(a[0] == ActionType.JUMP_BACK for a in after)
    assert len(after) < len(before)


def _song(rng: np.random.Generator, accent_phase: int, n_beats: int = 192) -> BeatFeatures:
    """Random features with a kick (low-band energy, drums) on every 4th beat from
    ``accent_phase``: the music says where that editor hears the bar."""
    grid = _grid(n_beats)
    v = rng.normal(size=(n_beats, N_FEATURES)).astype(np.float32)
    v[:, feature_index("rms_db")] = -20 + rng.normal(scale=0.5, size=n_beats)
    on = (np.arange(n_beats) % 4) == accent_phase
    for name in ("energy_low", "stem_drums_rms", "onset_strength"):
        v[on, feature_index(name)] += 3.0
    return BeatFeatures(values=v, names=FEATURE_NAMES, grid=grid, stem_method="dsp")


def test_ranker_learns_what_in_the_audio_marks_the_editors_downbeat():
    rng = np.random.default_rng(0)
    train = []
    for i in range(8):
        phase = i % 4  # the tracker's downbeat is beat 0; the kick says otherwise
        feats = _song(rng, phase)
        cands, X = candidate_features(feats)
        train.append((X, np.array([c.downbeat_shift == phase for c in cands])))  # 4-bar phase unknown
    model = GridModel.fit(train)
    assert model.weights is not None and model.agreement == 1.0
    for phase in range(4):
        assert model.predict(_song(rng, phase)).downbeat_shift == phase
    back = GridModel.from_dict(model.to_dict())
    song = _song(rng, 2)
    assert back.predict(song) == model.predict(song) and model.predict(song).downbeat_shift == 2
    assert GridModel().predict(_song(rng, 1)) == GridPhase()  # no evidence: the tracker's phase


def test_edge_slivers_join_their_phrase_in_the_labels():
    # a 1-beat pickup and a 2-beat tail: an editor who keeps the opening phrase and the
    # last one (pickup and tail included) makes phrase-level actions, never BEAT ones
    base = _grid(n_beats=1 + 16 * 6 + 2, pickup=1).rephased(bar_offset=3)  # phrases from beat 1
    p = _phrase_starts(base)
    assert p[0] == 1 and p[-1] == base.n_beats - 2  # the tail is a 2-beat bar of its own
    plan = EditPlan(segments=(Segment(0, int(p[1])), Segment(int(p[-2]), base.n_beats)), grid=base)
    acts, _, exact, _ = plan_actions(plan)
    assert exact
    assert not any(a[1] == Size.BEAT for a in acts), acts
    assert acts[0][:2] == (ActionType.KEEP, Size.PHRASE)


@pytest.mark.parametrize("ratio,offset,shift", [(2 / 3, 0.5, 0), (2.0, 0.0, 1), (0.5, 1.0, 1)])
def test_fit_tempo_recovers_an_editor_who_taps_another_pulse(ratio, offset, shift):
    # the editor taps 2 beats in 3 of the tracker's (or double, or half time on the off
    # parity) and cuts on its own phrase lines: the labels move to its pulse
    from types import SimpleNamespace

    from alignment.grid import cut_times, fit_tempo

    base = _grid(n_beats=320)
    truth = GridPhase(downbeat_shift=shift, bar_offset=2, beat_ratio=ratio, beat_offset=offset)
    editor = truth.apply(base)
    p = editor.bounds[_phrase_starts(editor)]
    spans = [(0.0, p[1]), (p[2], p[3]), (p[2], p[3]), (p[4], p[6]), (p[7], editor.duration)]
    segs = [SimpleNamespace(raw_start=float(a), raw_end=float(b)) for a, b in spans]
    fit = fit_tempo(base, cut_times(segs, base.duration))
    if ratio == 0.5:  # half time: its lines are the tracker's too, which keeps them, tied
        assert fit.phase.tempo == (1.0, 0.0) and fit.on_bar_after == 1.0
        assert any(t == pytest.approx((ratio, offset)) for t in fit.tempo_ties)
        return
    assert fit.phase.tempo == pytest.approx((ratio, offset))
    got = fit.phase.apply(base)
    assert np.allclose(got.bounds, editor.bounds)
    assert fit.on_bar_after == 1.0 and fit.on_bar_before == 0.0  # its bar lines fall between the tracker's
    # the same cuts on the tracker's own pulse stay there (no evidence for another)
    own = _phrase_starts(base)
    segs = [SimpleNamespace(raw_start=float(a), raw_end=float(b))
            for a, b in ((0.0, base.bounds[own[2]]), (base.bounds[own[4]], base.duration))]
    assert fit_tempo(base, cut_times(segs, base.duration)).phase.tempo == (1.0, 0.0)


def test_tempo_ranker_learns_the_pulse_with_onsets():
    # songs whose onsets fall on a 2/3 lattice of the tracker's beats: the ranker trained
    # on their tempo evidence picks that lattice on a new song, from the audio alone
    from alignment.grid_model import TempoModel, tempo_features

    sr_hop = 22050 / 512
    rng = np.random.default_rng(0)
    songs = []
    for k in range(6):
        g = _grid(n_beats=240)
        env = rng.random(int(g.duration * sr_hop) + 1) * 0.2
        lattice = GridPhase(beat_ratio=2 / 3, beat_offset=0.5 * (k % 3)).base(g)
        env[np.round(lattice.bounds[1:-1] * sr_hop).astype(int)] += 3.0
        env[np.round(g.bounds[1:-1:3] * sr_hop).astype(int)] += 1.0  # some onsets on the tracker's beats too
        cands, X = tempo_features(env, g, sr_hop=sr_hop)
        truth = (2 / 3, 0.5 * (k % 3))
        songs.append((X, np.array([c == pytest.approx(truth) for c in cands])))
    model = TempoModel.fit(songs[:5])
    assert model.weights is not None and model.agreement == 1.0
    X, m = songs[5]
    assert m[int(np.argmax(model.scores(X)))]
    again = TempoModel.from_dict(model.to_dict())
    assert np.allclose(again.scores(X), model.scores(X))


def test_inference_puts_the_song_on_the_predicted_pulse(tmp_path):
    # a checkpoint whose pulse ranker prefers "two beats in three of the tracker's": the
    # new song's features come back on that pulse's beats, bar and phrase columns included
    from alignment.grid_model import TEMPO_FEATURE_NAMES, TempoModel, editor_grid_features
    from datasets.audio import ANALYSIS_SR, load_audio, write_audio
    from datasets.features import extract_features
    from tests.conftest import click_track

    y, _ = click_track(bpm=150, seconds=24.0)
    path = write_audio(tmp_path / "clicks.wav", y=y, sr=ANALYSIS_SR)
    audio = load_audio(path)
    feats = extract_features(audio, stems="dsp", use_cache=False)
    w = np.zeros(len(TEMPO_FEATURE_NAMES))
    w[TEMPO_FEATURE_NAMES.index("is_two_thirds")] = 5.0
    n = len(TEMPO_FEATURE_NAMES)
    model = GridModel(tempo=TempoModel(weights=tuple(w), mean=(0.0,) * n, std=(1.0,) * n, n_songs=3, agreement=1.0))
    got, phase = editor_grid_features(audio, feats, model.to_dict(), stems="dsp", use_cache=False)
    assert phase.beat_ratio == pytest.approx(2 / 3)
    assert got.grid.tempo == pytest.approx(feats.grid.tempo * 2 / 3, rel=0.02)
    assert np.allclose(got.grid.bounds, phase.apply(feats.grid).bounds)
    # no pulse ranker (an older checkpoint): the tracker's beats stay
    same, ph = editor_grid_features(audio, feats, GridModel().to_dict(), stems="dsp", use_cache=False)
    assert same is feats and ph == GridPhase()
