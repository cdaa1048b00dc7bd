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
  because of padding (padding sits at the window edges of the observation). Queries
  whose whole neighbourhood is padding (only padded queries can be) output zeros.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

__all__ = ["neighborhood_indices", "na1d_torch", "na1d", "natten_available_for"]

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


def na1d_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    kernel_size: int,
    dilation: int = 1,
    key_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Exact neighbourhood attention in plain PyTorch (any device, with autograd).

    Parameters
    ----------
    q, k, v : torch.Tensor [shape=(B, L, H, D)], natten's "heads last" layout
    kernel_size, dilation : int > 0 (see module doc for the short-sequence rule)
    key_mask : torch.BoolTensor [shape=(B, L)] or None ; False = padding key
    scale : float, default D ** -0.5

    Returns
    -------
    out : torch.Tensor [shape=(B, L, H, D)]
    """
    B, L, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    idx, valid = neighborhood_indices(L, kernel_size, dilation, device=q.device)  # (L, K)
    K = idx.shape[1]
    flat = idx.reshape(-1)
    kn = k[:, flat].reshape(B, L, K, H, D)  # (B, L, K, H, D) neighbours of each query
    vn = v[:, flat].reshape(B, L, K, H, D)
    scores = torch.einsum("blhd,blkhd->blhk", q, kn) * scale  # (B, L, H, K)
    allowed = valid[None, :, None, :].expand(B, L, 1, K)  # (B, L, 1, K)
    if key_mask is not None:
        km = key_mask.to(torch.bool)[:, flat].reshape(B, L, 1, K)
        allowed = allowed & km
    scores = scores.masked_fill(~allowed, float("-inf"))
    any_allowed = allowed.any(dim=-1, keepdim=True)  # (B, L, 1, 1)
    # A row with no allowed key would be NaN; give it zeros instead (padded queries only).
    scores = torch.where(any_allowed, scores, torch.zeros_like(scores))
    attn = torch.softmax(scores, dim=-1)
    attn = attn * any_allowed
    return torch.einsum("blhk,blkhd->blhd", attn, vn)  # (B, L, H, D)


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
    # Queries that see only padding: zeros, as in na1d_torch.
    idx, valid = neighborhood_indices(L, kernel_size, dilation, device=q.device)
    km = key_mask.to(torch.bool)[:, idx.reshape(-1)].reshape(B, L, -1) & valid[None]
    return out * km.any(dim=-1)[:, :, None, None].to(out.dtype)


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
