"""bench/style_ladder.py: its IoU in raw seconds, and its behaviour without a trained run."""

from __future__ import annotations

from tests.bench._load import load_bench


def _ladder():
    return load_bench("style_ladder")


def test_usage_iou_in_raw_seconds():
    iou = _ladder()._usage_iou
    assert iou([(0.0, 10.0)], [(0.0, 10.0)], 10.0) == 1.0
    assert iou([(0.0, 5.0)], [(5.0, 10.0)], 10.0) == 0.0
    assert abs(iou([(0.0, 10.0)], [(0.0, 5.0)], 10.0) - 0.5) < 0.01
    assert iou([(0.0, 4.0), (0.0, 4.0)], [(0.0, 4.0)], 10.0) == 1.0  # a repeat uses the same raw time


def test_skips_under_make_bench_without_runs_and_refuses_a_missing_run(tmp_path, monkeypatch, capsys):
    mod = _ladder()
    monkeypatch.chdir(tmp_path)
    assert mod.main([]) == 0 and "skipped" in capsys.readouterr().out
    assert mod.main(["--run", str(tmp_path / "nope"), "--labels", str(tmp_path)]) != 0
