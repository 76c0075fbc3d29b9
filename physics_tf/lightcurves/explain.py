"""Attention maps of the light-curve transformer: which observations the classification reads, drawn on the light
curve band by band from the weights that :func:`physics_tf.nn.inspect.record_attention` records (driver:
:mod:`physics_tf.training.explain`).

* ``object_<k>_observation_attention.png`` — one object: a panel per passband (u g r i z y) with the flux and its
  error against time, every observation coloured by the class token's attention to it (last class-attention
  block, head average; one colour scale for all bands, from the object's smallest to its largest weight); the
  title gives the true and the predicted class and the weight on the metadata (conditioning) token.
* ``observation_attention_averages.png`` — over all objects run, per class: N·w / Σw over the object's N
  observations (the class and metadata tokens' shares left out; 1 = uniform) against the time to the object's
  brightest observation, and the mean per band.

Keys of the class-attention block are [class token, conditioning token, tokens] (the model puts the metadata
token before the observations). A token is one observation in batch order, or — when the model orders the
observations in time (local attention kinds, the location score) or patches them (``patch_size`` > 1) — the
observations its ``token_elements`` names: a token's weight is then shared equally among the observations it holds
(:func:`observation_weights`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from physics_tf.lightcurves.io import BANDS
from physics_tf.tasks.plots import plot_style, relative_attention_figure, save_figure
from physics_tf.training.explain import AttentionBatch, BinnedMean, pick_examples, share

__all__ = ["averages_figure", "explain_plots", "observation_attention_figure", "observation_weights"]

TIME_EDGES = np.linspace(-150.0, 300.0, 31)  # days from the brightest observation
OBSERVATIONS = 2  # key index of the first observation: [class token, conditioning token, observations...]


def observation_weights(token_weight: np.ndarray, tokens: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    """Attention on the observations (B, L) from the attention on the tokens (B, L'): with ``tokens`` (B, L', P)
    (indices of the observations each token holds, −1 for none) each token's weight is split equally among its
    observations; without, token j is observation j. Zero at padding."""
    if tokens is None:
        return token_weight[:, : mask.shape[1]] * mask
    held = tokens >= 0  # (B, L', P)
    count = held.sum(axis=-1)  # (B, L')
    each = np.divide(token_weight, count, out=np.zeros(token_weight.shape), where=count > 0)  # (B, L')
    rows = np.broadcast_to(np.arange(len(tokens))[:, None, None], tokens.shape)
    out = np.zeros(mask.shape)
    np.add.at(out, (rows[held], tokens[held]), np.broadcast_to(each[..., None], tokens.shape)[held])
    return out * mask


def observation_attention_figure(time: np.ndarray, flux: np.ndarray, flux_err: np.ndarray, band: np.ndarray,
                                 weight: np.ndarray, title: str) -> Figure:
    """One object's real observations (n,) each: a panel per band present, points coloured by ``weight``."""
    present = [b for b in range(len(BANDS)) if np.any(band == b)] or [0]
    fig = Figure(figsize=(13, 2.6 * len(present) + 1.6), layout="constrained")
    axes = fig.subplots(len(present), 1, sharex=True, squeeze=False)[:, 0]
    norm = Normalize(float(weight.min()), float(weight.max()))  # this object's smallest to largest weight
    for ax, b in zip(axes, present):
        sel = band == b
        ax.errorbar(time[sel], flux[sel], yerr=flux_err[sel], fmt="none", ecolor="0.6", lw=0.8, zorder=1)
        sc = ax.scatter(time[sel], flux[sel], c=weight[sel], cmap="viridis", norm=norm, s=30 + 2500 * weight[sel],
                        edgecolors="k", linewidths=0.4, zorder=2)
        ax.set_ylabel(f"{BANDS[b]} flux", fontsize="small")
        ax.axhline(0.0, color="0.8", lw=0.6, zorder=0)
    axes[-1].set_xlabel("time [days]")
    fig.colorbar(sc, ax=list(axes), fraction=0.03, pad=0.01, label="class token's attention")
    fig.suptitle(title, fontsize="medium")
    return fig


def averages_figure(time_acc: BinnedMean, band_acc: BinnedMean, names: list[str], num_objects: int) -> Figure:
    fig, axes = relative_attention_figure([(time_acc, "time from the brightest observation [days]"),
                                           (band_acc, "passband")], names, f"{num_objects} objects")
    axes[1].set_xticks(range(len(BANDS)), BANDS)
    return fig


def explain_plots(batches: Iterable[AttentionBatch], out_dir: str | Path, *, datamodule: Any = None,
                  num_examples: int = 4) -> list[Path]:
    """Draw the module docstring's figures into ``out_dir`` from a stream of attention batches; returns the paths."""
    out = Path(out_dir)
    names = list(getattr(datamodule, "class_names", None) or [])
    written: list[Path] = []
    acc_time = acc_band = None
    num_objects = 0
    for ab in batches:
        cls = [r for r in ab.maps if r.kind == "class"]
        if not cls:
            raise ValueError("no class-attention layer recorded: the light-curve drawing needs a class-token model")
        mask = ab.batch["mask"].numpy().astype(bool)  # (B, L)
        time, flux = ab.batch["time"].numpy(), ab.batch["flux"].numpy()
        flux_err, band = ab.batch["flux_err"].numpy(), ab.batch["band"].numpy()
        labels = ab.batch["y"].numpy().astype(np.int64) if "y" in ab.batch else None
        group = labels if labels is not None else np.zeros(len(mask), dtype=np.int64)
        if not names:
            names = [f"class {i}" for i in range(int(group.max()) + 1)] if labels is not None else ["all"]
        if acc_time is None:
            acc_time = BinnedMean(TIME_EDGES, len(names))
            acc_band = BinnedMean(np.arange(len(BANDS) + 1) - 0.5, len(names))
        w_all = cls[-1].mean_heads()[:, 0].numpy()  # (B, 2 + L)
        tokens = None if ab.tokens is None else ab.tokens.numpy()
        weight = observation_weights(w_all[:, OBSERVATIONS:], tokens, mask)  # (B, L)
        scaled = share(weight, mask)
        peak = np.take_along_axis(time, np.argmax(np.where(mask, flux, -np.inf), axis=1)[:, None], axis=1)
        gmat = np.broadcast_to(group[:, None], mask.shape)
        acc_time.add((time - peak)[mask], scaled[mask], gmat[mask])
        acc_band.add(band[mask], scaled[mask], gmat[mask])
        if num_objects == 0:
            for k, b in enumerate(pick_examples(labels, min(num_examples, len(mask)))):
                m = mask[b]
                if not m.any():
                    continue
                pred = int(np.argmax(ab.outputs[b].numpy()))
                true = names[labels[b]] if labels is not None else "?"
                title = (f"true {true}, predicted {names[pred] if pred < len(names) else pred}; {int(m.sum())} "
                         f"observations, metadata token's weight {w_all[b, 1]:.2f}")
                with plot_style():
                    fig = observation_attention_figure(time[b, m], flux[b, m], flux_err[b, m], band[b, m],
                                                       weight[b, m], title)
                written.append(save_figure(fig, out / f"object_{k}_observation_attention.png", dpi=100))
        num_objects += len(mask)
    if acc_time is not None:
        with plot_style():
            fig = averages_figure(acc_time, acc_band, names, num_objects)
        written.append(save_figure(fig, out / "observation_attention_averages.png", dpi=100))
    return written
