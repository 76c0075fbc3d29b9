"""Attention maps of the Auger transformer: which stations the event summary reads, drawn on the hexagonal grid
from the weights that :func:`physics_tf.nn.inspect.record_attention` records (driver:
:mod:`physics_tf.training.explain`).

* ``event_<k>_station_attention.png`` — one event on its n×n patch of the 1500 m grid (hexagonal cells at the
  station positions; silent stations as empty cells): left the signals log10(1 + S/VEM), right the class token's
  attention to each station (last class-attention block of the spatial pooling, head average; colours from the
  event's smallest to its largest weight); both with the
  shower core — the signal-weighted barycentre, as :class:`~physics_tf.auger.geometry.ShowerGeometry` estimates
  it — and the arrow of the fitted arrival direction projected on the ground.
* ``station_attention_averages.png`` — over all events run, per primary: N·w / Σw over the event's N stations
  (1 = uniform) against the station's distance to the core and against its signal rank.

The spatial class-attention keys are [class token, the event's real stations in row-major grid order] (the model
packs the real stations to the front, :func:`physics_tf.nn.packing.left_aligned`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import RegularPolygon

from physics_tf.auger.geometry import ShowerGeometry
from physics_tf.tasks.plots import plot_style, relative_attention_figure, save_figure
from physics_tf.training.explain import AttentionBatch, BinnedMean, pick_examples, share

__all__ = ["averages_figure", "core_and_axis", "explain_plots", "station_attention_figure"]

CELL = 1.0 / math.sqrt(3.0)  # circumradius of the hexagonal cell of a triangular grid of unit spacing
DIST_EDGES = np.linspace(0.0, 4.0, 17)  # grid spacings (1500 m)
MAX_RANK = 20


def core_and_axis(positions: np.ndarray, times: np.ndarray, signals: np.ndarray, mask: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Core (B, 2) = the signal-weighted barycentre of the real stations (grid units) and the ground projection of
    the fitted arrival direction (B, 2) (:class:`ShowerGeometry`'s plane-front fit)."""
    b = len(mask)
    m = mask.reshape(b, -1)
    feats = np.concatenate([positions.reshape(b, -1, 3), times.reshape(b, -1, 1), signals.reshape(b, -1, 1)], -1)
    s = np.maximum(10.0 ** feats[..., 4] - 1.0, 0.0) * m
    total = np.maximum(s.sum(1, keepdims=True), 1e-9)
    core = np.stack([(s * feats[..., 0]).sum(1), (s * feats[..., 1]).sum(1)], -1) / total
    _, event = ShowerGeometry()(torch.from_numpy(feats).float(), torch.from_numpy(m))
    return core, event[:, :2].numpy()


