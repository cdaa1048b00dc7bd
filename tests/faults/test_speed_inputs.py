"""What a fresh process must not pay for (issue 17).

- A missing, empty, unreadable or folder input to ``python -m agent.infer`` or
  ``python -m alignment`` is refused with one line naming it before torch, the aligner
  or a checkpoint is loaded (the user sees it at once, not after ~3 s of imports).
- Beats and features of a song, on a machine without Demucs weights, import neither
  torch nor demucs (the weights are probed on the file system), nor librosa or numba
  (datasets.dsp computes the same numbers).

Only one coarse bound on time: the refused run's CPU seconds (this machine's 2 cores are
shared, wall time is not a behaviour).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, music_file

#: CPU seconds a refused run may take: Python, numpy and the CLI's own modules.
MAX_REFUSAL_CPU_S = 1.5


def _env(tmp_path: Path) -> dict:
    """No Demucs weights anywhere this process could look."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDITOR_DEMUCS", "HF_", "TORCH_HOME", "PYTHON"))}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"), EDITOR_CACHE_DIR=str(tmp_path / "cache"))
    return env


def _run(args: list[str], env: dict) -> tuple[int, str, set[str], float]:
    """(exit status, stderr without the import log, imported top-level modules, CPU s)."""
    before = os.times()
    p = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    lines = p.stderr.splitlines()
    imported = {ln.rsplit("|", 1)[1].strip() for ln in lines if ln.startswith("import time:") and "|" in ln}
    rest = "\n".join(ln for ln in lines if not ln.startswith("import time:"))
    return p.returncode, rest, imported, cpu


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_text("not audio at all")
    (d / "folder.wav").mkdir()
    return {
        "missing": (d / "no such song.wav", "file not found"),
        "empty": (d / "empty.wav", "empty"),
        "unreadable": (d / "text.wav", "not a readable audio file"),
        "folder": (d / "folder.wav", "is a directory"),
    }


@pytest.mark.parametrize("kind", ["missing", "empty", "unreadable", "folder"])
def test_infer_refuses_a_bad_song_before_importing_torch(kind, bad_inputs, tmp_path):
    path, why = bad_inputs[kind]
    rc, err, imported, cpu = _run(
        ["-m", "agent.infer", str(path), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "out")], _env(tmp_path)
    )
    assert rc == 2
    assert err.strip().count("\n") == 0 and str(path) in err and why in err, err
    assert "torch" not in imported and "matplotlib" not in imported, sorted(imported & {"torch", "matplotlib"})
    assert not (tmp_path / "out").exists()  # nothing written
    assert cpu < MAX_REFUSAL_CPU_S, cpu


@pytest.mark.parametrize("which", ["raw", "edited"])
def test_alignment_refuses_a_bad_input_before_importing_the_aligner(which, bad_inputs, tmp_path):
    good = music_file("raceintro-ks.ogg")
    bad, why = bad_inputs["missing" if which == "raw" else "unreadable"]
    pair = [bad, good] if which == "raw" else [good, bad]
    rc, err, imported, cpu = _run(["-m", "alignment", *map(str, pair), "--json", str(tmp_path / "x.json")], _env(tmp_path))
    assert rc == 2 and str(bad) in err and why in err, err
    assert not imported & {"torch", "numba", "librosa", "alignment.align"}, imported & {"torch", "numba", "librosa", "alignment.align"}
    assert not (tmp_path / "x.json").exists()
    assert cpu < MAX_REFUSAL_CPU_S, cpu


def test_features_of_a_song_import_no_torch_librosa_or_numba(tmp_path):
    song = music_file("raceintro-ks.ogg")
    code = (
        "from datasets.audio import load_audio\n"
        "from datasets.features import extract_features\n"
        f"f = extract_features(load_audio({str(song)!r}), stems='auto')\n"
        "print(f.stem_method, f.n_beats)\n"
    )
    rc, err, imported, _ = _run(["-c", code], _env(tmp_path))
    assert rc == 0, err
    assert not imported & {"torch", "demucs", "librosa", "numba", "matplotlib"}, imported & {"torch", "demucs", "librosa", "numba"}
    assert "no local weights for demucs model" in err  # the fallback still says which method ran
