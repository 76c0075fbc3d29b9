"""The attention core shared by every physics_tf model.

One multi-head attention on :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels where the
backend has them) that takes an optional per-head additive bias ``U`` of shape (B, H, Lq, Lk) and a key
padding mask::

    Attention(Q, K, V) = softmax(Q Kᵀ / √d + U + M) V,    M = 0 for real keys, −∞ for padded keys

Mask convention everywhere in physics_tf: ``mask`` is a bool tensor with **True = real element**, False =
padding (the opposite of ``nn.MultiheadAttention``'s ``key_padding_mask``, the same as an SDPA boolean mask).
A query row whose keys are all padding would give NaN (softmax over −∞ only); :func:`attention_mask` lets such
rows attend to every key instead, so outputs stay finite (they belong to padding and are ignored downstream).

:class:`MultiheadAttention` also offers the other alignment scores of the attention literature (``score=``, see
:mod:`physics_tf.nn.scores`) and the efficient attention kinds (``kind=``, see :mod:`physics_tf.nn.efficient`).

Devices: on a CPU, attention with dropout takes a hand-written path (bias added inside the QKᵀ GEMM, dropout from
cheap 16-bit draws, :func:`dropout_bits`); elsewhere (CUDA) it goes to SDPA with ``dropout_p``, whose fused kernels
(memory-efficient attention: float bias and dropout; flash: no mask) keep memory linear in L when no pair bias is
given, and :class:`Dropout` is ``F.dropout``. :func:`_fused_dropout` makes that choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physics_tf.nn.packing import Packing
from physics_tf.nn.scores import SCORE_OPTIONS, SCORES, build_score

__all__ = ["SCORES", "Dropout", "MultiheadAttention", "attention", "attention_mask", "attention_weights",
           "dropout_bits", "dropout_keep", "logit_attention"]


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


def _fused_dropout(x: Tensor) -> bool:
    """Whether dropout (in attention and :class:`Dropout`) on ``x``'s device uses torch's own kernels (SDPA's
    ``dropout_p``, ``F.dropout``): everywhere but on a CPU, where the 16-bit draws of :func:`dropout_keep` win."""
    return x.device.type != "cpu"


def dropout_keep(x: Tensor, p: float) -> Tensor:
    """Bernoulli keep mask (bool, shape of x, P(keep) = 1 − p) from 16 random bits per element — on CPUs the
    random-number generation dominates ``F.dropout``, and this draws ~7× cheaper. ``p`` is resolved to 1/32768
    (0.1 → 0.100006)."""
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()  # 63 random bits each
    bits = bits.view(torch.int16)[:n].view(x.shape) & 0x7FFF  # uniform on 0 … 32767
    return bits >= round(p * 32768)


def dropout_bits(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Dropout (zero each element with probability ``p``, scale the rest by 1/(1 − p)) with :func:`dropout_keep`
    on a CPU, ``F.dropout`` elsewhere (:func:`_fused_dropout`)."""
    if not training or p == 0.0:
        return x
    if _fused_dropout(x):
        return F.dropout(x, p)
    if p >= 1.0:
        return x * 0.0
    keep = dropout_keep(x, p)
    multiplier = torch.where(keep, torch.full((), 1.0 / (1.0 - p), dtype=x.dtype, device=x.device),
                             torch.zeros((), dtype=x.dtype, device=x.device))
    return x * multiplier  # one pass forward, one backward


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`dropout_bits` (same distribution, cheaper RNG on a CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout_bits(x, self.p, self.training)


def _masked(scores: Tensor, attn_mask: Tensor | None) -> Tensor:
    """scores + U + M: −∞ where a bool ``attn_mask`` is False, plus a float one."""
    if attn_mask is None:
        return scores
    if attn_mask.dtype == torch.bool:
        return scores.masked_fill(~attn_mask, float("-inf"))
    return scores + attn_mask.to(scores.dtype)


def attention_weights(q: Tensor, k: Tensor, attn_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """The attention probabilities softmax(Q Kᵀ · scale + U + M) (B, H, Lq, Lk) (scale None: 1/√d), in float32, of
    the same arguments that :func:`attention` gets: 0 at masked keys, each row summing to 1 over the real keys."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    with torch.autocast(q.device.type, enabled=False):  # fp32 also under bf16 autocast
        scores = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, H, Lq, Lk)
        return _masked(scores, attn_mask).softmax(dim=-1)


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
              need_weights: bool = False, scale: float | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Scaled dot-product attention: q (B, H, Lq, d), k/v (B, H, Lk, d), attn_mask from :func:`attention_mask`;
    ``scale`` multiplies Q Kᵀ (None: 1/√d).

    Without dropout: fused SDPA (flash kernel on CPU, also with a float bias). With dropout, on a CPU SDPA falls back
    to its unfused math path anyway; ours instead adds the bias inside the QKᵀ GEMM (``baddbmm``), skips SDPA's
    all-masked-row checks (:func:`attention_mask` already guards those rows) and drops attention weights with
    :func:`dropout_bits`. On other devices (CUDA) dropout goes to SDPA too (``dropout_p``): its memory-efficient
    kernel takes a float bias and dropout, and with no bias memory stays linear in L.

    ``need_weights``: also return the per-head attention probabilities (B, H, Lq, Lk) (:func:`attention_weights`,
    before dropout). The output is computed exactly as without them (same fused kernel, bit for bit); the weights
    cost one extra QKᵀ and softmax, and nothing when not asked for.
    """
    if attn_mask is not None and attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
        attn_mask = attn_mask.to(q.dtype)  # autocast: SDPA wants the float mask in the query's dtype
    if dropout_p == 0.0:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)  # (B, H, Lq, d)
    elif _fused_dropout(q):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    else:
        out = _dropout_attention(q, k, v, attn_mask, dropout_p, scale)
    if need_weights:
        return out, attention_weights(q, k, attn_mask, scale)
    return out


def _dropout_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float,
                       scale: float | None = None) -> Tensor:
    """:func:`attention` in training with dropout on a CPU (its docstring): bias inside the QKᵀ GEMM, cheap dropout
    bits."""
    B, H, Lq, d = q.shape
    Lk = k.shape[2]
    scale = d**-0.5 if scale is None else scale
    if attn_mask is not None and attn_mask.dtype != torch.bool and attn_mask.shape == (B, H, Lq, Lk):
        scores = torch.baddbmm(attn_mask.reshape(B * H, Lq, Lk), q.reshape(B * H, Lq, d),
                               k.reshape(B * H, Lk, d).transpose(1, 2), alpha=scale).view(B, H, Lq, Lk)
    else:
        scores = _masked((q @ k.transpose(-1, -2)) * scale, attn_mask)  # (B, H, Lq, Lk)
    weights = scores.softmax(dim=-1) * dropout_keep(scores, dropout_p)  # dropped, not yet rescaled
    return (weights @ v) * (1.0 / (1.0 - dropout_p))  # rescale the (…, d) output, not the (…, Lk) weights


