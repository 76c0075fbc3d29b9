"""Embeddings shared by the models: per-element MLP embeddings on real elements only, sinusoidal encodings."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from physics_tf.nn.packing import Packing


class ParticleEmbedding(nn.Module):
    """Input BatchNorm, then [LayerNorm, Linear, GELU] steps (ParT's embedding, arXiv 2202.03772).

    Runs on the real elements only — gathered as a flat (N_real, C) tensor — so BatchNorm statistics never see
    padding and padded rows of the output are exactly zero whatever the padding length.
    """

    def __init__(self, input_dim: int, dims: Sequence[int] = (128, 512, 128), input_norm: bool = True) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm1d(input_dim) if input_norm else nn.Identity()
        layers: list[nn.Module] = []
        for dim in dims:
            layers += [nn.LayerNorm(input_dim), nn.Linear(input_dim, dim), nn.GELU()]
            input_dim = dim
        self.mlp = nn.Sequential(*layers)
        self.out_dim = input_dim

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, L, C), mask (B, L) → (B, L, out_dim) with zeros at padding."""
        packing = Packing(mask)
        return packing.unpack(self.forward_packed(packing.pack(x)))

    def forward_packed(self, x: Tensor) -> Tensor:
        """The real elements only: (N_real, C) → (N_real, out_dim)."""
        return self.mlp(self.input_bn(x))


def sinusoidal_encoding(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Sinusoidal encoding of (possibly real-valued) positions (Vaswani et al. 2017).

    PE(p, 2k) = sin(p / base^(2k/d)), PE(p, 2k+1) = cos(p / base^(2k/d)). ``positions`` (...,) of any float
    values — integer indices for sequences, times (e.g. MJD) for irregular series → (..., dim).
    """
    if dim % 2:
        raise ValueError(f"sinusoidal encoding needs an even dim, got {dim}")
    k = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)  # (dim/2,)
    inv_freq = torch.exp(-math.log(base) * k / dim)  # 1 / base^(2k/d)
    angles = positions.float().unsqueeze(-1) * inv_freq  # (..., dim/2)
    out = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (..., dim/2, 2)
    return out.flatten(-2)  # (..., dim) interleaved sin, cos


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal encoding of the index (0..L-1) to a (B, L, D) input."""

    def __init__(self, dim: int, max_len: int = 4096, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_encoding(torch.arange(max_len), dim, base), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] > self.pe.shape[0]:
            raise ValueError(f"sequence length {x.shape[1]} exceeds max_len={self.pe.shape[0]}")
        return x + self.pe[: x.shape[1]].to(x.dtype)
