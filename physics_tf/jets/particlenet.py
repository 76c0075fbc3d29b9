"""ParticleNet — Qu, Gouskos, "ParticleNet: Jet Tagging via Particle Clouds", PRD 101 (2020) 056019, arXiv 1902.08570.

Architecture, as published (and as weaver-core's ``ParticleNet`` builds it with the JetClass settings)::

    x (B, P, C) ──BatchNorm──► EdgeConv(k=16; 64, 64, 64) ──► EdgeConv(k=16; 128, 128, 128)
        ──► EdgeConv(k=16; 256, 256, 256) ──► mean over real particles ──► FC 256 (ReLU, dropout 0.1) ──► logits

Each EdgeConv block: the k nearest neighbours j of every particle i — in (Δη, Δφ) for the first block, in the
previous block's feature space for the others — edge features [h_i, h_j − h_i] through 3 × (Linear, BatchNorm,
ReLU), averaged over the neighbours, plus a shortcut (Linear + BatchNorm where the width changes), then ReLU.
The (Δη, Δφ) points are computed here from the four-vectors v: the jet axis is Σ v over the real particles.

Parameters: 17 features, 10 classes → 370,156 (the ParT paper's JetClass table quotes 370 k; with 7 features and
2 classes, 366,160 — the ParticleNet paper's 366 k). ``use_fusion=True`` adds weaver-core's later fusion layer
(the blocks' outputs concatenated, 1×1 conv to 384 channels, BatchNorm, ReLU) — 575,724 parameters, not the
published model, so it is off by default.

Padding: padded particles are never neighbours of real ones (their distances are +∞: the same effect as
weaver-core's shifting them 10⁹ away, but safe in half precision), a real particle with fewer than k real
neighbours averages over those it has (weaver-core then mixes in padded ones), BatchNorm statistics in training
see real particles / real edges only, and the pooling averages the real particles only — so outputs do not depend
on the padding length. Implementation: the first edge Linear is split, W·[h_i, h_j − h_i] = (W₁ − W₂)·h_i + W₂·h_j,
so it runs per particle (B·P rows) instead of per edge (B·P·k rows); the same weights as weaver-core's 1×1 conv.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physics_tf.nn.blocks import mlp
from physics_tf.nn.packing import masked_mean, on_real, real_mask, trim_to_longest

__all__ = ["EdgeConvBlock", "ParticleNet", "eta_phi_points", "knn"]


def eta_phi_points(v: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(Δη, Δφ) of every particle to the jet axis Σ v (real particles): v (B, P, 4) = (px, py, pz, E) → (B, P, 2),
    Δφ wrapped into [−π, π); zeros at padding."""
    m = mask.unsqueeze(-1).to(v.dtype)
    jet = (v * m).sum(dim=1, keepdim=True)  # (B, 1, 4)

    def eta_phi(p: Tensor) -> tuple[Tensor, Tensor]:
        pt = torch.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2 + eps)
        return torch.asinh(p[..., 2] / pt), torch.atan2(p[..., 1], p[..., 0])

    eta, phi = eta_phi(v)
    jet_eta, jet_phi = eta_phi(jet)
    dphi = torch.remainder(phi - jet_phi + torch.pi, 2 * torch.pi) - torch.pi
    return torch.stack((eta - jet_eta, dphi), dim=-1) * m


