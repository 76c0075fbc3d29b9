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
import socket
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from tqdm.contrib.logging import logging_redirect_tqdm

from physics_tf.training.callbacks import RunStateInCheckpoint, WandbTestReport
from physics_tf.training.checkpoint_io import AtomicCheckpointIO
from physics_tf.training.checkpoints import check_checkpoint_matches, load_run_config, resolve_ckpt_path
from physics_tf.training.cluster import SlurmPreemption, adopt_submitit_local_ranks, check_devices, check_launch
from physics_tf.training.legacy import UpgradingCheckpointIO
from physics_tf.training.reporting import flatten  # W&B and CSV loggers compare flat keys best
from physics_tf.data.atomic import atomic_path
from physics_tf.data.errors import DataError
from physics_tf.training.resolvers import register_resolvers
from physics_tf.tasks.summary import print_run_directory

register_resolvers()
log = logging.getLogger("physics_tf")

# Third-party warnings that are not ours to fix, each matched by its message (and module where it has a stable one):
_IGNORED_WARNINGS = (
    # Lightning's CombinedLoader builds torch's LeafSpec, which recent torch deprecates (Lightning's code, every run)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    # Our IterableDatasets shard by (rank, worker) and their __len__ is the exact number of batches of this rank
    # (data/streaming.py: equal batches per rank, workers split the files): the duplicates the warning fears
    # cannot happen. Lightning needs the length for its progress bars and the learning-rate schedule.
    (r"Your `IterableDataset` has `__len__` defined", Warning, r"lightning\."),
    # Lightning's hint on a machine with srun to prefix the command with srun; physics_tf runs SLURM jobs through
    # hydra/launcher=slurm (which calls srun itself), and a run on a login node is meant to stay local.
    (r"The `srun` command is available on your system but is not used", Warning, r"lightning\."),
)


