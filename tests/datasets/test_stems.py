import logging

import numpy as np
import pytest

from datasets import stems as S
from datasets.audio import ANALYSIS_SR, Audio, audio_hash, resample, to_mono
from datasets.beats import BeatGrid
from datasets.errors import EditorError, ParameterError
from datasets.features import extract_features


def _audio(y: np.ndarray, sr: int = ANALYSIS_SR) -> Audio:
    y = np.atleast_2d(np.asarray(y, dtype=np.float32))
    return Audio(path="gen", y=y, sr=sr, y_mono=resample(to_mono(y), sr_in=sr, sr_out=ANALYSIS_SR),
                 sha256=audio_hash(y, sr), is_silent=False)


def _clicks(sr: int, seconds: float) -> np.ndarray:
    y = np.zeros(int(seconds * sr))
    rng = np.random.default_rng(1)
    for t in np.arange(0.1, seconds - 0.1, 0.25):
        s = int(t * sr)
        y[s : s + 200] += rng.standard_normal(200) * np.exp(-np.arange(200) / 40)
    return y


def _tone(sr: int, seconds: float, hz: float) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(int(seconds * sr)) / sr)


def _share(st: S.Stems) -> dict:
    e = {k: float(np.sum(getattr(st, k) ** 2)) for k in S.STEM_NAMES}
    tot = sum(e.values())
    return {k: v / tot for k, v in e.items()}


def test_dsp_masks_partition_energy():
    import librosa

    y = (0.3 * _clicks(ANALYSIS_SR, 3.0) + 0.2 * _tone(ANALYSIS_SR, 3.0, 110.0)).astype(np.float32)
    Sm = np.abs(librosa.stft(y, n_fft=S.N_FFT, hop_length=512))
    m = S.dsp_masks(S=Sm)
    assert m.shape == (4,) + Sm.shape and m.dtype == np.float32
    assert m.min() >= -1e-6 and m.max() <= 1 + 1e-6
    np.testing.assert_allclose(m.sum(0), 1.0, atol=1e-5)


def test_dsp_stems_sum_to_the_mix_and_route_sources():
    sr = ANALYSIS_SR
    mix = (0.3 * _clicks(sr, 4.0) + 0.2 * _tone(sr, 4.0, 82.0) + 0.1 * _tone(sr, 4.0, 1000.0)).astype(np.float32)
    st = S.separate(_audio(mix), method="dsp")
    assert st.method == "dsp" and st.sr == ANALYSIS_SR
    arr = st.as_array()
    assert arr.shape == (4, len(mix)) and np.isfinite(arr).all()
    np.testing.assert_allclose(arr.sum(0), mix, atol=1e-4)  # masks sum to 1, iSTFT is linear
    assert _share(S.separate(_audio(_clicks(sr, 4.0).astype(np.float32)), method="dsp"))["drums"] > 0.6
    assert _share(S.separate(_audio(_tone(sr, 4.0, 82.0).astype(np.float32)), method="dsp"))["bass"] > 0.9
    assert _share(S.separate(_audio(_tone(sr, 4.0, 1000.0).astype(np.float32)), method="dsp"))["vocals"] > 0.9
    assert _share(S.separate(_audio(_tone(sr, 4.0, 7000.0).astype(np.float32)), method="dsp"))["other"] > 0.9


def test_demucs_code_path_runs_for_real():
    """demucs_unittest: a real HDemucs with random weights, built offline."""
    sr = 44100
    y = np.stack([_tone(sr, 3.0, 220.0), _clicks(sr, 3.0)]).astype(np.float32) * 0.3
    st = S.separate(_audio(y, sr=sr), method="demucs", model="demucs_unittest")
    assert st.method == "demucs:demucs_unittest"
    arr = st.as_array()
    n = len(resample(y[0], sr_in=sr, sr_out=ANALYSIS_SR))
    assert arr.shape == (4, n) and np.isfinite(arr).all() and np.abs(arr).max() > 0
    # 6 channels at 48 kHz go through the same path (down-mixed to the model's 2)
    six = np.tile(_tone(48000, 3.0, 330.0).astype(np.float32) * 0.2, (6, 1))
    assert S.separate(_audio(six, sr=48000), method="demucs", model="demucs_unittest").as_array().shape[0] == 4


