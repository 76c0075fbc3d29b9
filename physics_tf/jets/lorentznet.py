"""LorentzNet — Gong, Meng, Qiao, Tang, Li, Zhang, "An efficient Lorentz equivariant graph neural network for jet
tagging", JHEP 07 (2022) 030, arXiv 2201.08187 (top tagging: accuracy 0.942, AUC 0.9868, 224 k parameters).

Every particle carries a four-momentum x_i and scalars h_i; L Lorentz group equivariant blocks (LGEB) on the fully
connected graph (all pairs i ≠ j) update both, with the Minkowski products ⟨·,·⟩ (metric +,−,−,−) and
ψ(a) = sign(a)·ln(|a| + 1)::

    m_ij  = φ_e(h_i, h_j, ψ(‖x_i − x_j‖²), ψ(⟨x_i, x_j⟩)),   m_ij ← m_ij · φ_m(m_ij)   (φ_m: Linear + sigmoid)
    x_i  ← x_i + c · mean_j (x_i − x_j) · φ_x(m_ij)            (equivariant; not in the last block)
    h_i  ← h_i + φ_h(h_i, Σ_j m_ij, s_i)                        (invariant; s_i the input scalars)

then the mean of h over the particles, Linear–ReLU–Dropout–Linear → logits. As published: 6 blocks, hidden 72,
c = 10⁻³, φ_e = Linear(no bias)–BN–ReLU–Linear–ReLU, φ_h = Linear–BN–ReLU–Linear, φ_x = Linear–ReLU–Linear(no bias,
Xavier gain 10⁻³), dropout 0.2 in the decoder, the position update clamped to ±100; 2 input scalars and 2 classes
→ 224,072 parameters (the paper's 224 k).

Scalars fed here (the inputs must be Lorentz invariant for the output to be): ψ(m) of each particle, with
m² = E² − |p|² from v (the paper's mass input), and a beam flag (1 for the two beam particles, 0 otherwise) — the
2 scalars counted above — plus the columns of x named by ``scalar_features``: only Lorentz-invariant features
belong there (charge and the particle-ID flags are; log pT, Δη, … are not). ``beams=True`` adds two beam
particles (E, px, py, pz) = (1, 0, 0, ±1) to every jet, as the paper does for top tagging: that fixes the beam
axis, so the output is then invariant under rotations about it only; ``beams=False`` leaves a function invariant
under every Lorentz transformation of the jet.

Padding: edges join real particles (and the beams) only, BatchNorm statistics in training see real edges / real
particles only, the pooling averages the real particles (the reference averages over the padded length), so
outputs do not depend on the padding. Edges are packed (E = Σ n_i² rows, not B·P²) except under ONNX export, which
traces the dense (B, P, P) layout — the same function. The Minkowski products are taken in float64 (``wide``):
in float32 those of nearly collinear particles lose most digits to cancellation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physics_tf.nn.packing import masked_mean, on_real, real_mask, trim_to_longest

__all__ = ["LGEB", "LorentzNet", "minkowski", "pair_invariants", "psi"]

METRIC = (1.0, -1.0, -1.0, -1.0)  # (E, px, py, pz)


def psi(a: Tensor) -> Tensor:
    """ψ(a) = sign(a)·ln(|a| + 1)."""
    return torch.sign(a) * torch.log1p(a.abs())


def minkowski(a: Tensor, b: Tensor) -> Tensor:
    """⟨a, b⟩ = a⁰b⁰ − a·b for (..., 4) four-vectors (E, px, py, pz) → (...)."""
    return (a * b * a.new_tensor(METRIC)).sum(dim=-1)


def wide(a: Tensor) -> Tensor:
    """a in float64 (float32 on MPS, which has no float64): the Minkowski products of nearly collinear, nearly
    massless particles cancel (⟨a, b⟩ ≪ a⁰b⁰), and float32 would lose most of their digits — differently in
    every implementation (PyTorch, ONNX Runtime) and Lorentz frame."""
    return a.to(torch.float32 if a.device.type == "mps" else torch.float64)


def pair_invariants(xi: Tensor, xj: Tensor) -> Tensor:
    """(ψ‖x_i − x_j‖², ψ⟨x_i, x_j⟩) of (..., 4) four-vectors → (..., 2), computed wide, in x's dtype."""
    a, b = wide(xi), wide(xj)
    return torch.stack((psi(minkowski(a - b, a - b)), psi(minkowski(a, b))), dim=-1).to(xi.dtype)


