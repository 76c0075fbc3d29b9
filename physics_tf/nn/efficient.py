"""Attention that does not build the L×L score matrix: LSH (Reformer), sparse (Sparse Transformer), windows,
latents (Perceiver), and plain full attention as the reference.

:func:`efficient_attention` ``(kind, q, k, v, key_mask, dropout_p, **options)`` is self-attention on q/k/v
(B, H, L, d) with a key mask (B, L; True = real, None = all real) → (B, H, L, d). Padded keys never receive weight;
rows whose keys are all padding stay finite (their output belongs to padding). Scores are Q Kᵀ / √d as in the core
(:mod:`physics_tf.nn.attention`), softmax in float32. The kinds (:data:`KINDS`) and their options (:data:`KIND_OPTIONS`):

* ``"full"``: the core's masked SDPA (fused kernel, O(L) memory without a bias, O(L²) time) — the reference.
* ``"window"``: block-diagonal attention inside windows of ``window`` consecutive tokens (``window`` default 16;
  the sequence is padded to a multiple, the padding masked; a window wider than L is cut to L). Exactly the Auger
  temporal encoder's reshape into windows (Swin-style local attention, Liu et al. arXiv 2103.14030). O(L·window).
* ``"lsh"``: Reformer attention (Kitaev, Kaiser, Levskaya, arXiv 2001.04451), :mod:`physics_tf.nn.lsh`. Shared QK
  (``k`` is ignored), ``n_hashes`` rounds of random-rotation hashing, bucket sort, chunked attention, no attention
  to oneself. O(L·bucket_size·n_hashes).
* ``"sparse_strided"`` / ``"sparse_fixed"``: the Sparse Transformer's factorised patterns (Child et al. arXiv
  1904.10509), bidirectional, :mod:`physics_tf.nn.sparse`. O(L√L).

An attention over the union of disjoint key sets is computed part by part and merged through each part's
log-sum-exp (:func:`merge_parts`): exactly the softmax over the union, without materialising it.

:class:`LatentEncoder` is the Perceiver's latent attention (Jaegle et al. arXiv 2103.03206): ``num_latents``
learned queries cross-attend to the L tokens (memory O(k·L)), then ``depth`` self-attention blocks among the latents.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

# physics_tf.nn.attention (whose MultiheadAttention dispatches to this module) and nn.blocks are imported inside the
# functions that use them, so that either module may import this one at its top without an import cycle

__all__ = [
    "KINDS",
    "KIND_OPTIONS",
    "MASKED",
    "LatentEncoder",
    "check_options",
    "efficient_attention",
    "masked_softmax",
    "merge_parts",
    "window_attention",
]

KINDS = ("full", "lsh", "sparse_strided", "sparse_fixed", "window")
# each kind's keyword options (efficient_attention(..., **options)), with their defaults
KIND_OPTIONS: Mapping[str, Mapping[str, object]] = {
    "full": {},
    "lsh": {"bucket_size": 32, "n_hashes": 4, "n_buckets": None, "seed": None, "attend_across_buckets": False},
    "sparse_strided": {"block": None},
    "sparse_fixed": {"block": None, "summary": 1},
    "window": {"window": 16},
}
MASKED = -1e9  # the score of a padded / excluded key: exp(MASKED − max) is exactly 0 in float32, rows stay finite


def check_options(kind: str, options: Mapping[str, object]) -> None:
    """ValueError naming the kind or the option when ``kind`` is not in :data:`KINDS` or an option is unknown."""
    if kind not in KINDS:
        raise ValueError(f"attention kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    for key in options:
        if key not in KIND_OPTIONS[kind]:
            known = ", ".join(KIND_OPTIONS[kind]) or "none"
            raise ValueError(f"attention option {key!r} is not one of kind {kind!r}'s options ({known})")


def masked_softmax(scores: Tensor, dropout_p: float = 0.0, training: bool = True,
                   divisor: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Softmax of float32 ``scores`` (…, Lk) → (weights, log-sum-exp (…)); weights dropped with ``dropout_p``.
    One exp pass (scores − row max). ``divisor`` (shape of scores, ≥ 1 where not masked): the softmax of
    scores − log(divisor), without the log."""
    from physics_tf.nn.attention import dropout_bits

    top = scores.detach().amax(dim=-1, keepdim=True)  # any constant per row gives the same log-sum-exp
    weights = (scores - top).exp_()
    if divisor is not None:
        weights = weights / divisor
    total = weights.sum(dim=-1, keepdim=True)
    lse = (top + total.log()).squeeze(-1)  # (…)
    weights = weights / total
    return dropout_bits(weights, dropout_p, training and dropout_p > 0.0), lse


def merge_parts(outs: list[Tensor], lses: list[Tensor]) -> Tensor:
    """Attention outputs over disjoint key sets (each (…, d), normalised within its set, log-sum-exp (…)) → the
    output of one softmax over the union: Σ_p exp(lse_p − logsumexp_p lse_p) · out_p."""
    lse = torch.stack(lses)  # (P, …)
    weights = (lse - lse.logsumexp(dim=0, keepdim=True)).exp().unsqueeze(-1)  # (P, …, 1)
    return sum(w.to(o.dtype) * o for w, o in zip(weights, outs))  # (…, d)