def knn(points: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k nearest other real particles of every particle: points (B, L, D), mask (B, L) → indices (B, L, k)
    and whether each is a real neighbour (B, L, k) (False where a particle has fewer than k real others).
    Needs L ≥ k. Squared Euclidean distances; pairs with a padded particle or with itself are at +∞."""
    sq = points.square().sum(dim=-1)  # (B, L)
    dist = sq.unsqueeze(2) + sq.unsqueeze(1) - 2 * points @ points.transpose(1, 2)  # (B, L, L)
    pos = torch.arange(points.shape[1], device=points.device)  # (an arange, not torch.eye: ONNX Runtime has no
    allowed = mask.unsqueeze(1) & (pos[:, None] != pos[None, :])  # boolean EyeLike) (B, L, L): j real, j ≠ i
    dist = dist.masked_fill(~allowed, float("inf"))
    idx = dist.topk(k, dim=-1, largest=False).indices  # (B, L, k)
    return idx, allowed.gather(2, idx)


def gather_neighbours(h: Tensor, idx: Tensor) -> Tensor:
    """h (B, L, C), idx (B, L, k) → (B, L, k, C)."""
    b, l, k = idx.shape
    flat = idx.reshape(b, l * k, 1).expand(-1, -1, h.shape[-1])
    return h.gather(1, flat).view(b, l, k, h.shape[-1])


class EdgeConvBlock(nn.Module):
    """EdgeConv (Wang et al., DGCNN, arXiv 1801.07829) as ParticleNet uses it: mean over the k nearest neighbours
    of MLP([h_i, h_j − h_i]), plus a shortcut, then ReLU. Widths ``dims``; the first Linear has no bias (BatchNorm
    follows), like every Linear of the edge MLP."""

    def __init__(self, k: int, input_dim: int, dims: Sequence[int]) -> None:
        super().__init__()
        self.k = k
        self.first = nn.Linear(2 * input_dim, dims[0], bias=False)  # on [h_i, h_j − h_i]
        layers: list[nn.Module] = [nn.BatchNorm1d(dims[0]), nn.ReLU()]
        for a, b in itertools.pairwise(dims):
            layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU()]
        self.edge_mlp = nn.Sequential(*layers)
        self.shortcut = None if input_dim == dims[-1] else nn.Sequential(
            nn.Linear(input_dim, dims[-1], bias=False), nn.BatchNorm1d(dims[-1]))
        self.out_dim = dims[-1]

    def forward(self, points: Tensor, h: Tensor, mask: Tensor) -> Tensor:
        """points (B, L, D), h (B, L, C), mask (B, L) → (B, L, dims[-1]), zeros at padding."""
        idx, valid = knn(points, mask, self.k)  # (B, L, k) each
        valid = valid & mask.unsqueeze(-1)  # edges of real particles to real neighbours
        w_i, w_j = self.first.weight.split(h.shape[-1], dim=1)  # W = [W₁ | W₂]
        centre = F.linear(h, w_i - w_j)  # (B, L, H): (W₁ − W₂)·h_i
        edges = centre.unsqueeze(2) + gather_neighbours(F.linear(h, w_j), idx)  # (B, L, k, H)
        messages = on_real(self.edge_mlp, edges, valid)  # (B, L, k, H), zeros on invalid edges
        count = valid.sum(dim=-1, keepdim=True).clamp_min(1).to(messages.dtype)  # (B, L, 1)
        agg = messages.sum(dim=2) / count  # (B, L, H)
        short = h if self.shortcut is None else on_real(self.shortcut, h, mask)
        return torch.relu(short + agg) * mask.unsqueeze(-1).to(agg.dtype)


class ParticleNet(nn.Module):
    """ParticleNet classifier. ``forward(x, v, mask) -> logits``.

    Parameters
    ----------
    input_dim: per-particle features C; num_classes: output classes.
    conv_params: (k, widths) of each EdgeConv block (published: k = 16; (64,)*3, (128,)*3, (256,)*3).
    fc_dims / fc_dropout: the hidden FC layers of the head (published: 256, dropout 0.1).
    use_fusion: weaver-core's fusion layer (not in the paper; see the module docstring).
    input_norm: BatchNorm of the input features (weaver-core's ``use_fts_bn``).
    trim: cut each batch to its longest real jet (particles expected first, as the data modules deliver them).
    """

    head_modules = ("out",)
    block_modules = "edge_convs"
    stem_modules = ("input_bn",)

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        conv_params: Sequence[Sequence] = ((16, (64, 64, 64)), (16, (128, 128, 128)), (16, (256, 256, 256))),
        fc_dims: Sequence[int] = (256,),
        fc_dropout: float = 0.1,
        use_fusion: bool = False,
        input_norm: bool = True,
        trim: bool = True,
    ) -> None:
        super().__init__()
        self.trim = trim
        self.input_bn = nn.BatchNorm1d(input_dim) if input_norm else nn.Identity()
        self.edge_convs = nn.ModuleList()
        width = input_dim
        for k, dims in conv_params:
            self.edge_convs.append(EdgeConvBlock(int(k), width, [int(d) for d in dims]))
            width = self.edge_convs[-1].out_dim
        self.max_k = max(block.k for block in self.edge_convs)
        self.fusion = None
        if use_fusion:
            fused = sum(block.out_dim for block in self.edge_convs)
            width = min(max(fused // 128 * 128, 128), 1024)
            self.fusion = nn.Sequential(nn.Linear(fused, width, bias=False), nn.BatchNorm1d(width), nn.ReLU())
        self.fc, width = mlp(width, fc_dims, fc_dropout)
        self.out = nn.Linear(width, num_classes)

    def forward(self, x: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, P, C) features, v (B, P, 4) four-vectors (px, py, pz, E), mask (B, P) True = real → (B, classes)."""
        mask = real_mask(x, mask)
        exporting = torch.onnx.is_in_onnx_export()
        if self.trim and not exporting:
            mask, x, v = trim_to_longest(mask, x, v)
        # kNN needs k other particles: pad with padding (always while exporting, where the length is symbolic)
        extra = self.max_k if exporting else max(self.max_k + 1 - mask.shape[1], 0)
        if extra:
            mask = F.pad(mask, (0, extra), value=False)
            x, v = F.pad(x, (0, 0, 0, extra)), F.pad(v, (0, 0, 0, extra))
        points = eta_phi_points(v, mask)  # (B, L, 2)
        h = on_real(self.input_bn, x, mask)  # (B, L, C)
        outputs = []
        for block in self.edge_convs:
            h = block(points, h, mask)  # (B, L, H)
            points = h
            outputs.append(h)
        if self.fusion is not None:
            h = on_real(self.fusion, torch.cat(outputs, dim=-1), mask)
        return self.out(self.fc(masked_mean(h, mask)))  # (B, classes)
