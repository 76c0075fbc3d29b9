"""Train / evaluate from a composed Hydra config (the logic behind pipelines/train.py and evaluate.py).

Everything is built from ``_target_`` entries: data module, network, task, callbacks, loggers, trainer.
The resolved config is written to the run directory and stored inside every checkpoint, so
``evaluate.py ckpt_path=...`` can rebuild the exact model and data description later.
"""

from __future__ import annotations

import contextlib
import errno
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

from physics_tf.training.callbacks import RunStateInCheckpoint, WandbTestReport
from physics_tf.training.checkpoint_io import AtomicCheckpointIO
from physics_tf.training.checkpoints import check_checkpoint_matches, load_run_config, resolve_ckpt_path
from physics_tf.training.cluster import SlurmPreemption, adopt_submitit_local_ranks, check_devices, check_launch
from physics_tf.training.legacy import UpgradingCheckpointIO
from physics_tf.training.reporting import flatten  # W&B and CSV loggers compare flat keys best
from physics_tf.data.atomic import atomic_path
from physics_tf.data.errors import DataError
from physics_tf.training.resolvers import register_resolvers

register_resolvers()
log = logging.getLogger("physics_tf")


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
    """The run directory cannot be created or written (also: its disk or quota is full)."""


@contextlib.contextmanager
def _disk_space_is_one_line(output_dir: Path):
    """A full disk or quota (ENOSPC, EDQUOT) while writing checkpoints or outputs → one :class:`OutputDirError`
    line naming the run directory and the file being written."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(err, OutputDirError):
            raise
        what = f"writing {err.filename}" if err.filename else "writing the run's outputs"
        raise OutputDirError(f"no space left for the run directory {output_dir} ({what}: "
                             f"{err.strerror or os.strerror(err.errno)}); free space or set hydra.run.dir "
                             "(or paths.log_dir) to another disk") from None


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
    check_task_fits_data(task_cfg, datamodule)
    task = instantiate(
        task_cfg, net=net, **datamodule.task_kwargs, output_dir=str(output_dir), compile=bool(cfg.get("compile", False))
    )
    return datamodule, net, task


def check_task_fits_data(task_cfg: DictConfig, datamodule: Any) -> None:
    """One line (a :class:`DataError` on ``task._target_``) when the task cannot take what the data module tells
    it (``task_kwargs``), e.g. the generic ``task=regression`` with the Auger data's primaries, instead of a
    TypeError deep inside Hydra. Keyword arguments are followed up the task's classes while an ``__init__``
    passes ``**kwargs`` on."""
    import inspect

    from hydra.utils import get_class

    target = str(task_cfg.get("_target_", ""))
    try:
        cls = get_class(target)
    except Exception:  # noqa: BLE001 - Hydra reports a bad target itself, with its own one-line error
        return
    accepted: set[str] = set()
    for klass in cls.__mro__:
        params = inspect.signature(klass.__init__).parameters.values() if "__init__" in vars(klass) else ()
        accepted |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if "__init__" in vars(klass) and not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    unknown = sorted(set(datamodule.task_kwargs) - accepted)
    if unknown:
        raise DataError("<config>", f"task {cls.__name__} does not take {unknown} from the data module "
                        f"{type(datamodule).__name__}; choose the task made for this data (the experiment's "
                        f"task=..., e.g. task=jets, task=lightcurves, task=auger)", "task._target_")


def _checkpoint_io(trainer: L.Trainer, net) -> None:
    """Lightning's own checkpoint reads (``ckpt_path=`` of fit and test, the SLURM auto-resume) upgrade a
    checkpoint written before the move to one wing per analysis, as :func:`load_checkpoint` does; its writes are
    atomic (:class:`AtomicCheckpointIO`: a full disk leaves no half-written ``last.ckpt``)."""
    trainer.strategy.checkpoint_io = UpgradingCheckpointIO(AtomicCheckpointIO(trainer.strategy.checkpoint_io), net)


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
    with _disk_space_is_one_line(output_dir):
        return _fit_and_test(cfg, output_dir)


def _fit_and_test(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
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
    _checkpoint_io(trainer, net)
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


def _evaluate_data(given: DictConfig | None, stored: DictConfig) -> DictConfig:
    """The data config of an evaluation: a data group given (``data=jetclass``, it has a ``_target_``) replaces
    the checkpoint's; bare overrides (``+data.files.test=[...]``) are merged into the checkpoint's."""
    if not given:
        return stored
    if "_target_" in given:
        return given
    return OmegaConf.merge(stored, given)


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


def run_evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild model + data from the checkpoint's stored config (or ``cfg.data`` if given) and run the test stage."""
    check_devices(cfg.trainer)
    output_dir = prepare_output_dir(cfg.paths.output_dir)
    with _disk_space_is_one_line(output_dir):
        return _test(cfg, output_dir)


def _test(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    stored = OmegaConf.create(load_run_config(cfg.ckpt_path))
    data_cfg = _evaluate_data(cfg.get("data"), stored.data)
    run_cfg = OmegaConf.create({"data": data_cfg, "paths": OmegaConf.to_container(cfg.paths, resolve=True)})
    if rank_zero_only.rank == 0:  # one writer, atomically
        with atomic_path(output_dir / "config.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml({"ckpt_path": str(cfg.ckpt_path),
                                              "data": OmegaConf.to_container(data_cfg, resolve=True)}))
    datamodule, net, task = _build(run_cfg, output_dir, stored.model, stored.task)
    loggers = _instantiate_all(cfg.get("logger"))
    # with a W&B logger the evaluate run gets the same plots, tables and summary metrics as a training run's test
    callbacks = [WandbTestReport()] if any(type(lg).__name__ == "WandbLogger" for lg in loggers) else []
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    _checkpoint_io(trainer, net)
    try:
        trainer.test(task, datamodule=datamodule, ckpt_path=str(cfg.ckpt_path), verbose=False, weights_only=True)
    finally:
        _finish_loggers(loggers)
    return _report(output_dir) if trainer.is_global_zero else {}