class _Edges:
    """The graph's edges (i, j), i ≠ j, both real: packed as (E, ·) rows, or dense (B, N, N, ·) under export."""

    def __init__(self, mask: Tensor, dense: bool) -> None:
        b, n = mask.shape
        pos = torch.arange(n, device=mask.device)  # (not torch.eye: ONNX Runtime has no boolean EyeLike)
        self.valid = mask.unsqueeze(2) & mask.unsqueeze(1) & (pos[:, None] != pos[None, :])  # (B, N, N)
        self.dense, self.shape = dense, (b, n)
        if not dense:
            bi, i, j = self.valid.nonzero(as_tuple=True)
            self.i, self.j = bi * n + i, bi * n + j  # (E,) rows of the flattened (B·N) nodes
        self.count = self.valid.sum(dim=2, keepdim=True).clamp_min(1)  # (B, N, 1): neighbours of each i

    def node_i(self, t: Tensor) -> Tensor:
        """(B, N, C) → per edge the value at i: (E, C), or (B, N, 1, C) dense (broadcasts over j)."""
        return t.unsqueeze(2) if self.dense else t.reshape(-1, t.shape[-1])[self.i]

    def node_j(self, t: Tensor) -> Tensor:
        return t.unsqueeze(1) if self.dense else t.reshape(-1, t.shape[-1])[self.j]

    def rows(self, module: nn.Module, e: Tensor) -> Tensor:
        """A row-wise module on the edge values."""
        if not self.dense:
            return module(e)
        out = module(e.reshape(-1, e.shape[-1]))
        return out.view(*e.shape[:-1], out.shape[-1])

    def sum_i(self, e: Tensor) -> Tensor:
        """Σ_j over the valid edges (i, j) → (B, N, C)."""
        b, n = self.shape
        if self.dense:
            return (e * self.valid.unsqueeze(-1).to(e.dtype)).sum(dim=2)
        out = e.new_zeros(b * n, e.shape[-1]).index_add(0, self.i, e)
        return out.view(b, n, e.shape[-1])


class LGEB(nn.Module):
    """Lorentz group equivariant block (the paper's Eq. 3.3–3.5)."""

    def __init__(self, hidden: int, num_scalars: int, c_weight: float = 1e-3, last_layer: bool = False) -> None:
        super().__init__()
        self.c_weight = c_weight
        self.edge_in = nn.Linear(2 * hidden + 2, hidden, bias=False)  # [h_i, h_j, ψ‖x_i − x_j‖², ψ⟨x_i, x_j⟩]
        self.phi_e = nn.Sequential(nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.phi_m = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid())
        self.phi_h = nn.Sequential(nn.Linear(2 * hidden + num_scalars, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden))
        self.phi_x = None
        if not last_layer:
            layer = nn.Linear(hidden, 1, bias=False)
            nn.init.xavier_uniform_(layer.weight, gain=0.001)
            self.phi_x = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), layer)

    def forward(self, h: Tensor, x: Tensor, scalars: Tensor, mask: Tensor, edges: _Edges) -> tuple[Tensor, Tensor]:
        """h (B, N, H), x (B, N, 4), scalars (B, N, S), mask (B, N) → new h, x."""
        hidden = h.shape[-1]
        w_i, w_j, w_pair = self.edge_in.weight.split((hidden, hidden, 2), dim=1)
        xi, xj = edges.node_i(x), edges.node_j(x)
        diff = xi - xj  # (E, 4) or (B, N, N, 4)
        pair = pair_invariants(xi, xj)  # (E, 2)
        pre = edges.node_i(F.linear(h, w_i)) + edges.node_j(F.linear(h, w_j)) + F.linear(pair, w_pair)
        m = edges.rows(self.phi_e, pre)
        m = m * edges.rows(self.phi_m, m)  # (E, H): the messages
        if self.phi_x is not None:
            trans = (diff * edges.rows(self.phi_x, m)).clamp(-100.0, 100.0)
            x = x + self.c_weight * edges.sum_i(trans) / edges.count.to(x.dtype)
        agg = edges.sum_i(m)  # (B, N, H)
        h = h + on_real(self.phi_h, torch.cat((h, agg, scalars), dim=-1), mask)
        return h, x


