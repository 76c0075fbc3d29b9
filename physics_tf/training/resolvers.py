"""OmegaConf resolvers of the configs, registered before Hydra composes (light: no Lightning import, so a config
error is reported before any heavy import).

* ``${run_stamp:%Y-%m-%d_%H-%M-%S}`` (used by ``conf/hydra/default.yaml``) names a run directory. Under SLURM it is
  ``slurm-<job id>`` (``slurm-<array job>_<task>`` in an array): every ``srun`` rank evaluates the Hydra config
  itself, so a time stamp could differ between ranks, and a requeued job must find its own directory (and the
  ``hpc_ckpt_*.ckpt`` Lightning wrote there) again. Elsewhere it is the time. The resolver is cached, so a Hydra
  multirun submitted through submitit keeps the submitting process's value in every job.
* ``${slurm_gpus:${trainer.accelerator},${trainer.devices}}`` / ``${slurm_cpus:${data.num_workers}}`` size the
  submitit SLURM request from the trainer and data configs (``conf/hydra/launcher/slurm.yaml``).
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from omegaconf import OmegaConf

__all__ = ["register_resolvers", "run_stamp", "slurm_job_tag", "slurm_gpus", "slurm_cpus"]

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


def register_resolvers() -> None:
    """Register the resolvers above with OmegaConf (idempotent; called before Hydra composes a config)."""
    global _RESOLVERS_REGISTERED
    if _RESOLVERS_REGISTERED:
        return
    OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("slurm_gpus", slurm_gpus, replace=True)
    OmegaConf.register_new_resolver("slurm_cpus", slurm_cpus, replace=True)
    _RESOLVERS_REGISTERED = True
