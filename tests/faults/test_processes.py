"""Kills (issue 13, rows 4, 5, 11): SIGKILL a stage, as the OOM killer or a closed laptop
would, then run it again.

- no worker outlives its killed parent: PPO's forked rollout worker (and its N rollout
  workers, ``--rollout_workers 2``), ``alignment.run
  --jobs 2``'s pool, a spawn pool (``datasets.demo.build``'s kind) and the watchdog used
  where prctl is missing (datasets/procs.py);
- pretraining (behaviour cloning + DAgger rounds) and fine-tuning started again continue
  their own last checkpoint and end bit for bit where an uninterrupted run ends;
- ``--restart`` starts over and says so; a checkpoint of other labels, of another run or
  of an earlier pretrained policy is never continued or replaced silently.

The uninterrupted reference of each stage is the ``--restart`` run in the same folder,
so one run checks both.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.rl.corpus import MUSIC, SONGS

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

PY = sys.executable
needs_music = pytest.mark.skipif(not all((MUSIC / s).is_file() for s in SONGS), reason=f"needs real recordings in {MUSIC}")


# ---------------------------------------------------------------------------- processes


def _ppid_map() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            out[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _descendants(pid: int) -> set[int]:
    ppid = _ppid_map()
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in ppid.items() if pp == p}
        todo.extend(kids - found)
        found |= kids
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


def _kill_and_survivors(proc: subprocess.Popen, pids: set[int], *, wait_s: float = 5.0) -> set[int]:
    """SIGKILL proc; the pids still alive after wait_s (then killed, so no test leaks them)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + wait_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = {p for p in pids if _alive(p)}
    for p in left:
        os.kill(p, signal.SIGKILL)
    return left