class LorentzNet(nn.Module):
    """LorentzNet classifier. ``forward(x, v, mask) -> logits``.

    Parameters
    ----------
    input_dim: per-particle features C (only the ``scalar_features`` columns are read); num_classes: classes.
    hidden, num_layers, c_weight, dropout: published 72, 6, 1e-3, 0.2.
    scalar_features: indices of Lorentz-invariant columns of x fed as extra scalars (e.g. charge and the five
    particle-ID flags: 7 … 12 in the ParT feature order); none by default (the published 2 scalars).
    beams: add the two beam particles (see the module docstring). trim: cut each batch to its longest real jet.
    """

    head_modules = ("decoder",)
    block_modules = "blocks"
    stem_modules = ("embedding",)

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        hidden: int = 72,
        num_layers: int = 6,
        c_weight: float = 1e-3,
        dropout: float = 0.2,
        scalar_features: Sequence[int] | None = None,
        beams: bool = True,
        trim: bool = True,
    ) -> None:
        super().__init__()
        self.scalar_features = [int(i) for i in (scalar_features or [])]
        bad = [i for i in self.scalar_features if not -input_dim <= i < input_dim]
        if bad:
            raise ValueError(f"scalar_features: {bad} out of range for {input_dim} input features")
        self.beams, self.trim = beams, trim
        num_scalars = 2 + len(self.scalar_features)
        self.embedding = nn.Linear(num_scalars, hidden)
        self.blocks = nn.ModuleList(LGEB(hidden, num_scalars, c_weight, last_layer=i == num_layers - 1)
                                    for i in range(num_layers))
        self.decoder = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, num_classes))

    def _inputs(self, x: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(E, px, py, pz) four-vectors, the scalars and the mask, with the beams in front when asked for."""
        p = torch.cat((v[..., 3:], v[..., :3]), dim=-1) * mask.unsqueeze(-1).to(v.dtype)  # (B, P, 4)
        m2 = minkowski(wide(p), wide(p)).abs().clamp_min(1e-12)  # (B, P) (the clamp: finite gradients at m = 0)
        mass = psi(m2.sqrt()).to(p.dtype)
        flag = torch.zeros_like(mass)
        scalars = [mass.unsqueeze(-1), flag.unsqueeze(-1)]
        if self.scalar_features:
            scalars.append(x[..., self.scalar_features].to(v.dtype))
        s = torch.cat(scalars, dim=-1) * mask.unsqueeze(-1).to(v.dtype)  # (B, P, S)
        if self.beams:
            b = v.shape[0]
            beam = p.new_tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, -1.0]]).expand(b, 2, 4)
            beam_s = torch.cat((s.new_zeros(b, 2, 1), s.new_ones(b, 2, 1), s.new_zeros(b, 2, s.shape[-1] - 2)), -1)
            p, s = torch.cat((beam, p), dim=1), torch.cat((beam_s, s), dim=1)
            mask = torch.cat((mask.new_ones(b, 2), mask), dim=1)
        return p, s, mask

    def forward(self, x: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, P, C) features, v (B, P, 4) four-vectors (px, py, pz, E), mask (B, P) True = real → (B, classes)."""
        mask = real_mask(x, mask)
        exporting = torch.onnx.is_in_onnx_export()
        if self.trim and not exporting:
            mask, x, v = trim_to_longest(mask, x, v)
        p, scalars, mask = self._inputs(x, v, mask)
        edges = _Edges(mask, dense=exporting)
        h = on_real(self.embedding, scalars, mask)  # (B, N, H)
        for block in self.blocks:
            h, p = block(h, p, scalars, mask, edges)
        return self.decoder(masked_mean(h, mask))  # mean over the real particles (and beams) → (B, classes)
