"""Stateful epoch loaders and the streaming data-module base shared by every analysis.

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
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, RandomSampler

from physics_tf.data.errors import DataError
from physics_tf.data.streaming import expand_files

__all__ = ["EpochDataLoader", "EpochMapDataLoader", "StreamingDataModule", "trainer_epoch"]

log = logging.getLogger(__name__)


class _ResumableEpochLoader(DataLoader):
    """What both epoch loaders share: the epoch from ``epoch_fn()`` at every ``iter()``, and a resumable position.

    ``state_dict()`` is ``{"epoch", "batches"}``: the epoch of the current iterator and how many batches it has
    handed out. After ``load_state_dict()`` the next ``iter()`` of that same epoch skips that many batches (once).
    """

    epoch_fn: Callable[[], int]

    def _init_position(self) -> None:
        self._position = {"epoch": -1, "batches": 0}
        self._skip: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        return dict(self._position)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._skip = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}

    def _start_epoch(self, epoch: int) -> None:
        """Called at ``iter()`` before the base DataLoader builds its iterator."""

    def __iter__(self):
        epoch = int(self.epoch_fn())
        self._start_epoch(epoch)
        skip, self._skip = self._skip, None
        skip_n = skip["batches"] if skip is not None and skip["epoch"] == epoch else 0
        self._position = {"epoch": epoch, "batches": 0}
        return self._counted(super().__iter__(), skip_n)

    def _counted(self, it, skip_n: int):
        for _ in range(skip_n):
            try:
                next(it)
            except StopIteration:
                return
            self._position["batches"] += 1
        if skip_n:
            log.info("resumed mid-epoch %d: skipped the %d batches trained before the interruption",
                     self._position["epoch"], skip_n)
        for batch in it:
            self._position["batches"] += 1
            yield batch


class EpochDataLoader(_ResumableEpochLoader):
    """DataLoader (``batch_size=None``) of a streamed dataset: sets its epoch from ``epoch_fn()`` on every ``iter()``;
    stateful for a mid-epoch resume (see the module docstring)."""

    def __init__(self, dataset, epoch_fn: Callable[[], int], **kwargs):
        # a generator of its own: creating an iterator then draws no number from the global torch RNG, so the
        # dropout draws of a resumed run continue exactly as in a run that never stopped
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(dataset, batch_size=None, **kwargs)
        self.epoch_fn = epoch_fn
        self._init_position()

    def _start_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


class EpochMapDataLoader(_ResumableEpochLoader):
    """DataLoader of a map-style dataset whose shuffle is fixed by (``seed``, epoch); stateful for a mid-epoch resume.

    At every ``iter()`` the loader's own generator is re-seeded from (``seed``, epoch): the shuffle permutation and
    the workers' base seed depend on the epoch only, not on how many epochs this process has run (a resumed run
    builds a fresh loader), and nothing is drawn from the global torch RNG. A dataset with ``set_epoch`` is told
    the epoch too. Under DDP Lightning swaps in a ``DistributedSampler`` (permutation from seed + epoch, also
    fixed by the epoch).
    """

    def __init__(self, dataset, epoch_fn: Callable[[], int], seed: int = 0, **kwargs):
        kwargs.setdefault("generator", torch.Generator())
        self._shuffle_generator = torch.Generator()
        if kwargs.pop("shuffle", False) and kwargs.get("sampler") is None:
            # the permutation from a generator of its own: the loader's generator also gives the workers' base seed,
            # drawn per iterator, but only once by persistent workers, which would shift the permutation
            kwargs["sampler"] = RandomSampler(dataset, generator=self._shuffle_generator)
        super().__init__(dataset, **kwargs)
        self.epoch_fn, self.seed = epoch_fn, int(seed)
        self._init_position()

    def _start_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        seed = (self.seed & 0x7FFFFFFF) * 1_000_003 + epoch  # distinct for every (seed < 2**31, epoch)
        self._shuffle_generator.manual_seed(seed)
        self.generator.manual_seed(seed)


def trainer_epoch(trainer: Any, fallback: int = 0) -> int:
    """The epoch a data loader should serve: Lightning's sampler epoch when a trainer is attached.

    Equals ``current_epoch`` during training, and is already right when a resumed run builds its first train
    iterator (before ``current_epoch`` catches up with the restored progress).
    """
    if trainer is None:
        return fallback
    progress = getattr(getattr(trainer, "fit_loop", None), "epoch_progress", None)
    return int(progress.current.processed) if progress is not None else int(trainer.current_epoch)


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
