"""Writing Lightning checkpoints atomically: a crash or a full disk never leaves a half-written ``last.ckpt``.

Lightning's own ``TorchCheckpointIO`` writes a local file through an fsspec transaction whose temporary file lies
in the system temp directory and is then moved (copied, across file systems) onto the checkpoint: a full disk
during the copy leaves a truncated checkpoint, and the error names a temp file outside the run.
:class:`AtomicCheckpointIO` instead serialises the checkpoint in memory, writes it to a temporary file in the
checkpoint's own directory (:func:`physics_tf.data.atomic.atomic_path`), fsyncs it and renames it onto the target,
then fsyncs the directory. An ``OSError`` while writing names the checkpoint file.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

from physics_tf.data.atomic import atomic_path

__all__ = ["AtomicCheckpointIO", "save_checkpoint_atomically"]


def save_checkpoint_atomically(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save(checkpoint, path)`` through a same-directory temporary file, fsync and rename.

    An existing ``path`` keeps its old content unless the new one was written completely; no temporary file is
    left behind. An ``OSError`` (e.g. ENOSPC, EDQUOT) is re-raised with ``path`` as its file name.
    """
    final = Path(path)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)  # before touching the disk: an unpicklable entry fails without writing
    try:
        with atomic_path(final) as tmp:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
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
    to the wrapped IO unchanged.
    """

    def __init__(self, inner: CheckpointIO) -> None:
        self.inner = inner

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if type(self.inner) is not TorchCheckpointIO or not _is_local_file_protocol(path):
            self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        if storage_options is not None:  # as TorchCheckpointIO
            raise TypeError("Trainer.save_checkpoint(..., storage_options=...) is not supported by AtomicCheckpointIO")
        save_checkpoint_atomically(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        extra = {} if map_location is None else {"map_location": map_location}
        return self.inner.load_checkpoint(path, weights_only=weights_only, **extra)

    def remove_checkpoint(self, path) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()
