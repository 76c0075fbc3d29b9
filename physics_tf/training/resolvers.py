"""OmegaConf resolvers of the configs, registered before Hydra composes (light: no Lightning import, so a config
error is reported before any heavy import).

* ``${run_stamp:%Y-%m-%d_%H-%M-%S}`` (used by ``conf/hydra/default.yaml``) names a run directory. Under SLURM it is
  ``slurm-<job id>`` (``slurm-<array job>_<task>`` in an array): every ``srun`` rank evaluates the Hydra config
  itself, so a time stamp could differ between ranks, and a requeued job must find its own directory (and the
  ``hpc_ckpt_*.ckpt`` Lightning wrote there) again. Elsewhere it is the time. The resolver is cached, so a Hydra
  multirun submitted through submitit keeps the submitting process's value in every job.
* ``${slurm_gpus:${trainer.accelerator},${trainer.devices}}`` / ``${slurm_cpus:${data.num_workers}}`` size the
  submitit SLURM request from the trainer and data configs (``conf/hydra/launcher/slurm.yaml``).
* ``${physics_tf_home:}`` (``conf/paths/default.yaml``: ``paths.root_dir``, under which ``logs/`` and ``data/``
  go) is ``$PHYSICS_TF_HOME`` if set, else the current directory, as an absolute path; the same for a source
  checkout, an editable install and a wheel.
* ``${stored_experiment:evaluate}`` (``conf/evaluate.yaml``, ``conf/export.yaml``: ``experiment_name``) is the
  ``experiment_name`` stored in the checkpoint ``ckpt_path`` names, so an evaluation of a ``jets_demo`` checkpoint
  is written under ``logs/evaluate/jets_demo/<time>``; the argument when there is none (no such file, a checkpoint
  of another program, ``ckpt_path`` not given yet: the run then stops with its own one-line error).
"""

from __future__ import annotations

import datetime
import functools
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

__all__ = ["register_resolvers", "run_stamp", "slurm_job_tag", "slurm_gpus", "slurm_cpus", "physics_tf_home",
           "peek_checkpoint", "stored_experiment"]

CONFIG_KEY = "physics_tf_config"  # where a checkpoint holds its run config (physics_tf.training.callbacks)

_RESOLVERS_REGISTERED = False


def slurm_job_tag(environ: dict[str, str] | None = None) -> str | None:
    """``slurm-<id>`` for the SLURM job this process belongs to, None outside SLURM."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
    return None


def run_stamp(pattern: str = "%Y-%m-%d_%H-%M-%S") -> str:
    return slurm_job_tag() or datetime.datetime.now().strftime(pattern)


def slurm_gpus(accelerator: Any, devices: Any) -> int | None:
    """GPUs per node to request: the trainer's devices on a GPU trainer, none on a CPU one."""
    if str(accelerator) in ("gpu", "cuda"):
        return int(devices)
    return None


def slurm_cpus(num_workers: Any = 0) -> int:
    """CPUs per task: one for the training process plus one per DataLoader worker."""
    return int(num_workers or 0) + 1


def physics_tf_home() -> str:
    """Where ``logs/`` and ``data/`` go: ``$PHYSICS_TF_HOME``, else the current directory (absolute)."""
    return os.path.abspath(os.path.expanduser(os.environ.get("PHYSICS_TF_HOME") or os.curdir))


def peek_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's top-level entries, cheaply: ``torch.load(weights_only=True, mmap=True)`` maps the tensors
    instead of reading them (a file in torch's old, non-zip format is read in full). Raises what ``torch.load``
    raises for a file that does not load (truncated, not a checkpoint)."""
    import torch  # here: this module is imported before Hydra composes, and must stay light

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def stored_experiment(default: str, *, _root_: Any = None) -> str:
    """The ``experiment_name`` stored in the checkpoint at the config's ``ckpt_path``, else ``default``."""
    if _root_ is None or OmegaConf.is_missing(_root_, "ckpt_path") or not _root_.get("ckpt_path"):
        return default
    path = Path(str(_root_.ckpt_path))
    if not path.is_file():
        return default
    stat = path.stat()
    return _experiment_in(str(path.resolve()), stat.st_mtime_ns, stat.st_size) or default


@functools.lru_cache(maxsize=8)
def _experiment_in(path: str, mtime_ns: int, size: int) -> str | None:
    """The experiment name stored in a checkpoint (cached per file version: Hydra resolves the run directory, the
    launcher's job name and the W&B group from it, each on its own)."""
    try:
        checkpoint = peek_checkpoint(path)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is reported by the run itself, in one line
        return None
    config = checkpoint.get(CONFIG_KEY) if isinstance(checkpoint, dict) else None
    name = config.get("experiment_name") if isinstance(config, dict) else None
    return str(name) if name else None


def register_resolvers() -> None:
    """Register the resolvers above with OmegaConf (idempotent; called before Hydra composes a config)."""
    global _RESOLVERS_REGISTERED
    if _RESOLVERS_REGISTERED:
        return
    OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("slurm_gpus", slurm_gpus, replace=True)
    OmegaConf.register_new_resolver("slurm_cpus", slurm_cpus, replace=True)
    OmegaConf.register_new_resolver("physics_tf_home", physics_tf_home, replace=True)
    OmegaConf.register_new_resolver("stored_experiment", stored_experiment, replace=True)
    _RESOLVERS_REGISTERED = True
