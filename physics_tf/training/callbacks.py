"""Lightning callbacks of physics_tf (selected in ``conf/callbacks/*.yaml``).

:class:`WandbTestReport` turns what the test stage leaves in the run directory into a W&B report: every plot
(``roc.png``, ``confusion.png``, ``resolution.png``, ``residuals.png``, ``early_classification.png``, …) as a
``wandb.Image``, tables as ``wandb.Table``\\ s, and the test metrics of ``metrics.json`` and the best validation
score of every monitored checkpoint in the run summary (``test/<metric>``, ``best/<monitor>``), so W&B's run table
can sort and compare runs by them. It does nothing unless a ``WandbLogger`` is attached, and only on global rank 0.

It knows no analysis: ``metrics.json`` of any task (flat for jets and light curves, nested for the Auger
regression) is read with :mod:`physics_tf.training.reporting`, which ``pipelines/compare.py`` shares, and the
task's own tables (e.g. the per-class table of a classifier, with a jet tagger's rejection columns) come from its
report hook ``report_tables()`` (:meth:`physics_tf.tasks.base.Task.report_tables`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from physics_tf.training.reporting import metrics_tables, scalar_metrics
from physics_tf.training.resolvers import CONFIG_KEY  # defined once, in the light module

log = logging.getLogger("physics_tf")

__all__ = ["WandbTestReport", "RunStateInCheckpoint", "FaultInjection", "best_scores", "CONFIG_KEY", "RNG_KEY"]


def best_scores(trainer: L.Trainer) -> dict[str, float]:
    """``{"best/<monitor>": score}`` of every checkpoint callback that monitors a metric and has a best score."""
    out = {}
    for cb in getattr(trainer, "checkpoint_callbacks", []):
        monitor, score = getattr(cb, "monitor", None), getattr(cb, "best_model_score", None)
        if monitor and score is not None:
            out[f"best/{monitor}"] = float(score)
    return out


class WandbTestReport(L.Callback):
    """Logs the test stage's plots, tables and metrics to every attached ``WandbLogger`` (see module docstring).

    Parameters
    ----------
    plots
        Glob patterns (in the task's output directory) of the images to log as ``plots/<file stem>``.
    tables
        Log the tables found in ``metrics.json`` and those of the task's ``report_tables()`` hook
        (``tables/<dotted name>``, e.g. ``tables/per_class``).
    """

    def __init__(self, plots: list[str] | tuple[str, ...] = ("*.png",), tables: bool = True) -> None:
        self.plots = list(plots)
        self.tables = tables

    @staticmethod
    def _wandb_loggers(trainer: L.Trainer) -> list[Any]:
        from lightning.pytorch.loggers import WandbLogger

        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    @staticmethod
    def _output_dir(trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        resolve = getattr(pl_module, "resolve_output_dir", None)
        return Path(resolve()) if callable(resolve) else Path(trainer.default_root_dir)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in self._wandb_loggers(trainer):
            logger.experiment.summary.update(best_scores(trainer))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        loggers = self._wandb_loggers(trainer)
        if not loggers:
            return
        import wandb

        out_dir = self._output_dir(trainer, pl_module)
        path = out_dir / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else {}
        summary = {**best_scores(trainer), **{f"test/{k}": v for k, v in scalar_metrics(metrics).items()}}
        media: dict[str, Any] = {}
        for pattern in self.plots:
            for image in sorted(out_dir.glob(pattern)):
                media[f"plots/{image.stem}"] = wandb.Image(str(image), caption=image.name)
        if self.tables:
            tables = dict(metrics_tables(metrics))
            report = getattr(pl_module, "report_tables", None)
            if callable(report):
                tables.update(report())
            for key, (columns, rows) in tables.items():
                media[f"tables/{key}"] = wandb.Table(columns=columns, data=rows)
        for logger in loggers:
            run = logger.experiment
            if media:
                run.log(media)
            run.summary.update(summary)
        log.info("W&B: %d plots/tables and %d summary values logged from %s", len(media), len(summary), out_dir)


RNG_KEY = "physics_tf_rng"


def _rng_state() -> dict[str, Any]:
    """This process's torch, numpy and python RNG states, as tensors and plain Python values (so checkpoints load
    with ``torch.load(weights_only=True)``)."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


