"""The Auger wing's test plots: bias and resolution of a reconstructed quantity against lg(E/eV), per primary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physics_tf.tasks import regression as core


def plot_resolution(bins: Sequence[Mapping[str, Any]], res: np.ndarray, lge: np.ndarray, prim: np.ndarray,
                    primaries: Sequence[str], name: str, path: Path) -> None:
    """Bias (left) and resolution (right) of residuals ``res`` in the lg E ``bins`` of the summary, for all events
    and per primary."""
    from matplotlib.figure import Figure

    from physics_tf.tasks.plots import save_figure

    fig = Figure(figsize=(12, 5))
    ax_b, ax_r = fig.subplots(1, 2)
    centres = np.array([0.5 * (b["lg_e_lo"] + b["lg_e_hi"]) for b in bins])
    ax_b.plot(centres, [b["bias"] for b in bins], "ko-", label="all")
    ax_r.plot(centres, [b["resolution"] for b in bins], "ko-", label="all")
    for i, p in enumerate(primaries):
        per = [core.residual_stats(res[(prim == i) & (lge >= b["lg_e_lo"]) & (lge < b["lg_e_hi"])]) for b in bins]
        if any(s["n"] > 1 for s in per):
            ax_b.plot(centres, [s["bias"] for s in per], "o--", ms=3, label=p)
            ax_r.plot(centres, [s["resolution"] for s in per], "o--", ms=3, label=p)
    ax_b.set_xlabel("lg(E/eV)")
    ax_r.set_xlabel("lg(E/eV)")
    ax_b.set_ylabel(f"bias of {name}")
    ax_r.set_ylabel(f"resolution of {name}")
    ax_b.axhline(0.0, color="grey", lw=0.5)
    ax_b.legend()
    ax_r.legend()
    save_figure(fig, path)