def pad_to(t: Tensor, length: int, dim: int = 2) -> Tensor:
    """Zero-pad ``t`` along ``dim`` to ``length``."""
    extra = length - t.shape[dim]
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def real_keys(key_mask: Tensor | None, batch: int, length: int, padded: int, device: torch.device) -> Tensor:
    """Key mask (B, padded): the given mask (or all True) over the first ``length`` positions, False after."""
    if key_mask is None:
        key_mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    return pad_to(key_mask.to(torch.bool), padded, dim=1)


def window_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, window: int = 16,
                     dropout_p: float = 0.0) -> Tensor:
    """Block-diagonal attention in windows of ``window`` (cut to L) consecutive tokens: the sequence is padded to
    nw · w, folded to (B·nw, H, w, d) and run through the core's :func:`physics_tf.nn.attention.attention` with the
    window's key mask (a window of padding only attends to everything, finite) — what the Auger temporal encoder
    does by reshaping its tokens into windows."""
    from physics_tf.nn.attention import attention, attention_mask

    if window < 1:
        raise ValueError(f"attention option window: expected a positive integer, got {window}")
    B, H, L, _ = q.shape
    w = min(window, L)
    nw = -(-L // w)
    keep = real_keys(key_mask, B, L, nw * w, q.device).view(B * nw, w)  # (B·nw, w)

    def fold(t: Tensor) -> Tensor:  # (B, H, L, d) → (B·nw, H, w, d)
        return pad_to(t, nw * w).view(B, H, nw, w, t.shape[-1]).transpose(1, 2).reshape(B * nw, H, w, t.shape[-1])

    out = attention(fold(q), fold(k), fold(v), attention_mask(keep), dropout_p)  # (B·nw, H, w, d)
    out = out.view(B, nw, H, w, -1).transpose(1, 2).reshape(B, H, nw * w, -1)  # (B, H, nw·w, d)
    return out[:, :, :L]


def efficient_attention(kind: str, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None,
                        dropout_p: float = 0.0, **options) -> Tensor:
    """Self-attention of ``kind`` (:data:`KINDS`; module docstring): q/k/v (B, H, L, d), key_mask (B, L) True = real
    or None → (B, H, L, d). ``options``: the kind's (:data:`KIND_OPTIONS`); ValueError for an unknown kind or option.
    ``dropout_p``: attention-weight dropout (pass 0 in evaluation)."""
    from physics_tf.nn.attention import attention, attention_mask

    check_options(kind, options)
    if kind == "full":
        return attention(q, k, v, attention_mask(key_mask), dropout_p)
    if kind == "window":
        return window_attention(q, k, v, key_mask, dropout_p=dropout_p, **options)
    if kind == "lsh":
        from physics_tf.nn.lsh import lsh_attention

        return lsh_attention(q, v, key_mask, dropout_p=dropout_p, **options)
    from physics_tf.nn.sparse import sparse_attention

    return sparse_attention(kind.removeprefix("sparse_"), q, k, v, key_mask, dropout_p=dropout_p, **options)


class LatentEncoder(nn.Module):
    """Perceiver latent attention (arXiv 2103.03206): tokens (B, L, D) → latents (B, num_latents, D).

    ``num_latents`` learned vectors (``latents``, truncated normal std 0.02) cross-attend to the tokens (``cross``,
    a :class:`physics_tf.nn.blocks.CrossAttentionBlock`; padded tokens masked), then ``depth`` self-attention
    blocks run among the latents (``blocks``, :class:`physics_tf.nn.blocks.TransformerBlock`). Attention memory
    heads·k·L + heads·k²: O(k·L). The parameter names and creation order are those of the Auger wing's former
    ``PerceiverTemporalEncoder`` (``latents``, ``cross``, ``blocks``), so a seed draws the same initial weights and
    old state-dict keys map by a prefix.
    """

    def __init__(self, dim: int, num_heads: int, num_latents: int, depth: int, ffn_ratio: int = 4,
                 dropout: float = 0.0) -> None:
        from physics_tf.nn.blocks import CrossAttentionBlock, TransformerBlock

        super().__init__()
        self.latents = nn.Parameter(torch.zeros(1, num_latents, dim))
        nn.init.trunc_normal_(self.latents, std=0.02)
        self.cross = CrossAttentionBlock(dim, num_heads, ffn_ratio, dropout=dropout, attn_dropout=dropout,
                                         activation_dropout=dropout)
        self.blocks = nn.ModuleList(
            [TransformerBlock(dim, num_heads, ffn_ratio, dropout=dropout, attn_dropout=dropout,
                              activation_dropout=dropout) for _ in range(depth)])

    def no_weight_decay(self) -> set[str]:
        return {"latents"}

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, L, D), mask (B, L) True = real (None: all real) → (B, num_latents, D)."""
        from physics_tf.nn.attention import attention_mask

        z = self.latents.expand(x.shape[0], -1, -1).to(x.dtype)  # (B, k, D)
        z = self.cross(z, x, attention_mask(mask))  # (B, k, D); keys (B, 1, 1, L)
        for block in self.blocks:
            z = block(z)  # (B, k, D)
        return z
