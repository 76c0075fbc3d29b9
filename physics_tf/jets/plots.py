"""The jet-tagging ROC plot: background rejection against signal efficiency (ParT convention).

Drawn with the core's style, class styles, legend placement and atomic PNG writer (:mod:`physics_tf.tasks.plots`);
the numbers come from :mod:`physics_tf.jets.metrics`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from physics_tf.jets.metrics import (
    DEFAULT_BACKGROUND,
    background_rejection,
    pairwise_scores,
    resolve_background,
    signal_name,
)
from physics_tf.tasks.metrics import check_probs_labels, roc_curve
from physics_tf.tasks.plots import class_styles, legend_outside, plot_style, save_figure

__all__ = ["plot_rejection_roc", "rejection_label", "rejection_roc_figure"]


def rejection_label(rejection: float, n_background: int) -> str:
    """A rejection as the legend shows it: ``125``, ``3.2``; infinite (no background jet passes the cut) as the
    bound the sample gives, ``> N_B``; ``n/a`` for NaN."""
    if np.isnan(rejection):
        return "n/a"
    if np.isinf(rejection):
        return f"> {n_background}"
    return f"{rejection:.3g}" if rejection < 100 else f"{rejection:.0f}"


def rejection_roc_figure(
    probs,
    labels,
    class_names: Sequence[str],
    background: str | int | None = DEFAULT_BACKGROUND,
    reference_eff: float = 0.5,
) -> Figure:
    """ROC curves in the jet-tagging convention: x = signal efficiency, y = background rejection.

    One line per signal class ``s`` vs the background class, discriminant
    ``p_s / (p_s + p_b)`` (see :mod:`physics_tf.jets.metrics`); y is ``1 / eps_B`` on a log axis.
    Points with ``eps_B = 0`` (infinite rejection) are not drawn. The legend beside the axes quotes the
    rejection at ``reference_eff`` (an infinite one as ``> N_B``, :func:`rejection_label`). Signal classes without
    jets in the sample are skipped.
    """
    p, y = check_probs_labels(probs, labels)
    bkg = resolve_background(class_names, background)
    styles = class_styles(len(class_names))
    with plot_style():
        fig = Figure(figsize=(11, 7.5))
        ax = fig.subplots()
        ax.set_box_aspect(1)
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
            label = f"{signal_name(name)} ({rejection_label(rej_ref, b_scores.size)})"
            ax.plot(tpr[ok], 1.0 / fpr[ok], lw=1.6, label=label, **styles[sig])
            drawn += 1
        ax.set_yscale("log")
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel(r"Signal efficiency $\varepsilon_S$")
        ax.set_ylabel(r"Background rejection $1/\varepsilon_B$")
        ax.grid(True, which="major", alpha=0.3)
        if drawn:
            legend_outside(ax, title=f"vs {signal_name(str(class_names[bkg]))}\n"
                                     rf"($1/\varepsilon_B$ at $\varepsilon_S$ = {100 * reference_eff:g} %)")
        else:
            ax.text(0.5, 0.5, "no signal/background jets", ha="center", va="center", transform=ax.transAxes)
        return fig


def plot_rejection_roc(
    probs,
    labels,
    class_names: Sequence[str],
    path: str | os.PathLike,
    background: str | int | None = DEFAULT_BACKGROUND,
    reference_eff: float = 0.5,
) -> Path:
    """Write :func:`rejection_roc_figure` to ``path`` (PNG); returns the path."""
    return save_figure(rejection_roc_figure(probs, labels, class_names, background, reference_eff), path)
