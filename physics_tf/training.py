"""Train / evaluate from a composed Hydra config (the logic behind pipelines/train.py and evaluate.py).

Everything is built from ``_target_`` entries: data module, network, task, callbacks, loggers, trainer.
The resolved config is written to the run directory and stored inside every checkpoint, so
``evaluate.py ckpt_path=...`` can rebuild the exact model and data description later.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only

from physics_tf.callbacks import WandbTestReport
from physics_tf.cluster import adopt_submitit_local_ranks, check_devices, check_launch, register_resolvers
from physics_tf.logging_utils import flatten  # W&B and CSV loggers compare flat keys best
from physics_tf.utils.io import atomic_path

register_resolvers()
log = logging.getLogger("physics_tf")

CONFIG_KEY = "physics_tf_config"


RNG_KEY = "physics_tf_rng"


class RunStateInCheckpoint(L.Callback):
    """Stores the resolved run config and the random-number states in every checkpoint.

    The config (``checkpoint["physics_tf_config"]``) lets ``evaluate.py`` rebuild model and data; the RNG states
    (torch, numpy, python) are restored on resume so dropout draws continue as in an uninterrupted run — with the
    data order fixed by (seed, epoch), a resumed run ends with the same weights as one that never stopped.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        import random

        import numpy as np

        checkpoint[CONFIG_KEY] = self.config
        # only tensors and plain Python values, so checkpoints load with torch.load(weights_only=True)
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint[RNG_KEY] = {
            "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # applied at the first training batch after the restore, so nothing in between (the sanity check, loop
        # bookkeeping) can shift the draws
        self._pending_rng = checkpoint.get(RNG_KEY)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import random

        import numpy as np

        state, self._pending_rng = getattr(self, "_pending_rng", None), None
        if state is not None:
            torch.set_rng_state(state["torch"])
            name, keys, pos, has_gauss, gauss = state["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            random.setstate(state["python"])


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run (another model, not a physics_tf checkpoint, unreadable)."""


class Preempted(SystemExit):
    """This job instance was pre-empted and requeued; the requeued instance resumes from its checkpoint.

    A ``SystemExit`` (not an ``Exception``) on purpose: submitit records no result for this instance, so a Hydra
    multirun waiting on the job keeps waiting for the requeued one.
    """

    def __init__(self, output_dir: Path) -> None:
        super().__init__(f"physics_tf: pre-empted: checkpoint saved in {output_dir}, job requeued; it resumes there")


def _hpc_checkpoints(run_dir: Path) -> set[Path]:
    """Lightning's pre-emption checkpoints (hpc_ckpt_<n>.ckpt, written by its SLURM SIGUSR1 handler)."""
    return set(Path(run_dir).glob("hpc_ckpt_*.ckpt"))


def prepare_output_dir(path: str | Path) -> Path:
    """Create the run directory; an unwritable one is a one-line :class:`OutputDirError`."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / ".write_test") as tmp:
            tmp.write_text("")
        (out / ".write_test").unlink()
    except OSError as err:
        raise OutputDirError(f"cannot write the run directory {out}: {err.strerror or err}; set hydra.run.dir "
                             "(or paths.log_dir) to a writable place") from None
    return out


class OutputDirError(OSError):
    """The run directory cannot be created or written."""


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is one line naming the file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: cannot read the checkpoint ({first})") from None


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
    checkpoint = _load_checkpoint(Path(ckpt_path))
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


class FaultInjection(L.Callback):
    """Fault drill (tests, and checking a cluster setup): make one rank fail at a given training step.

    Enable from the command line, e.g. ``+callbacks.fault._target_=physics_tf.training.FaultInjection
    +callbacks.fault.rank=1 +callbacks.fault.step=3 +callbacks.fault.mode=exit``. Modes: ``raise`` (a Python
    exception), ``exit`` (``os._exit``: the process vanishes without clean-up, like a killed or crashed rank),
    ``hang`` (the rank stops responding: the others hit the DDP strategy's collective timeout).
    Never part of a default config.
    """

    def __init__(self, rank: int = 1, step: int = 1, mode: str = "raise", exit_code: int = 3) -> None:
        if mode not in ("raise", "exit", "hang"):
            raise ValueError(f"FaultInjection.mode must be raise, exit or hang, not {mode!r}")
        self.rank, self.step, self.mode, self.exit_code = int(rank), int(step), mode, int(exit_code)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank != self.rank or trainer.global_step < self.step:
            return
        log.error("FaultInjection: rank %d fails (%s) at step %d", self.rank, self.mode, trainer.global_step)
        if self.mode == "exit":
            os._exit(self.exit_code)
        if self.mode == "hang":
            import time

            while True:
                time.sleep(60)
        raise RuntimeError(f"FaultInjection: rank {self.rank} failed on purpose at step {trainer.global_step}")


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


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a callbacks/logger group that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def _build(cfg: DictConfig, output_dir: Path, model_cfg: DictConfig, task_cfg: DictConfig):
    """Data module, network and task from their configs.

    Every data module exposes ``model_dims`` (sizes the network is built with, e.g. ``input_dim``,
    ``num_classes``) and ``task_kwargs`` (e.g. ``class_names``), so one pipeline serves every analysis.
    """
    datamodule = instantiate(cfg.data)
    net = instantiate(model_cfg, **datamodule.model_dims)
    task = instantiate(
        task_cfg, net=net, **datamodule.task_kwargs, output_dir=str(output_dir), compile=bool(cfg.get("compile", False))
    )
    return datamodule, net, task


def _finish_loggers(loggers: list[Any]) -> None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()  # one run per job, also between Hydra multirun jobs


def _report(output_dir: Path) -> dict[str, Any]:
    path = output_dir / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    log.info("test metrics (%s): %s", path, json.dumps(metrics, indent=None))
    return metrics


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and (optionally) test. Returns the test metrics (empty if ``test=false``)."""
    adopt_submitit_local_ranks()  # hydra/launcher=local with several tasks: ranks from submitit
    check_devices(cfg.trainer)
    check_launch(cfg.trainer)
    output_dir = prepare_output_dir(cfg.paths.output_dir)
    torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision", "high"))
    L.seed_everything(cfg.seed, workers=True)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    if rank_zero_only.rank == 0:  # every srun rank runs this function; one writer
        with atomic_path(output_dir / "config.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml(resolved))

    datamodule, net, task = _build(cfg, output_dir, cfg.model, cfg.task)
    n_params = sum(p.numel() for p in net.parameters())
    log.info("model %s: %s parameters", type(net).__name__, f"{n_params:,}")

    loggers = _instantiate_all(cfg.get("logger"))
    callbacks = _instantiate_all(cfg.get("callbacks")) + [RunStateInCheckpoint(resolved)]
    if not loggers:  # LearningRateMonitor refuses to run without a logger (logger=none)
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    extra: dict[str, Any] = {}
    if SLURMEnvironment.detect():
        # physics_tf's SlurmPreemption owns SIGUSR1 and requeueing; Lightning still reads the ranks from SLURM
        # and still resumes from hpc_ckpt_<n>.ckpt by itself
        callbacks.append(SlurmPreemption())
        if cfg.trainer.get("plugins") is None:
            extra["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)
    # only now: the Trainer knows this process's global rank (a node-1 process started by env vars without RANK
    # would otherwise count as rank 0 and open a second W&B run); the loggers write on global rank 0 only
    for logger in loggers:
        logger.log_hyperparams({**flatten(resolved), "n_parameters": n_params})

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if ckpt_path is not None:
        check_checkpoint_matches(ckpt_path, task)
    try:
        if cfg.get("train", True):
            trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics: dict[str, Any] = {}
        if cfg.get("test", True):
            ckpt = None
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            if cfg.get("test_ckpt", "best") == "best" and best:
                ckpt = best
            elif cfg.get("test_ckpt") == "last" and (output_dir / "checkpoints" / "last.ckpt").is_file():
                ckpt = str(output_dir / "checkpoints" / "last.ckpt")
            log.info("testing with %s", ckpt or "the current weights")
            trainer.test(task, datamodule=datamodule, ckpt_path=ckpt, verbose=False, weights_only=True)
            if trainer.is_global_zero:
                metrics = _report(output_dir)
    except BaseException:
        _stop_launched_ranks(trainer)
        raise
    finally:
        _finish_loggers(loggers)
    return metrics


def _stop_launched_ranks(trainer: L.Trainer) -> None:
    """Kill the rank processes Lightning started itself (trainer=ddp_cpu / ddp on one machine) when this one fails.

    Lightning stops them only on Ctrl-C or when a child dies first; a child stuck in a collective would otherwise
    outlive the failed main process. Under srun the scheduler owns the processes (SLURM_KILL_BAD_EXIT=1 in
    hydra/launcher=slurm ends the others).
    """
    import signal

    launcher = getattr(trainer.strategy, "launcher", None)
    if launcher is not None and getattr(launcher, "procs", None):
        launcher.kill(signal.SIGKILL)


def load_run_config(ckpt_path: str | Path) -> dict[str, Any]:
    """The resolved training config stored in a physics_tf checkpoint."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    checkpoint = _load_checkpoint(path)
    if CONFIG_KEY not in checkpoint:
        raise ValueError(f"{path}: not a physics_tf checkpoint (no '{CONFIG_KEY}' entry)")
    return checkpoint[CONFIG_KEY]


def run_evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild model + data from the checkpoint's stored config (or ``cfg.data`` if given) and run the test stage."""
    check_devices(cfg.trainer)
    output_dir = prepare_output_dir(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    stored = OmegaConf.create(load_run_config(cfg.ckpt_path))
    data_cfg = cfg.data if cfg.get("data") else stored.data
    run_cfg = OmegaConf.create({"data": data_cfg, "paths": OmegaConf.to_container(cfg.paths, resolve=True)})
    (output_dir / "config.yaml").write_text(
        OmegaConf.to_yaml({"ckpt_path": str(cfg.ckpt_path), "data": OmegaConf.to_container(data_cfg, resolve=True)})
    )
    datamodule, _, task = _build(run_cfg, output_dir, stored.model, stored.task)
    loggers = _instantiate_all(cfg.get("logger"))
    # with a W&B logger the evaluate run gets the same plots, tables and summary metrics as a training run's test
    callbacks = [WandbTestReport()] if any(type(lg).__name__ == "WandbLogger" for lg in loggers) else []
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    try:
        trainer.test(task, datamodule=datamodule, ckpt_path=str(cfg.ckpt_path), verbose=False, weights_only=True)
    finally:
        _finish_loggers(loggers)
    return _report(output_dir) if trainer.is_global_zero else {}
