"""Generic evaluation plots saved as PNG files: one-vs-rest ROC curves, confusion matrix, regression residuals,
training curves.

All figures are built with :class:`matplotlib.figure.Figure` (Agg rendering, no pyplot
state, no display needed) and written atomically (temporary file in the target directory,
then :func:`os.replace`).  If ``mplhep`` is importable its ``ROOT`` style is applied inside a
style context (global rcParams are left untouched); otherwise matplotlib defaults are used. An analysis draws its
own plots with :func:`plot_style` and :func:`save_figure` (e.g. the jets' rejection ROC).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.figure import Figure

from physics_tf.data.atomic import atomic_path
from physics_tf.tasks.metrics import check_probs_labels, confusion_matrix, per_class_auc, roc_curve

__all__ = ["plot_confusion_matrix", "plot_residuals", "plot_roc_curves", "plot_style", "plot_training_curves",
           "save_figure"]


def plot_style():
    """Style context: mplhep ROOT style if available, else a no-op."""
    try:
        import mplhep

        return matplotlib.style.context(mplhep.style.ROOT)
    except Exception:  # mplhep missing or its style API changed -> plain matplotlib
        return contextlib.nullcontext()


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` as PNG to ``path`` atomically (temp file + ``os.replace``); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    return path


def plot_roc_curves(probs, labels, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """One-vs-rest ROC curve of every class: true-positive rate against false-positive rate of its probability,
    the AUC (:func:`physics_tf.tasks.metrics.per_class_auc`) in the legend. Classes whose ROC is undefined (no
    sample, or only samples, of the class) are skipped."""
    p, y = check_probs_labels(probs, labels)
    if len(class_names) != p.shape[1]:
        raise ValueError(f"class_names: {len(class_names)} names for {p.shape[1]} probability columns")
    auc = per_class_auc(p, y)  # (K,)
    with plot_style():
        fig = Figure(figsize=(7, 7))
        ax = fig.subplots()
        for k, name in enumerate(class_names):
            if not np.isfinite(auc[k]):
                continue
            tpr, fpr = roc_curve(p[y == k, k], p[y != k, k])
            ax.plot(fpr, tpr, label=f"{name} (AUC = {auc[k]:.3f})")
        ax.plot([0.0, 1.0], [0.0, 1.0], color="grey", lw=0.8, ls=":")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("False-positive rate (other classes)")
        ax.set_ylabel("True-positive rate")
        ax.grid(True, alpha=0.3)
        if np.isfinite(auc).any():
            ax.legend(loc="lower right", fontsize="x-small")
        else:
            ax.text(0.5, 0.5, "no class with both positives and negatives", ha="center", va="center",
                    transform=ax.transAxes)
        return save_figure(fig, path)


def plot_confusion_matrix(
    probs,
    labels,
    class_names: Sequence[str],
    path: str | os.PathLike,
) -> Path:
    """Row-normalised confusion matrix ``C[i, j] = P(predicted j | true i)``, annotated in %.

    Rows of classes absent from ``labels`` are left at 0. ``class_names`` label the axes as given.
    """
    p, y = check_probs_labels(probs, labels)
    k = p.shape[1]
    if len(class_names) != k:
        raise ValueError(f"class_names: {len(class_names)} names for {k} probability columns")
    norm = confusion_matrix(p, y, normalize=True)  # (K, K)
    names = [str(n) for n in class_names]
    with plot_style():
        size = max(5.0, 0.8 * k + 3.0)
        fig = Figure(figsize=(size, size))
        ax = fig.subplots()
        im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
        ax.set_xticks(range(k), labels=names, rotation=45, ha="right")
        ax.set_yticks(range(k), labels=names)
        ax.minorticks_off()
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class")
        fontsize = 10 if k <= 6 else 7
        for i in range(k):
            for j in range(k):
                ax.text(
                    j, i, f"{100 * norm[i, j]:.1f}", ha="center", va="center", fontsize=fontsize,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
        return save_figure(fig, path)


def plot_residuals(pred, true, name: str, path: str | os.PathLike, groups=None,
                   group_names: Sequence[str] = ()) -> Path:
    """Predicted against true ``name`` (left, with the diagonal) and the histogram of ``predicted − true``
    (right). With integer ``groups (N,)`` each group ``i`` present is drawn apart, labelled ``group_names[i]``."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 1 or pred.size == 0:
        raise ValueError(f"pred/true: expected two equal non-empty 1-d arrays, got {pred.shape} and {true.shape}")
    if groups is None:
        selections = [(None, np.ones(pred.size, dtype=bool))]
    else:
        groups = np.asarray(groups)
        selections = [(str(label), groups == i) for i, label in enumerate(group_names)]
    with plot_style():
        fig = Figure(figsize=(12, 5))
        ax_s, ax_h = fig.subplots(1, 2)
        for label, sel in selections:
            if sel.any():
                ax_s.scatter(true[sel], pred[sel], s=4, alpha=0.5, label=label)
                ax_h.hist(pred[sel] - true[sel], bins=40, histtype="step", label=label)
        lo, hi = float(np.min(true)), float(np.max(true))
        ax_s.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax_s.set_xlabel(f"true {name}")
        ax_s.set_ylabel(f"predicted {name}")
        ax_h.set_xlabel(f"predicted − true {name}")
        if groups is not None:
            ax_s.legend()
            ax_h.legend()
        return save_figure(fig, path)


def _read_metrics_csv(csv_path: Path) -> dict[str, list[tuple[float, float]]]:
    """Series ``{column: [(step, value), ...]}`` from a Lightning ``CSVLogger`` metrics.csv."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise ValueError(f"{csv_path}: expected a CSVLogger metrics file with a 'step' column")
        for row in reader:
            try:
                step = float(row["step"])
            except (TypeError, ValueError):
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                try:
                    v = float(value)
                except ValueError:
                    continue
                if math.isfinite(v):
                    series.setdefault(key, []).append((step, v))
    return series


def plot_training_curves(
    csv_path: str | os.PathLike,
    path: str | os.PathLike,
    loss_keys: Sequence[str] = ("train/loss", "val/loss"),
    score_keys: Sequence[str] = ("train/acc", "val/acc", "val/auc"),
) -> Path:
    """Loss (left) and accuracy/AUC (right) versus optimizer step from a CSVLogger ``metrics.csv``.

    Keys absent from the file are skipped; raises ``ValueError`` if none is present.
    """
    csv_path = Path(csv_path)
    series = _read_metrics_csv(csv_path)
    if not any(k in series for k in (*loss_keys, *score_keys)):
        raise ValueError(f"{csv_path}: none of the columns {list(loss_keys) + list(score_keys)} found")
    with plot_style():
        fig = Figure(figsize=(13, 5.5))
        ax_loss, ax_score = fig.subplots(1, 2)
        for ax, keys, ylabel in ((ax_loss, loss_keys, "Loss"), (ax_score, score_keys, "Score")):
            for key in keys:
                if key not in series:
                    continue
                steps, values = zip(*series[key])
                per_step = key.startswith("train/")  # the task logs train/* every step, val/* per epoch
                ax.plot(steps, values, "-" if per_step else "o-", label=key, markersize=3, alpha=0.6 if per_step else 1.0)
            ax.set_xlabel("Step")
            ax.set_ylabel(ylabel)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
        return save_figure(fig, path)
