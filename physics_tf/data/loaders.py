"""The streaming data-module base shared by every analysis (:class:`StreamingDataModule`); the stateful epoch loaders
it builds live in :mod:`physics_tf.data.streaming` (importable without Lightning) and are re-exported here.

Epochs: :class:`EpochDataLoader` copies, before every ``iter()``, the trainer's epoch (or the epoch given to
:meth:`StreamingDataModule.set_epoch` when no trainer is attached) into the dataset's shared epoch value. That
happens in the main process before workers start (or, with persistent workers, before they are told to resume),
so it works for ``num_workers`` 0 and > 0.

Mid-epoch resume: the loaders are stateful for Lightning (``state_dict`` / ``load_state_dict``; Lightning stores
the train loader's state in every checkpoint). The state is (epoch, batches handed out in that epoch); since an
epoch's batch order is fixed by (seed, epoch), a resumed loader replays the same epoch and drops the batches the
interrupted run had already trained on, so the run continues with exactly the batches an uninterrupted run sees
next. Dropping means reading them (the datasets cannot seek); nothing draws from the global RNG meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl

from physics_tf.data.errors import DataError
from physics_tf.data.streaming import EpochDataLoader, EpochMapDataLoader, expand_files, trainer_epoch

__all__ = ["EpochDataLoader", "EpochMapDataLoader", "StreamingDataModule", "trainer_epoch"]

log = logging.getLogger(__name__)


class StreamingDataModule(pl.LightningDataModule):
    """What every physics_tf data module of streamed, sharded datasets shares.

    Subclasses fill ``self.datasets[split]`` (datasets with ``set_epoch``) in :meth:`setup` and set ``files``,
    ``num_workers`` and ``pin_memory``; this class finds the (rank, world size) to shard by, keeps the data epoch
    in step with Lightning (also when a run resumes), and builds the :class:`EpochDataLoader` of each split.
    """

    files: Mapping[str, Any]
    num_workers: int = 0
    pin_memory: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, Any] = {}
        self._epoch = 0

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _current_epoch(self) -> int:
        return trainer_epoch(getattr(self, "trainer", None), self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used when no trainer is attached (plain loops)."""
        self._epoch = int(epoch)

    def _build_dataset(self, split: str, files: list[str], rank: int, world: int) -> Any:
        """The split's dataset for ``files`` (globs expanded), sharded for ``rank`` of ``world``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Expand the globs and build (or re-shard) the datasets of the splits ``stage`` needs."""
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",),
                  None: ("train", "val", "test")}.get(stage, ("train", "val", "test"))
        rank, world = self._rank_world()
        for split in splits:
            patterns = self.files.get(split) or []
            if not patterns:
                continue
            if split in self.datasets:
                self.datasets[split].set_distributed(rank, world)
                continue
            files = expand_files(patterns, split)
            self.datasets[split] = dataset = self._build_dataset(split, files, rank, world)
            log.info("%s: %d files, %d entries, %d batches per rank (rank %d of %d)", split, len(files),
                     dataset.num_entries, len(dataset), rank, world)

    def _loader(self, split: str) -> EpochDataLoader:
        if split not in self.datasets:
            if not self.files.get(split):
                raise DataError("<config>", f"data.files.{split} is not set; cannot build the {split} loader",
                                f"files.{split}")
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return EpochDataLoader(self.datasets[split], self._current_epoch, num_workers=self.num_workers,
                               persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory)

    def train_dataloader(self) -> EpochDataLoader:
        return self._loader("train")

    def val_dataloader(self) -> EpochDataLoader:
        return self._loader("val")

    def test_dataloader(self) -> EpochDataLoader:
        return self._loader("test")
