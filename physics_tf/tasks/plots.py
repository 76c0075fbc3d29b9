"""Evaluation plots saved as PNG files: ROC curves, confusion matrix, training curves.

All figures are built with :class:`matplotlib.figure.Figure` (Agg rendering, no pyplot
state, no display needed) and written atomically (temporary file in the target directory,
then :func:`os.replace`).  If ``mplhep`` is importable its ``ROOT`` style is applied inside a
style context (global rcParams are left untouched); otherwise matplotlib defaults are used.
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
from physics_tf.tasks.metrics import (
    DEFAULT_BACKGROUND,
    check_probs_labels,
    background_rejection,
    pairwise_scores,
    resolve_background,
    roc_curve,
    signal_name,
)

__all__ = ["plot_confusion_matrix", "plot_roc", "plot_training_curves", "save_figure"]


def _style():
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


def plot_roc(
    probs,
    labels,
    class_names: Sequence[str],
    path: str | os.PathLike,
    background: str | int | None = DEFAULT_BACKGROUND,
    reference_eff: float = 0.5,
) -> Path:
    """ROC curves in the jet-tagging convention: x = signal efficiency, y = background rejection.

    One line per signal class ``s`` vs the background class, discriminant
    ``p_s / (p_s + p_b)`` (see :mod:`physics_tf.tasks.metrics`); y is ``1 / eps_B`` on a log axis.
    Points with ``eps_B = 0`` (infinite rejection) are not drawn.  The legend quotes the
    rejection at ``reference_eff``.  Signal classes without jets in the sample are skipped.
    """
    p, y = check_probs_labels(probs, labels)
    bkg = resolve_background(class_names, background)
    with _style():
        fig = Figure(figsize=(8, 7))
        ax = fig.subplots()
        drawn = 0
        for sig, name in enumerate(class_names):
            if sig == bkg:
                continue
            s_scores, b_scores = pairwise_scores(p, y, sig, bkg)
            if s_scores.size == 0 or b_scores.size == 0:
                continue
            tpr, fpr = roc_curve(s_scores, b_scores)
            ok = fpr > 0
            rej_ref = background_rejection(s_scores, b_scores, reference_eff)
            label = f"{signal_name(name)} vs {signal_name(class_names[bkg])}"
            label += f" (1/$\\varepsilon_B$@{reference_eff:g} = {rej_ref:.1f})"
            ax.plot(tpr[ok], 1.0 / fpr[ok], label=label)
            drawn += 1
        ax.set_yscale("log")
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel(r"Signal efficiency $\varepsilon_S$")
        ax.set_ylabel(r"Background rejection $1/\varepsilon_B$")
        ax.grid(True, which="major", alpha=0.3)
        if drawn:
            ax.legend(loc="lower left", fontsize="x-small")
        else:
            ax.text(0.5, 0.5, "no signal/background jets", ha="center", va="center", transform=ax.transAxes)
        return save_figure(fig, path)


def plot_confusion_matrix(
    probs,
    labels,
    class_names: Sequence[str],
    path: str | os.PathLike,
) -> Path:
    """Row-normalised confusion matrix ``C[i, j] = P(predicted j | true i)``, annotated in %.

    Rows of classes absent from ``labels`` are left at 0.
    """
    p, y = check_probs_labels(probs, labels)
    k = p.shape[1]
    if len(class_names) != k:
        raise ValueError(f"class_names: {len(class_names)} names for {k} probability columns")
    pred = np.argmax(p, axis=1)  # (N,)
    counts = np.zeros((k, k), dtype=np.float64)
    np.add.at(counts, (y, pred), 1.0)
    rows = counts.sum(axis=1, keepdims=True)  # (K, 1)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)  # (K, K)
    names = [signal_name(n) for n in class_names]
    with _style():
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
    with _style():
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
