"""The best checkpoint under a stable name: ``checkpoints/best.ckpt`` beside the epoch-named one.

:class:`BestCheckpoint` is Lightning's ``ModelCheckpoint`` (``conf/callbacks/default.yaml``: ``model_checkpoint``)
that, each time it saves a new best (``epoch001-auc0.9755.ckpt``), also puts that file under ``best.ckpt``, so
``evaluate``/``export ckpt_path=<run>/checkpoints/best.ckpt`` work without looking up the epoch and score.

``best.ckpt`` is a **hard link** to the epoch-named file, created under a hidden temporary name in the same
directory and renamed onto ``best.ckpt`` (atomic: a reader sees the old best or the new one, never a half-written
file). A hard link costs no disk space, is an ordinary file to ``rsync``, ``scp``, ``tar`` and object stores (a
symlink is copied as a link, or dangles, by some of them), and stays valid when the epoch-named file is pruned
(``save_top_k``). Where the file system has no hard links (some FUSE and network mounts), the file is copied,
also atomically. Only global rank 0 writes; the other ranks wait at a barrier, as they do for the checkpoint.
On resume in the same run directory Lightning restores the best score, so ``best.ckpt`` changes only when a later
epoch beats it (and is made at the start if the run has a best but no ``best.ckpt``, e.g. a run begun before this
class); a run resumed from another run's checkpoint starts its own ``best.ckpt`` at its first epoch. The state is
stored under ``ModelCheckpoint``'s key, so checkpoints written before this class resume with their best score.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint

from physics_tf.data.atomic import atomic_path

__all__ = ["BestCheckpoint", "put_under_stable_name"]


def put_under_stable_name(source: str | os.PathLike, target: str | os.PathLike) -> str:
    """Make ``target`` hold the file ``source`` atomically: a hard link, else a copy. Returns ``"link"`` or
    ``"copy"``."""
    src, dst = Path(source), Path(target)
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
            how = "link"
        except OSError:  # EPERM, EXDEV, ENOTSUP, EMLINK: no hard links here
            shutil.copyfile(src, tmp)
            how = "copy"
    return how


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also keeps the current best checkpoint as ``<dirpath>/<best_filename>.ckpt``.

    Parameters
    ----------
    best_filename
        The stable name, without ``.ckpt`` (default ``best``).
    **kwargs
        Those of ``ModelCheckpoint`` (``monitor``, ``mode``, ``filename``, ``save_top_k``, ...).
    """

    def __init__(self, *args: Any, best_filename: str = "best", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.best_filename = best_filename

    @property
    def stable_best_path(self) -> str:
        """Where the best checkpoint is kept under its stable name."""
        return os.path.join(str(self.dirpath), self.best_filename + self.FILE_EXTENSION)

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key ("ModelCheckpoint{'monitor': ..., 'mode': ...}"): the same state, in old and new
        # checkpoints alike
        return "ModelCheckpoint" + super().state_key[len(type(self).__qualname__):]

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        best, stable = self.best_model_path, self.stable_best_path
        if (trainer.is_global_zero and best and _is_local_file_protocol(best) and os.path.isfile(best)
                and not os.path.exists(stable) and os.path.samefile(os.path.dirname(best), str(self.dirpath))):
            put_under_stable_name(best, stable)  # resumed in its own directory, which has no best.ckpt yet

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if filepath != self.best_model_path or filepath == self.stable_best_path:
            return  # not a new best (a k-th best of save_top_k > 1, or a checkpoint saved on an exception)
        if trainer.is_global_zero:
            if _is_local_file_protocol(filepath):
                put_under_stable_name(filepath, self.stable_best_path)
            else:  # a remote dirpath (fsspec): a copy
                self._fs.copy(filepath, self.stable_best_path)
        trainer.strategy.barrier("BestCheckpoint")
