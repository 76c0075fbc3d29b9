"""The jet-tagging ROC plot: background rejection against signal efficiency (ParT convention).

Drawn with the core's style and atomic PNG writer (:mod:`physics_tf.tasks.plots`); the numbers come from
:mod:`physics_tf.jets.metrics`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from physics_tf.jets.metrics import (
    DEFAULT_BACKGROUND,
    background_rejection,
    pairwise_scores,
    resolve_background,
    signal_name,
)
from physics_tf.tasks.metrics import check_probs_labels, roc_curve
from physics_tf.tasks.plots import plot_style, save_figure

__all__ = ["plot_rejection_roc"]


def plot_rejection_roc(
    probs,
    labels,
    class_names: Sequence[str],
    path: str | os.PathLike,
    background: str | int | None = DEFAULT_BACKGROUND,
    reference_eff: float = 0.5,
) -> Path:
    """ROC curves in the jet-tagging convention: x = signal efficiency, y = background rejection.

    One line per signal class ``s`` vs the background class, discriminant
    ``p_s / (p_s + p_b)`` (see :mod:`physics_tf.jets.metrics`); y is ``1 / eps_B`` on a log axis.
    Points with ``eps_B = 0`` (infinite rejection) are not drawn.  The legend quotes the
    rejection at ``reference_eff``.  Signal classes without jets in the sample are skipped.
    """
    p, y = check_probs_labels(probs, labels)
    bkg = resolve_background(class_names, background)
    with plot_style():
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
