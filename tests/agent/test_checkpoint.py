"""Checkpoint round trip (weights_only), layout checks and atomic writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from agent.checkpoint import load_checkpoint, policy_from_checkpoint, save_checkpoint
from agent.model import Policy, PolicyConfig, obs_to_tensors
from datasets.errors import ParameterError
from tests.agent.fake_obs import random_obs

CFG = PolicyConfig(n_channels=125, n_globals=3, window=12, head_index=3, hidden=16, n_heads=2, kernel_size=3)


def _layout(names=None):
    names = names or [f"f{i}" for i in range(CFG.n_features)]
    return {
        "feature_names": names,
        "channel_names": names + ["h0", "h1", "h2", "h3"],
        "global_names": ["g0", "g1", "g2"],
        "n_features": CFG.n_features,
        "n_channels": CFG.n_channels,
        "n_globals": CFG.n_globals,
        "window": CFG.window,
        "head_index": CFG.head_index,
    }


@dataclass(frozen=True)
class _StageCfg:
    lr: float = 1e-3
    run: str = "demo"
    out: Path = Path("runs/demo")
    sizes: tuple[int, ...] = (1, 2)


def _trained_model():
    torch.manual_seed(0)
    m = Policy(CFG)
    obs = obs_to_tensors(random_obs(CFG, 4))
    m.normalizer.fit(obs["beats"][..., : CFG.n_features], obs["beat_mask"])
    m.global_normalizer.fit(obs["globals"])
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    loss = m(obs).value.pow(2).mean()
    loss.backward()
    opt.step()
    return m, opt, obs


def test_round_trip_weights_only(tmp_path):
    m, opt, obs = _trained_model()
    p = save_checkpoint(
        tmp_path / "ck" / "bc_last.pt", model=m, optimizer=opt, step=17, stage="pretrain",
        stage_config=_StageCfg(), layout=_layout(), extra={"epoch": 3, "rng": torch.get_rng_state()},
    )
    raw = torch.load(p, weights_only=True)  # plain content only
    assert raw["step"] == 17 and raw["stage"] == "pretrain"
    assert raw["stage_config"] == {"lr": 1e-3, "run": "demo", "out": "runs/demo", "sizes": [1, 2]}
    assert raw["layout"]["feature_names"][0] == "f0"
    torch.testing.assert_close(raw["normalizer"]["mean"], m.normalizer.mean)
    ck = load_checkpoint(p, expect_layout=_layout())
    m2 = policy_from_checkpoint(ck)
    assert m2.cfg == CFG
    with torch.no_grad():
        o1, o2 = m.eval()(obs), m2.eval()(obs)
    torch.testing.assert_close(o1.type_logits, o2.type_logits, rtol=0, atol=0)
    torch.testing.assert_close(m2.normalizer.std, m.normalizer.std)
    assert bool(m2.normalizer.fitted)
    opt2 = torch.optim.Adam(m2.parameters(), lr=1e-3)
    opt2.load_state_dict(ck["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert list(tmp_path.joinpath("ck").iterdir()) == [p]  # no temp files left


def test_other_feature_config_is_a_clear_error(tmp_path):
    m, _, _ = _trained_model()
    p = save_checkpoint(tmp_path / "a.pt", model=m, layout=_layout())
    other = _layout([f"f{i}" for i in range(CFG.n_features - 1)] + ["rms_renamed"])
    with pytest.raises(ParameterError, match="feature_names\\[120\\].*another feature configuration"):
        load_checkpoint(p, expect_layout=other)
    dims = {**_layout(), "n_channels": CFG.n_channels + 2}
    with pytest.raises(ParameterError, match="n_channels"):
        load_checkpoint(p, expect_layout=dims)
    with pytest.raises(ParameterError, match="window"):
        save_checkpoint(tmp_path / "b.pt", model=m, layout={**_layout(), "window": 99})


def test_bad_files(tmp_path):
    with pytest.raises(ParameterError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt", expect_layout=None)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ParameterError, match="not a readable checkpoint"):
        load_checkpoint(junk, expect_layout=None)
    # A pickled arbitrary object is refused by weights_only loading.
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "obj": _StageCfg()}, evil)
    with pytest.raises(ParameterError, match="not a readable checkpoint"):
        load_checkpoint(evil, expect_layout=None)


def test_failed_save_keeps_previous_file(tmp_path):
    m, _, _ = _trained_model()
    p = save_checkpoint(tmp_path / "c.pt", model=m, step=1)
    with pytest.raises(ParameterError, match="cannot store"):
        save_checkpoint(p, model=m, step=2, extra={"bad": object()})
    assert load_checkpoint(p, expect_layout=None)["step"] == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.pt"]