def _hex_panel(fig: Figure, ax, xy: np.ndarray, values: np.ndarray, real: np.ndarray, cmap: str, label: str,
               core: np.ndarray, axis: np.ndarray, title: str, from_zero: bool = True) -> None:
    """Cells at ``xy`` (S, 2), the real ones coloured by ``values``: from 0 (``from_zero``) or from the smallest
    real value to the largest."""
    shown = values[real] if real.any() else np.zeros(1)
    norm = Normalize(0.0 if from_zero else float(shown.min()), max(float(shown.max()), 1e-9))
    cells = [RegularPolygon((x, y), numVertices=6, radius=CELL * 0.95) for x, y in xy]
    empty = PatchCollection([c for c, r in zip(cells, real) if not r], facecolor="none", edgecolor="0.75", lw=0.8)
    filled = PatchCollection([c for c, r in zip(cells, real) if r], cmap=cmap, norm=norm, edgecolor="k", lw=0.6)
    filled.set_array(values[real])
    ax.add_collection(empty)
    ax.add_collection(filled)
    ax.plot(*core, marker="*", ms=22, color="red", mec="k", ls="none", label="core (signal barycentre)")
    ax.annotate("", xy=(core[0] - 1.5 * axis[0], core[1] - 1.5 * axis[1]), xytext=tuple(core),
                arrowprops={"arrowstyle": "->", "color": "red", "lw": 2})  # the shower travels away from the source
    pad = CELL * 1.2
    ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
    ax.set_ylim(xy[:, 1].min() - pad, xy[:, 1].max() + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("x [1500 m]")
    ax.set_ylabel("y [1500 m]")
    ax.set_title(title, fontsize="medium")
    fig.colorbar(filled, ax=ax, fraction=0.046, pad=0.04, label=label)


def station_attention_figure(xy: np.ndarray, real: np.ndarray, signal: np.ndarray, weight: np.ndarray,
                             core: np.ndarray, axis: np.ndarray, title: str) -> Figure:
    """One event: every cell of the patch at ``xy`` (S, 2); ``real`` (S,) bool; ``signal`` log10(1 + S/VEM) and
    the class attention ``weight`` per cell (S,) (0 at silent stations)."""
    fig = Figure(figsize=(19, 7.5), layout="constrained")
    _hex_panel(fig, fig.add_subplot(1, 2, 1), xy, signal, real, "magma_r", r"$\log_{10}(1 + S/\mathrm{VEM})$",
               core, axis, "signals")
    ax = fig.add_subplot(1, 2, 2)
    _hex_panel(fig, ax, xy, weight, real, "viridis", "class token's attention", core, axis, "class attention",
               from_zero=False)
    ax.legend(loc="upper left", fontsize="x-small")  # the rhombus leaves that corner empty
    fig.suptitle(title, fontsize="medium")
    return fig


def averages_figure(dist: BinnedMean, rank: BinnedMean, names: list[str], num_events: int) -> Figure:
    fig, _ = relative_attention_figure([(dist, "station distance to the core [1500 m]"),
                                        (rank, "station signal rank (1 = largest)")], names, f"{num_events} events",
                                       legend_title="primary")
    return fig


def _title(ab: AttentionBatch, b: int, datamodule: Any) -> str:
    kw = getattr(datamodule, "task_kwargs", None) or {}
    parts = [f"{int(ab.batch['mask'][b].sum())} stations"]
    if "aux_lg_energy" in ab.batch:
        parts.append(f"lg(E/eV) = {float(ab.batch['aux_lg_energy'][b]):.2f}")
    names = list(kw.get("target_names") or [])
    if "xmax" in names and "aux_xmax" in ab.batch:
        i = names.index("xmax")
        pred = float(ab.outputs[b, i]) * kw["target_std"][i] + kw["target_mean"][i]
        parts.append(f"$X_{{max}}$ true {float(ab.batch['aux_xmax'][b]):.0f}, predicted {pred:.0f} g/cm²")
    return ", ".join(parts)


def explain_plots(batches: Iterable[AttentionBatch], out_dir: str | Path, *, datamodule: Any = None,
                  num_examples: int = 4) -> list[Path]:
    """Draw the module docstring's figures into ``out_dir`` from a stream of attention batches; returns the paths."""
    out = Path(out_dir)
    kw = getattr(datamodule, "task_kwargs", None) or {}
    names = list(kw.get("primaries") or [])
    written: list[Path] = []
    acc_dist = acc_rank = None
    num_events = 0
    for ab in batches:
        cls = [r for r in ab.maps if r.kind == "class" and r.name.startswith("pool.")]
        if not cls:
            raise ValueError("no spatial class-attention layer ('pool.blocks.*') recorded: the Auger drawing needs "
                             "the Auger transformer")
        mask = ab.batch["mask"].numpy().astype(bool)  # (B, n, n)
        b_size = len(mask)
        real = mask.reshape(b_size, -1)  # (B, S)
        pos = ab.batch["positions"].numpy()
        xy = pos.reshape(b_size, -1, 3)[..., :2]
        sig = ab.batch["signals"].numpy().reshape(b_size, -1)
        core, axis = core_and_axis(pos, ab.batch["times"].numpy(), ab.batch["signals"].numpy(), mask)
        w_packed = cls[-1].mean_heads()[:, 0, 1:].numpy()  # (B, L) stations in row-major grid order
        weight = np.zeros(real.shape)
        for b in range(b_size):
            idx = np.flatnonzero(real[b])
            weight[b, idx] = w_packed[b, : len(idx)]
        group = ab.batch["aux_primary"].numpy().astype(np.int64) if "aux_primary" in ab.batch \
            else np.zeros(b_size, dtype=np.int64)
        if not names or group.max() >= len(names):
            names = [f"primary {i}" for i in range(int(group.max()) + 1)] if "aux_primary" in ab.batch else ["all"]
        if acc_dist is None:
            acc_dist = BinnedMean(DIST_EDGES, len(names))
            acc_rank = BinnedMean(np.arange(MAX_RANK + 1) + 0.5, len(names))
        scaled = share(weight, real)
        gmat = np.broadcast_to(group[:, None], real.shape)
        dist = np.hypot(xy[..., 0] - core[:, None, 0], xy[..., 1] - core[:, None, 1])
        order = np.argsort(-np.where(real, sig, -np.inf), axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(1, real.shape[1] + 1)[None].repeat(b_size, 0), axis=1)
        acc_dist.add(dist[real], scaled[real], gmat[real])
        acc_rank.add(rank[real], scaled[real], gmat[real])
        if num_events == 0:
            for k, b in enumerate(pick_examples(group if "aux_primary" in ab.batch else None,
                                                min(num_examples, b_size))):
                if not real[b].any():
                    continue
                title = f"{names[group[b]]}: " + _title(ab, b, datamodule)
                with plot_style():
                    fig = station_attention_figure(xy[b], real[b], sig[b], weight[b], core[b], axis[b], title)
                written.append(save_figure(fig, out / f"event_{k}_station_attention.png", dpi=100))
        num_events += b_size
    if acc_dist is not None:
        with plot_style():
            fig = averages_figure(acc_dist, acc_rank, names, num_events)
        written.append(save_figure(fig, out / "station_attention_averages.png", dpi=100))
    return written
