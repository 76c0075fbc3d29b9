"""Generic evaluation plots saved as PNG files: one-vs-rest ROC curves, confusion matrix, regression residuals,
training curves.

Every plot is built by a ``*_figure`` function that returns the :class:`matplotlib.figure.Figure` (Agg rendering,
no pyplot state, no display needed; tests inspect its axes) and written by the ``plot_*`` function of the same name
through :func:`save_figure` (atomic: temporary file in the target directory, then :func:`os.replace`). The style is
mplhep's ``ROOT`` (a core dependency; plain matplotlib if its style API is missing), applied inside a style context
(global rcParams are left untouched). Legends sit beside the axes, never over the data; a class keeps its colour
and line style in every plot (:func:`class_styles`). An analysis draws its own plots with :func:`plot_style`,
:func:`class_styles`, :func:`legend_outside`, :func:`with_unit` and :func:`save_figure` (e.g. the jets' rejection
ROC, the Auger resolution plot).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from physics_tf.data.atomic import atomic_path
from physics_tf.tasks.metrics import check_probs_labels, confusion_matrix, per_class_auc, roc_curve

__all__ = ["PALETTE", "class_styles", "confusion_matrix_figure", "legend_outside", "relative_attention_figure", "plot_confusion_matrix",
           "plot_residuals", "plot_roc_curves", "plot_style", "plot_training_curves", "residuals_figure",
           "roc_curves_figure", "save_figure", "training_curves_figure", "with_unit"]

# Petroff's 10 colours (arXiv:2107.02270, the CMS / mplhep palette): distinct, also with colour-vision deficiency
PALETTE = ("#3f90da", "#ffa90e", "#bd1f01", "#94a4a2", "#832db6", "#a96b59", "#e76300", "#b9ac70", "#717581",
           "#92dadd")
_LINESTYLES = ("-", "--", "-.", ":")


def plot_style():
    """Style context: mplhep ROOT style if available, else a no-op."""
    try:
        import mplhep

        return matplotlib.style.context(mplhep.style.ROOT)
    except Exception:  # mplhep missing or its style API changed -> plain matplotlib
        return contextlib.nullcontext()


def class_styles(n: int) -> list[dict[str, str]]:
    """``n`` distinct ``{"color", "linestyle"}`` for class indices 0 … n-1: the palette's 10 colours solid, then
    dashed, dash-dotted, dotted; no two classes share a style up to 40 classes."""
    return [{"color": PALETTE[i % len(PALETTE)], "linestyle": _LINESTYLES[(i // len(PALETTE)) % len(_LINESTYLES)]}
            for i in range(n)]


def with_unit(label: str, unit: str | None) -> str:
    """Axis label with its unit in brackets: ``("true X", "g/cm²") -> "true X [g/cm²]"``; no brackets without."""
    return f"{label} [{unit}]" if unit else label


def legend_outside(ax: Axes, title: str | None = None, **kwargs):
    """The axes' legend to the right of them, outside the data (``save_figure`` keeps it in the PNG)."""
    kwargs = {"fontsize": "x-small", "title_fontsize": "x-small", **kwargs}
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, title=title, **kwargs)


