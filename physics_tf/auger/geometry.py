"""Shower geometry of an Auger SD event from its stations' arrival times and signals (no trainable parameters).

Used as input features by :class:`physics_tf.auger.transformer.AugerTransformer` (default) and, for the
ablation, by :class:`physics_tf.auger.hexconv.AugerHexConvNet` (``geometry=true``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from physics_tf.auger.schema import C_LIGHT, HEIGHT_UNIT, SPACING  # batch units; c in m/ns

__all__ = ["ShowerGeometry"]


def _solve3(a: Tensor, rhs: Tensor) -> Tensor:
    """Solve batched 3×3 systems a (B, 3, 3) x = rhs (B, 3) by Cramer's rule (elementwise ops only, so it exports
    to ONNX and runs in any dtype)."""

    def det(c0: Tensor, c1: Tensor, c2: Tensor) -> Tensor:  # columns (B, 3) → (B,)
        return (c0[:, 0] * (c1[:, 1] * c2[:, 2] - c1[:, 2] * c2[:, 1])
                - c1[:, 0] * (c0[:, 1] * c2[:, 2] - c0[:, 2] * c2[:, 1])
                + c2[:, 0] * (c0[:, 1] * c1[:, 2] - c0[:, 2] * c1[:, 1]))

    c0, c1, c2 = a[..., 0], a[..., 1], a[..., 2]
    d = det(c0, c1, c2)[:, None]
    return torch.stack([det(rhs, c1, c2), det(c0, rhs, c2), det(c0, c1, rhs)], dim=-1) / d  # (B, 3)


class ShowerGeometry(nn.Module):
    """Per-event shower geometry from the station times and signals, as a classic SD reconstruction starts.

    1. Plane front: a signal-weighted least-squares fit t_i = t_0 + b·(x_i, y_i) over the event's stations (ridge
       ``ridge`` for events with fewer than three). A front moving along −â reaches station i at
       t_0 − â·r_i / c, so the ground components of the arrival direction are â_xy = −b · c / spacing,
       sin θ = |â_xy| (clipped below 1), cos θ = √(1 − sin²θ).
    2. Core: the signal-weighted barycentre of the stations (weights S in VEM).
    3. Per station: the time residual to the plane (µs; the front curvature, whose radius grows with the distance
       to X_max) and the distance to the shower axis (grid spacings; lateral distribution and rise time depend on
       it, not on the distance on the ground).

    Together with the slant depth X_ground / cos θ this is what X_max is inferred from (DX = X_ground / cos θ −
    X_max sets the electromagnetic attenuation and rise times; see the simulator :mod:`physics_tf.auger.simulate`).
    A hexagonal convolution gets the time gradient from neighbour differences for free; attention weights do not
    carry differences into the values, so the transformer is given the fit (no trainable parameters).

    Input ``features`` (B, L, 5) = ``[x, y, z, t, log10(1 + S)]`` (batch units), ``mask`` (B, L).
    Output: station features (B, L, 2) = [time residual, axis distance] and event features (B, 5) =
    [â_x, â_y, cos θ, sec θ, log10 Σ S].
    """

    def __init__(self, ridge: float = 1e-3) -> None:
        super().__init__()
        self.ridge = ridge

    def forward(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        dtype = features.dtype
        f = features.float()
        m = mask.to(f.dtype)  # (B, L)
        x, y, z, t = f[..., 0], f[..., 1], f[..., 2] * (HEIGHT_UNIT / SPACING), f[..., 3]  # grid units, µs
        s = torch.pow(10.0, f[..., 4]).sub(1.0).clamp_min(0.0) * m  # (B, L) VEM
        w = f[..., 4].clamp_min(0.0) * m  # (B, L) fit weights log10(1 + S): hot stations count more
        design = torch.stack([torch.ones_like(x), x, y], dim=-1)  # (B, L, 3)
        wd = design * w[..., None]
        # products and sums, not matmul: autocast leaves them in float32
        normal = (wd[..., :, None] * design[..., None, :]).sum(1) + self.ridge * torch.eye(3, device=f.device)
        coef = _solve3(normal, (wd * t[..., None]).sum(1))  # (B, 3): t_0, b_x, b_y
        resid = (t - (design * coef[:, None, :]).sum(-1)) * m  # (B, L) µs
        axy = -coef[:, 1:] * (C_LIGHT * 1e3 / SPACING)  # (B, 2): µs per spacing → sin θ (cos φ, sin φ)
        sin2_fit = axy.square().sum(-1)  # (B,)
        sin2 = sin2_fit.clamp(max=0.98)  # θ ≤ 82°
        axy = axy * (sin2 / sin2_fit.clamp_min(1e-12)).sqrt()[:, None]  # shortened where clipped
        cos = (1.0 - sin2).sqrt()  # (B,)
        axis = torch.cat([axy, cos[:, None]], dim=-1)  # (B, 3) unit vector towards the source
        total = s.sum(1).clamp_min(1e-6)  # (B,)
        core = torch.stack([(s * x).sum(1), (s * y).sum(1), (s * z).sum(1)], dim=-1) / total[:, None]  # (B, 3)
        d = torch.stack([x, y, z], dim=-1) - core[:, None, :]  # (B, L, 3)
        along = (d * axis[:, None, :]).sum(-1)  # (B, L)
        r_axis = (d.square().sum(-1) - along.square()).clamp_min(0.0).add(1e-6).sqrt() * m  # (B, L)
        station = torch.stack([resid, r_axis], dim=-1)
        event = torch.cat([axis, (1.0 / cos)[:, None], total.log10()[:, None]], dim=-1)
        return station.to(dtype), event.to(dtype)
