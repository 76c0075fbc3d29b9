"""Lightning callbacks of physics_tf (selected in ``conf/callbacks/*.yaml``).

:class:`WandbTestReport` turns what the test stage leaves in the run directory into a W&B report: every plot
(``roc.png``, ``confusion.png``, ``resolution.png``, ``residuals.png``, ``early_classification.png``, …) as a
``wandb.Image``, the per-class numbers as ``wandb.Table``\\ s, and the test metrics of ``metrics.json`` and the
best validation score of every monitored checkpoint in the run summary (``test/<metric>``, ``best/<monitor>``), so
W&B's run table can sort and compare runs by them. It does nothing unless a ``WandbLogger`` is attached, and only
on global rank 0.

The helpers :func:`scalar_metrics` and :func:`metrics_tables` read ``metrics.json`` of any task (flat for jets and
light curves, nested for the Auger regression) without W&B, so ``pipelines/compare.py`` shares them.
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

log = logging.getLogger(__name__)

__all__ = ["WandbTestReport", "scalar_metrics", "metrics_tables", "per_class_table", "best_scores"]

Table = tuple[list[str], list[list[Any]]]  # (columns, rows)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def scalar_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalars of a (possibly nested) metrics dict under dotted keys: ``{"xmax": {"bias": 1}} → {"xmax.bias": 1}``.

    Lists (binned curves, confusion matrices) are left out: :func:`metrics_tables` turns them into tables.
    """
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(scalar_metrics(value, name + "."))
        elif _is_scalar(value):
            out[name] = value
    return out


def _rows_of_dicts(items: list[Mapping[str, Any]], first: str | None = None, names: list[str] | None = None) -> Table:
    columns: list[str] = [first] if first else []
    for item in items:
        columns += [k for k, v in item.items() if _is_scalar(v) and k not in columns]
    keys = columns[1:] if first else columns
    rows = [([names[i]] if first else []) + [item.get(k) for k in keys] for i, item in enumerate(items)]
    return columns, rows


def metrics_tables(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Table]:
    """The tabular parts of a metrics dict, by dotted name.

    * a list of dicts (e.g. ``xmax.vs_lg_energy``: one row per energy bin) → one row per item;
    * a dict of dicts of scalars (e.g. ``xmax.per_primary``: ``{"p": {"n", "bias", "resolution"}, …}``) → one
      row per key, the key in the first column;
    * a dict with ``classes`` and a square ``confusion`` matrix → ``<name>.confusion`` with a row per true class.
    """
    tables: dict[str, Table] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            tables[name] = _rows_of_dicts(value)
        elif isinstance(value, Mapping):
            subs = list(value.values())
            if subs and all(isinstance(v, Mapping) and all(_is_scalar(x) for x in v.values()) for v in subs):
                tables[name] = _rows_of_dicts(subs, first="name", names=[str(k) for k in value])
            else:
                tables.update(metrics_tables(value, name + "."))
            classes, confusion = value.get("classes"), value.get("confusion")
            if isinstance(classes, list) and isinstance(confusion, list) and len(confusion) == len(classes):
                tables[f"{name}.confusion"] = (["true \\ predicted", *map(str, classes)],
                                               [[str(c), *row] for c, row in zip(classes, confusion)])
    return tables


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
