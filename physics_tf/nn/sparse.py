"""Sparse Transformer attention (Child, Gray, Radford, Sutskever 2019, arXiv 1904.10509), bidirectional:
``efficient_attention("sparse_strided" | "sparse_fixed")``.

With block size l (``block``, default round(√L)), query i attends to the union of two disjoint key sets:

* **strided**: the local window |i − j| < l, and the keys at stride l, j ≡ i (mod l), j ≠ i;
* **fixed**: its own block ⌊j / l⌋ = ⌊i / l⌋, and the ``summary`` last positions of every other block,
  j mod l ≥ l − summary (Child et al.'s c).

Each part is computed with block reshapes and gathers — the local window as each block against itself and its two
neighbours (l × 3l), the stride as the (L / l) × (L / l) attention inside each residue class, the summaries as
L × (summary · L / l) — and the parts are merged through their log-sum-exp
(:func:`physics_tf.nn.efficient.merge_parts`). Memory and time O(L√L); no L × L tensor. The sequence is padded to
a multiple of l, the padding masked.
"""

from __future__ import annotations

import torch
from torch import Tensor

from physics_tf.nn.efficient import (
    MASKED,
    masked_softmax,
    merge_parts,
    pad_to,
    real_keys,
)

__all__ = ["default_block", "sparse_attention"]


def default_block(length: int) -> int:
    """round(√L), at least 1."""
    return max(1, round(length**0.5))


def _attend(q: Tensor, k: Tensor, v: Tensor, excluded: Tensor, dropout_p: float) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ / √d, excluded keys masked) v over the last two axes → (output, log-sum-exp)."""
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    weights, lse = masked_softmax(scores.masked_fill(excluded, MASKED), dropout_p)
    return weights.to(v.dtype) @ v, lse


def sparse_attention(pattern: str, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None,
                     dropout_p: float = 0.0, block: int | None = None, summary: int = 1) -> Tensor:
    """``pattern`` "strided" or "fixed" (module docstring): q/k/v (B, H, L, d), key_mask (B, L) → (B, H, L, d)."""
    B, H, L, d = q.shape
    lb = default_block(L) if block is None else block
    if lb < 1:
        raise ValueError(f"attention option block: expected a positive integer, got {block}")
    if pattern == "fixed" and not 1 <= summary <= lb:
        raise ValueError(f"attention option summary: expected 1 … block ({lb}), got {summary}")
    nb = -(-L // lb)
    lp = nb * lb
    real = real_keys(key_mask, B, L, lp, q.device)  # (B, Lp)
    q, k, v = (pad_to(t, lp).view(B, H, nb, lb, -1) for t in (q, k, v))  # (B, H, nb, l, ·)
    if pattern == "strided":
        # local window: each block against [previous, own, next] block (zero blocks, masked, at the ends)
        def neighbours(t: Tensor) -> Tensor:  # (…, nb, l, e) → (…, nb, 3l, e)
            z = torch.zeros_like(t[..., :1, :, :])
            t = torch.cat([z, t, z], dim=-3)
            return torch.cat([t[..., :-2, :, :], t[..., 1:-1, :, :], t[..., 2:, :, :]], dim=-2)

        real_n = neighbours(real.view(B, 1, nb, lb, 1)).view(B, 1, nb, 1, 3 * lb)  # (B, 1, nb, 1, 3l)
        offset = torch.arange(3 * lb, device=q.device) - lb - torch.arange(lb, device=q.device)[:, None]  # j − i
        out_a, lse_a = _attend(q, neighbours(k), neighbours(v), ~real_n | (offset.abs() >= lb), dropout_p)
        # stride: residue class r = i mod l holds positions r, r + l, …: (B, H, l, nb, ·), attention among them
        qt, kt, vt = (t.transpose(2, 3) for t in (q, k, v))
        keep = real.view(B, 1, nb, lb).transpose(2, 3).unsqueeze(-2)  # (B, 1, l, 1, nb)
        eye = torch.eye(nb, dtype=torch.bool, device=q.device)  # j = i, already in the window
        out_b, lse_b = _attend(qt, kt, vt, ~keep | eye, dropout_p)  # (B, H, l, nb, d)
        out_b, lse_b = out_b.transpose(2, 3), lse_b.transpose(2, 3)  # (B, H, nb, l, ·)
    elif pattern == "fixed":
        out_a, lse_a = _attend(q, k, v, ~real.view(B, 1, nb, 1, lb), dropout_p)  # own block: (B, H, nb, l, d)
        s = slice(lb - summary, lb)  # the summary positions of every block: nb · summary keys for every query
        ks, vs = (t[..., s, :].reshape(B, H, nb * summary, -1) for t in (k, v))
        keep = real.view(B, nb, lb)[..., s].reshape(B, 1, 1, nb * summary)
        block_q = torch.arange(lp, device=q.device) // lb
        block_k = torch.arange(nb, device=q.device).repeat_interleave(summary)
        own = block_q[:, None] == block_k[None, :]  # (Lp, nb · summary): in the own-block part already
        out_b, lse_b = _attend(q.reshape(B, H, lp, d), ks, vs, ~keep | own, dropout_p)  # (B, H, Lp, d)
        out_b, lse_b = out_b.view(B, H, nb, lb, -1), lse_b.view(B, H, nb, lb)
    else:
        raise ValueError(f"sparse attention pattern: expected 'strided' or 'fixed', got {pattern!r}")
    out = merge_parts([out_a, out_b], [lse_a, lse_b])  # (B, H, nb, l, d)
    return out.reshape(B, H, lp, -1)[:, :, :L]
