"""bench/grid_cv.py without a style-bench run: skipped under make bench, one error line otherwise."""

from __future__ import annotations

from tests.bench._load import load_bench


def _grid_cv():
    return load_bench("grid_cv")


def test_skips_without_runs_and_refuses_a_folder_without_labels(tmp_path, monkeypatch, capsys):
    mod = _grid_cv()
    monkeypatch.chdir(tmp_path)
    assert mod.main([]) == 0 and "skipped" in capsys.readouterr().out
    (tmp_path / "r" / "loud70" / "labels").mkdir(parents=True)
    assert mod.main(["--runs", str(tmp_path / "r"), "--editors", "loud70"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loud70/labels" in err[0] and "no label files" in err[0]
