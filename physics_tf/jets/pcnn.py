"""P-CNN — the 1-D convolutional baseline of the ParT paper's JetClass table (Qu, Li, Qian, arXiv 2202.03772,
Table 2: accuracy 0.809, 354 k parameters), the particle-level CNN of CMS's DeepAK8 tagger (CMS-DP-2017-049,
CMS-PAS-JME-18-002): a ResNet (He et al., arXiv 1512.03385) of 1-D convolutions over the pT-ordered particles.

Layout followed — the ParT paper's P-CNN as its authors' example network builds it (jet-universe/
particle_transformer ``networks/example_PCNN.py``, weaver-benchmark ``deepak8_pf.py``)::

    x (B, P, C) ──BatchNorm──Conv1d(k=3) 32──BN──ReLU──►
      stage 1: ResNet units 64, 64 (stride 1)
      stage 2: ResNet units 64, 64 (the first with stride 2)
      stage 3: ResNet units 128, 128 (the first with stride 2)
      ──► mean over particles ──► FC 512 (ReLU, dropout 0.2) ──► logits

A ResNet unit: Conv1d(k=3)–BN–ReLU–Conv1d(k=3)–BN–ReLU plus the input (through a bias-free 1×1 conv of the unit's
stride where the width or length changes). 17 features and 10 classes → 354,540 parameters (the table's 354 k).

Order and padding (where the reference differs): the particles are sorted by pT here, from the four-vectors v
(descending; padding last), so the input's order does not matter; padded positions are zero after every layer
(the reference zeroes only the input, so conv biases leak into the padding and back into the last real
particles), a stride-2 output position is real when the input position it is centred on is; BatchNorm statistics
in training see real positions only; the pooling averages the real positions (the reference averages over the
padded length). So the output does not depend on the padding length. Each batch is trimmed to its longest jet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from physics_tf.nn.blocks import mlp
from physics_tf.nn.packing import masked_mean, on_real, real_mask, trim_to_longest

__all__ = ["ParticleCNN", "ResNetUnit", "pt_order"]


def pt_order(x: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """x and mask reordered by descending pT (from v (B, P, 4) = (px, py, pz, E)), padded particles last."""
    pt2 = (v[..., 0] ** 2 + v[..., 1] ** 2).masked_fill(~mask, -1.0)  # (B, P)
    if torch.onnx.is_in_onnx_export():  # ONNX has no stable sort: equal-pT real particles may swap (TopK)
        order = pt2.topk(pt2.shape[1], dim=1).indices  # (B, P)
    else:
        order = pt2.sort(dim=1, descending=True, stable=True).indices  # (B, P)
    return x.gather(1, order.unsqueeze(-1).expand_as(x)), mask.gather(1, order)


class _MaskedConv(nn.Module):
    """Conv1d (kernel 3, padding 1, stride s) then BatchNorm on the real positions, channels last:
    (B, L, C), mask (B, L) → (B, ⌈L/s⌉, C'), the output mask; zeros at padding."""

    def __init__(self, input_dim: int, dim: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(input_dim, dim, kernel_size=3, stride=stride, padding=1)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        out = self.conv(h.transpose(1, 2)).transpose(1, 2)  # (B, L', C')
        mask = mask[:, :: self.conv.stride[0]]  # position i is centred on input position s·i
        return on_real(self.bn, out, mask), mask


class ResNetUnit(nn.Module):
    """Two (conv, BN, ReLU) steps plus the shortcut; the first conv has the unit's stride."""

    def __init__(self, input_dim: int, dim: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _MaskedConv(input_dim, dim, stride)
        self.conv2 = _MaskedConv(dim, dim)
        self.shortcut = None
        if input_dim != dim or stride != 1:
            self.shortcut = nn.Conv1d(input_dim, dim, kernel_size=1, stride=stride, bias=False)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        out, out_mask = self.conv1(h, mask)
        out, out_mask = self.conv2(torch.relu(out), out_mask)
        short = h if self.shortcut is None else self.shortcut(h.transpose(1, 2)).transpose(1, 2)
        return torch.relu(out) + short * out_mask.unsqueeze(-1).to(out.dtype), out_mask


class ParticleCNN(nn.Module):
    """P-CNN classifier. ``forward(x, v, mask) -> logits``; v orders the particles by pT.

    Parameters
    ----------
    input_dim: per-particle features C; num_classes: output classes.
    conv_params: the stem width, then the widths of each stage's ResNet units (published: (32,), (64, 64),
    (64, 64), (128, 128)); every stage after the first starts with a stride-2 unit.
    fc_dims / fc_dropout: hidden FC layers of the head (published: 512, dropout 0.2).
    input_norm: BatchNorm of the input features. trim: cut each batch to its longest real jet.
    """

    head_modules = ("out",)
    block_modules = "stages"
    stem_modules = ("input_bn", "stem")

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        conv_params: Sequence[Sequence[int]] = ((32,), (64, 64), (64, 64), (128, 128)),
        fc_dims: Sequence[int] = (512,),
        fc_dropout: float = 0.2,
        input_norm: bool = True,
        trim: bool = True,
    ) -> None:
        super().__init__()
        self.trim = trim
        self.input_bn = nn.BatchNorm1d(input_dim) if input_norm else nn.Identity()
        width = int(conv_params[0][0])
        self.stem = _MaskedConv(input_dim, width)
        self.stages = nn.ModuleList()
        for i, dims in enumerate(conv_params[1:]):
            units = []
            for j, dim in enumerate(dims):
                units.append(ResNetUnit(width, int(dim), stride=2 if (i > 0 and j == 0) else 1))
                width = int(dim)
            self.stages.append(nn.ModuleList(units))
        self.fc, width = mlp(width, fc_dims, fc_dropout)
        self.out = nn.Linear(width, num_classes)

    def forward(self, x: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, P, C) features, v (B, P, 4) four-vectors (px, py, pz, E), mask (B, P) True = real → (B, classes)."""
        x, mask = pt_order(x, v, real_mask(x, mask))
        if self.trim and not torch.onnx.is_in_onnx_export():
            mask, x = trim_to_longest(mask, x)
        h, mask = self.stem(on_real(self.input_bn, x, mask), mask)
        h = torch.relu(h)
        for stage in self.stages:
            for unit in stage:
                h, mask = unit(h, mask)
        return self.out(self.fc(masked_mean(h, mask)))  # (B, classes)
