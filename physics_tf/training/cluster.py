"""Running under a cluster scheduler: SLURM pre-emption and requeue, rank set-up and device checks.

(The resolvers that name run directories and size SLURM requests are in :mod:`physics_tf.training.resolvers`,
which the console entry points import before anything heavy; this module imports Lightning.)

* :func:`adopt_submitit_local_ranks` lets ``hydra/launcher=local`` run one task per device: it exports the
  torch.distributed variables Lightning reads, so Lightning does not re-launch the script itself.
* :func:`check_devices` turns "asked for GPUs that are not there" into one clear line before Lightning starts.
* :class:`SlurmPreemption` and :func:`requeue_slurm_job`: on SIGUSR1 every rank checkpoints at the same step and
  the job requeues itself (see the class).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from omegaconf import OmegaConf

log = logging.getLogger("physics_tf")

def adopt_submitit_local_ranks(environ: dict[str, str] | None = None) -> bool:
    """Inside a multi-task submitit *local* job, export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* for Lightning.

    submitit's local executor starts ``tasks_per_node`` processes with ``SUBMITIT_LOCAL_*`` variables that
    Lightning does not know; with the torch.distributed variables set, Lightning's environment treats the
    processes as started externally (as under ``srun``) instead of re-executing ``sys.argv`` per device.
    Returns whether it set anything.
    """
    env = os.environ if environ is None else environ
    if env.get("SUBMITIT_EXECUTOR") != "local" or int(env.get("SUBMITIT_LOCAL_NTASKS", "1")) < 2:
        return False
    if "LOCAL_RANK" in env:
        return False
    job = int(env.get("SUBMITIT_LOCAL_JOB_ID", "0") or 0)
    env.update(RANK=env["SUBMITIT_LOCAL_GLOBALID"], LOCAL_RANK=env["SUBMITIT_LOCAL_LOCALID"],
               WORLD_SIZE=env["SUBMITIT_LOCAL_NTASKS"], NODE_RANK=env.get("SUBMITIT_LOCAL_NODEID", "0"),
               MASTER_ADDR=env.get("MASTER_ADDR", "127.0.0.1"),
               MASTER_PORT=env.get("MASTER_PORT", str(20000 + job % 20000)))
    return True


def check_devices(trainer_cfg: Any) -> None:
    """Raise :class:`DeviceError` (one line) when the trainer asks for accelerators this machine does not have."""
    accelerator = str(trainer_cfg.get("accelerator", "cpu"))
    devices = trainer_cfg.get("devices", 1)
    if accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        wanted = devices if isinstance(devices, int) else (len(devices) if OmegaConf.is_list(devices) else None)
        if available == 0 or (wanted is not None and wanted > available):
            raise DeviceError(
                f"trainer.accelerator={accelerator} with trainer.devices={devices}, but this machine has "
                f"{available} CUDA GPU(s); use trainer=cpu or trainer=ddp_cpu, or run on a GPU node"
            )


class DeviceError(RuntimeError):
    """The configured accelerator/devices do not exist on this machine."""


class LaunchError(RuntimeError):
    """A combination of launcher and trainer that cannot work (see :func:`check_launch`)."""


BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def check_launch(trainer_cfg: Any) -> None:
    """Refuse a Hydra multirun in-process (the basic launcher) with a trainer that makes Lightning start its own ranks.

    Lightning starts the extra DDP ranks by re-running ``sys.argv``: in a multirun that is the whole sweep again, in
    every rank (a known Lightning + Hydra trap). Sweeps of multi-process trainings go through a launcher whose
    tasks are the ranks: ``hydra/launcher=slurm`` or ``hydra/launcher=local``.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or hydra_cfg.launcher.get("_target_") != BASIC_LAUNCHER:
        return
    if any(k in os.environ for k in ("LOCAL_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID")):
        return  # the ranks are started by someone else (srun, torchrun, a submitit task)
    strategy = trainer_cfg.get("strategy", "auto")
    target = strategy.get("_target_", "") if OmegaConf.is_dict(strategy) else str(strategy)
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1) or 1
    processes = (devices if isinstance(devices, int) else 2) * int(nodes)
    if "ddp" in target.lower() and "spawn" not in target.lower() and processes > 1:
        raise LaunchError(
            f"a Hydra multirun (-m) with {target.rsplit('.', 1)[-1]} on {processes} processes: Lightning would re-run the "
            "whole sweep in every rank; add hydra/launcher=local (this machine) or hydra/launcher=slurm, whose "
            "tasks are the ranks"
        )


class Preempted(SystemExit):
    """This job instance was pre-empted and requeued; the requeued instance resumes from its checkpoint.

    A ``SystemExit`` (not an ``Exception``) on purpose: submitit records no result for this instance, so a Hydra
    multirun waiting on the job keeps waiting for the requeued one.
    """

    def __init__(self, output_dir: Path) -> None:
        super().__init__(f"physics_tf: pre-empted: checkpoint saved in {output_dir}, job requeued; it resumes there")


class SlurmPreemption(L.Callback):
    """Pre-emption under SLURM: on SIGUSR1, checkpoint every rank at the same step, requeue the job, stop.

    SLURM sends SIGUSR1 shortly before the time limit (``--signal=USR1@90`` in ``hydra/launcher=slurm``; also
    ``scancel --signal=USR1 <job>`` by hand). The handler only sets a flag; at the end of the next training batch
    all ranks agree on it (one all-reduce), Lightning writes ``hpc_ckpt_<n>.ckpt`` into the run directory, rank 0
    runs ``scontrol requeue``, and every rank exits with :class:`Preempted`. The requeued job runs in the same run
    directory (keyed on the job id) and Lightning resumes from the newest ``hpc_ckpt_<n>.ckpt`` by itself.

    This callback is the only owner of requeueing: Lightning's own SIGUSR1 handler is switched off
    (``SLURMEnvironment(auto_requeue=False)`` in :func:`run_train`) — it saves and barriers inside the signal
    handler, which can interleave with a blocking gloo collective of another rank — and submitit's (USR2) is never
    signalled.
    """

    def __init__(self, signum: int | None = None, requeue: bool = True) -> None:
        import signal

        self.signum = signal.SIGUSR1 if signum is None else signum
        self.requeue = requeue
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        self.requested = True
        log.warning("received signal %d: checkpointing and requeueing after this training step", signum)

    def on_fit_start(self, trainer, pl_module) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._handler)

    def on_fit_end(self, trainer, pl_module) -> None:
        import signal

        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        requested = self.requested
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            flag = torch.tensor([int(requested)], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = bool(flag.item())
        if not requested:
            return
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)  # every rank calls it: rank 0 writes, the others wait
        log.warning("pre-emption checkpoint written: %s", path)
        if trainer.is_global_zero and self.requeue:
            requeue_slurm_job()
        trainer.strategy.barrier("physics_tf.preempted")
        raise Preempted(Path(trainer.default_root_dir))


def requeue_slurm_job() -> None:
    """``scontrol requeue`` this SLURM job (or array task); a failure is logged, not raised."""
    import subprocess

    job = os.environ.get("SLURM_JOB_ID", "")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job:
        log.warning("not under SLURM: checkpoint written, nothing to requeue")
        return
    res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if res.returncode == 0:
        log.warning("requeued SLURM job %s", job)
    else:
        log.error("scontrol requeue %s failed (%d): %s", job, res.returncode, res.stderr.strip())
