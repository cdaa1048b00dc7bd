"""1-D neighbourhood attention: an exact pure-PyTorch version and a dispatcher to natten.

Why two implementations: natten 0.21 installs as pure Python here; on CPU its only
backend (unfused flex attention) runs forward but not backward, so training on CPU needs
our own op. On CUDA natten's fused kernels are used (DESIGN.md, "Environment facts").

Semantics (natten's, reproduced exactly; tests/agent/test_natten.py checks them against
natten's own CPU forward):

- With dilation ``d`` the sequence splits into ``d`` interleaved groups (positions
  ``p % d == g``); attention runs inside each group independently.
- In a group of length ``n``, query ``j`` attends to the ``K`` group positions starting at
  ``clamp(j - K // 2, 0, n - K)``: at the edges the window *shifts* to stay inside the
  sequence (it is never zero-padded), so every query always sees exactly ``K`` keys.
- Our extension for short sequences (natten raises when ``K * d > L``): the kernel is
  clipped to the group's length, ``K_eff = min(K, n)``, i.e. a group shorter than the
  kernel gets full attention inside the group.
- Padding (``key_mask`` False) removes keys from the softmax; the window does not move
  because of padding (padding sits at the window edges of the observation). Padded
  positions output zeros. A real query always sees itself, so its softmax is defined.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["neighborhood_indices", "neighborhood_mask", "na1d_torch", "na1d", "natten_available_for"]

log = logging.getLogger(__name__)

# Added to the scores of padded keys in the natten path (float32 only): exp(-1e4) == 0.
_MASK_SCORE = -1.0e4


def neighborhood_indices(length: int, kernel_size: int, dilation: int = 1, *, device=None) -> Tensor:
    """Key index of each query's neighbours.

    Parameters
    ----------
    length : int > 0, sequence length L
    kernel_size : int > 0, odd, window size K (clipped per dilation group, see module doc)
    dilation : int > 0

    Returns
    -------
    idx : torch.LongTensor [shape=(L, K)] ; row i lists the keys of query i in increasing
        order. When a dilation group is shorter than K, its rows repeat their last key
        to fill K columns and ``valid`` marks the repeats False.
    valid : torch.BoolTensor [shape=(L, K)]
    """
    assert length > 0 and kernel_size > 0 and dilation > 0, (length, kernel_size, dilation)
    pos = torch.arange(length, device=device)
    group = pos % dilation  # dilation group of each position
    j = pos // dilation  # index inside the group
    n = (length - group + dilation - 1) // dilation  # group length: positions g, g+d, ... < L
    k_eff = torch.clamp(n, max=kernel_size)  # kernel clipped to the group's length
    start = torch.minimum(torch.clamp(j - kernel_size // 2, min=0), n - k_eff)  # (L,)
    offs = torch.arange(kernel_size, device=device)  # (K,)
    valid = offs[None, :] < k_eff[:, None]  # (L, K)
    jj = start[:, None] + torch.minimum(offs[None, :], k_eff[:, None] - 1)  # (L, K)
    idx = group[:, None] + jj * dilation
    return idx, valid


@functools.lru_cache(maxsize=64)
def neighborhood_mask(length: int, kernel_size: int, dilation: int = 1, *, device=None) -> Tensor:
    """Dense form of ``neighborhood_indices``: BoolTensor [shape=(L, L)], [i, j] True when
    key j is in query i's neighbourhood. Cached (the policy asks for the same few shapes
    at every step); treat the result as read-only."""
    idx, valid = neighborhood_indices(length, kernel_size, dilation, device=device)
    rows = torch.arange(length, device=device)[:, None].expand_as(idx)
    m = torch.zeros(length, length, dtype=torch.bool, device=device)
    m[rows[valid], idx[valid]] = True  # (not scatter_: the filler repeats in idx are invalid)
    return m


# Up to this length the dense masked form (one L x L matmul) is faster than gathering
# K neighbours per query on CPU; beyond it the gather keeps memory at O(L K).
_DENSE_MAX_LEN = 256


def na1d_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    kernel_size: int,
    dilation: int = 1,
    key_mask: Tensor | None = None,
    scale: float | None = None,
    method: str = "auto",
) -> Tensor:
    """Exact neighbourhood attention in plain PyTorch (any device, with autograd).

    Parameters
    ----------
    q, k, v : torch.Tensor [shape=(B, L, H, D)], natten's "heads last" layout
    kernel_size, dilation : int > 0 (see module doc for the short-sequence rule)
    key_mask : torch.BoolTensor [shape=(B, L)] or None ; False = padding. Padded keys are
        left out of every softmax and padded positions output zeros.
    scale : float, default D ** -0.5
    method : "gather" (K neighbours per query), "dense" (L x L scores with the
        neighbourhood as a mask) or "auto" (dense up to L = 256); identical results.

    Returns
    -------
    out : torch.Tensor [shape=(B, L, H, D)]
    """
    B, L, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    if method == "auto":
        method = "dense" if L <= _DENSE_MAX_LEN else "gather"
    km = None if key_mask is None else key_mask.to(device=q.device, dtype=torch.bool)
    if method == "dense":
        allowed = neighborhood_mask(L, kernel_size, dilation, device=q.device)[None, None]  # (1, 1, L, L)
        if km is not None:
            allowed = allowed & km[:, None, None, :]
            # Padded queries may see no key at all: let them see everything (finite
            # softmax, no NaN in gradients); their output is zeroed below.
            allowed = allowed | ~km[:, None, :, None]
        # SDPA with a boolean mask is exact masked softmax attention, and on CPU about 2x
        # faster than matmul + masked_fill + softmax (fused kernel).
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed, scale=scale
        ).transpose(1, 2)  # (B, L, H, D)
    elif method == "gather":
        idx, valid = neighborhood_indices(L, kernel_size, dilation, device=q.device)  # (L, K)
        K = idx.shape[1]
        flat = idx.reshape(-1)
        kn = k[:, flat].reshape(B, L, K, H, D)  # (B, L, K, H, D) neighbours of each query
        vn = v[:, flat].reshape(B, L, K, H, D)
        scores = (q[:, :, None] * kn).sum(-1) * scale  # (B, L, K, H)
        allowed = valid[None, :, :, None].expand(B, L, K, 1)  # (B, L, K, 1)
        if km is not None:
            allowed = (allowed & km[:, flat].reshape(B, L, K, 1)) | ~km[:, :, None, None]
        attn = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=2)
        out = (attn[..., None] * vn).sum(2)  # (B, L, H, D)
    else:
        raise ValueError(f"na1d_torch: unknown method {method!r}")
    if km is not None:
        out = out * km[:, :, None, None].to(out.dtype)
    return out


def natten_available_for(q: Tensor, *, kernel_size: int, dilation: int) -> bool:
    """True when natten's fused op should run: a CUDA tensor and a sequence long enough
    for natten's rule ``kernel_size * dilation <= L``."""
    if not q.is_cuda:
        return False
    try:
        import natten  # noqa: F401
    except ImportError:  # pragma: no cover - natten is a pinned dependency
        return False
    return kernel_size * dilation <= q.shape[1]


