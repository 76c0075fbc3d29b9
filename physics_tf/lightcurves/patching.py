"""Observations in time order and grouped into patches: the light-curve transformer's cheaper token layout.

:func:`time_order` puts each object's real observations in (time, band) order, padding last. It depends only on
the values, not on the order the observations arrive in (exactly so when no two observations share both time and
band), so a model that sorts first stays invariant to the token order — and attention kinds with locality (windows,
sparse patterns, LSH chunks) and the location score then see neighbours *in time*.

:func:`patches` groups P consecutive time-ordered observations into one token (the idea of the Vision Transformer's
16×16 patches, Dosovitskiy et al. 2021, arXiv 2010.11929, and of PatchTST in time, Nie et al. 2023, arXiv
2211.14730): the rows of a patch are concatenated, (B, ⌈L/P⌉, P·F). A patch is real when any of its observations
is; the padded slots of a part-filled patch are zeros.

:class:`PatchEmbedding` is the light-curve transformer's token embedding for P > 1, linear in the raw values of
the patch's observations as a ViT's patch embedding is linear in its pixels. Observation j of a patch that starts
at time t_p contributes the F = 3·n_bands + 2 values::

    f_j = [onehot(b_j) ⊗ (flux_j/s, σ_j/s, asinh(flux_j/σ_j)/5),  1,  ln(1 + (t_j − t_p)/1 d)]

(the band-resolved features of the per-observation model, a "real" flag and the time since the patch began), and
the token is::

    h_p = W_patch [f_1, …, f_P] + W_t PE(κ·(t_p − min_k t_k))

with PE the sinusoidal encoding of the real time, as in the per-observation model. The work per observation is
F ≈ 20 numbers instead of a D-wide embedding with its D-wide time encoding; attention costs (L/P)² instead of L²
and every token-wise layer L/P rows instead of L.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physics_tf.nn.embeddings import sinusoidal_encoding

__all__ = ["PatchEmbedding", "gather_tokens", "patches", "time_order"]


def time_order(time: Tensor, band: Tensor, mask: Tensor) -> Tensor:
    """(B, L) indices that put the real observations first, in (time, band) order, then the padding."""
    by_band = torch.argsort(band, dim=1, stable=True)  # (B, L) ties in time broken by band
    key = time.gather(1, by_band).masked_fill(~mask.gather(1, by_band), float("inf"))  # padding last
    return by_band.gather(1, torch.argsort(key, dim=1, stable=True))  # (B, L)


def gather_tokens(x: Tensor, order: Tensor) -> Tensor:
    """x (B, L, …) reordered along dim 1 by ``order`` (B, L)."""
    index = order.view(*order.shape, *(1,) * (x.dim() - 2)).expand(*order.shape, *x.shape[2:])
    return x.gather(1, index)


def patches(h: Tensor, mask: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """h (B, L, D) (zeros at padding, real observations first), mask (B, L) → (B, ⌈L/P⌉, P·D), patch mask
    (B, ⌈L/P⌉) with P = ``size``; the last patch is completed with zeros."""
    b, n, d = h.shape
    extra = -n % size
    if extra:
        h = torch.cat((h, h.new_zeros(b, extra, d)), dim=1)  # (B, P·⌈L/P⌉, D)
        mask = torch.cat((mask, mask.new_zeros(b, extra)), dim=1)
    n_patches = h.shape[1] // size
    return h.reshape(b, n_patches, size * d), mask.view(b, n_patches, size).any(dim=-1)


class PatchEmbedding(nn.Module):
    """Tokens of P time-ordered observations each (module docstring): ``forward(feats, time, band, mask)`` with the
    per-observation features (B, L, 3), the times relative to the object's first observation (B, L), the bands
    (B, L) and the mask (B, L) → tokens (B, ⌈L/P⌉, D), patch mask (B, ⌈L/P⌉)."""

    def __init__(self, dim: int, patch_size: int, num_bands: int = 6, time_scale: float = 4.0,
                 time_base: float = 10000.0) -> None:
        super().__init__()
        self.dim, self.patch_size, self.num_bands = dim, int(patch_size), num_bands
        self.time_scale, self.time_base = float(time_scale), float(time_base)
        self.proj = nn.Linear(self.patch_size * (3 * num_bands + 2), dim)
        self.time_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, feats: Tensor, time: Tensor, band: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        order = time_order(time, band, mask)  # (B, L)
        feats, time, band, mask = gather_tokens(feats, order), time.gather(1, order), band.gather(1, order), \
            mask.gather(1, order)
        m = mask.to(feats.dtype).unsqueeze(-1)  # (B, L, 1)
        onehot = F.one_hot(band.clamp(0, self.num_bands - 1), self.num_bands).to(feats.dtype)  # (B, L, bands)
        resolved = (onehot.unsqueeze(-1) * feats.unsqueeze(-2)).flatten(-2)  # (B, L, 3·bands)
        values, mask = patches(torch.cat((resolved, m, time.unsqueeze(-1)), dim=-1), mask, self.patch_size)
        b, n = mask.shape
        values = values.view(b, n, self.patch_size, -1)  # (B, L', P, 3·bands + 2); time last
        start = values[:, :, :1, -1]  # (B, L', 1) time of each patch's first observation
        since = torch.log1p((values[..., -1] - start).clamp_min(0.0)) * values[..., -2]  # (B, L', P) zero at padding
        values = torch.cat((values[..., :-1], since.unsqueeze(-1)), dim=-1).flatten(-2)  # (B, L', P·F)
        pe = sinusoidal_encoding(start.squeeze(-1) * self.time_scale, self.dim, self.time_base)  # (B, L', D)
        return self.proj(values) + self.time_proj(pe.to(values.dtype)), mask
