"""Finding, reading and checking checkpoints: ``ckpt_path=last``, the run config stored in a checkpoint, and a
one-line error for a checkpoint of another network.

``checkpoint["physics_tf_config"]`` (:data:`CONFIG_KEY`, written by
:class:`physics_tf.training.callbacks.RunStateInCheckpoint`) holds the resolved run config, so ``evaluate`` and
``export`` can rebuild the network and data description from the checkpoint alone. Every checkpoint is read
through :func:`load_checkpoint`, which upgrades one written before the move to one wing per analysis.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from physics_tf.training.callbacks import CONFIG_KEY
from physics_tf.training.legacy import upgrade_checkpoint

log = logging.getLogger("physics_tf")

__all__ = ["CheckpointError", "load_checkpoint", "load_run_config", "resolve_ckpt_path", "check_checkpoint_matches"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run (another model, not a physics_tf checkpoint, unreadable)."""


def _hpc_checkpoints(run_dir: Path) -> set[Path]:
    """Lightning's pre-emption checkpoints (hpc_ckpt_<n>.ckpt, written by its SLURM SIGUSR1 handler)."""
    return set(Path(run_dir).glob("hpc_ckpt_*.ckpt"))


def load_checkpoint(path: str | Path, net: nn.Module | None = None) -> dict[str, Any]:
    """The checkpoint at ``path`` on the CPU, upgraded to the current code if it was written before the move to
    one wing per analysis (:func:`physics_tf.training.legacy.upgrade_checkpoint`; ``net``: the current network,
    when built, so its parameter order need not be rebuilt from the stored config)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is one line naming the file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: cannot read the checkpoint ({first})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (a {type(checkpoint).__name__}, not a dict)")
    try:
        return upgrade_checkpoint(checkpoint, net=net)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _last_checkpoints(run_dir: Path) -> list[Path]:
    """A run directory's resumable checkpoints: checkpoints/last.ckpt and Lightning's hpc_ckpt_<n>.ckpt."""
    return [p for p in [run_dir / "checkpoints" / "last.ckpt", *_hpc_checkpoints(run_dir)] if p.is_file()]


def resolve_ckpt_path(ckpt_path: Any, output_dir: Path) -> str | None:
    """``ckpt_path=last`` → the newest resumable checkpoint of this run directory, else of the newest sibling run.

    The run directory's own checkpoints come first (a requeued SLURM job, or ``hydra.run.dir=<old run>``); a fresh
    single run then looks at the other runs of the same experiment (``logs/<task>/<experiment>/*/``), but a sweep
    point never takes another point's checkpoint. Nothing found: a warning, and training starts from scratch.
    A path is returned as is (a missing file is one clear line).
    """
    if ckpt_path in (None, "", "null"):
        return None  # under SLURM, Lightning itself resumes from this run directory's hpc_ckpt_<n>.ckpt
    pre_empted = _hpc_checkpoints(output_dir)
    if pre_empted and os.environ.get("SLURM_JOB_ID"):
        # a requeued job: continue from where the pre-empted instance stopped, not from the original ckpt_path
        newest = max(pre_empted, key=lambda p: p.stat().st_mtime)
        log.info("requeued SLURM job: resuming from %s instead of ckpt_path=%s", newest, ckpt_path)
        return str(newest)
    if str(ckpt_path) != "last":
        path = Path(str(ckpt_path))
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        return str(path)
    candidates = _last_checkpoints(output_dir)
    if not candidates and not output_dir.parent.name.startswith("multirun"):
        candidates = [p for run in output_dir.parent.iterdir() if run.is_dir() and run != output_dir
                      for p in _last_checkpoints(run)]
    if not candidates:
        log.warning("ckpt_path=last: no last.ckpt or hpc_ckpt_*.ckpt in %s or its sibling runs; starting from scratch",
                    output_dir)
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    log.info("ckpt_path=last: resuming from %s", newest)
    return str(newest)


def check_checkpoint_matches(ckpt_path: str | Path, task: L.LightningModule) -> None:
    """One clear line when a checkpoint holds another network than the configured one (names, shapes)."""
    checkpoint = load_checkpoint(Path(ckpt_path), net=getattr(task, "net", None))
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{ckpt_path}: not a Lightning checkpoint (no state_dict)")
    ours = task.state_dict()
    stored_model = (checkpoint.get(CONFIG_KEY) or {}).get("model", {}).get("_target_", "?")
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    shapes = [k for k in ours if k in state and tuple(state[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or shapes:
        detail = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                  else f"{shapes[0]} has shape {tuple(state[shapes[0]].shape)}, not {tuple(ours[shapes[0]].shape)}")
        raise CheckpointError(
            f"{ckpt_path}: the checkpoint holds another network ({stored_model}) than this run's "
            f"{type(getattr(task, 'net', task)).__name__} ({detail}); pass the model/experiment it was trained with"
        )


def load_run_config(ckpt_path: str | Path) -> dict[str, Any]:
    """The resolved training config stored in a physics_tf checkpoint."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    checkpoint = load_checkpoint(path)
    if CONFIG_KEY not in checkpoint:
        raise ValueError(f"{path}: not a physics_tf checkpoint (no '{CONFIG_KEY}' entry)")
    return checkpoint[CONFIG_KEY]


