"""rl/train.py end to end on a tiny labelled run built from two short real recordings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.rl.corpus import MUSIC, SONGS

pytestmark = pytest.mark.skipif(
    not all((MUSIC / s).is_file() for s in SONGS), reason=f"needs real recordings in {MUSIC} (../shared/data absent)"
)

TINY = ["--steps", "16", "--n_envs", "2", "--minibatch_size", "32", "--update_epochs", "2", "--no_reward_audio"]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    from tests.rl.corpus import build_run

    root = tmp_path_factory.mktemp("runs")
    old = os.environ.get("EDITOR_CACHE_DIR")
    os.environ["EDITOR_CACHE_DIR"] = str(root / "cache")  # never touch the user's cache
    try:
        build_run(root, seconds=12.0)
        yield root
    finally:
        if old is None:
            os.environ.pop("EDITOR_CACHE_DIR", None)
        else:
            os.environ["EDITOR_CACHE_DIR"] = old


def _args(root: Path, *extra: str) -> list[str]:
    return ["--run", "tiny", "--runs_dir", str(root), *TINY, *extra]


def test_finetune_end_to_end_writes_checkpoint_and_tensorboard(runs_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agent.checkpoint import load_checkpoint, policy_from_checkpoint
    from rl.train import main

    save = runs_root / "e2e_ckpt"
    assert main(_args(runs_root, "--epochs", "2", "--eval_every", "2", "--save_dir", str(save),
                      "--reward_audio")) == 0
    ck = load_checkpoint(save / "ppo_last.pt")  # agent's format: inference reads it
    assert ck["stage"] == "finetune" and ck["extra"]["ppo"]["epoch"] == 2
    # the pretrained run's style settings travel to the fine-tuned checkpoint (inference reads them)
    assert ck["extra"]["target_keep"] == 0.5 and ck["extra"]["stem_method"] == "dsp"
    policy_from_checkpoint(ck)
    tb = runs_root / "tiny" / "tb" / "ppo_seed1"
    acc = EventAccumulator(str(tb), size_guidance={"audio": 0, "scalars": 0, "histograms": 0}).Reload()
    tags = acc.Tags()
    for tag in ("charts/episode_reward", "charts/reward/cut_ratio", "losses/entropy_type", "losses/approx_kl",
                "losses/clipfrac", "losses/explained_variance", "time/rollout", "time/update", "time/data",
                "eval/episode_reward"):
        assert tag in tags["scalars"], tag
    assert {"actions/type", "actions/size", "actions/amount"} <= set(tags["histograms"])
    assert "eval/edit" in tags["audio"]  # a person can listen to the greedy edit


def test_cli_resume_continues_identically(runs_root):
    from agent.checkpoint import load_checkpoint
    from rl.train import main

    full, part = runs_root / "full", runs_root / "part"
    common = ("--epochs", "3", "--eval_every", "0", "--seed", "5")
    assert main(_args(runs_root, *common, "--save_dir", str(full))) == 0
    assert main(_args(runs_root, *common, "--save_dir", str(part), "--stop_after", "1")) == 0
    assert load_checkpoint(part / "ppo_last.pt")["extra"]["ppo"]["epoch"] == 1
    assert main(_args(runs_root, *common, "--save_dir", str(part), "--checkpoint", str(part / "ppo_last.pt"))) == 0
    a, b = load_checkpoint(full / "ppo_last.pt"), load_checkpoint(part / "ppo_last.pt")
    assert a["step"] == b["step"] and a["extra"]["ppo"]["epoch"] == b["extra"]["ppo"]["epoch"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_from_scratch_and_bc_anchor_run(runs_root):
    from rl.train import main

    assert main(_args(runs_root, "--epochs", "1", "--eval_every", "0", "--from_scratch",
                      "--save_dir", str(runs_root / "scratch"))) == 0
    assert (runs_root / "scratch" / "ppo_scratch_last.pt").is_file()
    assert main(_args(runs_root, "--epochs", "1", "--eval_every", "0", "--anchor", "bc",
                      "--save_dir", str(runs_root / "bc"))) == 0


def test_missing_pretrained_checkpoint_is_a_clear_error(runs_root, capsys):
    from rl.train import main

    assert main(_args(runs_root, "--epochs", "1", "--pretrained", str(runs_root / "nope.pt"))) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_heldout_songs_are_the_pretrained_policys_validation_songs():
    # PPO must never train on the songs BC held out, and must evaluate on them, whatever
    # its own --seed (a different seed used to hold out songs BC had trained on)
    from types import SimpleNamespace

    from rl.train import heldout_split, split_songs

    pairs = [SimpleNamespace(name=f"s{i}", raw_sha256=f"sha{i}") for i in range(10)]
    ck = {"extra": {"val_songs": ["sha3", "sha7"]}}
    for seed in (1, 2, 3):
        train, held, how = heldout_split(pairs, checkpoint=ck, fraction=0.2, seed=seed)
        assert held == [3, 7] and train == [0, 1, 2, 4, 5, 6, 8, 9] and "validation" in how
    # no named validation songs (scratch, older checkpoints): the seeded split
    assert heldout_split(pairs, checkpoint={"extra": {}}, fraction=0.2, seed=2)[:2] == split_songs(10, fraction=0.2, seed=2)
    assert heldout_split(pairs, checkpoint=None, fraction=0.3, seed=1)[:2] == split_songs(10, fraction=0.3, seed=1)