def relative_attention_figure(panels: Sequence[tuple[Any, str]], class_names: Sequence[str], subject: str,
                              legend_title: str | None = None) -> tuple[Figure, list[Axes]]:
    """Side-by-side panels of the mean relative attention (1 = uniform) per class against a per-element quantity.

    ``panels``: (accumulator, x label) pairs; an accumulator has ``centres`` (X,), ``count`` (C, X), ``mean()`` and
    ``sem()`` (C, X) (:class:`physics_tf.training.explain.BinnedMean`). ``subject`` names what was averaged over
    (e.g. "512 events"). The legend goes right of the last panel; the axes are returned for ticks."""
    fig = Figure(figsize=(10 * len(panels), 7.5), layout="constrained")
    styles = class_styles(len(class_names))
    axes = []
    for i, (acc, xlabel) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        mean, err = acc.mean(), acc.sem()
        for c, name in enumerate(class_names):
            if np.any(acc.count[c] > 0):
                ax.errorbar(acc.centres, mean[c], yerr=err[c], label=name, marker="o", markersize=3, **styles[c])
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("relative class attention (1 = uniform)")
        ax.set_title(f"mean over {subject}", fontsize="medium")
        axes.append(ax)
    legend_outside(axes[-1], title=legend_title)
    return fig, axes


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` as PNG to ``path`` atomically (temp file + ``os.replace``); returns the path."""
    path = Path(path)
    with plot_style(), atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _check_names(class_names: Sequence[str], k: int) -> list[str]:
    if len(class_names) != k:
        raise ValueError(f"class_names: {len(class_names)} names for {k} probability columns")
    return [str(n) for n in class_names]


def _upper_envelope(fpr: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC with one point per false-positive rate (the highest true-positive rate), for interpolation."""
    fpr_u, last = np.unique(fpr[::-1], return_index=True)  # first in reversed order = last = highest tpr
    return fpr_u, tpr[::-1][last]


def roc_curves_figure(probs, labels, class_names: Sequence[str], max_curves: int = 12) -> Figure:
    """One-vs-rest ROC curves in one panel: true-positive rate of each class's probability against its false-
    positive rate on the other classes, the class's AUC (:func:`physics_tf.tasks.metrics.per_class_auc`) in the
    legend beside the axes.

    Two classes: one curve (class 1; class 0's is its mirror image). More: every class plus the macro average (mean
    true-positive rate over the classes at each false-positive rate, black; its AUC is the mean of the classes',
    ``auc_macro`` of the summary). Above ``max_curves`` classes only the ``max_curves`` with the lowest AUC are drawn
    (the legend title says so). Classes whose ROC is undefined (no sample, or only samples, of the class) are
    skipped.
    """
    p, y = check_probs_labels(probs, labels)
    k = p.shape[1]
    names = _check_names(class_names, k)
    auc = per_class_auc(p, y)  # (K,)
    defined = [i for i in (range(1, 2) if k == 2 else range(k)) if np.isfinite(auc[i])]
    shown = sorted(sorted(defined, key=lambda i: auc[i])[:max_curves])
    styles = class_styles(k)
    curves = {i: roc_curve(p[y == i, i], p[y != i, i]) for i in defined}  # i -> (tpr, fpr)
    with plot_style():
        fig = Figure(figsize=(11, 7.5))
        ax = fig.subplots()
        ax.set_box_aspect(1)
        for i in shown:
            tpr, fpr = curves[i]
            ax.plot(fpr, tpr, lw=1.6, label=f"{names[i]} ({auc[i]:.3f})", **styles[i])
        if k > 2 and defined:
            grid = np.linspace(0.0, 1.0, 401)
            mean_tpr = np.mean([np.interp(grid, *_upper_envelope(curves[i][1], curves[i][0])) for i in defined],
                               axis=0)
            ax.plot(grid, mean_tpr, color="black", lw=2.8, label=f"macro average ({np.mean(auc[defined]):.3f})")
        ax.plot([0.0, 1.0], [0.0, 1.0], color="grey", lw=0.8, ls=":")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("False-positive rate (other classes)")
        ax.set_ylabel("True-positive rate")
        ax.grid(True, alpha=0.3)
        if shown:
            title = "class (AUC)" if len(shown) == len(defined) else \
                f"{len(shown)} of {len(defined)} classes,\nlowest AUC (AUC)"
            legend_outside(ax, title=("one-vs-rest, " if k > 2 else "") + title)
        else:
            ax.text(0.5, 0.5, "no class with both positives and negatives", ha="center", va="center",
                    transform=ax.transAxes)
        return fig


def plot_roc_curves(probs, labels, class_names: Sequence[str], path: str | os.PathLike, max_curves: int = 12
                    ) -> Path:
    """Write :func:`roc_curves_figure` to ``path`` (PNG); returns the path."""
    return save_figure(roc_curves_figure(probs, labels, class_names, max_curves), path)


def confusion_matrix_figure(probs, labels, class_names: Sequence[str], annotate_max: int = 16) -> Figure:
    """Row-normalised confusion matrix ``C[i, j] = P(predicted j | true i)`` in %, with a colour bar.

    Up to ``annotate_max`` classes every cell that rounds to at least 1 % carries its value (whole per cent,
    white on dark cells); above, the colour bar alone reads the matrix. The y labels give each true class's sample
    count ``n``; rows of classes absent from ``labels`` are left at 0.
    """
    p, y = check_probs_labels(probs, labels)
    k = p.shape[1]
    names = _check_names(class_names, k)
    percent = 100.0 * confusion_matrix(p, y, normalize=True)  # (K, K)
    counts = np.bincount(y, minlength=k)
    with plot_style():
        size = max(7.0, 0.62 * k + 4.0)
        fig = Figure(figsize=(size + 1.5, size))
        ax = fig.subplots()
        im = ax.imshow(percent, cmap="Blues", vmin=0.0, vmax=100.0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="% of true class")
        if max(map(len, names)) > 3:  # long names slanted, so that neighbours do not overlap
            ax.set_xticks(range(k), labels=names, rotation=45, ha="right", rotation_mode="anchor")
        else:
            ax.set_xticks(range(k), labels=names)
        ax.set_yticks(range(k), labels=[f"{n} ({c})" for n, c in zip(names, counts)])
        ax.tick_params(which="both", length=0, top=False, right=False, labelsize="small")
        ax.minorticks_off()
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class (n)")
        ax.set_title("Confusion matrix, normalised per true class", fontsize="small")
        if k <= annotate_max:
            fontsize = 18 if k <= 6 else max(9.0, 22.0 - 0.7 * k)
            for i in range(k):
                for j in range(k):
                    if percent[i, j] >= 0.5:
                        ax.text(j, i, f"{percent[i, j]:.0f}", ha="center", va="center", fontsize=fontsize,
                                color="white" if percent[i, j] > 55.0 else "black")
        return fig


def plot_confusion_matrix(probs, labels, class_names: Sequence[str], path: str | os.PathLike,
                          annotate_max: int = 16) -> Path:
    """Write :func:`confusion_matrix_figure` to ``path`` (PNG); returns the path."""
    return save_figure(confusion_matrix_figure(probs, labels, class_names, annotate_max), path)


def residuals_figure(pred, true, name: str, groups=None, group_names: Sequence[str] = (),
                     unit: str | None = None) -> Figure:
    """Predicted against true ``name`` (left, with the diagonal) and the histogram of ``Δ = predicted − true``
    (right), axes labelled in ``unit``; the legend beside the histogram gives each selection's mean ``μ`` and
    standard deviation ``σ`` of Δ. With integer ``groups (N,)`` each group ``i`` present is drawn apart, labelled
    ``group_names[i]``."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 1 or pred.size == 0:
        raise ValueError(f"pred/true: expected two equal non-empty 1-d arrays, got {pred.shape} and {true.shape}")
    if groups is None:
        selections = [("all", np.ones(pred.size, dtype=bool))]
    else:
        groups = np.asarray(groups)
        selections = [(str(label), groups == i) for i, label in enumerate(group_names)]
    delta = pred - true
    lo, hi = np.percentile(delta, [0.5, 99.5]) if delta.size > 1 else (delta[0] - 1.0, delta[0] + 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 41)
    styles = class_styles(len(selections))
    with plot_style():
        fig = Figure(figsize=(17, 7))
        ax_s, ax_h = fig.subplots(1, 2)
        for (label, sel), style in zip(selections, styles):
            if not sel.any():
                continue
            d = delta[sel]
            sigma = f"{d.std(ddof=1):.3g}" if d.size > 1 else "–"
            ax_s.scatter(true[sel], pred[sel], s=5, alpha=0.5, color=style["color"], rasterized=True)
            ax_h.hist(d, bins=bins, histtype="step", lw=1.6, color=style["color"], linestyle=style["linestyle"],
                      label=f"{label}: μ = {d.mean():+.3g}, σ = {sigma}")
        tlo, thi = float(np.min(true)), float(np.max(true))
        ax_s.plot([tlo, thi], [tlo, thi], "k--", lw=1)
        ax_s.set_xlabel(with_unit(f"True {name}", unit))
        ax_s.set_ylabel(with_unit(f"Predicted {name}", unit))
        ax_h.set_xlabel(with_unit(f"Δ{name} = predicted − true", unit))
        ax_h.set_ylabel("Entries")
        legend_outside(ax_h)
        fig.subplots_adjust(wspace=0.3)
        return fig


def plot_residuals(pred, true, name: str, path: str | os.PathLike, groups=None, group_names: Sequence[str] = (),
                   unit: str | None = None) -> Path:
    """Write :func:`residuals_figure` to ``path`` (PNG); returns the path."""
    return save_figure(residuals_figure(pred, true, name, groups, group_names, unit), path)


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


def training_curves_figure(
    csv_path: str | os.PathLike,
    loss_keys: Sequence[str] = ("train/loss", "val/loss"),
    score_keys: Sequence[str] = ("train/acc", "val/acc", "val/auc"),
    score_label: str = "Accuracy, AUC",
) -> Figure:
    """Loss (left) and accuracy/AUC (right) versus optimizer step from a CSVLogger ``metrics.csv``: per-step
    ``train/*`` values as a thin line, per-epoch ``val/*`` as points joined by a thick line, in the colour of the
    quantity (the part after ``/``); the legend of each panel beside it; the right panel's y axis reads
    ``score_label`` (with the unit of other scores, e.g. ``"X_max [g/cm²]"``). Keys absent from the file are
    skipped; raises ``ValueError`` if none is present."""
    csv_path = Path(csv_path)
    series = _read_metrics_csv(csv_path)
    if not any(k in series for k in (*loss_keys, *score_keys)):
        raise ValueError(f"{csv_path}: none of the columns {list(loss_keys) + list(score_keys)} found")
    quantities = list(dict.fromkeys(k.split("/")[-1] for k in (*loss_keys, *score_keys)))  # loss, acc, auc
    colours = dict(zip(quantities, (style["color"] for style in class_styles(len(quantities)))))
    with plot_style():
        fig = Figure(figsize=(19, 6.5))
        ax_loss, ax_score = fig.subplots(1, 2)
        for ax, keys, ylabel in ((ax_loss, loss_keys, "Loss"), (ax_score, score_keys, score_label)):
            for key in keys:
                if key not in series:
                    continue
                steps, values = zip(*series[key])
                per_step = key.startswith("train/")  # the task logs train/* every step, val/* per epoch
                ax.plot(steps, values, "-" if per_step else "o-", color=colours[key.split("/")[-1]],
                        label=key.replace("/", " "), markersize=5, lw=1.0 if per_step else 2.0,
                        alpha=0.6 if per_step else 1.0)
            ax.set_xlabel("Optimizer step")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                legend_outside(ax)
        fig.subplots_adjust(wspace=0.55)
        return fig


def plot_training_curves(
    csv_path: str | os.PathLike,
    path: str | os.PathLike,
    loss_keys: Sequence[str] = ("train/loss", "val/loss"),
    score_keys: Sequence[str] = ("train/acc", "val/acc", "val/auc"),
    score_label: str = "Accuracy, AUC",
) -> Path:
    """Write :func:`training_curves_figure` to ``path`` (PNG); returns the path."""
    return save_figure(training_curves_figure(csv_path, loss_keys, score_keys, score_label), path)