class _NoTips(logging.Filter):
    """Drops Lightning's advertisements ("💡 Tip: ... try installing litlogger / litmodels"), logged at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_libraries() -> None:
    """One log format, no third-party tips, no warnings that are not ours (idempotent; run_train and run_evaluate
    call it).

    ``import lightning`` gives the ``lightning`` logger a handler of its own (``INFO: ...``) that also propagates
    to the root logger, so under Hydra's logging every Lightning line came twice. When the root logger has
    handlers (Hydra's, pytest's), Lightning's own are removed and its records propagate: one line, Hydra's format,
    also in the run's log file. Without root handlers (a notebook, a plain script) Lightning keeps its own.
    """
    for pattern, category, module in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category, module=module)
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoTips) for f in tips.filters):
        tips.addFilter(_NoTips())
    if not logging.getLogger().hasHandlers():
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        if name in logging.root.manager.loggerDict:
            logger = logging.getLogger(name)
            for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
                logger.removeHandler(handler)
            logger.propagate = True


def prepare_output_dir(path: str | Path) -> Path:
    """Create the run directory; an unwritable one is a one-line :class:`OutputDirError`. The probe file is named
    per host and process: the ranks of a multi-node run share the directory and probe it at the same moment (one
    shared name let one rank's cleanup remove the file the other was about to remove)."""
    out = Path(path)
    probe = out / f".write_test.{socket.gethostname()}.{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(probe) as tmp:
            tmp.write_text("")
        probe.unlink(missing_ok=True)
    except OSError as err:
        raise OutputDirError(f"cannot write the run directory {out}: {err.strerror or err}; set hydra.run.dir "
                             "(or paths.log_dir) to a writable place") from None
    return out


class OutputDirError(OSError):
    """The run directory cannot be created or written (also: its disk or quota is full)."""


@contextlib.contextmanager
def disk_space_is_one_line(output_dir: Path):
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


def _checkpoint_io(trainer: L.Trainer, net, callback_states: bool = True) -> None:
    """Lightning's own checkpoint reads (``ckpt_path=`` of fit and test, the SLURM auto-resume) upgrade a
    checkpoint written before the move to one wing per analysis, as :func:`load_checkpoint` does, and restore only
    the callback states that belong to this run (:class:`_ThisRunsStates`); its writes are atomic
    (:class:`AtomicCheckpointIO`: a full disk leaves no half-written ``last.ckpt``)."""
    io = UpgradingCheckpointIO(AtomicCheckpointIO(trainer.strategy.checkpoint_io), net)
    trainer.strategy.checkpoint_io = _ThisRunsStates(io, trainer, callback_states)


class _ThisRunsStates(CheckpointIO):
    """Checkpoint IO that drops, from what it loads, the callback states this run must not restore.

    * An evaluation (``callback_states=False``) restores the weights only: the training run's callbacks (best
      scores, checkpoint file lists) are not part of it. Lightning would warn that they are missing.
    * A training run resumed from another run directory (``ckpt_path=`` another run's checkpoint) drops the states
      of checkpoint callbacks that wrote into that other directory: their best scores and file lists name its files,
      and this run keeps its own (``checkpoints/best.ckpt`` starts at its first epoch). Lightning would restore
      only ``best_model_path``, with a "dirpath has changed" warning. A run resumed in its own directory (SLURM
      requeue, ``ckpt_path=last`` there) restores everything.

    Saving and removing go to the wrapped IO unchanged (it stays reachable as ``.inner``).
    """

    def __init__(self, inner: CheckpointIO, trainer: L.Trainer, callback_states: bool = True) -> None:
        self.inner, self.trainer, self.callback_states = inner, trainer, callback_states

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        extra = {} if map_location is None else {"map_location": map_location}
        checkpoint = self.inner.load_checkpoint(path, weights_only=weights_only, **extra)
        states = checkpoint.get("callbacks")
        if not self.callback_states:
            checkpoint.pop("callbacks", None)
        elif isinstance(states, dict):
            ours = {os.path.realpath(str(cb.dirpath)) for cb in self.trainer.checkpoint_callbacks if cb.dirpath}
            checkpoint["callbacks"] = {
                key: state for key, state in states.items()
                if not (isinstance(state, dict) and state.get("dirpath")
                        and os.path.realpath(str(state["dirpath"])) not in ours)}
        return checkpoint

    def remove_checkpoint(self, path) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


def _finish_loggers(loggers: list[Any]) -> None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()  # one run per job, also between Hydra multirun jobs


def _report(output_dir: Path, tested: bool = True) -> dict[str, Any]:
    """The end of every run (rank 0): the run directory and what is in it (:func:`print_run_directory`); returns
    the test metrics (``metrics.json``; empty without a test stage)."""
    print_run_directory(output_dir)
    path = output_dir / "metrics.json"
    return json.loads(path.read_text()) if tested and path.is_file() else {}


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and (optionally) test. Returns the test metrics (empty if ``test=false``)."""
    quiet_libraries()
    adopt_submitit_local_ranks()  # hydra/launcher=local with several tasks: ranks from submitit
    check_devices(cfg.trainer)
    check_launch(cfg.trainer)
    output_dir = prepare_output_dir(cfg.paths.output_dir)
    with disk_space_is_one_line(output_dir):
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

    same = {"model._target_": cfg.model.get("_target_"), "data._target_": cfg.data.get("_target_"),
            "data.files": OmegaConf.to_container(cfg.data.files, resolve=True) if "files" in cfg.data else None}
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir, same)
    if ckpt_path is not None:
        check_checkpoint_matches(ckpt_path, task)
    try:
        if cfg.get("train", True):
            with logging_redirect_tqdm():  # log lines above the progress bar, not glued to its end
                trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if cfg.get("test", True):
            ckpt = None
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            if cfg.get("test_ckpt", "best") == "best" and best:
                ckpt = best
            elif cfg.get("test_ckpt") == "last" and (output_dir / "checkpoints" / "last.ckpt").is_file():
                ckpt = str(output_dir / "checkpoints" / "last.ckpt")
            log.info("testing with %s", ckpt or "the current weights")
            with logging_redirect_tqdm():
                trainer.test(task, datamodule=datamodule, ckpt_path=ckpt, verbose=False, weights_only=True)
    except BaseException:
        _stop_launched_ranks(trainer)
        raise
    finally:
        _finish_loggers(loggers)
    return _report(output_dir, tested=bool(cfg.get("test", True))) if trainer.is_global_zero else {}


def evaluation_data(given: DictConfig | None, stored: DictConfig) -> DictConfig:
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

    Lightning's child-process observer (a thread polling the ranks every 5 s) SIGKILLs this process as soon as it
    sees a rank gone, also one stopped here: it is retired first, so this process still ends with its own one-line
    error and exit code instead of a -9 that races its exit (seen in CI on a slow shutdown).
    """
    import signal
    import threading

    launcher = getattr(trainer.strategy, "launcher", None)
    if launcher is None or not getattr(launcher, "procs", None):
        return
    try:
        from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
    except ImportError:  # another Lightning layout: nothing to retire
        pass
    else:
        for thread in threading.enumerate():
            if isinstance(thread, _ChildProcessObserver):
                thread._run = lambda: True  # its next poll ends its loop without signalling anyone
                thread._finished = True
    launcher.kill(signal.SIGKILL)


def run_evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild model + data from the checkpoint's stored config (or ``cfg.data`` if given) and run the test stage."""
    quiet_libraries()
    check_devices(cfg.trainer)
    output_dir = prepare_output_dir(cfg.paths.output_dir)
    with disk_space_is_one_line(output_dir):
        return _test(cfg, output_dir)


def _test(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    stored = OmegaConf.create(load_run_config(cfg.ckpt_path))
    data_cfg = evaluation_data(cfg.get("data"), stored.data)
    run_cfg = OmegaConf.create({"data": data_cfg, "paths": OmegaConf.to_container(cfg.paths, resolve=True)})
    if rank_zero_only.rank == 0:  # one writer, atomically
        with atomic_path(output_dir / "config.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml({"ckpt_path": str(cfg.ckpt_path),
                                              "data": OmegaConf.to_container(data_cfg, resolve=True)}))
    datamodule, net, task = _build(run_cfg, output_dir, stored.model, stored.task)
    loggers = _instantiate_all(cfg.get("logger"))
    # the progress bar of a training run (Lightning's default would be Rich's, which draws over printed tables);
    # with a W&B logger the evaluate run gets the same plots, tables and summary metrics as a training run's test
    callbacks: list[Any] = [L.pytorch.callbacks.TQDMProgressBar()]
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        callbacks.append(WandbTestReport())
    # an evaluation writes no checkpoints, and restores only the weights of the one it reads
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                     enable_checkpointing=False)
    _checkpoint_io(trainer, net, callback_states=False)
    try:
        with logging_redirect_tqdm():
            trainer.test(task, datamodule=datamodule, ckpt_path=str(cfg.ckpt_path), verbose=False, weights_only=True)
    finally:
        _finish_loggers(loggers)
    return _report(output_dir) if trainer.is_global_zero else {}
