"""Streaming pieces shared by every analysis: files from globs, entry ranges (pieces) of files, the number of batches
each DDP rank yields per epoch (equal on every rank, so collectives never hang; see :mod:`physics_tf.jets.dataset`
for how a streamed dataset deals pieces over rank × worker), and the stateful epoch loaders (epoch and mid-epoch
resume: :mod:`physics_tf.data.loaders`), which need torch only, not Lightning."""

from __future__ import annotations

import glob
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from physics_tf.data.errors import DataError
from physics_tf.data.manifest import check_directory

__all__ = ["Piece", "expand_files", "batches_per_rank", "worker_slot", "prefetched", "EpochDataLoader",
           "EpochMapDataLoader", "trainer_epoch"]

log = logging.getLogger("physics_tf.data.loaders")  # the loaders' messages keep the name they always had


@dataclass(frozen=True)
class Piece:
    """A contiguous entry range of one file."""

    file: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def expand_files(patterns: Sequence[str], split: str = "") -> list[str]:
    """Sorted, de-duplicated files matching the glob ``patterns`` (each pattern must match something).

    A directory of the matched files that holds a generator's ``manifest.json`` must be complete and hold exactly
    the files it lists (:func:`physics_tf.data.manifest.check_directory`), else a one-line DataError.
    """
    if isinstance(patterns, (str, os.PathLike)):  # one pattern given as a plain string
        patterns = [patterns]
    files: list[str] = []
    for pat in patterns:
        hits = sorted(glob.glob(os.path.expanduser(str(pat)), recursive=True))
        if not hits:
            hint = ("no file matches this pattern (generated data: run `python pipelines/generate.py` first; "
                    "your own files: set data.files.train/val/test)")
            raise DataError(pat, hint, f"files.{split}" if split else "files")
        files.extend(h for h in hits if h not in files)
    for directory in dict.fromkeys(os.path.dirname(os.path.abspath(f)) for f in files):
        check_directory(directory)
    return files


def batches_per_rank(n_entries: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Number of batches every rank yields per epoch (see module docstring)."""
    if drop_last:
        return n_entries // (world_size * batch_size)
    return math.ceil(math.ceil(n_entries / world_size) / batch_size)


def _split_evenly(total: int, parts: int, i: int) -> int:
    return total // parts + (i < total % parts)


def worker_slot() -> tuple[int, int]:
    """(worker id, number of workers) of the DataLoader worker this runs in; (0, 1) in the main process. A worker w
    of W that takes items w, w + W, … yields them in the order the DataLoader's round robin collects them."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def prefetched(items: Iterator, depth: int) -> Iterator:
    """``items`` produced by a background thread up to ``depth`` ahead (0: in this thread), in order; an exception
    of the producer is raised here at its place. Reading (uproot's decompression) and the numpy feature arithmetic
    release the GIL, so they overlap the consumer's work. Closing this generator stops and joins the thread."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((end, exc))
        finally:
            close = getattr(items, "close", None)  # a generator: run its cleanup (open files) here
            if close is not None:
                close()

    thread = threading.Thread(target=run, name="physics_tf-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


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
