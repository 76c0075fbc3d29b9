"""Attention maps of a jet tagger (ParT): what the network looks at, drawn from the weights that
:func:`physics_tf.nn.inspect.record_attention` records (driver: :mod:`physics_tf.training.explain`).

* ``jet_<k>_class_attention.png`` — one jet: its particles in the η–φ plane relative to the jet axis (Δη, Δφ
  of the summed four-vector; marker area ∝ pT), coloured by the class token's attention to each particle, one
  panel per class-attention block (head average; the colours span the jet's smallest to largest weight).
* ``jet_<k>_heads.png`` — the same jet: every head's particle-attention map of one particle block (the last by
  default) and, below it, that head's interaction bias U (the pair-feature embedding added to the attention
  logits); particles in pT order (hardest first), real particles only.
* ``jet_attention_averages.png`` — over all jets run, per class (top against QCD): the class attention against
  the particle's ΔR to the jet axis and against its pT rank, and the particle-to-particle attention of the last
  block against the pair's ΔR. Weights are shown as N·w / Σw over the jet's N real particles (the class token's
  own share left out; 1 = uniform attention), so jets of different multiplicity average together.

Keys of a class-attention block are [class token, particles]; ParT cuts each batch to its longest jet, so the
records' particle axis is the first L particles of the batch (real particles come first).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from physics_tf.tasks.plots import class_styles, legend_outside, plot_style, save_figure
from physics_tf.training.explain import AttentionBatch, BinnedMean, pick_examples, share

__all__ = ["averages_figure", "class_attention_figure", "explain_plots", "heads_figure", "jet_coordinates"]

DR_EDGES = np.linspace(0.0, 1.0, 21)
PAIR_DR_EDGES = np.linspace(0.0, 1.6, 33)
MAX_RANK = 30


def jet_coordinates(v: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four-vectors (B, P, 4) = (px, py, pz, E) → pT, Δη, Δφ (B, P) relative to the jet axis (sum of the real
    particles); 0 at padding."""
    v = np.asarray(v, dtype=np.float64) * mask[..., None]
    pt = np.hypot(v[..., 0], v[..., 1])
    eta = np.arcsinh(np.divide(v[..., 2], pt, out=np.zeros_like(pt), where=pt > 0))
    phi = np.arctan2(v[..., 1], v[..., 0])
    jet = v.sum(axis=1)  # (B, 4)
    jet_pt = np.hypot(jet[:, 0], jet[:, 1])
    jet_eta = np.arcsinh(np.divide(jet[:, 2], jet_pt, out=np.zeros_like(jet_pt), where=jet_pt > 0))
    jet_phi = np.arctan2(jet[:, 1], jet[:, 0])
    deta = (eta - jet_eta[:, None]) * mask
    dphi = (np.remainder(phi - jet_phi[:, None] + math.pi, 2 * math.pi) - math.pi) * mask
    return pt * mask, deta, dphi


def _class_records(ab: AttentionBatch):
    return [r for r in ab.maps if r.kind == "class"]


def _particle_records(ab: AttentionBatch):
    return [r for r in ab.maps if r.kind == "self"]


def class_attention_figure(pt: np.ndarray, deta: np.ndarray, dphi: np.ndarray, weights: list[np.ndarray],
                           title: str) -> Figure:
    """One jet (real particles only): a panel per class block, particles at (Δη, Δφ), area ∝ pT, colour = the
    class token's attention (head average) ``weights[i]`` (n,)."""
    n_panels = max(len(weights), 1)
    fig = Figure(figsize=(9.0 * n_panels, 8.0), layout="constrained")
    size = 30 + 1500 * pt / max(float(pt.max()), 1e-9)
    order = np.argsort(pt)  # soft first, so the hard particles are drawn on top
    # colours span this jet's smallest to largest weight (a barely trained network's are almost uniform)
    vmin, vmax = float(min(w.min() for w in weights)), float(max(w.max() for w in weights))
    for i, w in enumerate(weights):
        ax = fig.add_subplot(1, n_panels, i + 1)
        sc = ax.scatter(deta[order], dphi[order], s=size[order], c=w[order], cmap="viridis", vmin=vmin, vmax=vmax,
                        edgecolors="k", linewidths=0.3)
        ax.set_xlabel(r"$\Delta\eta$")
        ax.set_ylabel(r"$\Delta\phi$")
        ax.set_title(f"class block {i}", fontsize="medium")
        ax.set_aspect("equal", adjustable="datalim")
        fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.04, label="class token's attention")
    fig.suptitle(title, fontsize="medium")
    return fig


