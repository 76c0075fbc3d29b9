"""Lightning callbacks of physics_tf (selected in ``conf/callbacks/*.yaml``).

:class:`WandbTestReport` turns what the test stage leaves in the run directory into a W&B report: every plot
(``roc.png``, ``confusion.png``, ``resolution.png``, ``residuals.png``, ``early_classification.png``, …) as a
``wandb.Image``, the per-class numbers as ``wandb.Table``\\ s, and the test metrics of ``metrics.json`` and the
best validation score of every monitored checkpoint in the run summary (``test/<metric>``, ``best/<monitor>``), so
W&B's run table can sort and compare runs by them. It does nothing unless a ``WandbLogger`` is attached, and only
on global rank 0.

``metrics.json`` of any task (flat for jets and light curves, nested for the Auger regression) is read with
:mod:`physics_tf.logging_utils`, which ``pipelines/compare.py`` shares.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from physics_tf.logging_utils import Table, metrics_tables, scalar_metrics

log = logging.getLogger(__name__)

__all__ = ["WandbTestReport", "per_class_table", "best_scores"]


def _auc(scores_sig: np.ndarray, scores_bkg: np.ndarray) -> float:
    from physics_tf.metrics import roc_curve

    if scores_sig.size == 0 or scores_bkg.size == 0:
        return float("nan")
    es, eb = roc_curve(scores_sig, scores_bkg)
    return float(np.sum(np.diff(eb) * (es[1:] + es[:-1]) / 2))


def per_class_table(probs: np.ndarray, labels: np.ndarray, class_names: list[str],
                    metrics: Mapping[str, Any] | None = None) -> Table:
    """One row per class: true and predicted counts, efficiency (recall) and purity (precision) of the arg-max
    decision, one-vs-rest AUC of the class probability, and the class's background rejections ``rej<eff>`` taken
    from the task's ``metrics.json`` (keys ``rej50_Hbb`` …; empty for the background class)."""
    from physics_tf.metrics import signal_name

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
