"""Finding, reading and checking checkpoints: ``ckpt_path=last`` (the run's own, else the sibling run with the
most epochs), the run config stored in a checkpoint, and a one-line error for a checkpoint of another network.

``checkpoint["physics_tf_config"]`` (:data:`CONFIG_KEY`, written by
:class:`physics_tf.training.callbacks.RunStateInCheckpoint`) holds the resolved run config, so ``evaluate`` and
``export`` can rebuild the network and data description from the checkpoint alone. Every checkpoint is read
through :func:`load_checkpoint`, which upgrades one written before the move to one wing per analysis.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from physics_tf.training.callbacks import CONFIG_KEY
from physics_tf.training.legacy import upgrade_checkpoint
from physics_tf.training.resolvers import peek_checkpoint

log = logging.getLogger("physics_tf")

__all__ = ["CheckpointError", "NET_PREFIX", "load_checkpoint", "network_state", "load_run_config", "resolve_ckpt_path", "check_checkpoint_matches"]


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


NET_PREFIX = "net."  # the tasks hold the network as ``self.net``


def network_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network's state dict inside a (loaded) Lightning checkpoint of a task: its ``net.*`` entries, unprefixed
    (empty when it has none)."""
    state = checkpoint.get("state_dict") or {}
    return {k[len(NET_PREFIX):]: v for k, v in state.items() if k.startswith(NET_PREFIX)}


def _last_checkpoints(run_dir: Path) -> list[Path]:
    """A run directory's resumable checkpoints: checkpoints/*.ckpt (last.ckpt, the best epochs) and Lightning's
    hpc_ckpt_<n>.ckpt; not the hidden temporary files of a write that never finished."""
    found = [*Path(run_dir).glob("checkpoints/*.ckpt"), *_hpc_checkpoints(run_dir)]
    return [p for p in found if p.is_file() and not p.name.startswith(".")]


def _peek(path: Path) -> dict[str, Any] | None:
    """The checkpoint's top-level entries (tensors memory-mapped, not read), or None with a one-line warning naming
    a file that does not load (truncated after a crash or a full disk, not a checkpoint)."""
    try:
        checkpoint = peek_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means: not this one
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        log.warning("ckpt_path=last: skipping %s, it cannot be read (%s)", path, first)
        return None
    return checkpoint if isinstance(checkpoint, dict) else {}


def _newest_readable(candidates: list[Path], same: Mapping[str, Any] | None = None) -> tuple[Path, int] | None:
    """The newest candidate that loads, with its ``epoch`` (-1 when it has none); with ``same`` (dotted config key
    → value), only one whose stored run config agrees on those keys."""
    # newest first; at the same time stamp (a coarse file system) last.ckpt, written after the epoch's best
    for path in sorted(candidates, key=_age, reverse=True):
        checkpoint = _peek(path)
        if checkpoint is None:
            continue
        differs = _differs(checkpoint.get(CONFIG_KEY), same or {})
        if differs:
            log.info("ckpt_path=last: not taking %s, its run had another %s", path, differs)
            return None  # the run's other checkpoints share its config
        epoch = checkpoint.get("epoch")
        return path, int(epoch) if isinstance(epoch, int) else -1
    return None


def _differs(stored: Any, same: Mapping[str, Any]) -> str | None:
    """The first dotted key of ``same`` on which the stored run config disagrees (a config without the key: no)."""
    for key, want in same.items():
        node: Any = stored
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None and want is not None and node != want:
            return key
    return None


def _age(path: Path) -> tuple[float, bool]:
    return path.stat().st_mtime, path.name == "last.ckpt"


def _furthest_sibling(output_dir: Path, same: Mapping[str, Any] | None) -> tuple[Path, int] | None:
    """Of the other runs of the same experiment, the newest readable checkpoint of the run that trained the most
    epochs, at equal epochs of the newest run: a full run is continued rather than a later one-epoch smoke run."""
    found = [hit for run in sorted(output_dir.parent.iterdir()) if run.is_dir() and run != output_dir
             if (hit := _newest_readable(_last_checkpoints(run), same)) is not None]
    return max(found, key=lambda hit: (hit[1], *_age(hit[0])), default=None)


def resolve_ckpt_path(ckpt_path: Any, output_dir: Path, same: Mapping[str, Any] | None = None) -> str | None:
    """``ckpt_path=last`` → the newest readable checkpoint of this run directory, else of the sibling run that
    trained the most epochs (at equal epochs, the newest).

    The run directory's own checkpoints come first (a requeued SLURM job, or ``hydra.run.dir=<old run>``); a fresh
    single run then looks at the other runs of the same experiment (``logs/<task>/<experiment>/*/``): the one with
    the most epochs (the ``epoch`` stored in its newest checkpoint, read cheaply), so a newer one-epoch smoke run
    does not win over the full run; at equal epochs the newest. A sweep point never takes another point's
    checkpoint, nor a run whose stored config disagrees with ``same`` (dotted key → this run's value; the
    pipelines pass the model's and the data's ``_target_`` and the data files: a run on other files or with
    another network is not the one to continue). Nothing found: a warning, and training starts from scratch. A candidate that does not load (a
    truncated last.ckpt after a crash or a full disk) is skipped with a warning naming it, so an intact epoch
    checkpoint beside it is used. A path is returned as is (a missing file is one clear line).
    """
    if ckpt_path in (None, "", "null"):
        return None  # under SLURM, Lightning itself resumes from this run directory's hpc_ckpt_<n>.ckpt
    pre_empted = _newest_readable(list(_hpc_checkpoints(output_dir))) if os.environ.get("SLURM_JOB_ID") else None
    if pre_empted is not None:
        # a requeued job: continue from where the pre-empted instance stopped, not from the original ckpt_path
        log.info("requeued SLURM job: resuming from %s instead of ckpt_path=%s", pre_empted[0], ckpt_path)
        return str(pre_empted[0])
    if str(ckpt_path) != "last":
        path = Path(str(ckpt_path))
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        return str(path)
    found = _newest_readable(_last_checkpoints(output_dir))
    if found is None and not output_dir.parent.name.startswith("multirun") and output_dir.parent.is_dir():
        found = _furthest_sibling(output_dir, same)
        if found is not None:
            log.info("ckpt_path=last: resuming from %s (epoch %d), of the runs in %s the one with the most epochs "
                     "(at equal epochs the newest)", found[0], found[1], output_dir.parent)
            return str(found[0])
    if found is None:
        log.warning("ckpt_path=last: no readable checkpoints/*.ckpt or hpc_ckpt_*.ckpt in %s or its sibling runs; "
                    "starting from scratch", output_dir)
        return None
    log.info("ckpt_path=last: resuming from %s", found[0])
    return str(found[0])


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
    if not isinstance(checkpoint.get(CONFIG_KEY), dict):
        raise CheckpointError(f"{path}: not a physics_tf checkpoint (no '{CONFIG_KEY}' entry: it was not written "
                              "by pipelines/train.py)")
    return checkpoint[CONFIG_KEY]


