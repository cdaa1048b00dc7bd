"""Our pure-PyTorch neighbourhood attention against natten's own CPU forward."""

from __future__ import annotations

import warnings

import pytest
import torch

natten = pytest.importorskip("natten")

from agent.natten_cpu import (  # noqa: E402
    _na1d_natten,
    na1d,
    na1d_torch,
    natten_available_for,
    neighborhood_indices,
    neighborhood_mask,
)

warnings.filterwarnings("ignore", module="torch.nn.attention.flex_attention")


def _qkv(B, L, H, D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, L, H, D, generator=g, dtype=dtype) for _ in range(3)]


def _natten(q, k, v, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return natten.na1d(q, k, v, **kw)


# natten needs kernel * dilation <= length; shorter ones are the short-sequence test's.
_CASES = [
    (ks, dil, L) for ks in (3, 7, 13) for dil in (1, 2) for L in (13, 16, 29, 40) if ks * dil <= L
]


@pytest.mark.parametrize("kernel_size,dilation,length", _CASES)
@pytest.mark.parametrize("method", ["gather", "dense"])
def test_equals_natten_forward(kernel_size, dilation, length, method):
    q, k, v = _qkv(2, length, 3, 8, seed=length + kernel_size)
    ref = _natten(q, k, v, kernel_size=kernel_size, dilation=dilation)
    ours = na1d_torch(q, k, v, kernel_size=kernel_size, dilation=dilation, method=method)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_window_shifts_at_edges_not_padded():
    idx, valid = neighborhood_indices(10, 5, 1)
    assert valid.all()
    assert idx[0].tolist() == [0, 1, 2, 3, 4]  # shifted right, not zero-padded on the left
    assert idx[9].tolist() == [5, 6, 7, 8, 9]
    assert idx[5].tolist() == [3, 4, 5, 6, 7]
    idx, _ = neighborhood_indices(10, 3, 2)
    assert idx[0].tolist() == [0, 2, 4]  # same dilation group only
    assert idx[9].tolist() == [5, 7, 9]


@pytest.mark.parametrize("length,kernel_size,dilation", [(5, 7, 1), (4, 13, 1), (9, 7, 2), (1, 3, 1), (3, 3, 2)])
def test_shorter_than_kernel_is_full_attention_per_group(length, kernel_size, dilation):
    """natten raises; we clip the kernel to each dilation group's length."""
    q, k, v = _qkv(2, length, 2, 8, seed=length)
    with pytest.raises(ValueError):
        _natten(q, k, v, kernel_size=kernel_size, dilation=dilation)
    ours = na1d_torch(q, k, v, kernel_size=kernel_size, dilation=dilation)
    # Reference: plain softmax attention among positions of the same dilation group.
    pos = torch.arange(length)
    same_group = (pos[:, None] % dilation) == (pos[None, :] % dilation)
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) * 8**-0.5
    attn = torch.softmax(scores.masked_fill(~same_group, float("-inf")), -1)
    ref = torch.einsum("bhlm,bmhd->blhd", attn, v)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(na1d_torch(q, k, v, kernel_size=kernel_size, dilation=dilation, method="gather"), ref)
    if dilation == 1 and length % 2 == 1 and length > 1:
        # A clipped kernel is natten's own window of size L.
        torch.testing.assert_close(ours, _natten(q, k, v, kernel_size=length), atol=1e-5, rtol=1e-5)


def test_key_mask_gather_dense_and_natten_trick_agree():
    B, L, H, D = 3, 24, 2, 8
    q, k, v = _qkv(B, L, H, D, seed=3)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :6] = False  # song start: padding on the left
    mask[1, 20:] = False  # song end
    mask[2, :3] = False
    mask[2, 22:] = False
    for ks, dil in [(7, 1), (5, 2), (3, 1)]:
        dense = na1d_torch(q, k, v, kernel_size=ks, dilation=dil, key_mask=mask, method="dense")
        gather = na1d_torch(q, k, v, kernel_size=ks, dilation=dil, key_mask=mask, method="gather")
        torch.testing.assert_close(dense, gather, atol=1e-5, rtol=1e-5)
        # natten's op (run on CPU here) with the extra-channel padding trick used on CUDA.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trick = _na1d_natten(q, k, v, kernel_size=ks, dilation=dil, key_mask=mask, scale=None)
        torch.testing.assert_close(trick, dense, atol=1e-5, rtol=1e-5)
        assert (dense[~mask] == 0).all()
    # A padded key never influences a real query: change padded values, real outputs stay.
    v2 = v.clone()
    v2[~mask] = 1e3
    k2 = k.clone()
    k2[~mask] = -5.0
    out1 = na1d_torch(q, k, v, kernel_size=7, key_mask=mask)
    out2 = na1d_torch(q, k2, v2, kernel_size=7, key_mask=mask)
    torch.testing.assert_close(out1[mask], out2[mask])


def test_unmasked_equals_all_true_mask():
    q, k, v = _qkv(2, 16, 2, 8, seed=9)
    torch.testing.assert_close(
        na1d_torch(q, k, v, kernel_size=5), na1d_torch(q, k, v, kernel_size=5, key_mask=torch.ones(2, 16, dtype=torch.bool))
    )


def test_backward_on_cpu_is_exact():
    q, k, v = _qkv(1, 9, 1, 4, seed=1, dtype=torch.float64)
    mask = torch.ones(1, 9, dtype=torch.bool)
    mask[0, :2] = False
    for method in ("gather", "dense"):
        args = [t.clone().requires_grad_(True) for t in (q, k, v)]
        assert torch.autograd.gradcheck(
            lambda a, b, c: na1d_torch(a, b, c, kernel_size=5, dilation=1, key_mask=mask, method=method), args
        )


def test_dispatcher_uses_torch_on_cpu():
    q, k, v = _qkv(1, 16, 2, 8)
    assert not natten_available_for(q, kernel_size=7, dilation=1)
    torch.testing.assert_close(na1d(q, k, v, kernel_size=7), na1d_torch(q, k, v, kernel_size=7))


def test_dense_mask_matches_indices():
    m = neighborhood_mask(11, 5, 2)
    idx, valid = neighborhood_indices(11, 5, 2)
    assert (m.sum(1) == valid.sum(1)).all()
    for i in range(11):
        assert set(torch.nonzero(m[i]).flatten().tolist()) == set(idx[i][valid[i]].tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (natten's fused kernels)")
def test_cuda_dispatch_equals_torch_with_padding():
    q, k, v = (t.cuda() for t in _qkv(2, 64, 4, 8, seed=11))
    mask = torch.ones(2, 64, dtype=torch.bool, device="cuda")
    mask[0, :10] = False
    mask[1, 50:] = False
    for ks, dil in [(7, 1), (7, 2), (13, 1)]:
        assert natten_available_for(q, kernel_size=ks, dilation=dil)
        out = na1d(q, k, v, kernel_size=ks, dilation=dil, key_mask=mask)
        ref = na1d_torch(q, k, v, kernel_size=ks, dilation=dil, key_mask=mask)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
