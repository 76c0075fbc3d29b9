"""The light-curve wing's test plots beyond the classification head's: early classification."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["early_classification_figure", "plot_early_classification"]


def early_classification_figure(days: Sequence[float], summary: Mapping[str, Any]):
    """PLAsTiCC weighted log-loss (top) and accuracy (bottom) of the light curve cut at ``days`` after the first
    detection (summary keys ``early_<d>d_logloss`` / ``early_<d>d_accuracy``), each beside the full light curve's
    value (``plasticc_logloss`` / ``accuracy``, dotted, where the summary has it); one shared time axis."""
    from matplotlib.figure import Figure

    from physics_tf.tasks.plots import PALETTE, legend_outside, plot_style

    days = [float(d) for d in days]
    rows = (("logloss", "plasticc_logloss", "Weighted log-loss"), ("accuracy", "accuracy", "Accuracy"))
    with plot_style():
        fig = Figure(figsize=(12, 9))
        axes = fig.subplots(2, 1, sharex=True)
        for ax, (key, full_key, ylabel), colour in zip(axes, rows, PALETTE):
            ax.plot(days, [summary[f"early_{d:g}d_{key}"] for d in days], "o-", color=colour, ms=7, lw=2,
                    label="light curve cut")
            if full_key in summary:
                ax.axhline(summary[full_key], color=colour, ls=":", lw=2, label="full light curve")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            legend_outside(ax)
        axes[1].set_ylim(0.0, 1.0)
        axes[1].set_xlabel("Time since first detection [d]")
        axes[0].set_title("Early classification", fontsize="medium")
        fig.subplots_adjust(hspace=0.08)
        return fig


def plot_early_classification(days: Sequence[float], summary: Mapping[str, Any], path: Path) -> Path:
    """Write :func:`early_classification_figure` to ``path`` (PNG); returns the path."""
    from physics_tf.tasks.plots import save_figure

    return save_figure(early_classification_figure(days, summary), path)
