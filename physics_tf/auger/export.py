"""The Auger side of ONNX export (:mod:`physics_tf.training.export`): the network inputs' dynamic axes and an
example batch, reached through :class:`physics_tf.auger.data.AugerDataModule`'s ``example_batch`` and
``onnx_dynamic_axes``. The station grid and the trace length are fixed by the data config; only the batch axis
is dynamic."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["DYNAMIC_AXES", "example_batch"]

DYNAMIC_AXES = {name: {0: "batch"} for name in ("traces", "times", "signals", "positions", "mask")}


def example_batch(datamodule: Any, batch_size: int, length: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Events on the (n, n) grid with T bins; ``length`` bounds the stations per event: the fullest event has
    min(length, n² + 1) − 1 real stations, in random grid positions, so a station count taken from the data while
    tracing (packing to the largest count) differs between two example batches."""
    n, t = datamodule.grid_size, datamodule.n_bins
    most = max(min(length, n * n + 1) - 1, 1)
    counts = torch.randint(1, n * n + 1, (batch_size,), generator=generator).clamp(max=most)
    counts[0] = most
    rank = torch.rand(batch_size, n * n, generator=generator).argsort(dim=1).argsort(dim=1)  # random station order
    mask = (rank < counts[:, None]).view(batch_size, n, n)
    m = mask.float()
    return {"traces": torch.rand(batch_size, n, n, t, generator=generator) * 3 * m.unsqueeze(-1),
            "times": torch.randn(batch_size, n, n, generator=generator) * m,
            "signals": torch.rand(batch_size, n, n, generator=generator) * 3 * m,
            "positions": torch.randn(batch_size, n, n, 3, generator=generator),
            "mask": mask}
