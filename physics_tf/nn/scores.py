"""The alignment scores of :class:`physics_tf.nn.attention.MultiheadAttention`: how a query s and a key h are scored
before the softmax over keys, per head (q, k of shape (B, H, L, d))::

    scaled_dot   sᵀh / √d                       Vaswani et al. 2017 (the default; the fused SDPA kernels)
    dot          sᵀh                            Luong et al. 2015
    general      sᵀ W h                         Luong et al. 2015; W (d × d) learned per head
    additive     vᵀ tanh(W₁ s + W₂ h)           Bahdanau et al. 2015; W₁, W₂ (a × d), v (a) learned per head
    cosine       τ · cos(s, h)                  Graves et al. 2014 (content-based); τ per head, learned or fixed
    location     (W s)_j for key position j     Luong et al. 2015 (location-based, softmax(W s)); W (max_len × d)

Two families. The *dot* scores (scaled_dot, dot, general, cosine) are a dot product of transformed queries and
keys, sᵀh → q'ᵀk' · scale, so they run through the same fused attention as the default: their ``forward`` returns
``(q', k', scale)`` (scale None = 1/√d). The *logit* scores (additive, location) are not dot products; their
``forward`` returns the logits (B, H, Lq, Lk) and attention is softmax + weights @ V written out
(:func:`physics_tf.nn.attention.logit_attention`). Additive builds a (B, H, Lq, Lk, a) tensor: memory
O(B·H·L²·a), the price of Bahdanau's score.

Initialisation: general starts at W = I/√d (= scaled dot); additive W₁, W₂ ~ N(0, 1/d), v ~ N(0, 1/a) (logits of
order 1); cosine τ = 10 (learned in log space and capped at 100, as Swin Transformer v2, Liu et al. 2022, arXiv
2111.09883: cosines in [−1, 1] alone give nearly uniform weights); location W ~ N(0, 1/d).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SCORES", "SCORE_OPTIONS", "build_score"]

SCORES = ("scaled_dot", "dot", "general", "additive", "cosine", "location")
# the keyword options each score takes (its defaults in the classes below)
SCORE_OPTIONS = {"scaled_dot": (), "dot": (), "general": (), "additive": ("additive_dim",),
                 "cosine": ("temperature",), "location": ("max_len",)}


class ScaledDot(nn.Module):
    """sᵀh / √d: q, k unchanged, SDPA's default scale."""

    fused = True

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
        return q, k, None


class Dot(ScaledDot):
    """sᵀh: q, k unchanged, scale 1."""

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
        return q, k, 1.0


class General(ScaledDot):
    """sᵀ W h with a learned W (d × d) per head: q · (W k), scale 1; W starts at I/√d (= scaled dot)."""

    def __init__(self, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(head_dim).repeat(num_heads, 1, 1) * head_dim**-0.5)  # (H, d, d)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
        return q, k @ self.weight.transpose(-1, -2).to(k.dtype), 1.0  # (W k)_i = Σ_j W_ij k_j


class Cosine(ScaledDot):
    """τ · cos(s, h): unit-length q and k, τ per head. ``temperature`` None: learned, log τ starts at log 10 and τ is
    capped at 100; a number: that fixed τ for every head (no parameter)."""

    def __init__(self, num_heads: int, temperature: float | None = None) -> None:
        super().__init__()
        self.learned = temperature is None
        if self.learned:
            self.log_temperature = nn.Parameter(torch.full((num_heads,), math.log(10.0)))  # (H,)
        else:
            if not temperature > 0:
                raise ValueError(f"temperature={temperature!r} must be > 0 (or None: learned)")
            self.register_buffer("log_temperature", torch.full((num_heads,), math.log(float(temperature))),
                                 persistent=False)

    def temperature(self) -> Tensor:
        """τ per head (H,)."""
        return (self.log_temperature.clamp(max=math.log(100.0)) if self.learned else self.log_temperature).exp()

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
        tau = self.temperature().to(q.dtype)[:, None, None]  # (H, 1, 1)
        return F.normalize(q, dim=-1) * tau, F.normalize(k, dim=-1), 1.0


class Additive(nn.Module):
    """vᵀ tanh(W₁ s + W₂ h), per head W₁, W₂ (a × d), v (a); ``additive_dim`` = a (default: the head width)."""

    fused = False

    def __init__(self, num_heads: int, head_dim: int, additive_dim: int | None = None) -> None:
        super().__init__()
        a = head_dim if additive_dim is None else int(additive_dim)
        if a < 1:
            raise ValueError(f"additive_dim={additive_dim!r} must be ≥ 1")
        self.w_query = nn.Parameter(torch.randn(num_heads, a, head_dim) * head_dim**-0.5)  # W₁ (H, a, d)
        self.w_key = nn.Parameter(torch.randn(num_heads, a, head_dim) * head_dim**-0.5)  # W₂ (H, a, d)
        self.v = nn.Parameter(torch.randn(num_heads, a) * a**-0.5)  # (H, a)

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        s = q @ self.w_query.transpose(-1, -2).to(q.dtype)  # (B, H, Lq, a)
        h = k @ self.w_key.transpose(-1, -2).to(k.dtype)  # (B, H, Lk, a)
        hidden = torch.tanh(s[:, :, :, None, :] + h[:, :, None, :, :])  # (B, H, Lq, Lk, a)
        return (hidden @ self.v.to(hidden.dtype)[None, :, None, :, None]).squeeze(-1)  # (B, H, Lq, Lk)


class Location(nn.Module):
    """(W s)_j: a learned W (max_len × d) per head maps each query to one logit per key position j < max_len; the
    keys' content does not enter (softmax(W s), Luong et al.)."""

    fused = False

    def __init__(self, num_heads: int, head_dim: int, max_len: int | None = None) -> None:
        super().__init__()
        if max_len is None or int(max_len) < 1:
            raise ValueError(f"score='location' needs max_len= (the most key positions, ≥ 1), got {max_len!r}")
        self.max_len = int(max_len)
        self.weight = nn.Parameter(torch.randn(num_heads, self.max_len, head_dim) * head_dim**-0.5)  # (H, M, d)

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        n_keys = k.shape[2]
        if n_keys > self.max_len:
            raise ValueError(f"score='location' has max_len={self.max_len} key positions but got {n_keys} keys; "
                             f"raise max_len")
        return q @ self.weight[:, :n_keys].transpose(-1, -2).to(q.dtype)  # (B, H, Lq, Lk)


def build_score(score: str, num_heads: int, head_dim: int, **options) -> nn.Module:
    """The score module by name (:data:`SCORES`) with its options (:data:`SCORE_OPTIONS`)."""
    if score not in SCORES:
        raise ValueError(f"score={score!r} is not one of {SCORES}")
    if score == "scaled_dot":
        return ScaledDot()
    if score == "dot":
        return Dot()
    if score == "general":
        return General(num_heads, head_dim)
    if score == "cosine":
        return Cosine(num_heads, **options)
    if score == "additive":
        return Additive(num_heads, head_dim, **options)
    return Location(num_heads, head_dim, **options)