class RunStateInCheckpoint(L.Callback):
    """Stores the resolved run config and the random-number states in every checkpoint.

    The config (``checkpoint["physics_tf_config"]``) lets ``evaluate.py`` rebuild model and data; the RNG states
    (torch, numpy, python) are restored on resume so dropout draws continue as in an uninterrupted run — with the
    data order fixed by (seed, epoch), a resumed run ends with the same weights as one that never stopped.
    Under DDP every rank's states are gathered (``checkpoint["physics_tf_rng"]["ranks"]``, rank 0 writes the file)
    and each rank restores its own: the ranks draw different dropout masks, their batches differing in size.
    Resumed with another number of ranks, every rank takes rank 0's states.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        import torch.distributed as dist

        checkpoint[CONFIG_KEY] = self.config
        state = _rng_state()
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            # every rank builds the checkpoint (Lightning's saves are collective), so the gather cannot hang
            ranks: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(ranks, state)
            state = {**state, "ranks": ranks}
        checkpoint[RNG_KEY] = state

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # applied at the first training batch after the restore, so nothing in between (the sanity check, loop
        # bookkeeping) can shift the draws
        state = checkpoint.get(RNG_KEY)
        ranks = state.get("ranks") if isinstance(state, dict) else None
        if ranks and len(ranks) == trainer.world_size:
            state = ranks[trainer.global_rank]
        self._pending_rng = state

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        state, self._pending_rng = getattr(self, "_pending_rng", None), None
        if state is not None:
            _set_rng_state(state)


class FaultInjection(L.Callback):
    """Fault drill (tests, and checking a cluster setup): make one rank fail at a given training step.

    Enable from the command line, e.g. ``+callbacks.fault._target_=physics_tf.training.callbacks.FaultInjection
    +callbacks.fault.rank=1 +callbacks.fault.step=3 +callbacks.fault.mode=exit``. Modes: ``raise`` (a Python
    exception), ``exit`` (``os._exit``: the process vanishes without clean-up, like a killed or crashed rank),
    ``hang`` (the rank stops responding: the others hit the DDP strategy's collective timeout),
    ``kill_in_checkpoint`` (the rank SIGKILLs itself inside the first checkpoint write at or after ``step``, once
    half of the file's bytes are on disk: ``kill -9`` during a checkpoint; the rank that writes checkpoints is 0).
    Never part of a default config.
    """

    MODES = ("raise", "exit", "hang", "kill_in_checkpoint")

    def __init__(self, rank: int = 1, step: int = 1, mode: str = "raise", exit_code: int = 3) -> None:
        if mode not in self.MODES:
            raise ValueError(f"FaultInjection.mode must be one of {', '.join(self.MODES)}, not {mode!r}")
        self.rank, self.step, self.mode, self.exit_code = int(rank), int(step), mode, int(exit_code)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.mode != "kill_in_checkpoint" or trainer.global_rank != self.rank:
            return
        from physics_tf.training.checkpoint_io import AtomicCheckpointIO

        io = trainer.strategy.checkpoint_io
        while not isinstance(io, AtomicCheckpointIO) and hasattr(io, "inner"):
            io = io.inner  # physics_tf's IO wrappers (UpgradingCheckpointIO) keep the wrapped one as .inner
        if not isinstance(io, AtomicCheckpointIO):
            raise RuntimeError("FaultInjection mode=kill_in_checkpoint needs physics_tf's AtomicCheckpointIO "
                               f"(run_train installs it), found {type(trainer.strategy.checkpoint_io).__name__}")

        def midway(tmp, final, written: int, total: int) -> None:
            if trainer.global_step < self.step:
                return
            log.error("FaultInjection: rank %d SIGKILLs itself at step %d while writing %s (%d of %d bytes in %s)",
                      self.rank, trainer.global_step, final, written, total, tmp.name)
            for handler in logging.getLogger().handlers + log.handlers:
                handler.flush()
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

        io.midway = midway

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.mode == "kill_in_checkpoint" or trainer.global_rank != self.rank or trainer.global_step < self.step:
            return
        log.error("FaultInjection: rank %d fails (%s) at step %d", self.rank, self.mode, trainer.global_step)
        if self.mode == "exit":
            os._exit(self.exit_code)
        if self.mode == "hang":
            import time

            while True:
                time.sleep(60)
        raise RuntimeError(f"FaultInjection: rank {self.rank} failed on purpose at step {trainer.global_step}")
