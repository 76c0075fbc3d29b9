"""Padded sets ↔ their real elements: one pack / unpack used by every model, and the masks that go with it.

A padded batch (B, L, …) with a mask (B, L) (True = real) holds N_real real rows. Token-wise layers (Linear,
LayerNorm, activations, BatchNorm) need not see the padding: :class:`Packing` gathers the real rows into one flat
(N_real, …) tensor and scatters results back with zeros at padding. ``Packing(mask).pack(x)`` equals ``x[mask]``
and ``Packing(mask).unpack(values)`` equals ``out = zeros; out[mask] = values``, in the same row order (row-major
order of the mask), so two masks with the same real count per row pack to corresponding rows — the way the Auger
transformer moves station rows from the grid layout to a left-aligned one (:func:`left_aligned`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Packing", "left_aligned", "trim_to_longest", "prefix_mask"]


class Packing:
    """Real elements of a padded (B, L) set as one flat list, for token-wise layers that need not see padding.

    ``pack`` (B, L, …) → (N_real, …) in row-major order of ``mask``; ``unpack`` is its inverse with zeros at padding.
    Linear layers, LayerNorms and activations then cost N_real rows instead of B·L; only attention unpacks.
    """

    def __init__(self, mask: Tensor) -> None:
        self.shape = mask.shape  # (B, L)
        self.batch, self.pos = mask.nonzero(as_tuple=True)  # (N_real,) each
        self.index = self.batch * mask.shape[1] + self.pos  # (N_real,) into the flattened (B·L)

    def pack(self, x: Tensor) -> Tensor:
        """(B, L, …) → (N_real, …); also accepts non-contiguous views (e.g. (B, H, L, d).transpose(1, 2))."""
        return x[self.batch, self.pos]

    def unpack(self, values: Tensor) -> Tensor:
        """(N_real, …) → (B, L, …), zeros at padding."""
        out = values.new_zeros(self.shape[0] * self.shape[1], *values.shape[1:])
        return out.index_copy(0, self.index, values).view(*self.shape, *values.shape[1:])


def left_aligned(mask: Tensor, trim: bool = True) -> Tensor:
    """(B, S) mask → (B, L) mask of the same real counts with each row's real elements first.

    ``trim``: L = the largest real count (at least 1), so that attention costs (max real)² instead of S²;
    False keeps L = S (data-independent shapes, e.g. while exporting to ONNX).
    """
    counts = mask.sum(dim=1)  # (B,)
    length = max(int(counts.max()), 1) if trim else mask.shape[1]
    return torch.arange(length, device=mask.device)[None, :] < counts[:, None]  # (B, L)


def trim_to_longest(mask: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Cut the element axis (dim 1) of ``mask`` (B, L) and ``tensors`` (B, L, ...) to the longest real set; real
    elements are expected first (left-aligned padding), as the data modules deliver them."""
    length = max(int(mask.sum(dim=1).max()), 1)
    return (mask[:, :length], *(t[:, :length] for t in tensors))


def prefix_mask(batch: int, length: int, generator: torch.Generator) -> Tensor:
    """A random left-aligned (B, L) mask with 1 ≤ real count < L in every row and L − 1 in the first, for example
    batches: every row is padded, and a length taken from the data (trimming to the longest set) differs from L."""
    counts = torch.randint(1, max(length, 2), (batch,), generator=generator)
    counts[0] = max(length - 1, 1)
    return torch.arange(length)[None, :] < counts[:, None]
