import logging

import numpy as np
import pytest

from datasets import cache as C


def test_round_trip_and_key_depends_on_everything(tmp_path):
    arrays = {"values": np.arange(12, dtype=np.float32).reshape(3, 4), "names": np.asarray(["a", "b"])}
    k = C.make_key("features", audio_sha256="abc", config={"n_fft": 2048})
    path = C.save_arrays(k, arrays, folder=tmp_path)
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    got = C.load_arrays(k, required=("values", "names"), folder=tmp_path)
    np.testing.assert_array_equal(got["values"], arrays["values"])
    assert list(got["names"]) == ["a", "b"]
    assert k != C.make_key("features", audio_sha256="abd", config={"n_fft": 2048})
    assert k != C.make_key("features", audio_sha256="abc", config={"n_fft": 1024})
    assert k != C.make_key("stemframes", audio_sha256="abc", config={"n_fft": 2048})
    assert C.load_arrays("features-absent", folder=tmp_path) is None


def test_default_dir_and_env_override(monkeypatch, tmp_path):
    monkeypatch.delenv("EDITOR_CACHE_DIR", raising=False)
    assert C.cache_dir().as_posix() == "runs/cache/features"
    monkeypatch.setenv("EDITOR_CACHE_DIR", str(tmp_path))
    assert C.cache_dir() == tmp_path


@pytest.mark.parametrize(
    "damage",
    ["truncate", "garbage", "empty", "missing_key", "checksum", "validator"],
)
def test_bad_entries_are_reported_deleted_never_used(tmp_path, caplog, damage):
    arrays = {"values": np.ones((5, 3), np.float32)}
    key = "features-test"
    path = C.save_arrays(key, arrays, folder=tmp_path)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) - 40])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "missing_key":
        np.savez(path, other=np.zeros(3), __checksum__=np.asarray("x"))
    elif damage == "checksum":
        with np.load(path) as z:
            d = {k: z[k] for k in z.files}
        d["values"][0, 0] = 7.0
        np.savez(path, **d)
    validate = (lambda z: "wrong shape" if z["values"].shape != (6, 3) else None) if damage == "validator" else None
    with caplog.at_level(logging.WARNING, logger="datasets.cache"):
        got = C.load_arrays(key, required=("values",), validate=validate, folder=tmp_path)
    assert got is None
    assert not path.exists()
    (rec,) = caplog.records
    assert "corrupt" in rec.getMessage() and str(path) in rec.getMessage()


def test_unwritable_cache_only_warns(tmp_path, caplog):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="datasets.cache"):
        C.save_arrays("k", {"a": np.zeros(2)}, folder=blocker / "sub")
    assert any("cannot write" in r.getMessage() for r in caplog.records)
