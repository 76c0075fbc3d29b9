"""Lightning callbacks of physics_tf (selected in ``conf/callbacks/*.yaml``).

:class:`WandbTestReport` turns what the test stage leaves in the run directory into a W&B report: every plot
(``roc.png``, ``confusion.png``, ``resolution.png``, ``residuals.png``, ``early_classification.png``, …) as a
``wandb.Image``, the per-class numbers as ``wandb.Table``\\ s, and the test metrics of ``metrics.json`` and the
best validation score of every monitored checkpoint in the run summary (``test/<metric>``, ``best/<monitor>``), so
W&B's run table can sort and compare runs by them. It does nothing unless a ``WandbLogger`` is attached, and only
on global rank 0.

``metrics.json`` of any task (flat for jets and light curves, nested for the Auger regression) is read with
:mod:`physics_tf.training.reporting`, which ``pipelines/compare.py`` shares.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from physics_tf.training.reporting import Table, metrics_tables, scalar_metrics

log = logging.getLogger("physics_tf")

__all__ = ["WandbTestReport", "RunStateInCheckpoint", "FaultInjection", "per_class_table", "best_scores", "CONFIG_KEY",
           "RNG_KEY"]


def _auc(scores_sig: np.ndarray, scores_bkg: np.ndarray) -> float:
    from physics_tf.tasks.metrics import roc_curve

    if scores_sig.size == 0 or scores_bkg.size == 0:
        return float("nan")
    es, eb = roc_curve(scores_sig, scores_bkg)
    return float(np.sum(np.diff(eb) * (es[1:] + es[:-1]) / 2))


def per_class_table(probs: np.ndarray, labels: np.ndarray, class_names: list[str],
                    metrics: Mapping[str, Any] | None = None) -> Table:
    """One row per class: true and predicted counts, efficiency (recall) and purity (precision) of the arg-max
    decision, one-vs-rest AUC of the class probability, and the class's background rejections ``rej<eff>`` taken
    from the task's ``metrics.json`` (keys ``rej50_Hbb`` …; empty for the background class)."""
    from physics_tf.tasks.metrics import signal_name

    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(np.int64)
    pred = probs.argmax(1)
    rej_keys: dict[str, dict[str, Any]] = {}
    for key, value in (metrics or {}).items():
        match = re.fullmatch(r"rej([0-9.]+)_(.+)", key)
        if match:
            rej_keys.setdefault(match.group(1), {})[match.group(2)] = value
    effs = sorted(rej_keys, key=float, reverse=True)
    columns = ["class", "n_true", "n_predicted", "efficiency", "purity", "auc_vs_rest", *(f"rej{e}" for e in effs)]
    rows = []
    for k, name in enumerate(class_names):
        n_true, n_pred, tp = int((labels == k).sum()), int((pred == k).sum()), int(((labels == k) & (pred == k)).sum())
        rows.append([str(name), n_true, n_pred, tp / n_true if n_true else math.nan, tp / n_pred if n_pred else math.nan,
                     _auc(probs[labels == k, k], probs[labels != k, k]),
                     *(rej_keys[e].get(signal_name(str(name))) for e in effs)])
    return columns, rows


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
        Log the per-class table (``tables/per_class``, from ``predictions.npz``) and the tables found in
        ``metrics.json`` (``tables/<dotted name>``).
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
            tables = {f"tables/{k}": v for k, v in metrics_tables(metrics).items()}
            npz = out_dir / "predictions.npz"
            if npz.is_file():
                with np.load(npz) as pred:
                    if {"probs", "labels", "class_names"} <= set(pred.files):
                        tables["tables/per_class"] = per_class_table(pred["probs"], pred["labels"],
                                                                     [str(c) for c in pred["class_names"]], metrics)
            for key, (columns, rows) in tables.items():
                media[key] = wandb.Table(columns=columns, data=rows)
        for logger in loggers:
            run = logger.experiment
            if media:
                run.log(media)
            run.summary.update(summary)
        log.info("W&B: %d plots/tables and %d summary values logged from %s", len(media), len(summary), out_dir)


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


class FaultInjection(L.Callback):
    """Fault drill (tests, and checking a cluster setup): make one rank fail at a given training step.

    Enable from the command line, e.g. ``+callbacks.fault._target_=physics_tf.training.callbacks.FaultInjection
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
