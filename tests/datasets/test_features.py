import logging
import re

import numpy as np
import pytest

from datasets import feature_columns as C
from datasets import features as F
from datasets.audio import ANALYSIS_SR, Audio, audio_hash, load_audio, resample, to_mono, write_audio
from datasets.beats import BeatGrid, onset_envelope, track_beats
from datasets.errors import ParameterError
from datasets.features import FEATURE_NAMES, N_FEATURES, BeatFeatures, extract_features, feature_index


def _audio(y: np.ndarray, sr: int = ANALYSIS_SR, path: str = "generated") -> Audio:
    y = np.atleast_2d(np.asarray(y, dtype=np.float32))
    return Audio(
        path=path, y=y, sr=sr, y_mono=resample(to_mono(y), sr_in=sr, sr_out=ANALYSIS_SR),
        sha256=audio_hash(y, sr), is_silent=False,
    )


def _song(*, sr: int, seconds: float = 8.0, bpm: float = 120.0, seed: int = 0) -> np.ndarray:
    """Kick on every beat (accent on 1), hi-hat noise on off-beats, a bass note per bar."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    y = np.zeros(n)
    period = 60.0 / bpm
    t = np.arange(int(0.15 * sr)) / sr
    kick = np.sin(2 * np.pi * 60 * t * (1 + 2 * np.exp(-t * 40))) * np.exp(-t * 25)
    hat = rng.standard_normal(int(0.03 * sr)) * np.exp(-np.arange(int(0.03 * sr)) / sr * 150)
    if sr > 8000:  # a tone that still exists below 4 kHz at 8 kHz rate
        pass
    for i, bt in enumerate(np.arange(0.0, seconds - 0.2, period)):
        s = int(bt * sr)
        a = 1.0 if i % 4 == 0 else 0.6
        y[s : s + len(kick)] += a * kick[: n - s]
        h = int((bt + period / 2) * sr)
        if h + len(hat) < n:
            y[h : h + len(hat)] += 0.2 * hat
    tt = np.arange(n) / sr
    bar = 4 * period
    bass_f = np.where((tt // bar) % 2 == 0, 110.0, 82.4)
    y += 0.2 * np.sin(2 * np.pi * np.cumsum(bass_f) / sr)
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def _grid(seconds: float, period: float = 0.5, bpb: int = 4) -> BeatGrid:
    return BeatGrid.from_beat_times(np.arange(0.0, seconds - 1e-6, period), duration=seconds, beats_per_bar=bpb)


# ----------------------------------------------------------------------- names
def test_names_are_pinned_to_indices():
    assert N_FEATURES == 121 and len(FEATURE_NAMES) == 121 and len(set(FEATURE_NAMES)) == 121
    pinned = {
        0: "onset_strength", 2: "rms", 3: "rms_db", 7: "spectral_centroid", 8: "spectral_rolloff",
        9: "spectral_bandwidth", 10: "spectral_flatness", 12: "zero_crossing_rate", 13: "contrast_0",
        19: "contrast_6", 20: "energy_low", 23: "mfcc_0", 35: "mfcc_12", 36: "mfcc_delta_0", 48: "mfcc_delta_12",
        49: "chroma_C", 53: "chroma_E", 56: "chroma_G", 60: "chroma_B", 61: "tempo_bpm", 66: "bar_phase",
        67: "bar_phase_sin", 68: "bar_phase_cos", 64: "ibi_ratio", 69: "is_downbeat", 71: "phrase_phase",
        76: "stem_drums_rms", 77: "stem_drums_centroid", 78: "stem_drums_energy_ratio", 79: "stem_bass_rms",
        82: "stem_vocals_rms", 85: "stem_other_rms", 87: "stem_other_energy_ratio", 88: "tonnetz_0",
        96: "band_sub_db", 103: "song_position", 120: "timbre_distance_to_song",
    }
    for i, name in pinned.items():
        assert FEATURE_NAMES[i] == name
        assert feature_index(name) == i
    with pytest.raises(ParameterError, match="nope"):
        feature_index("nope")


def test_docstring_table_matches_the_names():
    """datasets/feature_columns.py's docstring table (the one place columns are documented)
    agrees with FEATURE_NAMES: every documented 'INDEX name' is right and every index is
    documented."""
    covered = set()
    for m in re.finditer(r"(?<![\w.(-])(\d{1,3})(?:-(\d{1,3}))?\s+([a-z][\w#]*)", C.__doc__):
        lo, hi, name = int(m.group(1)), int(m.group(2) or m.group(1)), m.group(3)
        if "_" not in name and name not in FEATURE_NAMES:
            continue  # prose such as "4 bars"
        assert FEATURE_NAMES[lo] == name, (lo, name)
        covered.update(range(lo, hi + 1))
    for lo, hi in re.findall(r"(\d{1,3}) stem_drums_rms \.\. (\d{1,3})", C.__doc__):
        covered.update(range(int(lo), int(hi) + 1))
    assert covered == set(range(121)), sorted(set(range(121)) - covered)


# ----------------------------------------------------------------------- behaviour
def test_shapes_finite_and_grid():
    y = _song(sr=ANALYSIS_SR)
    grid = _grid(8.0)
    f = extract_features(_audio(y), grid=grid, stems="dsp", use_cache=False)
    assert isinstance(f, BeatFeatures)
    assert f.values.shape == (grid.n_beats, 121) and f.values.dtype == np.float32
    assert np.isfinite(f.values).all()
    assert f.names == FEATURE_NAMES and f.grid is grid and f.stem_method == "dsp"
    np.testing.assert_array_equal(f.column("is_downbeat"), grid.is_downbeat.astype(np.float32))
    np.testing.assert_allclose(f.column("tempo_bpm"), 120.0, rtol=1e-4)
    np.testing.assert_allclose(f.column("beat_duration_s"), 0.5, rtol=1e-5)
    ratios = np.stack([f.column(f"stem_{s}_energy_ratio") for s in ("drums", "bass", "vocals", "other")])
    np.testing.assert_allclose(ratios.sum(0), 1.0, atol=1e-4)
    # kicks sit on the beat starts, so each beat's onset salience is well above average
    assert np.median(f.column("beat_salience")) > 1.5


def test_rms_rises_when_the_audio_gets_louder():
    y = _song(sr=ANALYSIS_SR)
    grid = _grid(8.0)
    quiet = extract_features(_audio(y), grid=grid, stems="dsp", use_cache=False)
    loud = extract_features(_audio(2.0 * y), grid=grid, stems="dsp", use_cache=False)  # +6.02 dB
    np.testing.assert_allclose(loud.column("rms") / quiet.column("rms"), 2.0, rtol=1e-3)
    np.testing.assert_allclose(loud.column("rms_db") - quiet.column("rms_db"), 6.02, atol=0.01)
    np.testing.assert_allclose(loud.column("band_bass_db") - quiet.column("band_bass_db"), 6.02, atol=0.01)
    # relative loudness is a property of the song, not of the gain
    np.testing.assert_allclose(loud.column("loudness_rel_song_db"), quiet.column("loudness_rel_song_db"), atol=1e-3)
    # within one song: the second half at +6 dB
    y2 = y.copy()
    y2[len(y2) // 2 :] *= 2.0
    f = extract_features(_audio(y2), grid=grid, stems="dsp", use_cache=False)
    rms_db = f.column("rms_db")
    assert np.all(rms_db[9:] > rms_db[:7].max() + 3.0)
    assert np.all(f.column("stem_bass_rms")[9:] > f.column("stem_bass_rms")[:7].max())


def test_chroma_follows_a_played_chord():
    sr = ANALYSIS_SR
    t = np.arange(4 * sr) / sr

    def chord(*midi):
        return sum(np.sin(2 * np.pi * 440.0 * 2 ** ((m - 69) / 12) * t) for m in midi) / len(midi)

    y = np.concatenate([chord(60, 64, 67), chord(57, 60, 64)]).astype(np.float32) * 0.5  # C major, A minor
    f = extract_features(_audio(y), grid=_grid(8.0), stems="dsp", use_cache=False)
    chroma = np.stack([f.column(f"chroma_{p}") for p in C.PITCH_CLASSES], axis=1)
    for beat in range(f.n_beats):
        top = {C.PITCH_CLASSES[i] for i in np.argsort(chroma[beat])[-3:]}
        assert top == ({"C", "E", "G"} if f.grid.times[beat] < 4.0 else {"A", "C", "E"}), (beat, top)
    assert f.column("chroma_change")[8] > 0.2 > f.column("chroma_change")[3]
    assert f.column("key_clarity")[2] > 0.5


def test_onset_envelope_is_shared_with_the_beat_tracker(race1_path):
    a = load_audio(race1_path)
    y = a.y_mono[: 15 * ANALYSIS_SR]
    an = F._analyse(y, F.FeatureConfig())
    np.testing.assert_allclose(an.onset_env, onset_envelope(y=y, sr=ANALYSIS_SR), rtol=1e-4, atol=1e-4)


def test_beat_tracker_gets_the_shared_onset_envelope_and_chroma(monkeypatch):
    seen = {}

    def spy(**kw):
        seen.update(kw)
        return track_beats(**kw)

    monkeypatch.setattr(F, "track_beats", spy)
    f = extract_features(_audio(_song(sr=ANALYSIS_SR)), stems="dsp", use_cache=False)
    assert seen["onset_env"] is not None and seen["chroma"].shape == (12, len(seen["onset_env"]))
    assert abs(f.grid.tempo - 120.0) < 3.0


def test_real_song_tracks_its_own_grid(race1_path):
    a = load_audio(race1_path)
    n = 20 * a.sr
    clip = _audio(a.y[:, :n], sr=a.sr, path="race1-clip")
    f = extract_features(clip, stems="dsp", use_cache=False)
    ref = track_beats(y=clip.y_mono, sr=ANALYSIS_SR)
    assert abs(f.grid.tempo - ref.tempo) < 1.0 and f.grid.beats_per_bar == ref.beats_per_bar
    assert f.values.shape == (f.grid.n_beats, 121) and np.isfinite(f.values).all()
    assert 100 < f.column("tempo_bpm")[0] < 140
    assert 0.0 <= f.column("song_position").min() and f.column("song_position").max() <= 1.0


@pytest.mark.parametrize("n_beats", [1, 2, 3])
def test_tiny_grids_and_digital_silence(n_beats, caplog):
    bounds = np.linspace(0.0, 3.0, n_beats + 1)
    grid = BeatGrid(bounds=bounds, beat_in_bar=np.arange(n_beats) % 4, bar=np.arange(n_beats) // 4,
                    tempo=60.0 * n_beats / 3.0, beats_per_bar=4)
    with caplog.at_level(logging.WARNING, logger="datasets.features"):
        f = extract_features(_audio(_song(sr=ANALYSIS_SR, seconds=3.0)), grid=grid, stems="dsp", use_cache=False)
        z = extract_features(_audio(np.zeros(3 * ANALYSIS_SR)), grid=grid, stems="dsp", use_cache=False)
    assert not caplog.records  # finite by construction, not by the non-finite guard
    assert np.isfinite(f.values).all() and np.isfinite(z.values).all()
    assert np.all(z.column("rms_db") == C.DB_FLOOR) and np.all(z.column("is_silent_beat") == 1.0)


def test_short_beats_and_silent_stretch_stay_finite(caplog):
    y = _song(sr=ANALYSIS_SR, seconds=6.0)
    y[2 * ANALYSIS_SR : 3 * ANALYSIS_SR] = 0.0  # a silent second
    times = np.r_[np.arange(0.0, 3.0, 0.5), 3.0, 3.01, 3.03, np.arange(3.5, 6.0, 0.5)]  # 10 ms and 20 ms beats
    grid = BeatGrid.from_beat_times(times, duration=6.0, beats_per_bar=4)
    with caplog.at_level(logging.WARNING, logger="datasets.features"):
        f = extract_features(_audio(y), grid=grid, stems="dsp", use_cache=False)
    assert not caplog.records
    assert np.isfinite(f.values).all() and f.values.shape == (grid.n_beats, 121)
    silent = (grid.times >= 2.0) & (grid.bounds[1:] <= 3.0)
    assert silent.any() and np.all(f.column("is_silent_beat")[silent] == 1.0)


@pytest.mark.parametrize("sr,channels", [(8000, 1), (96000, 2), (48000, 6)])
def test_unusual_rates_and_channels(tmp_path, sr, channels):
    y = _song(sr=sr, seconds=8.0)
    data = np.stack([y * (1.0 - 0.1 * c) for c in range(channels)])
    path = write_audio(tmp_path / f"song_{sr}_{channels}.wav", y=data, sr=sr)
    a = load_audio(path)
    assert a.sr == sr and a.channels == channels
    f = extract_features(a, stems="dsp", use_cache=False)
    assert f.values.shape == (f.grid.n_beats, 121) and np.isfinite(f.values).all()
    assert abs(f.grid.tempo - 120.0) < 3.0
    if sr == 8000:  # nothing above the 4 kHz Nyquist of the source
        assert f.column("energy_high").max() < 0.01


# ----------------------------------------------------------------------- cache
def test_cache_hit_skips_computation(monkeypatch, tmp_path):
    monkeypatch.setenv("EDITOR_CACHE_DIR", str(tmp_path))
    a = _audio(_song(sr=ANALYSIS_SR))
    grid = _grid(8.0)
    first = extract_features(a, grid=grid, stems="dsp")
    assert len(list(tmp_path.glob("features-*.npz"))) == 1
    assert len(list(tmp_path.glob("stemframes-*.npz"))) == 1

    def boom(*args, **kw):
        raise AssertionError("recomputed despite a valid cache entry")

    monkeypatch.setattr(F, "_core", boom)
    again = extract_features(a, grid=grid, stems="dsp")
    np.testing.assert_array_equal(again.values, first.values)
    assert again.stem_method == "dsp" and again.grid.n_beats == grid.n_beats
    with pytest.raises(AssertionError, match="recomputed"):
        extract_features(a, grid=grid, stems="dsp", use_cache=False)


def _corrupt_truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _corrupt_garbage(p):
    p.write_bytes(b"not a zip file at all")


def _corrupt_empty(p):
    p.write_bytes(b"")


def _corrupt_wrong_shape(p):
    from datasets.cache import _checksum

    with np.load(p) as z:
        d = {k: z[k] for k in z.files if k != "__checksum__"}
    d["values"] = d["values"][:-1]  # consistent checksum, wrong shape for the grid
    np.savez(p, __checksum__=np.asarray(_checksum(d)), **d)


def _corrupt_flipped_values(p):
    with np.load(p) as z:
        d = {k: z[k] for k in z.files}
    d["values"] = d["values"] + 1.0  # old checksum kept: bit rot
    with open(p, "wb") as f:
        np.savez(f, **d)


def _corrupt_missing_key(p):
    with np.load(p) as z:
        d = {k: z[k] for k in z.files if k != "names"}
    with open(p, "wb") as f:
        np.savez(f, **d)


@pytest.mark.parametrize(
    "corrupt",
    [_corrupt_truncate, _corrupt_garbage, _corrupt_empty, _corrupt_wrong_shape, _corrupt_flipped_values, _corrupt_missing_key],
)
def test_corrupt_feature_cache_is_reported_deleted_and_recomputed(monkeypatch, tmp_path, caplog, corrupt):
    monkeypatch.setenv("EDITOR_CACHE_DIR", str(tmp_path))
    a = _audio(_song(sr=ANALYSIS_SR, seconds=6.0))
    grid = _grid(6.0)
    good = extract_features(a, grid=grid, stems="dsp")
    (entry,) = tmp_path.glob("features-*.npz")
    corrupt(entry)
    with caplog.at_level(logging.WARNING, logger="datasets.cache"):
        again = extract_features(a, grid=grid, stems="dsp")
    assert any("corrupt" in r.getMessage() and entry.name in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(again.values, good.values)
    # rewritten, and good again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datasets.cache"):
        extract_features(a, grid=grid, stems="dsp")
    assert not caplog.records and entry.exists()


def test_corrupt_stem_cache_is_recomputed(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("EDITOR_CACHE_DIR", str(tmp_path))
    a = _audio(_song(sr=ANALYSIS_SR, seconds=6.0))
    good = extract_features(a, grid=_grid(6.0), stems="dsp")
    (stem_entry,) = tmp_path.glob("stemframes-*.npz")
    _corrupt_truncate(stem_entry)
    # a different grid misses the feature cache and must read the (corrupt) stem cache
    with caplog.at_level(logging.WARNING, logger="datasets.cache"):
        other = extract_features(a, grid=_grid(6.0, period=0.25), stems="dsp")
    assert any(stem_entry.name in r.getMessage() for r in caplog.records)
    assert np.isfinite(other.values).all() and other.n_beats == 2 * good.n_beats


# ----------------------------------------------------------------------- save / CLI
def test_save_and_load_round_trip(tmp_path):
    f = extract_features(_audio(_song(sr=ANALYSIS_SR, seconds=6.0)), grid=_grid(6.0), stems="dsp", use_cache=False)
    g = BeatFeatures.load(f.save(tmp_path / "f.npz"))
    np.testing.assert_array_equal(g.values, f.values)
    assert g.names == FEATURE_NAMES and g.stem_method == "dsp"
    np.testing.assert_array_equal(g.grid.bounds, f.grid.bounds)


def test_cli_single_file_and_bad_input(tmp_path, capsys):
    path = write_audio(tmp_path / "song.wav", y=_song(sr=44100), sr=44100)
    out = tmp_path / "feats.npz"
    assert F.main([str(path), "--out", str(out), "--stems", "dsp", "--no-cache"]) == 0
    text = capsys.readouterr().out
    for word in ("tempo", "meter", "beats", "duration", "stems dsp"):
        assert word in text
    assert BeatFeatures.load(out).values.shape[1] == 121
    bad = tmp_path / "bad.wav"
    bad.write_text("this is text, not audio")
    assert F.main([str(bad), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.wav" in err[0]


def test_cli_folder_in_parallel(tmp_path, capsys):
    src = tmp_path / "in"
    for i in range(2):
        write_audio(src / f"s{i}.wav", y=_song(sr=22050, seed=i), sr=22050)
    (src / "notes.txt").write_text("ignored: not audio")
    outdir = tmp_path / "out"
    assert F.main([str(src), "--jobs", "2", "--stems", "dsp", "--out", str(outdir), "--no-cache"]) == 0
    assert sorted(p.name for p in outdir.iterdir()) == ["s0.npz", "s1.npz"]
    assert "2/2 files" in capsys.readouterr().out
    (src / "broken.wav").write_bytes(b"RIFF0000WAVE")
    assert F.main([str(src), "--stems", "dsp", "--no-cache"]) == 2
    assert "error: " in capsys.readouterr().err


def test_onset_envelope_of_reuses_the_features_envelope(monkeypatch, tmp_path):
    """The pulse ranker's envelope is the one the features computed (no second STFT,
    issue 17), in this process and from the cache in the next; same values as fresh."""
    monkeypatch.setenv("EDITOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(F, "_ONSET_ENVS", {})
    a = _audio(_song(sr=ANALYSIS_SR))
    fresh = F.onset_envelope_of(a, use_cache=False)
    F._ONSET_ENVS.clear()
    extract_features(a, stems="dsp")
    assert len(list(tmp_path.glob("onsetenv-*.npz"))) == 1

    def boom(*args, **kw):
        raise AssertionError("a second STFT")

    monkeypatch.setattr(F._dsp, "stft", boom)
    np.testing.assert_array_equal(F.onset_envelope_of(a), fresh)  # this process
    F._ONSET_ENVS.clear()
    env = F.onset_envelope_of(a)  # a new process: from the cache
    np.testing.assert_array_equal(env, fresh)
    assert not env.flags.writeable
    F._ONSET_ENVS.clear()
    with pytest.raises(AssertionError, match="second STFT"):
        F.onset_envelope_of(a, use_cache=False)


def test_beat_grid_of_is_the_features_grid(monkeypatch, tmp_path):
    """The grid alone (python -m alignment, issue 17) is the grid the features track,
    computed without them, and read back from the cache in a later process."""
    monkeypatch.setenv("EDITOR_CACHE_DIR", str(tmp_path))
    a = _audio(_song(sr=ANALYSIS_SR, seconds=12.0))
    spectral = F._spectral

    def no_features(*args, **kw):
        raise AssertionError("features computed for a grid")

    monkeypatch.setattr(F, "_spectral", no_features)
    alone = F.beat_grid_of(a)
    monkeypatch.setattr(F, "_spectral", spectral)
    full = extract_features(a, stems="dsp", use_cache=False).grid
    assert alone.to_dict() == full.to_dict()
    monkeypatch.setattr(F, "_analyse", no_features)
    assert F.beat_grid_of(a).to_dict() == full.to_dict()  # from the cache
