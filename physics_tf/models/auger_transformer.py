"""Spatial-plus-temporal transformer for Auger SD events (X_max / ln A regression).

1. **Temporal encoder** (per station, real stations only): the trace (T bins) is cut into patches of ``patch``
   bins (ViT-style tokens, Dosovitskiy et al. arXiv 2010.11929); a linear map plus a sinusoidal encoding of
   the patch index gives P = T / patch tokens. Self-attention runs inside windows of ``window`` consecutive
   patches (block-diagonal attention, as in the local attention of Swin, Liu et al. arXiv 2103.14030), and a
   learned query pools all patches by class attention (CaiT, arXiv 2103.17239) — a one-element latent array
   in the sense of the Perceiver (Jaegle et al. arXiv 2103.03206). Attention memory per station is therefore
   heads·(P·window + P + 1) elements: linear in T, where naive attention over the bins needs heads·T².
2. **Station tokens**: the temporal summary plus an MLP embedding of the station's position, arrival time and
   total signal.
3. **Spatial transformer** over the n² stations with the station mask (masked stations are padding: no real
   token attends to them), then class-attention pooling and a linear head.

Masked stations never enter the computation (their trace is not encoded, their key is masked), so the output
does not depend on their contents, and station order does not matter (positions come from the coordinates).
All attention goes through :mod:`physics_tf.nn.attention`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from physics_tf.nn.attention import attention_mask
from physics_tf.nn.blocks import ClassTokenPool, TransformerBlock
from physics_tf.nn.embeddings import scatter_real, sinusoidal_encoding

__all__ = ["TemporalEncoder", "AugerTransformer"]


class TemporalEncoder(nn.Module):
    """Trace (N, T) → station summary (N, dim); attention cost linear in T (module docstring)."""

    def __init__(self, patch: int = 10, dim: int = 64, num_heads: int = 4, depth: int = 2, window: int = 12,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.patch, self.window, self.dim = patch, window, dim
        self.embed = nn.Linear(patch, dim)
        self.blocks = nn.ModuleList(
            [TransformerBlock(dim, num_heads, dropout=dropout, attn_dropout=dropout, activation_dropout=dropout)
             for _ in range(depth)])
        self.pool = ClassTokenPool(dim, num_heads, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        n, t = x.shape
        p = -(-t // self.patch)  # patches (the last one zero-padded)
        x = nn.functional.pad(x, (0, p * self.patch - t)).view(n, p, self.patch)  # (N, P, patch)
        h = self.embed(x) + sinusoidal_encoding(torch.arange(p, device=x.device), self.dim).to(x.dtype)  # (N, P, D)
        w = min(self.window, p)
        nw = -(-p // w)  # windows
        h = nn.functional.pad(h, (0, 0, 0, nw * w - p))  # (N, nw·w, D)
        real = torch.arange(nw * w, device=x.device) < p  # (nw·w,) padded patches are masked keys
        key_mask = real.view(1, nw, w).expand(n, nw, w).reshape(n * nw, w)  # (N·nw, w)
        hw = h.reshape(n * nw, w, self.dim)  # (N·nw, w, D)
        am = attention_mask(key_mask)
        for blk in self.blocks:
            hw = blk(hw, am)  # (N·nw, w, D)
        h = hw.reshape(n, nw * w, self.dim)  # (N, nw·w, D)
        return self.pool(h, real.expand(n, -1))  # (N, D)


class AugerTransformer(nn.Module):
    """Temporal encoder per station → station tokens → spatial transformer with mask → head.

    Parameters
    ----------
    grid_size, n_bins, num_targets: from the data module (``model_dims``).
    patch, temporal_dim, temporal_heads, temporal_depth, window: the :class:`TemporalEncoder`.
    dim, num_heads, depth: the spatial transformer; ffn_ratio via the blocks' default (4).
    dropout: everywhere; predict_variance: output means and log-variances (2·num_targets values).
    """

    def __init__(self, grid_size: int, n_bins: int, num_targets: int = 1, patch: int = 10, temporal_dim: int = 64,
                 temporal_heads: int = 4, temporal_depth: int = 2, window: int = 12, dim: int = 128,
                 num_heads: int = 8, depth: int = 4, dropout: float = 0.0, predict_variance: bool = False) -> None:
        super().__init__()
        self.grid_size, self.n_bins = grid_size, n_bins
        self.num_outputs = num_targets * (2 if predict_variance else 1)
        self.temporal = TemporalEncoder(patch, temporal_dim, temporal_heads, temporal_depth, window, dropout)
        self.station_embed = nn.Sequential(nn.Linear(5, dim), nn.GELU(), nn.Linear(dim, dim))
        self.token_proj = nn.Linear(temporal_dim, dim)
        self.blocks = nn.ModuleList(
            [TransformerBlock(dim, num_heads, dropout=dropout, attn_dropout=dropout, activation_dropout=dropout)
             for _ in range(depth)])
        self.pool = ClassTokenPool(dim, num_heads, dropout=dropout)
        self.head = nn.Linear(dim, self.num_outputs)

    def forward(self, traces: Tensor, times: Tensor, signals: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """traces (B, n, n, T), times/signals (B, n, n), positions (B, n, n, 3), mask (B, n, n) → (B, outputs)."""
        b, n1, n2, t = traces.shape
        if (n1, n2) != (self.grid_size, self.grid_size) or t < self.n_bins:
            raise ValueError(f"traces: shape (B, {n1}, {n2}, {t}), model built for "
                             f"(B, {self.grid_size}, {self.grid_size}, {self.n_bins})")
        s = n1 * n2
        m = mask.reshape(b, s)  # (B, S)
        summary = self.temporal(traces.reshape(b, s, t)[m])  # (N_real, Dt)
        extra = torch.cat([positions, times.unsqueeze(-1), signals.unsqueeze(-1)], dim=-1).reshape(b, s, 5)
        tok = self.token_proj(summary) + self.station_embed(extra[m])  # (N_real, D)
        x = scatter_real(tok, m)  # (B, S, D), zeros at masked stations
        am = attention_mask(m)
        for blk in self.blocks:
            x = blk(x, am)  # (B, S, D)
        return self.head(self.pool(x, m))  # (B, outputs)