def test_features_record_the_demucs_method():
    y = (0.3 * _clicks(ANALYSIS_SR, 4.0) + 0.2 * _tone(ANALYSIS_SR, 4.0, 110.0)).astype(np.float32)
    grid = BeatGrid.from_beat_times(np.arange(0, 4.0, 0.5), duration=4.0, beats_per_bar=4)
    f = extract_features(_audio(y), grid=grid, stems="demucs", stem_model="demucs_unittest", use_cache=False)
    assert f.stem_method == "demucs:demucs_unittest"
    assert np.isfinite(f.values).all() and f.column("stem_drums_rms").max() > 0
    d = extract_features(_audio(y), grid=grid, stems="dsp", use_cache=False)
    assert d.stem_method == "dsp"
    # everything but the stem columns is the same pipeline
    stem_cols = [i for i, n in enumerate(f.names) if n.startswith("stem_")]
    rest = np.setdiff1d(np.arange(121), stem_cols)
    np.testing.assert_array_equal(f.values[:, rest], d.values[:, rest])


def test_auto_falls_back_once_with_a_warning(tmp_path, monkeypatch, caplog):
    empty_repo = tmp_path / "no-models-here"
    empty_repo.mkdir()
    monkeypatch.setenv("EDITOR_DEMUCS_REPO", str(empty_repo))
    y = _tone(ANALYSIS_SR, 2.0, 200.0).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="datasets.stems"):
        a = S.separate(_audio(y), method="auto")
        b = S.separate(_audio(y), method="auto")
    assert a.method == b.method == "dsp"
    msgs = [r.getMessage() for r in caplog.records if "DSP fallback" in r.getMessage()]
    assert len(msgs) == 1 and str(empty_repo) in msgs[0] and caplog.records[0].levelno == logging.WARNING
    with pytest.raises(EditorError, match="demucs model 'htdemucs' unavailable"):
        S.separate(_audio(y), method="demucs")


def test_bad_method_is_a_parameter_error():
    with pytest.raises(ParameterError, match="spleeter"):
        S.resolve_method("spleeter")


def test_no_weights_is_known_without_importing_torch(tmp_path):
    """A cold start on a machine without Demucs weights pays no torch/demucs import."""
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("EDITOR_DEMUCS", "HF_", "TORCH_HOME"))}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), HOME=str(tmp_path))
    code = (
        "import sys; from datasets.stems import resolve_method; "
        "print(resolve_method('auto')[0], 'torch' in sys.modules, 'demucs' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=S.__file__.rsplit("/datasets/", 1)[0])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["dsp", "False", "False"], out.stdout
    assert "no local weights for demucs model 'htdemucs'" in out.stderr


def test_weights_probe_finds_the_places_demucs_loads_from(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for k in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TORCH_HOME"):
        monkeypatch.delenv(k, raising=False)
    assert "no local weights" in S._weights_on_disk("htdemucs", None)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "955717e8-8726e21a.th").write_bytes(b"")  # htdemucs' one signature (demucs/remote/htdemucs.yaml)
    assert S._weights_on_disk("htdemucs", None) is None
    assert "no local weights" in S._weights_on_disk("htdemucs_ft", None)
    (tmp_path / "huggingface" / "hub" / "models--adefossez--HTDemucs-ft").mkdir(parents=True)
    assert S._weights_on_disk("htdemucs_ft", None) is None
    repo = tmp_path / "repo"
    repo.mkdir()
    assert "unavailable in" in S._weights_on_disk("mdx", repo)
    (repo / "mdx.yaml").write_text("models: ['0d19c1c6']\n")
    assert S._weights_on_disk("mdx", repo) is None