def logit_attention(logits: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                    need_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Attention from given logits (B, H, Lq, Lk) (the scores that are no dot product: additive, location):
    softmax(logits + U + M), dropout (:func:`dropout_bits`), times v (B, H, Lk, d). ``need_weights``: also the
    probabilities (float32, before dropout)."""
    weights = _masked(logits, attn_mask).softmax(dim=-1)  # (B, H, Lq, Lk)
    out = dropout_bits(weights, dropout_p).to(v.dtype) @ v  # (B, H, Lq, d)
    return (out, weights.float()) if need_weights else out


def _key_mask(attn_mask: Tensor | None, kind: str) -> Tensor | None:
    """The key mask (B, L) of a bool ``attn_mask`` (B, 1, 1, L) for the efficient kinds, which take no pair bias."""
    if attn_mask is None:
        return None
    if attn_mask.dtype != torch.bool or attn_mask.shape[1] != 1 or attn_mask.shape[2] != 1:
        raise ValueError(f"kind={kind!r} takes a key mask only (a bool attn_mask (B, 1, 1, L)), not a dense pair "
                         f"bias of shape {tuple(attn_mask.shape)}: use kind='full' with a bias")
    return attn_mask[:, 0, 0, :]


def _check_options(score: str, kind: str, options: dict) -> dict:
    """The options of ``kind`` (those left after the score's); an unknown key → ValueError naming it."""
    allowed: tuple[str, ...] = ()
    if kind != "full":
        from physics_tf.nn import efficient  # lazily: efficient builds on this module

        if kind not in efficient.KINDS:
            raise ValueError(f"kind={kind!r} is not one of {efficient.KINDS}")
        if score != "scaled_dot":
            raise ValueError(f"kind={kind!r} works with score='scaled_dot' only, not score={score!r}")
        allowed = tuple(efficient.KIND_OPTIONS[kind])
    for key in options:
        if key not in allowed:
            raise ValueError(f"unknown attention option {key}= (score={score!r} takes "
                             f"{', '.join(SCORE_OPTIONS[score]) or 'none'}; kind={kind!r} takes "
                             f"{', '.join(allowed) or 'none'})")
    return options


class MultiheadAttention(nn.Module):
    """Multi-head attention with additive bias and padding mask, batch-first.

    Parameters
    ----------
    dim: model width; num_heads: heads (dim must divide); dropout: attention-weight dropout (training only);
    head_scale: NormFormer's learned per-head scale of the attention output (Shleifer et al. 2021,
    arXiv 2110.09456), applied — as in the reference ParT — to each head's block of output-projection channels.
    score: the alignment score, one of :data:`SCORES` (:mod:`physics_tf.nn.scores`); "scaled_dot" (default) is the
    fused SDPA path. kind: "full" (default) or an efficient attention of :data:`physics_tf.nn.efficient.KINDS`
    (self-attention with score "scaled_dot", a key mask and no pair bias; "lsh" shares one projection between
    queries and keys, so its input projection is (2·dim, dim)). options: the score's (``additive_dim``,
    ``temperature``, ``max_len``; :data:`physics_tf.nn.scores.SCORE_OPTIONS`) and the kind's (e.g. ``window``).

    The parameter layout matches ``nn.MultiheadAttention`` (one (3·dim, dim) input projection + output
    projection), so the parameter count of models built on it equals the reference's; scores with parameters add
    them under ``score.``.

    Attention weights: ``forward(..., need_weights=True)`` returns ``(output, weights)`` with the per-head
    probabilities (B, H, Lq, Lk); a ``recorder`` callable set on the module (what
    :func:`physics_tf.nn.inspect.record_attention` does, without touching the model) gets
    ``recorder(module, weights, attn_mask, self_attention)`` on every call. Neither changes the output. The
    efficient kinds form no (Lq, Lk) weights: asking them for weights is a ValueError.
    """

    recorder = None  # Callable[[MultiheadAttention, Tensor, Tensor | None, bool], None] | None

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, head_scale: bool = False, *,
                 score: str = "scaled_dot", kind: str = "full", **options) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        if score not in SCORES:
            raise ValueError(f"score={score!r} is not one of {SCORES}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.dropout = dropout
        self.kind = kind
        score_options = {key: options.pop(key) for key in SCORE_OPTIONS[score] if key in options}
        self.options = _check_options(score, kind, options)  # the kind's
        self.in_proj = nn.Linear(dim, (2 if kind == "lsh" else 3) * dim)  # lsh: shared QK, V
        self.out_proj = nn.Linear(dim, dim)
        self.head_scale = nn.Parameter(torch.ones(num_heads)) if head_scale else None
        self.score = build_score(score, num_heads, self.head_dim, **score_options)
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
            qkv = self.in_proj(x)  # (B, L, 3D) or packed (N_real, 3D); lsh: 2D
            if packing is not None:
                qkv = packing.unpack(qkv)  # (B, L, 3D), zeros at padding
            b, n, _ = qkv.shape
            if self.kind == "lsh":  # shared QK (Reformer): the keys are the queries
                q, v = qkv.view(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 2 × (B, H, L, d)
                k = q
            else:
                q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 × (B, H, L, d)
        else:
            if self.kind != "full":
                raise ValueError(f"kind={self.kind!r} is self-attention only; cross-attention (context given) "
                                 f"needs kind='full'")
            w, b = self.in_proj.weight, self.in_proj.bias
            q = self._heads(F.linear(x, w[: self.dim], b[: self.dim]))  # (B, H, Lq, d)
            k, v = map(self._heads, F.linear(context, w[self.dim :], b[self.dim :]).chunk(2, dim=-1))  # (B, H, Lk, d)
        p = self.dropout if self.training else 0.0
        want_weights = need_weights or self.recorder is not None
        if self.kind != "full":
            if want_weights:
                raise ValueError(f"kind={self.kind!r} forms no attention weights (need_weights / record_attention "
                                 f"need kind='full')")
            from physics_tf.nn.efficient import efficient_attention

            out = efficient_attention(self.kind, q, k, v, _key_mask(attn_mask, self.kind), p, **self.options)
        elif self.score.fused:  # a dot product of transformed queries and keys: the fused SDPA path
            q, k, scale = self.score(q, k)
            out = attention(q, k, v, attn_mask, p, need_weights=want_weights, scale=scale)
        else:  # additive, location: explicit logits
            out = logit_attention(self.score(q, k), v, attn_mask, p, need_weights=want_weights)
        if want_weights:
            out, weights = out  # weights (B, H, Lq, Lk)
            if self.recorder is not None:
                self.recorder(self, weights, attn_mask, context is None)
        out = out.transpose(1, 2)  # (B, Lq, H, d)
        out = packing.pack(out) if packing is not None else out  # (N_real, H, d)
        out = self.out_proj(out.reshape(*out.shape[:-2], self.dim))  # (…, D)
        if self.head_scale is not None:  # per head, on the output projection's channels (as the reference does)
            out = out * self.head_scale.repeat_interleave(self.head_dim).to(out.dtype)
        return (out, weights) if need_weights else out
