"""The light curves' side of ONNX export (:mod:`physics_tf.training.export`): the network inputs' dynamic axes
and an example batch, reached through :class:`physics_tf.lightcurves.data.LightCurveDataModule`'s
``example_batch`` and ``onnx_dynamic_axes``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from physics_tf.nn.packing import prefix_mask

__all__ = ["DYNAMIC_AXES", "example_batch"]

# per observation (B, L): any batch size and number of observations; meta (B, M)
DYNAMIC_AXES = {**{name: {0: "batch", 1: "observations"} for name in ("flux", "flux_err", "time", "band", "mask")},
                "meta": {0: "batch"}}


def example_batch(datamodule: Any, batch_size: int, length: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Padded light curves: fluxes ~ 50·N(0, 1), errors 1 … 11, integer times 0 … 3L unsorted and with ties (the
    models sort them), random bands and metadata; every curve is padded, the longest has ``length − 1``
    observations (:func:`prefix_mask`)."""
    mask = prefix_mask(batch_size, length, generator)
    m = mask.float()
    shape = (batch_size, length)
    time = torch.randint(0, 3 * length, shape, generator=generator).float()
    dims = datamodule.model_dims
    return {"flux": torch.randn(shape, generator=generator) * 50 * m,
            "flux_err": (torch.rand(shape, generator=generator) * 10 + 1) * m,
            "time": time * m,
            "band": torch.randint(0, dims["num_bands"], shape, generator=generator) * mask,
            "mask": mask,
            "meta": torch.randn(batch_size, dims["meta_dim"], generator=generator)}
