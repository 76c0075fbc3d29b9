"""The Auger wing's test plots: bias and resolution of a reconstructed quantity against lg(E/eV), per primary; and
the symbols and units of the reconstructed quantities (:data:`QUANTITIES`) that label every axis.

The task's residual plots (:func:`physics_tf.tasks.plots.plot_residuals`) take the same labels:
``plot_residuals(..., name=quantity_label(name), unit=quantity_unit(name))``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physics_tf.tasks import regression as core

__all__ = ["ENERGY_LABEL", "QUANTITIES", "plot_resolution", "quantity_label", "quantity_unit", "resolution_figure"]

# target name -> (mathtext symbol, unit or None); the units of physics_tf.auger.schema's event fields
QUANTITIES: dict[str, tuple[str, str | None]] = {"xmax": (r"X_\mathrm{max}", "g/cm²"), "lna": (r"\ln A", None)}
ENERGY_LABEL = "lg(E/eV)"


def _symbol(name: str) -> str | None:
    return QUANTITIES[name][0] if name in QUANTITIES else None


def quantity_label(name: str) -> str:
    """How an axis names the target ``name``: ``"xmax" -> "$X_\\mathrm{max}$"``; unknown names as given."""
    sym = _symbol(name)
    return f"${sym}$" if sym else name


def quantity_unit(name: str) -> str | None:
    """The unit of the target ``name`` (``"xmax" -> "g/cm²"``), ``None`` for a dimensionless or unknown one."""
    return QUANTITIES.get(name, (None, None))[1]


def resolution_figure(bins: Sequence[Mapping[str, Any]], res: np.ndarray, lge: np.ndarray, prim: np.ndarray,
                      primaries: Sequence[str], name: str):
    """Bias (left) and resolution (right) of residuals ``res`` (reconstructed − true ``name``) in the lg E ``bins``
    of the summary (``lg_e_lo``, ``lg_e_hi``, ``n``, ``bias``, ``resolution``), for all events (black, with the
    statistical errors σ/√n and σ/√(2(n−1)) and the bin widths) and per primary (class colours); the y axes
    carry the unit of ``name`` (:data:`QUANTITIES`), the legend sits beside the right panel."""
    from matplotlib.figure import Figure

    from physics_tf.tasks.plots import class_styles, legend_outside, plot_style, with_unit

    sym, unit = _symbol(name), quantity_unit(name)
    delta = rf"\Delta {sym}" if sym else None
    bias_label = rf"Bias $\langle {delta} \rangle$" if delta else f"Bias of {name}"
    res_label = rf"Resolution $\sigma({delta})$" if delta else f"Resolution of {name}"
    lo = np.array([b["lg_e_lo"] for b in bins], dtype=np.float64)
    hi = np.array([b["lg_e_hi"] for b in bins], dtype=np.float64)
    centres, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    n = np.array([b["n"] for b in bins], dtype=np.float64)
    bias = np.array([b["bias"] for b in bins], dtype=np.float64)
    sigma = np.array([b["resolution"] for b in bins], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        bias_err, sigma_err = sigma / np.sqrt(n), sigma / np.sqrt(2.0 * (n - 1.0))
    styles = class_styles(len(primaries))
    with plot_style():
        fig = Figure(figsize=(18, 7))
        ax_b, ax_r = fig.subplots(1, 2)
        ax_b.errorbar(centres, bias, xerr=half, yerr=bias_err, fmt="ko", ms=6, lw=1.5, label="all", zorder=3)
        ax_r.errorbar(centres, sigma, xerr=half, yerr=sigma_err, fmt="ko", ms=6, lw=1.5, label="all", zorder=3)
        for i, p in enumerate(primaries):
            per = [core.residual_stats(res[(prim == i) & (lge >= a) & (lge < b)]) for a, b in zip(lo, hi)]
            if any(s["n"] > 1 for s in per):
                kw = {"marker": "o", "ms": 4, "lw": 1.2, **styles[i]}
                ax_b.plot(centres, [s["bias"] for s in per], label=p, **kw)
                ax_r.plot(centres, [s["resolution"] for s in per], label=p, **kw)
        for ax, label in ((ax_b, bias_label), (ax_r, res_label)):
            ax.set_xlabel(ENERGY_LABEL)
            ax.set_ylabel(with_unit(label, unit))
            ax.grid(True, alpha=0.3)
        ax_b.axhline(0.0, color="grey", lw=0.8)
        ax_r.set_ylim(bottom=0.0)
        legend_outside(ax_r, title="primary")
        fig.subplots_adjust(wspace=0.3)
        return fig


def plot_resolution(bins: Sequence[Mapping[str, Any]], res: np.ndarray, lge: np.ndarray, prim: np.ndarray,
                    primaries: Sequence[str], name: str, path: Path) -> Path:
    """Write :func:`resolution_figure` to ``path`` (PNG); returns the path."""
    from physics_tf.tasks.plots import save_figure

    return save_figure(resolution_figure(bins, res, lge, prim, primaries, name), path)