def _na1d_natten(q, k, v, *, kernel_size, dilation, key_mask, scale):
    """natten.na1d with padding masked by one extra q/k channel (see na1d)."""
    import natten

    B, L, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    if key_mask is None or bool(key_mask.all()):
        return natten.na1d(q, k, v, kernel_size=kernel_size, dilation=dilation, scale=scale)
    # natten has no key-padding mask. Exact trick: append a channel with q = 1 and
    # k = 0 (real) or _MASK_SCORE / scale (padding), so a padded key's score drops by
    # 1e4 and its softmax weight is exactly 0 in float32. Head dim padded with zeros to a
    # multiple of 8 (what the fused kernels accept); zeros add nothing to q.k or to v.
    Dp = int(math.ceil((D + 1) / 8) * 8)
    pad = Dp - D
    qx = torch.nn.functional.pad(q, (0, pad))
    kx = torch.nn.functional.pad(k, (0, pad))
    vx = torch.nn.functional.pad(v, (0, pad))
    qx[..., D] = 1.0
    kx[..., D] = (~key_mask.to(torch.bool)).to(k.dtype)[:, :, None] * (_MASK_SCORE / scale)
    out = natten.na1d(qx, kx, vx, kernel_size=kernel_size, dilation=dilation, scale=scale)
    out = out[..., :D]
    # Padded positions output zeros, as in na1d_torch.
    return out * key_mask.to(torch.bool)[:, :, None, None].to(out.dtype)


_logged_backend: set[str] = set()


def na1d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    kernel_size: int,
    dilation: int = 1,
    key_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Neighbourhood attention, natten's fused op on CUDA and ``na1d_torch`` elsewhere.

    Same arguments, shapes and semantics as ``na1d_torch``. Sequences shorter than
    ``kernel_size * dilation`` (which natten rejects) always take the PyTorch path.
    """
    use_natten = natten_available_for(q, kernel_size=kernel_size, dilation=dilation)
    backend = "natten" if use_natten else "torch"
    if backend not in _logged_backend:
        _logged_backend.add(backend)
        log.info("neighbourhood attention backend: %s (device %s)", backend, q.device)
    if use_natten:
        return _na1d_natten(q, k, v, kernel_size=kernel_size, dilation=dilation, key_mask=key_mask, scale=scale)
    return na1d_torch(q, k, v, kernel_size=kernel_size, dilation=dilation, key_mask=key_mask, scale=scale)
