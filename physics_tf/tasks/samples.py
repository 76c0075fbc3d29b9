"""Each sample counted once: the per-sample outputs of validation and test, and the counts of left-out samples.

Under DDP every rank must yield the same number of batches, so the evaluation loaders repeat a few samples (a
``DistributedSampler`` pads, the streamed datasets wrap around their span or re-read entries when samples were
dropped). Batches carry each sample's identity, ``aux_index (B,)`` (the batch contract of
:mod:`physics_tf.tasks.base`). :class:`StageOutputs` keeps a stage's per-sample tensors with that index, gathers
them from every rank and keeps the first occurrence of each sample (:func:`physics_tf.tasks.metrics.unique_samples`),
so validation numbers, test numbers, the test loss and the predictions file count every sample once.

A data module may report samples its loaders left out on purpose during an epoch (jets: ``num_dropped_empty``,
jets with zero particles) through ``epoch_counts(split) -> {name: count}`` (this rank's count, the same names on
every rank); :func:`epoch_counts` sums them over ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from physics_tf.tasks.metrics import PredictionAccumulator, unique_samples

__all__ = ["StageOutputs", "batch_loss", "epoch_counts", "log_epoch_counts", "mean_loss"]

log = logging.getLogger(__name__)


class StageOutputs(nn.Module):
    """Per-sample tensors of one evaluation stage (validation or test), gathered from every rank, each sample once.

    ``StageOutputs("loss", "probs", "labels")``; per batch ``update({"loss": (B,), "probs": (B, K), ...},
    index=batch.get("aux_index"))``; at the end of the stage :meth:`gather` on *every* rank (a collective).
    """

    def __init__(self, *fields: str) -> None:
        super().__init__()
        self.fields = tuple(fields)
        self.samples = PredictionAccumulator(*fields)
        self.index = PredictionAccumulator("index")

    def reset(self) -> None:
        self.samples.reset()
        self.index.reset()

    @property
    def has_data(self) -> bool:
        return self.samples.has_data

    def update(self, samples: Mapping[str, torch.Tensor], index: torch.Tensor | None = None) -> None:
        """Add a batch's samples; ``index`` (B,): their ``aux_index`` (None when the batches carry none)."""
        self.samples.update(**samples)
        if index is not None:
            self.index.update(index=index.reshape(-1))

    def gather(self) -> tuple[dict[str, np.ndarray], int]:
        """``(arrays, rows)``: every rank's samples as numpy arrays, each sample once with its ``"index"`` when
        the batches carried one (in gathered order: rank 0's first), and the number of rows gathered before
        repeats were left out. The same on every rank; call it on all of them."""
        gathered = self.samples.compute()
        index = self.index.compute()["index"] if self.index.has_data else None  # collective too
        arrays = {key: value.cpu().numpy() for key, value in gathered.items()}
        rows = len(next(iter(arrays.values())))
        if index is not None:
            arrays = unique_samples(arrays, index.cpu().numpy())
        return arrays, rows


def batch_loss(samples: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The mean of a batch's per-sample ``loss`` (B,), weighted by ``weight`` (B,) where there is one."""
    loss, weight = samples["loss"], samples.get("weight")
    if weight is None:
        return loss.mean()
    return (loss * weight).sum() / weight.sum().clamp_min(1e-12)


def mean_loss(arrays: Mapping[str, np.ndarray]) -> float:
    """:func:`batch_loss` of gathered per-sample arrays (each sample once), in float64."""
    loss = np.asarray(arrays["loss"], dtype=np.float64)
    if "weight" not in arrays:
        return float(loss.mean()) if loss.size else float("nan")
    weight = np.asarray(arrays["weight"], dtype=np.float64)
    return float((loss * weight).sum() / max(weight.sum(), 1e-12))


def epoch_counts(trainer, device: torch.device | str, split: str) -> dict[str, int]:
    """What the data module's ``epoch_counts(split)`` reports, summed over ranks (a collective when it reports
    anything); ``{}`` without such a data module."""
    datamodule = getattr(trainer, "datamodule", None)
    if not callable(getattr(datamodule, "epoch_counts", None)):
        return {}
    counts = datamodule.epoch_counts(split)
    if not counts:
        return {}
    names = sorted(counts)
    values = torch.tensor([int(counts[n]) for n in names], dtype=torch.int64, device=device)
    values = trainer.strategy.reduce(values, reduce_op="sum")
    return {name: int(v) for name, v in zip(names, values.tolist())}


def log_epoch_counts(trainer, split: str, counts: Mapping[str, int], notes: Mapping[str, str] | None = None) -> None:
    """One warning (global rank 0) naming the non-zero ``counts`` of the split's epoch, summed over ranks and
    workers; ``notes`` says what a name counts (the data module's ``COUNT_NOTES``)."""
    counted = {k: v for k, v in counts.items() if v}
    if not counted or not trainer.is_global_zero:
        return
    notes = notes or {}
    text = ", ".join(f"{k}={v}" + (f" ({notes[k]})" if k in notes else "") for k, v in counted.items())
    stage = split if split == "test" else f"{split} epoch {trainer.current_epoch}"
    log.warning("%s, all ranks and workers: %s", stage, text)