def heads_figure(weights: np.ndarray, bias: np.ndarray | None, title: str) -> Figure:
    """Per head (columns): the particle-attention map (n, n) (rows: queries, columns: keys; pT order) and, in a
    second row, the interaction bias U of that head. ``weights`` (H, n, n), ``bias`` (H, n, n) or None."""
    heads = weights.shape[0]
    rows = 2 if bias is not None else 1
    fig = Figure(figsize=(4.2 * heads + 2.5, 4.4 * rows + 1.2))
    grid = fig.add_gridspec(rows, heads)
    vmax = float(weights.max())
    for h in range(heads):
        ax = fig.add_subplot(grid[0, h])
        im = ax.imshow(weights[h], cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"head {h}", fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
        if h == 0:
            ax.set_ylabel("query (pT order)", fontsize="small")
    fig.colorbar(im, ax=fig.axes[:heads], fraction=0.02, pad=0.01, label="attention")
    if bias is not None:
        lim = max(float(np.abs(bias).max()), 1e-9)
        for h in range(heads):
            ax = fig.add_subplot(grid[1, h])
            imb = ax.imshow(bias[h], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("key", fontsize="small")
            if h == 0:
                ax.set_ylabel("interaction U", fontsize="small")
        fig.colorbar(imb, ax=fig.axes[heads + 1:], fraction=0.02, pad=0.01, label="U")
    fig.suptitle(title, fontsize="medium")
    return fig


def averages_figure(dr: BinnedMean, rank: BinnedMean, pair: BinnedMean | None, names: list[str],
                    num_jets: int) -> Figure:
    """Mean N·w per class against ΔR to the axis, pT rank and (particle attention) pair ΔR."""
    panels = [(dr, r"particle $\Delta R$ to the jet axis", "class attention"),
              (rank, r"particle $p_T$ rank (1 = hardest)", "class attention")]
    if pair is not None:
        panels.append((pair, r"pair $\Delta R_{ij}$", "particle attention"))
    fig = Figure(figsize=(8.5 * len(panels) + 3.0, 7.5), layout="constrained")
    styles = class_styles(len(names))
    for i, (acc, xlabel, what) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        mean, err = acc.mean(), acc.sem()
        for c, name in enumerate(names):
            if not np.any(acc.count[c] > 0):
                continue
            ax.errorbar(acc.centres, mean[c], yerr=err[c], label=name, marker="o", markersize=3, capsize=0,
                        **styles[c])
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"relative {what} (1 = uniform)")
        ax.set_title(f"mean over {num_jets} jets", fontsize="medium")
        if i == len(panels) - 1:
            legend_outside(ax)
    return fig


def _rank(pt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """pT rank of every particle in its jet (1 = hardest), 0 at padding: (B, P)."""
    order = np.argsort(-np.where(mask, pt, -np.inf), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, pt.shape[1] + 1)[None, :].repeat(len(pt), 0), axis=1)
    return rank * mask


def explain_plots(batches: Iterable[AttentionBatch], out_dir: str | Path, *, datamodule: Any = None,
                  num_examples: int = 4, block: int = -1) -> list[Path]:
    """Draw the module docstring's figures into ``out_dir`` from a stream of attention batches; returns the paths.

    ``block``: the particle block whose per-head maps are drawn (default the last)."""
    out = Path(out_dir)
    names = list(getattr(datamodule, "class_names", None) or [])
    written: list[Path] = []
    acc_dr = acc_rank = acc_pair = None
    num_jets = 0
    for ab in batches:
        mask_full = ab.batch["mask"].numpy().astype(bool)
        v_full = ab.batch["v"].numpy()
        labels = ab.batch["y"].numpy().astype(np.int64) if "y" in ab.batch else None
        cls, parts = _class_records(ab), _particle_records(ab)
        if not cls:
            raise ValueError("no class-attention layer recorded: the jet drawing needs a class-token model (ParT)")
        length = cls[-1].weights.shape[-1] - 1  # keys: [class token, L particles]
        mask, v = mask_full[:, :length], v_full[:, :length]
        pt, deta, dphi = jet_coordinates(v, mask)
        if not names:
            names = [f"class {i}" for i in range(int(labels.max()) + 1)] if labels is not None else ["all jets"]
        if acc_dr is None:
            acc_dr, acc_rank = BinnedMean(DR_EDGES, len(names)), BinnedMean(np.arange(MAX_RANK + 1) + 0.5, len(names))
            acc_pair = BinnedMean(PAIR_DR_EDGES, len(names)) if parts else None
        group = labels if labels is not None else np.zeros(len(mask), dtype=np.int64)
        n_real = mask.sum(axis=1)  # (B,)
        w_cls = cls[-1].mean_heads()[:, 0, 1:].numpy()  # (B, L) last class block, head average
        sel = mask
        gmat = np.broadcast_to(group[:, None], mask.shape)
        scaled = share(w_cls, mask)
        acc_dr.add(np.hypot(deta, dphi)[sel], scaled[sel], gmat[sel])
        acc_rank.add(_rank(pt, mask)[sel], scaled[sel], gmat[sel])
        if parts:
            w_p = parts[block].mean_heads().numpy()  # (B, L, L)
            pair_dr = np.hypot(deta[:, :, None] - deta[:, None, :],
                               np.remainder(dphi[:, :, None] - dphi[:, None, :] + math.pi, 2 * math.pi) - math.pi)
            pair_ok = mask[:, :, None] & mask[:, None, :] & ~np.eye(length, dtype=bool)[None]
            acc_pair.add(pair_dr[pair_ok], (w_p * n_real[:, None, None])[pair_ok],
                         np.broadcast_to(group[:, None, None], pair_ok.shape)[pair_ok])
        if num_jets == 0:  # single-jet pictures from the first batch
            for k, b in enumerate(pick_examples(labels, min(num_examples, len(mask)))):
                n = int(n_real[b])
                if n == 0:
                    continue
                label = names[labels[b]] if labels is not None else "jet"
                prob = np.exp(ab.outputs[b].numpy() - ab.outputs[b].numpy().max())
                title = f"{label} jet, {n} particles; network: " + ", ".join(
                    f"{nm} {p:.2f}" for nm, p in zip(names, prob / prob.sum()) if len(names) == len(prob))
                weights = [r.mean_heads()[b, 0, 1:n + 1].numpy() for r in cls]
                with plot_style():
                    fig = class_attention_figure(pt[b, :n], deta[b, :n], dphi[b, :n], weights, title)
                written.append(save_figure(fig, out / f"jet_{k}_class_attention.png", dpi=100))
                if parts:
                    order = np.argsort(-pt[b, :n], kind="stable")
                    rec = parts[block]
                    wmap = rec.weights[b, :, :n, :n].numpy()[:, order][:, :, order]
                    bias = rec.bias[b, :, :n, :n].numpy()[:, order][:, :, order] if rec.bias is not None else None
                    with plot_style():
                        fig = heads_figure(wmap, bias, f"{label} jet: {rec.name} per head (pT order)")
                    written.append(save_figure(fig, out / f"jet_{k}_heads.png", dpi=100))
        num_jets += len(mask)
    if acc_dr is not None:
        with plot_style():
            fig = averages_figure(acc_dr, acc_rank, acc_pair, names, num_jets)
        written.append(save_figure(fig, out / "jet_attention_averages.png", dpi=100))
    return written
