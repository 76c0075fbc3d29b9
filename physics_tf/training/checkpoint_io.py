"""Writing Lightning checkpoints atomically: a crash or a full disk never leaves a half-written ``last.ckpt``.

Lightning's own ``TorchCheckpointIO`` writes a local file through an fsspec transaction whose temporary file lies
in the system temp directory and is then moved (copied, across file systems) onto the checkpoint: a full disk
during the copy leaves a truncated checkpoint, and the error names a temp file outside the run.
:class:`AtomicCheckpointIO` instead serialises the checkpoint in memory, writes it to a temporary file in the
checkpoint's own directory (:func:`physics_tf.data.atomic.atomic_path`), fsyncs it and renames it onto the target,
then fsyncs the directory. An ``OSError`` while writing names the checkpoint file.

A process killed inside a write (``kill -9``, the OOM killer, a node failure) leaves the target untouched and at
most its hidden temporary file ``.<name>.<random>.tmp.ckpt``. ``ckpt_path=last`` ignores such files
(:func:`physics_tf.training.checkpoints.resolve_ckpt_path` takes no hidden file), and the first checkpoint the
next run writes into that directory removes them (:func:`remove_stale_temporaries`, one warning naming them).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

from physics_tf.data.atomic import atomic_path

__all__ = ["AtomicCheckpointIO", "save_checkpoint_atomically", "remove_stale_temporaries", "MidwayHook"]

log = logging.getLogger("physics_tf")

# (temporary file, final path, bytes on disk so far, total bytes): called once half of a checkpoint is written
MidwayHook = Callable[[Path, Path, int, int], None]

# the temporary files of physics_tf.data.atomic.atomic_path for a checkpoint: .<name>.<mkstemp's 8>.tmp.ckpt
_TEMPORARY = re.compile(r"^\..+\.ckpt\.[A-Za-z0-9_]{8}\.tmp\.ckpt$")


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary checkpoint files an interrupted write left in ``directory``; returns them.

    Only names :func:`physics_tf.data.atomic.atomic_path` gives a checkpoint's temporary file are touched. Call it
    only where no other process writes checkpoints into ``directory`` at the same time (a run's own directory).
    """
    stale = [p for p in sorted(Path(directory).glob(".*.tmp.ckpt")) if _TEMPORARY.match(p.name) and p.is_file()]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if stale:
        log.warning("removed %d temporary checkpoint file(s) left by an interrupted write: %s", len(stale),
                    ", ".join(str(p) for p in stale))
    return stale


def save_checkpoint_atomically(checkpoint: dict[str, Any], path: str | os.PathLike,
                               midway: MidwayHook | None = None) -> None:
    """``torch.save(checkpoint, path)`` through a same-directory temporary file, fsync and rename.

    An existing ``path`` keeps its old content unless the new one was written completely; no temporary file is
    left behind. An ``OSError`` (e.g. ENOSPC, EDQUOT) is re-raised with ``path`` as its file name. ``midway``
    (fault drills, :class:`physics_tf.training.callbacks.FaultInjection`) is called once the first half of the
    bytes is flushed and fsynced to the temporary file.
    """
    final = Path(path)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)  # before touching the disk: an unpicklable entry fails without writing
    try:
        with atomic_path(final) as tmp:
            with open(tmp, "wb") as f:
                data = buffer.getbuffer()
                if midway is not None:
                    half = len(data) // 2
                    f.write(data[:half])
                    f.flush()
                    os.fsync(f.fileno())
                    midway(tmp, final, half, len(data))
                    data = data[half:]
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        # the rename itself reaches the disk only with the directory's entry
        with contextlib.suppress(OSError):
            fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as err:
        if err.filename == str(final):
            raise
        raise OSError(err.errno, err.strerror or str(err), str(final)) from None


class AtomicCheckpointIO(CheckpointIO):
    """Lightning checkpoint IO whose saves to local paths are atomic (:func:`save_checkpoint_atomically`).

    Wraps the strategy's IO: ``trainer.strategy.checkpoint_io = AtomicCheckpointIO(trainer.strategy.checkpoint_io)``.
    Only the plain ``TorchCheckpointIO`` is replaced on saving, and only for local files; another IO (a remote
    file system, an ``AsyncCheckpointIO`` plugin from the trainer config) saves as it does. Loading and removing go
    to the wrapped IO unchanged. The first save into a directory first removes the temporary files an earlier,
    killed write left there (:func:`remove_stale_temporaries`). ``midway``: see :func:`save_checkpoint_atomically`.
    """

    def __init__(self, inner: CheckpointIO) -> None:
        self.inner = inner
        self.midway: MidwayHook | None = None
        self._cleaned: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if type(self.inner) is not TorchCheckpointIO or not _is_local_file_protocol(path):
            self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        if storage_options is not None:  # as TorchCheckpointIO
            raise TypeError("Trainer.save_checkpoint(..., storage_options=...) is not supported by AtomicCheckpointIO")
        directory = Path(path).parent
        if directory not in self._cleaned:
            # a process's own temporary files go with its exceptions (atomic_path); these are a killed one's
            remove_stale_temporaries(directory)
            self._cleaned.add(directory)
        save_checkpoint_atomically(checkpoint, path, midway=self.midway)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        extra = {} if map_location is None else {"map_location": map_location}
        return self.inner.load_checkpoint(path, weights_only=weights_only, **extra)

    def remove_checkpoint(self, path) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()
