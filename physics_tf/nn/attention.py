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

from physics_tf.nn.packing import Packing


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


def dropout_keep(x: Tensor, p: float) -> Tensor:
    """Bernoulli keep mask (bool, shape of x, P(keep) = 1 − p) from 16 random bits per element — on CPUs the
    random-number generation dominates ``F.dropout``, and this draws ~7× cheaper. ``p`` is resolved to 1/32768
    (0.1 → 0.100006)."""
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()  # 63 random bits each
    bits = bits.view(torch.int16)[:n].view(x.shape) & 0x7FFF  # uniform on 0 … 32767
    return bits >= round(p * 32768)


def dropout_bits(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Dropout (zero each element with probability ``p``, scale the rest by 1/(1 − p)) with :func:`dropout_keep`."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    keep = dropout_keep(x, p)
    multiplier = torch.where(keep, torch.full((), 1.0 / (1.0 - p), dtype=x.dtype, device=x.device),
                             torch.zeros((), dtype=x.dtype, device=x.device))
    return x * multiplier  # one pass forward, one backward


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`dropout_bits` (same distribution, cheaper RNG)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout_bits(x, self.p, self.training)


def attention_weights(q: Tensor, k: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """The attention probabilities softmax(Q Kᵀ / √d + U + M) (B, H, Lq, Lk), in float32, of the same q, k and
    ``attn_mask`` that :func:`attention` gets: 0 at masked keys, each row summing to 1 over the real keys."""
    with torch.autocast(q.device.type, enabled=False):  # fp32 also under bf16 autocast
        scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, Lq, Lk)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask.float()
        return scores.softmax(dim=-1)


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
              need_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Scaled dot-product attention: q (B, H, Lq, d), k/v (B, H, Lk, d), attn_mask from :func:`attention_mask`.

    Without dropout: fused SDPA (flash kernel on CPU, also with a float bias). With dropout SDPA falls back to its
    unfused math path anyway; ours instead adds the bias inside the QKᵀ GEMM (``baddbmm``), skips SDPA's
    all-masked-row checks (:func:`attention_mask` already guards those rows) and drops attention weights with
    :func:`dropout_bits`.

    ``need_weights``: also return the per-head attention probabilities (B, H, Lq, Lk) (:func:`attention_weights`,
    before dropout). The output is computed exactly as without them (same fused kernel, bit for bit); the weights
    cost one extra QKᵀ and softmax, and nothing when not asked for.
    """
    if attn_mask is not None and attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
        attn_mask = attn_mask.to(q.dtype)  # autocast: SDPA wants the float mask in the query's dtype
    if dropout_p == 0.0:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, Lq, d)
    else:
        out = _dropout_attention(q, k, v, attn_mask, dropout_p)
    if need_weights:
        return out, attention_weights(q, k, attn_mask)
    return out


def _dropout_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float) -> Tensor:
    """:func:`attention` in training with dropout (its docstring): bias inside the QKᵀ GEMM, cheap dropout bits."""
    B, H, Lq, d = q.shape
    Lk = k.shape[2]
    scale = d**-0.5
    if attn_mask is not None and attn_mask.dtype != torch.bool and attn_mask.shape == (B, H, Lq, Lk):
        scores = torch.baddbmm(attn_mask.reshape(B * H, Lq, Lk), q.reshape(B * H, Lq, d),
                               k.reshape(B * H, Lk, d).transpose(1, 2), alpha=scale).view(B, H, Lq, Lk)
    else:
        scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, Lq, Lk)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = scores.softmax(dim=-1) * dropout_keep(scores, dropout_p)  # dropped, not yet rescaled
    return (weights @ v) * (1.0 / (1.0 - dropout_p))  # rescale the (…, d) output, not the (…, Lk) weights


class MultiheadAttention(nn.Module):
    """Multi-head attention with additive bias and padding mask, batch-first.

    Parameters
    ----------
    dim: model width; num_heads: heads (dim must divide); dropout: attention-weight dropout (training only);
    head_scale: NormFormer's learned per-head scale of the attention output (Shleifer et al. 2021,
    arXiv 2110.09456), applied — as in the reference ParT — to each head's block of output-projection channels.

    The parameter layout matches ``nn.MultiheadAttention`` (one (3·dim, dim) input projection + output
    projection), so the parameter count of models built on it equals the reference's.

    Attention weights: ``forward(..., need_weights=True)`` returns ``(output, weights)`` with the per-head
    probabilities (B, H, Lq, Lk); a ``recorder`` callable set on the module (what
    :func:`physics_tf.nn.inspect.record_attention` does, without touching the model) gets
    ``recorder(module, weights, attn_mask, self_attention)`` on every call. Neither changes the output.
    """

    recorder = None  # Callable[[MultiheadAttention, Tensor, Tensor | None, bool], None] | None

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

    def forward(self, x: Tensor, context: Tensor | None = None, attn_mask: Tensor | None = None,
                packing: Packing | None = None, need_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x: queries (B, Lq, D); context: keys/values (B, Lk, D), default x (self-attention).

        With ``packing`` (self-attention only) x is the packed real elements (N_real, D): the projections run on
        them alone and only the attention itself sees the padded (B, L) layout; the output is packed too.
        ``need_weights``: return ``(output, weights (B, H, Lq, Lk))`` (class docstring).
        """
        if context is None:
            qkv = self.in_proj(x)  # (B, L, 3D) or packed (N_real, 3D)
            if packing is not None:
                qkv = packing.unpack(qkv)  # (B, L, 3D), zeros at padding
            b, n, _ = qkv.shape
            q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 × (B, H, L, d)
        else:
            w, b = self.in_proj.weight, self.in_proj.bias
            q = self._heads(F.linear(x, w[: self.dim], b[: self.dim]))  # (B, H, Lq, d)
            k, v = map(self._heads, F.linear(context, w[self.dim :], b[self.dim :]).chunk(2, dim=-1))  # (B, H, Lk, d)
        p = self.dropout if self.training else 0.0
        if need_weights or self.recorder is not None:
            out, weights = attention(q, k, v, attn_mask, p, need_weights=True)  # weights (B, H, Lq, Lk)
            if self.recorder is not None:
                self.recorder(self, weights, attn_mask, context is None)
        else:
            out = attention(q, k, v, attn_mask, p)  # (B, H, Lq, d)
        out = out.transpose(1, 2)  # (B, Lq, H, d)
        out = packing.pack(out) if packing is not None else out  # (N_real, H, d)
        out = self.out_proj(out.reshape(*out.shape[:-2], self.dim))  # (…, D)
        if self.head_scale is not None:  # per head, on the output projection's channels (as the reference does)
            out = out * self.head_scale.repeat_interleave(self.head_dim).to(out.dtype)
        return (out, weights) if need_weights else out
