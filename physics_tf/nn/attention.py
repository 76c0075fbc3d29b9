"""The attention core shared by every physics_tf model.

One multi-head attention on :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels where the
backend has them) that takes an optional per-head additive bias ``U`` of shape (B, H, Lq, Lk) and a key
padding mask::

    Attention(Q, K, V) = softmax(Q Kᵀ / √d + U + M) V,    M = 0 for real keys, −∞ for padded keys

Mask convention everywhere in physics_tf: ``mask`` is a bool tensor with **True = real element**, False =
padding (the opposite of ``nn.MultiheadAttention``'s ``key_padding_mask``, the same as an SDPA boolean mask).
A query row whose keys are all padding would give NaN (softmax over −∞ only); :func:`attention_mask` lets such
rows attend to every key instead, so outputs stay finite (they belong to padding and are ignored downstream).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def attention_mask(key_mask: Tensor | None, bias: Tensor | None = None, dtype: torch.dtype | None = None) -> Tensor | None:
    """Combine a key mask (B, Lk; True = real) and an additive bias (B, H, Lq, Lk) into one SDPA ``attn_mask``.

    Build it once per forward pass and hand it to every layer: with a bias the result is a float tensor
    (B, H, Lq, Lk) with −∞ at padded keys; without one it is a broadcastable bool tensor (B, 1, 1, Lk).
    """
    if key_mask is not None:
        # rows with no real key at all (an empty set) attend to everything instead of producing NaN
        key_mask = key_mask | ~key_mask.any(dim=-1, keepdim=True)  # (B, Lk)
        keep = key_mask[:, None, None, :]  # (B, 1, 1, Lk)
    if bias is None:
        return keep if key_mask is not None else None
    if dtype is not None:
        bias = bias.to(dtype)
    if key_mask is None:
        return bias
    return bias.masked_fill(~keep, float("-inf"))  # (B, H, Lq, Lk)


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0) -> Tensor:
    """Scaled dot-product attention: q (B, H, Lq, d), k/v (B, H, Lk, d), attn_mask from :func:`attention_mask`."""
    if attn_mask is not None and attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
        attn_mask = attn_mask.to(q.dtype)  # autocast: SDPA wants the float mask in the query's dtype
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)  # (B, H, Lq, d)


class MultiheadAttention(nn.Module):
    """Multi-head attention with additive bias and padding mask, batch-first.

    Parameters
    ----------
    dim: model width; num_heads: heads (dim must divide); dropout: attention-weight dropout (training only);
    head_scale: NormFormer's learned per-head scale of the attention output (Shleifer et al. 2021,
    arXiv 2110.09456), applied before the output projection.

    The parameter layout matches ``nn.MultiheadAttention`` (one (3·dim, dim) input projection + output
    projection), so the parameter count of models built on it equals the reference's.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, head_scale: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.dropout = dropout
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.head_scale = nn.Parameter(torch.ones(num_heads)) if head_scale else None
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, d)

    def forward(self, x: Tensor, context: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """x: queries (B, Lq, D); context: keys/values (B, Lk, D), default x (self-attention)."""
        if context is None:
            q, k, v = self.in_proj(x).chunk(3, dim=-1)  # 3 × (B, L, D)
        else:
            w, b = self.in_proj.weight, self.in_proj.bias
            q = F.linear(x, w[: self.dim], b[: self.dim])  # (B, Lq, D)
            k, v = F.linear(context, w[self.dim :], b[self.dim :]).chunk(2, dim=-1)  # 2 × (B, Lk, D)
        p = self.dropout if self.training else 0.0
        out = attention(self._heads(q), self._heads(k), self._heads(v), attn_mask, p)  # (B, H, Lq, d)
        if self.head_scale is not None:
            out = out * self.head_scale.view(1, -1, 1, 1).to(out.dtype)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.dim)  # (B, Lq, D)
        return self.out_proj(out)
