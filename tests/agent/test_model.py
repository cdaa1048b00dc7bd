"""The policy: shapes, masks, the factored log-probabilities, and that it can learn."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from agent.model import N_AMOUNTS, N_SIZES, N_TYPES, FeatureNormalizer, Policy, PolicyConfig, obs_to_tensors
from datasets.errors import ParameterError
from tests.agent.fake_obs import allowed, random_obs

CFG = PolicyConfig(n_channels=130, n_globals=6, window=16, head_index=4, hidden=32, n_layers=2, n_heads=4, kernel_size=5)


def _obs(batch=8, seed=0, **kw):
    return obs_to_tensors(random_obs(CFG, batch, seed=seed, **kw))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Policy(CFG)
    # Non-trivial heads (the init is near-uniform on purpose).
    with torch.no_grad():
        for p in (m.type_head.weight, m.size_head[-1].weight, m.amount_head[-1].weight):
            p.normal_(0, 0.5)
    return m.eval()


def test_config_validation():
    with pytest.raises(ParameterError, match="divisible|multiple"):
        PolicyConfig(hidden=30, n_heads=4)
    with pytest.raises(ParameterError, match="odd"):
        PolicyConfig(kernel_size=6)
    with pytest.raises(ParameterError, match="head_index"):
        PolicyConfig(window=8, head_index=8)
    assert PolicyConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ParameterError, match="unknown"):
        PolicyConfig.from_dict({**CFG.to_dict(), "bogus": 1})


def test_shapes(model):
    obs = _obs(5)
    out = model(obs)
    assert out.type_logits.shape == (5, N_TYPES)
    assert out.size_logits.shape == (5, N_TYPES, N_SIZES)
    assert out.amount_logits.shape == (5, N_TYPES, N_AMOUNTS)
    assert out.value.shape == (5,)
    assert out.energy.shape == (5, CFG.n_energy)
    assert out.boundary_logits.shape == (5, CFG.window)
    actions, logp, value, ent = model.act(obs)
    assert actions.shape == (5, 3) and actions.dtype == torch.long
    assert logp.shape == value.shape == (5,)
    assert set(ent) == {"type", "size", "amount"} and all(e.shape == (5,) for e in ent.values())
    lp2, ent2, v2 = model.evaluate(obs, actions)
    torch.testing.assert_close(lp2, logp)
    torch.testing.assert_close(v2, value)
    # An unbatched numpy observation gets a batch dim.
    single = {k: v[0].numpy() for k, v in random_obs(CFG, 1).items()}
    assert obs_to_tensors(single)["beats"].shape == (1, CFG.window, CFG.n_channels)
    with pytest.raises(ParameterError, match="window"):
        bad = dict(obs)
        bad["beats"] = obs["beats"][:, :-1]
        model(bad)


def test_joint_probabilities_sum_to_one_and_masked_are_zero(model):
    obs = _obs(6, seed=1)
    with torch.no_grad():
        m64 = Policy(CFG).double()
        m64.load_state_dict(model.state_dict())
        obs64 = {k: (v.double() if v.is_floating_point() else v) for k, v in obs.items()}
        joint = m64.joint_log_prob(obs64).exp()  # (B, 18, 5, 5)
    assert joint.shape == (6, N_TYPES, N_SIZES, N_AMOUNTS)
    torch.testing.assert_close(joint.sum((1, 2, 3)), torch.ones(6, dtype=torch.float64), atol=1e-12, rtol=0)
    legal = (
        obs["type_mask"].bool()[:, :, None, None]
        & obs["size_mask"].bool()[:, :, :, None]
        & obs["amount_mask"].bool()[:, :, None, :]
    )
    assert (joint[~legal] == 0).all()
    assert (joint[:, 5] == 0).all()  # type 5 allowed but with no allowed size: masked
    assert (joint[legal & (torch.arange(N_TYPES) != 5)[None, :, None, None]] > 0).all()
    # log P(t,s,a) = log P(t) + log P(s|t) + log P(a|t), and evaluate() agrees with it.
    acts = torch.nonzero(legal[0])[:20]
    o0 = {k: v[:1].expand(len(acts), *v.shape[1:]) for k, v in obs64.items()}
    lp, _, _ = m64.evaluate(o0, acts)
    torch.testing.assert_close(lp.exp(), joint[0][acts[:, 0], acts[:, 1], acts[:, 2]])


def test_masked_action_never_sampled(model):
    obs = _obs(4, seed=2)
    big = {k: v.repeat_interleave(256, dim=0) for k, v in obs.items()}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        actions, logp, _, _ = model.act(big, generator=g)
    assert allowed(big, actions).all()
    assert torch.isfinite(logp).all()
    assert (actions[:, 0] != 5).all()
    # several types are actually sampled (the test exercises the sampler)
    assert len(actions[:, 0].unique()) > 3


def test_sampling_reproducible_and_deterministic_is_joint_mode(model):
    obs = _obs(8, seed=3)
    with torch.no_grad():
        a1 = model.act(obs, generator=torch.Generator().manual_seed(7))[0]
        a2 = model.act(obs, generator=torch.Generator().manual_seed(7))[0]
        assert torch.equal(a1, a2)
        det = model.act(obs, deterministic=True)[0]
        joint = model.joint_log_prob(obs).reshape(8, -1)
    flat = det[:, 0] * N_SIZES * N_AMOUNTS + det[:, 1] * N_AMOUNTS + det[:, 2]
    assert torch.equal(flat, joint.argmax(-1))


def test_entropy_gradients_are_finite_with_masks():
    torch.manual_seed(0)
    m = Policy(CFG).eval()
    obs = _obs(8, seed=4)
    assert not obs["type_mask"].bool().all()  # masked choices present: -inf log-probs
    with torch.no_grad():
        actions = m.act(obs, generator=torch.Generator().manual_seed(0))[0]
    for ent in (m.evaluate(obs, actions)[1], m.act(obs, generator=torch.Generator().manual_seed(0))[3]):
        m.zero_grad(set_to_none=True)
        total = sum(e.sum() for e in ent.values())
        assert torch.isfinite(total)
        total.backward()
        grads = [p.grad for p in m.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)  # the entropy does reach the weights
    # the value is the entropy of the allowed choices only (masked: p = 0, no contribution)
    lt = m.log_probs(m(obs), obs)[0].double()
    p = lt.exp()
    expected = -(p * lt.masked_fill(p == 0, 0.0)).sum(-1)
    torch.testing.assert_close(m.evaluate(obs, actions)[1]["type"].double(), expected, rtol=1e-5, atol=1e-6)


def test_no_allowed_action_is_an_error(model):
    obs = _obs(2)
    obs["type_mask"] = torch.zeros_like(obs["type_mask"])
    with pytest.raises(ParameterError, match="no allowed action"):
        model.act(obs)


def test_padding_rows_do_not_matter(model):
    obs = _obs(6, seed=4)
    pad = obs["beat_mask"] < 0.5
    assert pad.any()
    obs2 = dict(obs)
    obs2["beats"] = obs["beats"].clone()
    obs2["beats"][pad] = 123.0
    with torch.no_grad():
        o1, o2 = model(obs), model(obs2)
    torch.testing.assert_close(o1.type_logits, o2.type_logits)
    torch.testing.assert_close(o1.value, o2.value)


def test_normalizer_fit_and_saved_in_state_dict():
    x = torch.randn(100, 7) * torch.arange(1, 8) + 5
    x[:, 3] = 2.0  # constant column
    n = FeatureNormalizer(7).fit(x)
    y = n(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(7), atol=1e-5, rtol=0)
    assert (y[:, 3] == 0).all()
    assert bool(n.fitted)
    sd = n.state_dict()
    assert {"mean", "std", "fitted"} <= set(sd)
    with pytest.raises(ParameterError):
        FeatureNormalizer(2).fit(torch.tensor([[float("nan"), 1.0]]))


def test_overfits_tiny_dataset():
    """BC sanity: 24 observations with arbitrary legal labels are learned exactly."""
    torch.manual_seed(0)
    m = Policy(CFG)
    obs = _obs(24, seed=5)
    m.normalizer.fit(obs["beats"][..., : CFG.n_features], obs["beat_mask"])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        labels = Policy(CFG).act(obs, generator=g)[0]  # random legal actions
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    b = torch.arange(24)
    for _ in range(300):
        out = m(obs)
        lt, ls, la = m.log_probs(out, obs)
        t, s, a = labels.unbind(-1)
        loss = -(lt[b, t] + ls[b, t, s] + la[b, t, a]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            pred = m.act(obs, deterministic=True)[0]
        if torch.equal(pred, labels):
            break
    assert torch.equal(pred, labels), f"accuracy {(pred == labels).all(-1).float().mean():.2f}"
    assert F.softmax(out.type_logits, -1).isfinite().all()


def test_encoder_reads_only_the_rows_around_the_head():
    # read_behind / read_ahead: rows outside [head - behind, head + ahead) change nothing,
    # a row inside does; -1 (and checkpoints written before the fields existed) = all rows
    cfg = PolicyConfig(n_channels=130, n_globals=6, window=32, head_index=8, hidden=16, n_layers=1, n_heads=2,
                       kernel_size=5, read_behind=4, read_ahead=10)
    assert cfg.rows == slice(4, 18) and cfg.n_rows == 14 and cfg.head_row == 4
    torch.manual_seed(0)
    model = Policy(cfg).eval()
    obs = obs_to_tensors(random_obs(cfg, 4, seed=3, pad=False))
    with torch.no_grad():
        base = model(obs)
        far = {**obs, "beats": obs["beats"].clone()}
        far["beats"][:, :4] += 5.0
        far["beats"][:, 18:] -= 5.0
        near = {**obs, "beats": obs["beats"].clone()}
        near["beats"][:, 12] += 5.0
        out_far, out_near = model(far), model(near)
    assert torch.equal(base.type_logits, out_far.type_logits) and torch.equal(base.value, out_far.value)
    assert not torch.allclose(base.type_logits, out_near.type_logits)
    assert base.boundary_logits.shape == (4, 14)
    # a rollout stored cropped (crop_obs) gives exactly the same outputs
    cropped = model.crop_obs(obs)
    assert cropped["beats"].shape == (4, 14, 130) and cropped["beat_mask"].shape == (4, 14)
    with torch.no_grad():
        assert torch.equal(model(cropped).type_logits, base.type_logits)
    with pytest.raises(ParameterError, match="window"):
        model({**obs, "beats": obs["beats"][:, :20], "beat_mask": obs["beat_mask"][:, :20]})
    legacy = {k: v for k, v in cfg.to_dict().items() if k not in ("read_behind", "read_ahead")}
    assert PolicyConfig.from_dict(legacy).rows == slice(0, 32)
    with pytest.raises(ParameterError):
        PolicyConfig(read_behind=-2)
