"""The per-song map (datasets/parallel.py): the local pool and Ray give the same labels,
one failing song does not stop the others, and the default path never imports Ray."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from datasets.errors import ParameterError
from datasets.parallel import resolve_backend, run_items
from tests.conftest import ROOT


def _twice(x: int) -> int:
    if x == 2:
        raise ValueError("song 2 is broken\nsecond line of the message")
    return 2 * x


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_item_is_one_line_and_the_others_finish(jobs):
    out = sorted(run_items(_twice, [(i,) for i in range(4)], names=[f"s{i}.wav" for i in range(4)], jobs=jobs, backend="pool"),
                 key=lambda o: o.index)
    assert [o.value for o in out] == [0, 2, None, 6]
    assert [o.ok for o in out] == [True, True, False, True]
    assert out[2].name == "s2.wav" and out[2].error == "ValueError: song 2 is broken"


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_backend("auto") == "pool" and resolve_backend("ray") == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert resolve_backend("auto") == "ray" and resolve_backend("pool") == "pool"
    with pytest.raises(ParameterError, match="--backend"):
        resolve_backend("spark")
    with pytest.raises(ParameterError, match="--jobs"):
        run_items(_twice, [(1,)], jobs=0)


def test_the_default_path_never_imports_ray():
    code = (
        "import sys; import alignment.run, datasets.features, agent.batch\n"
        "from datasets.parallel import run_items\n"
        "from tests.datasets.test_parallel import _twice\n"
        "assert [o.value for o in run_items(_twice, [(1,), (3,)], jobs=2)] is not None\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ alignment, pool vs Ray
@pytest.fixture(scope="module")
def demo_pairs(tmp_path_factory):
    """3 short demo pairs (procedural songs edited by the 'tight' persona) and a pair
    whose edit is not audio."""
    from datasets.demo import build as demo_build

    out = tmp_path_factory.mktemp("demo")
    cfg = demo_build.BuildConfig(out=str(out), n_songs=3, persona="tight", seed=5, jobs=1, min_seconds=30.0,
                                 max_seconds=34.0, midi_fraction=0.0, delivery_fraction=0.0)
    rows = demo_build.build(cfg, progress=False)
    assert len(rows) == 3 and not any("error" in r for r in rows)
    raw = sorted((out / "raw").iterdir())[0]
    (out / "raw" / "zz_broken.wav").write_bytes(raw.read_bytes())
    (out / "edited" / "zz_broken.wav").write_text("not audio\n")
    return out


def _align(data: Path, runs: Path, run: str, cache: Path, monkeypatch, *extra: str) -> dict[str, str]:
    """alignment.run over ``data``; returns label file -> text with the wall-clock field out."""
    from alignment.run import main

    monkeypatch.setenv("EDITOR_CACHE_DIR", str(cache))  # each backend computes its own features
    assert main(["--data", str(data), "--run", run, "--runs-dir", str(runs), "--jobs", "2", *extra]) == 0
    labels = runs / run / "labels"
    # "seconds" is the alignment's wall time, the one field that differs run to run
    return {p.name: re.sub(r'\n *"seconds": [0-9.e+-]+,', "", p.read_text()) for p in sorted(labels.glob("*.json"))}


def test_ray_and_the_pool_give_the_same_labels(demo_pairs, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    pool = _align(demo_pairs, tmp_path / "runs", "pool", tmp_path / "cache-pool", monkeypatch)
    monkeypatch.setenv("RAY_ADDRESS", "local")  # a local Ray instance with --jobs (2) CPUs
    ray = _align(demo_pairs, tmp_path / "runs", "ray", tmp_path / "cache-ray", monkeypatch)
    monkeypatch.delenv("RAY_ADDRESS")
    assert "ray" in sys.modules  # it did run on Ray

    pairs = sorted(p.stem for p in (demo_pairs / "raw").iterdir())
    assert sorted(n[:-5] for n in pool if n[:-5] in pairs) == pairs[:3]  # the 3 pairs labelled, not the broken one
    assert pool.keys() == ray.keys()
    for name in pool:
        if name != "index.json":  # index.json holds each run's own label paths
            assert pool[name] == ray[name], name
    # the broken pair failed on both, named with its file, and the other three finished
    for run in ("pool", "ray"):
        skipped = json.loads((tmp_path / "runs" / run / "labels" / "skipped.json").read_text())
        assert list(skipped) == ["zz_broken"] and "zz_broken.wav" in skipped["zz_broken"]["message"]

    # resumes without redoing finished pairs: a second run aligns nothing again
    labels = tmp_path / "runs" / "pool" / "labels"
    before = {p.name: p.stat().st_mtime_ns for p in labels.glob("0*.json")}
    capsys.readouterr()
    _align(demo_pairs, tmp_path / "runs", "pool", tmp_path / "cache-pool", monkeypatch, "--backend", "pool")
    assert {p.name: p.stat().st_mtime_ns for p in labels.glob("0*.json")} == before
    assert capsys.readouterr().out.count("cached") == 3
