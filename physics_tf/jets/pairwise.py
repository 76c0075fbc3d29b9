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
triangles of the (B, H, L, L) bias (under ``torch.onnx.export`` through a (B, L, L, H) layout, which the exporter
can express).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAIR_FEATURE_NAMES = ("ln_kt", "ln_z", "ln_delta", "ln_m2")


def _pt_rapidity_phi(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    px, py, pz, e = p.unbind(-1)
    pt = torch.hypot(px, py)
    # y = ½ ln((E + pz)/(E − pz)) written to stay finite for massless particles along the beam
    rapidity = 0.5 * torch.log1p(2 * pz / (e - pz).clamp(min=1e-20))
    return pt, rapidity, torch.atan2(py, px)


def _kinematics(p: Tensor) -> Tensor:
    """(…, 4) four-vectors → (…, 7) = (px, py, pz, E, pT, y, φ), fp32."""
    p = p.float()  # logs of small numbers: always fp32
    return torch.cat((p, torch.stack(_pt_rapidity_phi(p), dim=-1)), dim=-1)


def _pair_features_kin(ka: Tensor, kb: Tensor, eps: float) -> Tensor:
    """Pair features from :func:`_kinematics` rows of both particles (…, 7) → (…, 4)."""
    pt_a, y_a, phi_a = ka[..., 4], ka[..., 5], ka[..., 6]
    pt_b, y_b, phi_b = kb[..., 4], kb[..., 5], kb[..., 6]
    dphi = torch.remainder(phi_a - phi_b + math.pi, 2 * math.pi) - math.pi
    delta = torch.sqrt((y_a - y_b) ** 2 + dphi**2)
    pt_min = torch.minimum(pt_a, pt_b)
    ln_kt = torch.log((pt_min * delta).clamp(min=eps))
    ln_z = torch.log((pt_min / (pt_a + pt_b).clamp(min=eps)).clamp(min=eps))
    ln_delta = torch.log(delta.clamp(min=eps))
    s = ka[..., :4] + kb[..., :4]
    m2 = s[..., 3] ** 2 - (s[..., :3] ** 2).sum(-1)
    ln_m2 = torch.log(m2.clamp(min=eps))
    return torch.stack((ln_kt, ln_z, ln_delta, ln_m2), dim=-1)


def pair_features(pa: Tensor, pb: Tensor, eps: float = 1e-8) -> Tensor:
    """Pairwise features of four-vectors pa, pb (..., 4) = (px, py, pz, E) → (..., 4) = (ln kT, ln z, ln Δ, ln m²)."""
    return _pair_features_kin(_kinematics(pa), _kinematics(pb), eps)


class _LinearManyRows(torch.autograd.Function):
    """``F.linear`` whose weight gradient is computed as (xᵀ·g)ᵀ: for ~10⁵ rows and 4 input features BLAS runs
    that ~10× faster than autograd's gᵀ·x."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_w = (x.to(grad.dtype).t() @ grad).t().to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0).to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


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

    EVAL_CHUNK = 8192  # pairs per chunk of the eval-mode MLP on CPUs (hidden chunks of 2 MB stay in the L2 cache)

    def __init__(self, num_heads: int, dims: Sequence[int] = (64, 64, 64), input_dim: int = 4, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps, self.num_heads = eps, num_heads
        layers: list[nn.Module] = [nn.BatchNorm1d(input_dim)]
        for dim in (*dims, num_heads):
            layers += [nn.Linear(input_dim, dim), nn.BatchNorm1d(dim), nn.GELU()]
            input_dim = dim
        self.mlp = nn.Sequential(*layers[:-1])  # pre-activation output: no GELU after the last BatchNorm

    def _train_mlp(self, feats: Tensor) -> Tensor:
        """``self.mlp`` with the first Linear's (4 inputs) weight gradient computed the fast way round."""
        for layer in self.mlp:
            if isinstance(layer, nn.Linear) and layer.in_features <= 8 and torch.is_grad_enabled():
                feats = _LinearManyRows.apply(feats, layer.weight, layer.bias)
            else:
                feats = layer(feats)
        return feats

    def _folded(self) -> list[tuple[Tensor, Tensor, bool]]:
        """The eval-mode MLP as (weight, bias, GELU after it) steps, every BatchNorm (an affine map in eval) folded
        into the adjacent Linear."""
        steps: list[tuple[Tensor, Tensor, bool]] = []
        scale = shift = None  # pending affine map on the next Linear's input
        weight = bias = None
        for layer in self.mlp:
            if isinstance(layer, nn.BatchNorm1d):
                s = layer.weight / torch.sqrt(layer.running_var + layer.eps)
                t = layer.bias - layer.running_mean * s
                if weight is None:  # input BatchNorm: folds into the next Linear's input side
                    scale, shift = s, t
                else:  # after a Linear: fold into its output side
                    weight, bias = weight * s[:, None], bias * s + t
            elif isinstance(layer, nn.Linear):
                weight, bias = layer.weight, layer.bias
                if scale is not None:
                    weight, bias = weight * scale[None, :], bias + layer.weight @ shift
                    scale = shift = None
            else:  # activation: the folded Linear, then it
                steps.append((weight, bias, True))
                weight = bias = None
        if weight is not None:
            steps.append((weight, bias, False))
        return steps

    def _eval_mlp(self, feats: Tensor) -> Tensor:
        """The MLP in eval mode (BatchNorms folded, :meth:`_folded`), in chunks of :attr:`EVAL_CHUNK` pairs: the
        (chunk, 64) hidden tensors stay in the CPU cache and are never allocated at full size (~50 MB each for a
        batch of 128 jets)."""
        steps = self._folded()
        n = feats.shape[0]
        if n <= self.EVAL_CHUNK or feats.device.type != "cpu":
            return self._eval_steps(steps, feats)
        out = feats.new_empty(n, steps[-1][0].shape[0])
        for start in range(0, n, self.EVAL_CHUNK):
            out[start : start + self.EVAL_CHUNK] = self._eval_steps(steps, feats[start : start + self.EVAL_CHUNK])
        return out

    @staticmethod
    def _eval_steps(steps: list[tuple[Tensor, Tensor, bool]], feats: Tensor) -> Tensor:
        in_place = not torch.is_grad_enabled()  # gradients through eval mode (e.g. saliency) need out-of-place ops
        for weight, bias, gelu in steps:
            feats = F.linear(feats, weight, bias)
            if gelu:
                feats = torch.ops.aten.gelu_(feats) if in_place else F.gelu(feats)
        return feats

    def embed(self, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The embedded real pairs: (emb (N_pairs, H), batch, a, b) with the indices of :func:`real_pairs` (ordered
        by set, so the pairs of consecutive sets are consecutive rows)."""
        batch, a, b = real_pairs(mask)  # (N_pairs,) each
        B, L = mask.shape
        kin = _kinematics(v).reshape(B * L, 7)  # per particle once, not per pair
        feats = _pair_features_kin(kin[batch * L + a], kin[batch * L + b], self.eps)  # (N_pairs, 4)
        emb = self._train_mlp(feats) if self.training else self._eval_mlp(feats)  # (N_pairs, H)
        return emb, batch, a, b

    def scatter(self, emb: Tensor, batch: Tensor, a: Tensor, b: Tensor, mask: Tensor,
                key_mask_value: float | None = None) -> Tensor:
        """Embedded pairs (:meth:`embed`) of the sets of ``mask`` (B, L) → bias (B, H, L, L) (see :meth:`forward`)."""
        B, L = mask.shape
        if torch.onnx.is_in_onnx_export():
            # the exporter cannot index around a slice: scatter with consecutive advanced indices, then permute
            bias = emb.new_zeros(B, L, L, self.num_heads)  # (B, L, L, H)
            bias[batch, a, b] = emb
            bias[batch, b, a] = emb
            bias = bias.permute(0, 3, 1, 2)  # (B, H, L, L)
        else:
            bias = emb.new_zeros(B, self.num_heads, L, L)  # (B, H, L, L)
            bias[batch, :, a, b] = emb  # advanced indices around a slice: the indexed view is (N_pairs, H)
            bias[batch, :, b, a] = emb
        if key_mask_value is not None:  # padded keys are never real pairs: no overlap with the scattered bias
            keep = mask | ~mask.any(dim=-1, keepdim=True)  # (B, L)
            bias.masked_fill_(~keep[:, None, None, :], key_mask_value)
        return bias

    def forward(self, v: Tensor, mask: Tensor, key_mask_value: float | None = None) -> Tensor:
        """v (B, L, 4) four-vectors, mask (B, L) → bias (B, H, L, L), zero where either particle is padding.

        ``key_mask_value=-inf`` puts the attention mask in the same tensor: padded keys get −∞ (every key stays
        allowed in a row of a set with no real element, as :func:`physics_tf.nn.attention.attention_mask`
        does), so the bias is the finished SDPA ``attn_mask`` without a second (B, H, L, L) pass.
        """
        return self.scatter(*self.embed(v, mask), mask, key_mask_value)
