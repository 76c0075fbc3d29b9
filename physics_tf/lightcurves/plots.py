"""The light-curve wing's test plots beyond the classification head's: early classification."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot_early_classification(days: Sequence[float], summary: Mapping[str, Any], path: Path) -> None:
    """PLAsTiCC weighted log-loss and accuracy of the light curve cut at ``days`` after the first detection
    (summary keys ``early_<d>d_logloss`` / ``early_<d>d_accuracy``), beside the full light curve's log-loss."""
    from matplotlib.figure import Figure

    from physics_tf.tasks.plots import save_figure

    ll = [summary[f"early_{d:g}d_logloss"] for d in days]
    acc = [summary[f"early_{d:g}d_accuracy"] for d in days]
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot(days, ll, "o-", color="C0", label="weighted log-loss")
    ax.axhline(summary["plasticc_logloss"], color="C0", ls=":", label="full light curve")
    ax.set_xlabel("days since first detection")
    ax.set_ylabel("PLAsTiCC weighted log-loss", color="C0")
    ax2 = ax.twinx()
    ax2.plot(days, acc, "s-", color="C1", label="accuracy")
    ax2.set_ylabel("accuracy", color="C1")
    ax2.set_ylim(0, 1)
    ax.set_title("Early classification")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
