"""The jets' side of ONNX export (:mod:`physics_tf.training.export`): the network inputs' dynamic axes and an
example batch, reached through :class:`physics_tf.jets.data.JetDataModule`'s ``example_batch`` and
``onnx_dynamic_axes``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from physics_tf.nn.packing import prefix_mask

__all__ = ["DYNAMIC_AXES", "example_batch"]

# x (B, P, C), v (B, P, 4), mask (B, P): any batch size and particle count
DYNAMIC_AXES = {name: {0: "batch", 1: "particles"} for name in ("x", "v", "mask")}


def example_batch(datamodule: Any, batch_size: int, length: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Padded jets of plausible kinematics (massive four-vectors, |η| ~ 0.3, pT in 1 … 51) and standard-normal
    features; every jet is padded and the longest has ``length − 1`` particles (:func:`prefix_mask`)."""
    mask = prefix_mask(batch_size, length, generator)
    shape = (batch_size, length)
    pt = torch.rand(shape, generator=generator) * 50 + 1
    eta = torch.randn(shape, generator=generator) * 0.3
    phi = (torch.rand(shape, generator=generator) * 2 - 1) * math.pi
    mass = torch.rand(shape, generator=generator) * 0.2
    pz = pt * torch.sinh(eta)
    energy = torch.sqrt(pt**2 + pz**2 + mass**2)
    v = torch.stack((pt * torch.cos(phi), pt * torch.sin(phi), pz, energy), dim=-1)  # (B, P, 4)
    x = torch.randn(*shape, datamodule.num_features, generator=generator)  # (B, P, C)
    m = mask.unsqueeze(-1).float()
    return {"x": x * m, "v": v * m, "mask": mask}
