
import numpy as np
import pytest
import soundfile as sf

from datasets.audio import ANALYSIS_SR, load_audio, write_audio
from datasets.errors import AudioError


def _tone(sr: int, seconds: float, channels: int = 2) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    y = 0.3 * np.sin(2 * np.pi * 220 * t)
    return np.tile(y, (channels, 1)).astype(np.float32)


def test_real_ogg_keeps_native_rate_and_channels(race1_path):
    a = load_audio(race1_path)
    assert a.sr == 44100 and a.channels == 2
    assert a.y.dtype == np.float32 and a.y.shape[0] == 2
    assert abs(len(a.y_mono) / ANALYSIS_SR - a.duration) < 0.01
    assert len(a.sha256) == 64 and not a.is_silent


@pytest.mark.parametrize("sr,channels", [(8000, 1), (96000, 2), (44100, 6)])
def test_unusual_rates_and_channels(tmp_path, sr, channels):
    p = write_audio(tmp_path / "x.wav", y=_tone(sr, 4.0, channels), sr=sr)
    a = load_audio(p)
    assert (a.sr, a.channels) == (sr, channels)
    assert abs(len(a.y_mono) - 4.0 * ANALYSIS_SR) <= 2


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_formats_round_trip(tmp_path, ext):
    y = _tone(44100, 3.5)
    p = write_audio(tmp_path / f"x.{ext}", y=y, sr=44100)
    a = load_audio(p)
    assert a.y.shape == y.shape
    if ext in ("wav", "flac"):
        np.testing.assert_allclose(a.y, y, atol=1e-4)


def test_mp3_reads(tmp_path):
    lameenc = pytest.importorskip("lameenc")
    enc = lameenc.Encoder()
    enc.set_bit_rate(128)
    enc.set_in_sample_rate(44100)
    enc.set_channels(2)
    pcm = (_tone(44100, 3.5).T * 32767).astype(np.int16)
    data = enc.encode(pcm.tobytes()) + enc.flush()
    p = tmp_path / "x.mp3"
    p.write_bytes(data)
    a = load_audio(p)
    assert a.channels == 2 and 3.4 < a.duration < 3.7


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    write_audio(tmp_path / "a.wav", y=_tone(22050, 1.0), sr=22050)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def _bad_inputs(tmp_path):
    d = tmp_path / "folder.wav"
    d.mkdir()
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("these are my lyrics, not audio\n" * 20)
    good = write_audio(tmp_path / "good.wav", y=_tone(44100, 4.0), sr=44100, subtype="PCM_16")
    trunc = tmp_path / "truncated.wav"
    trunc.write_bytes(good.read_bytes()[: 44 + 1000])
    nan = tmp_path / "nan.wav"
    y = _tone(44100, 4.0)
    y[0, 1000] = np.nan
    sf.write(nan, y.T, 44100, subtype="FLOAT")
    return {
        "missing": (tmp_path / "nope.wav", "not found"),
        "directory": (d, "directory"),
        "empty": (empty, "empty"),
        "text": (text, "not a readable audio file"),
        "truncated": (trunc, "truncated"),
        "nan": (nan, "NaN"),
    }


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "truncated", "nan"])
def test_bad_input_gives_one_clear_line(tmp_path, kind):
    path, words = _bad_inputs(tmp_path)[kind]
    with pytest.raises(AudioError) as err:
        load_audio(path)
    msg = str(err.value)
    assert str(path) in msg and words in msg and "\n" not in msg


def test_too_short_without_tempo(tmp_path):
    p = write_audio(tmp_path / "short.wav", y=_tone(44100, 1.0), sr=44100)
    with pytest.raises(AudioError, match="too short"):
        load_audio(p, min_seconds=3.0)


def test_silence_warns_not_raises(tmp_path, caplog):
    p = write_audio(tmp_path / "silent.wav", y=np.zeros((2, 44100 * 4), np.float32), sr=44100)
    a = load_audio(p)
    assert a.is_silent
    assert "silent" in caplog.text
