"""Bad inputs that were already refused well (issue 13's "earlier passing cases"), kept so.

- ``python -m agent.infer`` on a missing, empty, text-as-.wav, truncated, NaN or silent
  recording, or with an unreadable, empty, malicious or other-feature-configuration
  checkpoint: exit 2, one ``error:`` line naming the file, no traceback, no output file,
  and a malicious pickle's payload never runs;
- ``python -m alignment RAW EDITED`` with a missing, text or silent edited file: the same;
- a truncated feature-cache entry is reported, recomputed, and the edit is the same;
- ``python -m alignment.run`` with one corrupt pair: the others are labelled, the bad one
  is listed in skipped.json and the table, and the exit code is 0 as its docstring says.

Most cases call ``main(argv)`` in-process (a traceback would fail the test as an
exception, and the process start costs ~3 s of imports each on a busy CPU); subprocesses
where the process is the point: the pickle payload, stderr as the user sees it, the cache
warning. Every subprocess gets its own EDITOR_CACHE_DIR.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.agent.test_infer import checkpoint  # noqa: F401 -- the shared tiny untrained policy
from tests.conftest import ROOT
from tests.faults.test_outputs import _one_error_line, song  # noqa: F401 -- 15 s of a real recording

SR = 22050  # analysis rate of datasets.audio: edits are assembled from y_mono at it


class _Payload:
    """Pickles as ``open(marker, "w")``: whoever unpickles it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def bad(song, checkpoint, tmp_path_factory):  # noqa: F811
    """A folder of bad recordings and bad checkpoints (missing.* are never created)."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_text("these are my lyrics, not audio\n")
    data = song.read_bytes()  # a float WAV whose header declares all of its data
    (d / "truncated.wav").write_bytes(data[: len(data) // 2])
    sf.write(d / "nan.wav", np.full((2 * SR, 1), np.nan, np.float32), SR, subtype="FLOAT")
    sf.write(d / "silent.wav", np.zeros((8 * SR, 2), np.float32), SR)
    (d / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "empty.pt").write_bytes(b"")
    torch.save({"format": 1, "model": _Payload(d / "PAYLOAD_RAN")}, d / "malicious.pt")
    ck = torch.load(checkpoint, weights_only=True)
    ck["layout"]["feature_names"][3] = "something_else"
    torch.save(ck, d / "other_features.pt")
    return d


def _cli(module: str, *args, cache: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", EDITOR_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _refused(r: subprocess.CompletedProcess, names: Path) -> str:
    """Exit 2, no traceback, exactly one ``error:`` line, naming ``names``; returns it."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and str(names) in errors[0], r.stderr
    return errors[0]


def _empty_or_absent(folder: Path) -> None:
    assert not folder.exists() or list(folder.iterdir()) == [], sorted(p.name for p in folder.iterdir())


# (input file, checkpoint file or None for the good one, words the error line must hold)
INFER_CASES = {
    "missing": ("missing.wav", None, "file not found"),
    "empty": ("empty.wav", None, "empty"),
    "text": ("text.wav", None, "not a readable audio file"),
    "truncated": ("truncated.wav", None, "truncated"),
    "nan": ("nan.wav", None, "NaN"),
    "silent": ("silent.wav", None, "silent"),
    "checkpoint-unreadable": (None, "garbage.pt", "not a readable checkpoint"),
    "checkpoint-empty": (None, "empty.pt", "empty"),
    "checkpoint-missing": (None, "missing.pt", "not found"),
    "checkpoint-malicious": (None, "malicious.pt", "refused without running it"),
    "checkpoint-other-features": (None, "other_features.pt", "another feature configuration"),
}


def _infer_args(case: str, bad: Path, song: Path, checkpoint: Path, out: Path) -> tuple[list[str], Path, str]:  # noqa: F811
    """(argv, the file the error must name, words it must hold) for one of INFER_CASES."""
    bad_src, bad_ck, words = INFER_CASES[case]
    src, ck = (bad / bad_src if bad_src else song), (bad / bad_ck if bad_ck else checkpoint)
    return [str(src), "--checkpoint", str(ck), "--out", str(out)], (ck if bad_ck else src), words


# ------------------------------------------------------------------------- agent.infer
@pytest.mark.parametrize("case", list(INFER_CASES))
def test_infer_refuses_a_bad_input_in_one_line(case, bad, song, checkpoint, tmp_path, capsys):  # noqa: F811
    from agent.infer import main

    out = tmp_path / "out"
    argv, named, words = _infer_args(case, bad, song, checkpoint, out)
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert str(named) in line and words in line, line
    _empty_or_absent(out)
    assert not (bad / "PAYLOAD_RAN").exists()


