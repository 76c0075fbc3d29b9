"""Streaming pieces shared by every analysis: files from globs, entry ranges (pieces) of files, and the number
of batches each DDP rank yields per epoch (equal on every rank, so collectives never hang; see
:mod:`physics_tf.jets.dataset` for how a streamed dataset deals pieces over rank × worker)."""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from physics_tf.data.errors import DataError
from physics_tf.data.manifest import check_directory

__all__ = ["Piece", "expand_files", "batches_per_rank", "worker_slot"]


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
