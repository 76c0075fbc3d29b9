"""Pairwise physics features of particle pairs and their embedding into a per-head attention bias.

Following the Particle Transformer (Qu, Li, Qian 2022, arXiv 2202.03772, eq. 3), for particles a, b with
transverse momentum pT, rapidity y, azimuth φ, four-momentum p = (px, py, pz, E):

    Δ   = sqrt((y_a − y_b)² + (φ_a − φ_b)²)          (Δφ wrapped into [−π, π))
    kT  = min(pT_a, pT_b) · Δ
    z   = min(pT_a, pT_b) / (pT_a + pT_b)
    m²  = (E_a + E_b)² − |p_a + p_b|²

and the features are (ln kT, ln z, ln Δ, ln m²), each argument clamped at ``eps`` before the log (so Δ = 0 on the
diagonal gives ln eps, as in the reference). All four are symmetric in (a, b): they are computed once per
forward on the lower triangle (a ≥ b) and only for pairs of two real particles, embedded, and scattered to both
triangles of the (B, H, L, L) bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

PAIR_FEATURE_NAMES = ("ln_kt", "ln_z", "ln_delta", "ln_m2")


def _pt_rapidity_phi(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    px, py, pz, e = p.unbind(-1)
    pt = torch.hypot(px, py)
    # y = ½ ln((E + pz)/(E − pz)) written to stay finite for massless particles along the beam
    rapidity = 0.5 * torch.log1p(2 * pz / (e - pz).clamp(min=1e-20))
    return pt, rapidity, torch.atan2(py, px)


def pair_features(pa: Tensor, pb: Tensor, eps: float = 1e-8) -> Tensor:
    """Pairwise features of four-vectors pa, pb (..., 4) = (px, py, pz, E) → (..., 4) = (ln kT, ln z, ln Δ, ln m²)."""
    pa, pb = pa.float(), pb.float()  # logs of small numbers: always fp32
    pt_a, y_a, phi_a = _pt_rapidity_phi(pa)
    pt_b, y_b, phi_b = _pt_rapidity_phi(pb)
    dphi = torch.remainder(phi_a - phi_b + math.pi, 2 * math.pi) - math.pi
    delta = torch.sqrt((y_a - y_b) ** 2 + dphi**2)
    pt_min = torch.minimum(pt_a, pt_b)
    ln_kt = torch.log((pt_min * delta).clamp(min=eps))
    ln_z = torch.log((pt_min / (pt_a + pt_b).clamp(min=eps)).clamp(min=eps))
    ln_delta = torch.log(delta.clamp(min=eps))
    s = pa + pb
    m2 = s[..., 3] ** 2 - (s[..., :3] ** 2).sum(-1)
    ln_m2 = torch.log(m2.clamp(min=eps))
    return torch.stack((ln_kt, ln_z, ln_delta, ln_m2), dim=-1)


def real_pairs(mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Indices (batch, a, b) of the lower-triangle pairs a ≥ b of real particles; mask (B, L) True = real."""
    length = mask.shape[1]
    a, b = torch.tril_indices(length, length, device=mask.device)  # (T,), (T,)
    batch, t = (mask[:, a] & mask[:, b]).nonzero(as_tuple=True)  # (N_pairs,)
    return batch, a[t], b[t]


class PairEmbedding(nn.Module):
    """Embeds pair features into one additive attention bias per head, shared by all particle blocks.

    BatchNorm on the inputs, then [Linear, BatchNorm, GELU] per hidden width and a final [Linear, BatchNorm] to
    ``num_heads`` outputs (the reference's 1×1 convolutions with pre-activation output). Runs on the flat list of
    real pairs only, so BatchNorm statistics never see padding and no (B, C, L, L) hidden tensor is formed.
    """

    def __init__(self, num_heads: int, dims: Sequence[int] = (64, 64, 64), input_dim: int = 4, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps, self.num_heads = eps, num_heads
        layers: list[nn.Module] = [nn.BatchNorm1d(input_dim)]
        for dim in (*dims, num_heads):
            layers += [nn.Linear(input_dim, dim), nn.BatchNorm1d(dim), nn.GELU()]
            input_dim = dim
        self.mlp = nn.Sequential(*layers[:-1])  # pre-activation output: no GELU after the last BatchNorm

    def forward(self, v: Tensor, mask: Tensor) -> Tensor:
        """v (B, L, 4) four-vectors, mask (B, L) → bias (B, H, L, L), zero where either particle is padding."""
        batch, a, b = real_pairs(mask)  # (N_pairs,) each
        feats = pair_features(v[batch, a], v[batch, b], self.eps)  # (N_pairs, 4)
        emb = self.mlp(feats)  # (N_pairs, H)
        B, L = mask.shape
        bias = emb.new_zeros(B, self.num_heads, L, L)  # (B, H, L, L)
        bias[batch, :, a, b] = emb  # advanced indices around a slice: the indexed view is (N_pairs, H)
        bias[batch, :, b, a] = emb
        return bias