@pytest.mark.parametrize("case", ["checkpoint-malicious", "truncated"])
def test_infer_process_refuses_without_a_traceback(case, bad, song, checkpoint, tmp_path):  # noqa: F811
    """The user's command as a process: a malicious pickle's payload never runs, and
    stderr holds one ``error:`` line (for a checkpoint, nothing else: it loads first)."""
    out = tmp_path / "out"
    argv, named, words = _infer_args(case, bad, song, checkpoint, out)
    r = _cli("agent.infer", *argv, cache=tmp_path / "cache")
    assert words in _refused(r, named)
    if case.startswith("checkpoint"):
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (bad / "PAYLOAD_RAN").exists()
    _empty_or_absent(out)


def test_the_malicious_payload_is_live(bad, tmp_path):
    """Guards the test above: plain unpickling of the same payload does create its marker."""
    marker = tmp_path / "ran"
    torch.save({"model": _Payload(marker)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------- python -m alignment
@pytest.mark.parametrize("edited", ["missing.wav", "text.wav", "silent.wav"])
def test_alignment_refuses_a_bad_edited_file(edited, bad, song, tmp_path):  # noqa: F811
    out = tmp_path / "label.json"
    r = _cli("alignment", song, bad / edited, "--json", out, cache=tmp_path / "cache")
    _refused(r, bad / edited)
    assert not out.exists()


# ------------------------------------------------------------------------- feature cache
def test_a_corrupt_cache_entry_is_reported_and_recomputed(song, checkpoint, tmp_path, capsys, monkeypatch):  # noqa: F811
    from agent.infer import main

    cache, out = tmp_path / "cache", tmp_path / "out"
    monkeypatch.setenv("EDITOR_CACHE_DIR", str(cache))
    assert main([str(song), "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    first = re.search(r"^edit id\s+(\w+)", capsys.readouterr().out, re.M).group(1)
    entries = {p: p.stat().st_size for p in sorted(cache.glob("*.npz"))}
    # the features, the stems' frames, and the beat grid and onset envelope they share
    # with python -m alignment and the pulse ranker (datasets.features)
    assert {p.name.split("-")[0] for p in entries} == {"features", "stemframes", "beatgrid", "onsetenv"}, entries
    for p, size in entries.items():  # a disk that lost the end of each file
        with open(p, "r+b") as f:
            f.truncate(size // 2)

    r = _cli("agent.infer", song, "--checkpoint", checkpoint, "--out", out, cache=cache)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    read_by_infer = [p for p in entries if p.name.split("-")[0] in ("features", "stemframes")]
    for p in read_by_infer:  # each bad entry inference reads is named once, then recomputed
        assert [ln for ln in r.stderr.splitlines() if str(p) in ln and "corrupt" in ln and "recomputing" in ln], r.stderr
        with np.load(p, allow_pickle=False) as z:
            assert "__checksum__" in z.files
    assert re.search(r"^edit id\s+(\w+)", r.stdout, re.M).group(1) == first  # the same features, the same edit
    # the grid and onset envelope (read by python -m alignment and the pulse ranker) were
    # written again by the recomputed features: no corrupt entry is left behind
    for p in set(entries) - set(read_by_infer):
        with np.load(p, allow_pickle=False) as z:
            assert "__checksum__" in z.files


# ------------------------------------------------------------------------- a batch with one corrupt pair
def test_a_corrupt_pair_in_a_batch_is_listed_and_the_others_labelled(song, tmp_path, capsys):  # noqa: F811
    from alignment.run import main
    from alignment.simulate import Span, assemble
    from datasets.audio import load_audio, write_audio

    data = tmp_path / "data"
    for sub in ("raw", "edited"):
        (data / sub).mkdir(parents=True)
    y = load_audio(song).y_mono
    for name, spans in (("a", [Span(8.0, 14.0), Span(1.0, 7.0)]), ("b", [Span(0.0, 6.0), Span(9.0, 15.0)])):
        shutil.copyfile(song, data / "raw" / f"{name}.wav")
        write_audio(data / "edited" / f"{name}.wav", y=assemble(y=y, sr=SR, spans=spans)[0], sr=SR)
    shutil.copyfile(song, data / "raw" / "c.wav")
    (data / "edited" / "c.wav").write_text("not audio, saved under a .wav name by mistake\n")

    # alignment/run.py: "A pair that fails is reported and skipped; no pair at all exits with status 2."
    assert main(["--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--run", "r", "--jobs", "1"]) == 0
    labels = tmp_path / "runs" / "r" / "labels"
    assert sorted(json.loads((labels / "index.json").read_text())) == ["a", "b"]
    assert sorted(p.name for p in labels.glob("?.json")) == ["a.json", "b.json"]
    skipped = json.loads((labels / "skipped.json").read_text())
    assert list(skipped) == ["c"] and skipped["c"]["reason"] == "failed"
    assert str(data / "edited" / "c.wav") in skipped["c"]["message"]
    assert not (labels / "c.json").exists()
    printed = capsys.readouterr().out
    assert re.search(r"^  c: failed: .*c\.wav", printed, re.M), printed