def _start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([PY, *args], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class _KillAt(threading.Thread):
    """Reads a process's output and SIGKILLs it at the first line holding ``marker``,
    noting which of its descendants outlived it; meanwhile the test runs the uninterrupted
    reference in-process."""

    def __init__(self, proc: subprocess.Popen, marker: str) -> None:
        super().__init__(daemon=True)
        self.proc, self.marker = proc, marker
        self.lines: list[str] = []
        self.workers: set[int] = set()
        self.survivors: set[int] | None = None
        self.start()

    def run(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.marker in line:
                self.workers = _descendants(self.proc.pid)
                self.survivors = _kill_and_survivors(self.proc, self.workers)
                return
        self.proc.wait()

    def result(self) -> "_KillAt":
        self.join(timeout=300)
        if self.survivors is None:
            self.proc.kill()
            pytest.fail(f"{self.marker!r} never came (exit {self.proc.returncode}):\n{''.join(self.lines[-20:])}")
        return self


def _read_until(proc: subprocess.Popen, marker: str) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return lines
    proc.wait()
    pytest.fail(f"{marker!r} never came (exit {proc.returncode}):\n{''.join(lines[-20:])}")


def _wait_for_children(proc: subprocess.Popen, n: int, timeout: float = 60.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        kids = _descendants(proc.pid)
        if len(kids) >= n:
            return kids
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{n} worker processes never started")


_PARENT = textwrap.dedent("""
    import multiprocessing as mp, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from datasets import procs

    if __name__ == "__main__":
        if sys.argv[1] == "watchdog":  # the fallback where prctl is missing
            procs._set_pdeathsig = lambda: False
            ctx = mp.get_context("fork")
        else:
            ctx = mp.get_context("spawn")
        pool = ProcessPoolExecutor(2, mp_context=ctx, **procs.pool_kwargs())
        for f in [pool.submit(time.sleep, 0.01) for _ in range(4)]:
            f.result()  # both workers started (and their initializers ran)
        print("ready", flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("mode", ["spawn", "watchdog"])
def test_pool_workers_die_with_their_parent(tmp_path, mode):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    proc = _start([str(script), mode], {"PYTHONPATH": str(ROOT)})
    _read_until(proc, "ready")
    kids = _descendants(proc.pid)
    assert len(kids) >= 2
    assert not _kill_and_survivors(proc, kids)


# ---------------------------------------------------------------------------- a tiny run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """runs/tiny: two 12-second real recordings, labels, an untrained bc_best.pt. (The
    subprocesses inherit the session's feature cache: conftest's EDITOR_CACHE_DIR.)"""
    from tests.rl.corpus import build_run

    root = tmp_path_factory.mktemp("runs")
    build_run(root, seconds=12.0)
    return root


@needs_music
def test_align_pool_leaves_no_orphans(tiny, tmp_path):
    root = tiny
    for sub in ("raw", "edited"):
        (tmp_path / "data" / sub).mkdir(parents=True)
        for wav in (root / "raw").glob("*.wav"):
            shutil.copy(wav, tmp_path / "data" / sub / wav.name)
    proc = _start(["-m", "alignment.run", "--data", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"),
                   "--run", "k", "--jobs", "2"])
    kids = _wait_for_children(proc, 2)
    assert not _kill_and_survivors(proc, kids)


# ---------------------------------------------------------------------------- pretrain

PRETRAIN = ["--hidden", "16", "--n-heads", "2", "--n-layers", "1", "--stems", "dsp", "--lr", "1e-2", "--no-planner",
            "--epochs", "2", "--dagger-rounds", "2", "--dagger-epochs", "4", "--dagger-rollouts", "1"]


@needs_music
def test_pretrain_killed_in_a_dagger_round_resumes_exactly(tiny, caplog):
    from agent.checkpoint import load_checkpoint
    from pretrain.train import main

    root = tiny
    for run in ("ref", "pre"):
        shutil.copytree(root / "tiny" / "labels", root / run / "labels")
    args = ["--run", "pre", "--runs-dir", str(root), *PRETRAIN]
    last = root / "pre" / "checkpoints" / "bc_last.pt"
    # killed in round 2: round 1's data must be rebuilt from the policy that collected it,
    # not from the later one in bc_last.pt (before: weights off by up to 3e-2)
    killer = _KillAt(_start(["-m", "pretrain.train", *args]), "DAgger round 2")
    assert main(["--run", "ref", "--runs-dir", str(root), *PRETRAIN]) == 0  # uninterrupted
    killer.result()
    killed_at = int(load_checkpoint(last)["extra"]["epoch"])
    assert 5 <= killed_at < 9, killed_at  # round 1 done, round 2 not finished

    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main(args) == 0
    assert "continuing" in caplog.text and "rebuilt from the round's stored policy" in caplog.text
    resumed = load_checkpoint(last)
    full = load_checkpoint(root / "ref" / "checkpoints" / "bc_last.pt")
    assert resumed["extra"]["epoch"] == full["extra"]["epoch"] == 9 and resumed["step"] == full["step"]
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


def test_pretrain_restart_and_other_labels(tmp_path, caplog):
    from datasets.errors import ParameterError
    from pretrain.dataset import build_bc_data
    from pretrain.train import PretrainConfig, train
    from tests.pretrain.synth import synth_corpus

    pairs, songs = synth_corpus(range(3))
    data = build_bc_data(pairs, songs=songs)
    cfg = PretrainConfig(run="l", runs_dir=str(tmp_path), epochs=2, hidden=16, n_heads=2, n_layers=1, val_fraction=0.34)
    train(cfg, data)
    other = build_bc_data(pairs[:2], songs=songs)  # a pair left the run
    with pytest.raises(ParameterError, match="other labels.*--restart"):
        train(cfg, other)
    caplog.set_level(logging.INFO)
    assert train(dataclasses.replace(cfg, epochs=1, restart=True), other)["epoch"] == 0
    assert "--restart: starting over" in caplog.text and "(epoch 1)" in caplog.text


# ---------------------------------------------------------------------------- finetune

FINETUNE = ["--steps", "16", "--n_envs", "2", "--minibatch_size", "32", "--update_epochs", "2", "--no_reward_audio",
            "--eval_every", "0", "--save_every", "1", "--epochs", "4"]


@needs_music
def test_finetune_killed_leaves_no_worker_and_resumes_exactly(tiny, capsys):
    from agent.checkpoint import load_checkpoint
    from rl.train import main

    root = tiny
    save = root / "ft"
    args = ["--run", "tiny", "--runs_dir", str(root), "--save_dir", str(save), *FINETUNE]
    killer = _KillAt(_start(["-m", "rl.train", *args]), "ppo: epoch 1 ")  # epoch 0's checkpoint is on disk
    assert main(["--run", "tiny", "--runs_dir", str(root), "--save_dir", str(root / "ref"), *FINETUNE]) == 0
    killer.result()
    assert killer.workers, "no rollout worker was forked"
    assert not killer.survivors, "the rollout worker outlived the killed learner"
    killed_at = int(load_checkpoint(save / "ppo_last.pt")["extra"]["ppo"]["epoch"])
    assert 1 <= killed_at < 4

    capsys.readouterr()
    assert main(args) == 0  # continues its own checkpoint (used to restart and overwrite it)
    assert f"resuming {save / 'ppo_last.pt'} at epoch {killed_at}" in capsys.readouterr().out
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
    resumed, full = load_checkpoint(save / "ppo_last.pt"), load_checkpoint(root / "ref" / "ppo_last.pt")
    assert resumed["extra"]["ppo"]["epoch"] == full["extra"]["ppo"]["epoch"] == 4 and resumed["step"] == full["step"]
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k

    assert main(args) == 0  # finished: nothing to do, nothing rewritten
    assert "nothing to do" in capsys.readouterr().out
    # starting from another policy would replace this run's later checkpoint: refused
    assert main([*args, "--checkpoint", str(root / "tiny" / "checkpoints" / "bc_best.pt")]) == 2
    assert "--restart" in capsys.readouterr().err
    assert main([*args, "--restart", "--epochs", "1"]) == 0
    assert "--restart: starting over" in capsys.readouterr().out
    assert load_checkpoint(save / "ppo_last.pt")["extra"]["ppo"]["epoch"] == 1


@needs_music
def test_finetune_with_two_rollout_workers_killed_leaves_none_and_resumes_exactly(tiny, capsys):
    # issue 18: N forked rollout workers die with their killed learner as the single one
    # does, and a run of N workers resumes bit for bit (the in-flight weights and each
    # worker's seeds come from the checkpoint and (seed, epoch, worker))
    from agent.checkpoint import load_checkpoint
    from rl.train import main

    root = tiny
    save = root / "ft2"
    flags = [*FINETUNE, "--rollout_workers", "2", "--rollout_backend", "pool"]
    args = ["--run", "tiny", "--runs_dir", str(root), "--save_dir", str(save), *flags]
    killer = _KillAt(_start(["-m", "rl.train", *args]), "ppo: epoch 1 ")
    assert main(["--run", "tiny", "--runs_dir", str(root), "--save_dir", str(root / "ref2"), *flags]) == 0
    killer.result()
    assert len(killer.workers) >= 2, f"fewer than 2 rollout workers were forked: {killer.workers}"
    assert not killer.survivors, "a rollout worker outlived the killed learner"
    killed_at = int(load_checkpoint(save / "ppo_last.pt")["extra"]["ppo"]["epoch"])
    assert 1 <= killed_at < 4

    capsys.readouterr()
    assert main(args) == 0
    assert f"resuming {save / 'ppo_last.pt'} at epoch {killed_at}" in capsys.readouterr().out
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
    resumed, full = load_checkpoint(save / "ppo_last.pt"), load_checkpoint(root / "ref2" / "ppo_last.pt")
    assert resumed["extra"]["ppo"]["epoch"] == full["extra"]["ppo"]["epoch"] == 4 and resumed["step"] == full["step"]
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


@needs_music
def test_finetune_does_not_continue_on_a_retrained_policy(tiny, capsys):
    from agent.checkpoint import load_checkpoint, policy_from_checkpoint, save_checkpoint
    from rl.train import main

    root = tiny
    run = root / "re"
    shutil.copytree(root / "tiny", run)
    args = ["--run", "re", "--runs_dir", str(root), *FINETUNE, "--epochs", "1"]
    assert main(args) == 0
    bc = run / "checkpoints" / "bc_best.pt"
    ck = load_checkpoint(bc)
    pol = policy_from_checkpoint(ck)
    with torch.no_grad():
        next(pol.parameters()).add_(0.01)  # "make pretrain" ran again
    save_checkpoint(bc, model=pol, stage="pretrain", layout=ck["layout"], extra=ck["extra"])
    capsys.readouterr()
    assert main([*args, "--epochs", "2"]) == 2
    assert "retrained since" in capsys.readouterr().err
