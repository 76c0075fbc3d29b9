"""Auger SD regression of X_max (and ln A): the regression head plus the air-shower test numbers and plots.

Targets and losses are :class:`~physics_tf.tasks.regression.RegressionTask`'s. This task adds:

* an optional classification of the primary (p, He, N, Fe): with ``num_classes > 0`` (data
  ``classify_primary=true``) the network returns that many logits after the regression outputs, trained with
  cross-entropy on ``aux_primary`` weighted by ``class_loss_weight``; validation logs ``val/accuracy``;
* validation ``val/resolution`` (std of the X_max residual, g/cm²) and ``val/bias``, of the events of every rank,
  each counted once (as ``val/loss`` and ``val/accuracy``: :mod:`physics_tf.tasks.samples`);
* the test summary (``metrics.json``): per target bias, resolution, rms and spread overall, per primary and in
  bins of lg E; the merit factor MF = |μ_p − μ_Fe| / sqrt(σ_p² + σ_Fe²) of the *predicted* X_max (and of the true
  one for reference); with the classifier, ``primary``: accuracy, ``auc_macro`` and the row-normalised confusion
  matrix (core metrics) and ln A estimated as Σ_k P(k) ln A_k;
* ``predictions.npz`` with ``lg_energy`` and ``primary``; ``resolution.png`` (bias and resolution vs lg E per
  primary), ``residuals.png`` (predicted vs true, residual histogram, per primary) and ``confusion.png``.
* prediction on new files: ``xmax`` / ``lna`` (and σ) from the regression head, ``score_<primary>`` from the
  classifier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from physics_tf.auger.schema import PRIMARIES
from physics_tf.tasks import regression as core
from physics_tf.tasks.metrics import accuracy, auc_macro, confusion_matrix

__all__ = ["AugerRegressionTask", "merit_factor", "primary_summary", "regression_summary"]


def merit_factor(a: np.ndarray, b: np.ndarray) -> float:
    """MF = |μ_a − μ_b| / sqrt(σ_a² + σ_b²); NaN if either sample has fewer than 2 entries."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(abs(a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) + b.var(ddof=1)))


def regression_summary(pred: Mapping[str, np.ndarray], true: Mapping[str, np.ndarray], lg_energy: np.ndarray,
                       primary: np.ndarray, primaries: Sequence[str], lg_e_bins: Sequence[float]) -> dict[str, Any]:
    """Metrics of predictions ``pred[name]`` vs ``true[name]`` in physical units (module docstring): the core's
    per-target numbers with ``num_events``, plus ``per_primary``, ``vs_lg_energy`` and the X_max merit factors."""
    out = core.regression_summary(pred, true, count_key="num_events")
    edges = np.asarray(lg_e_bins, dtype=float)
    for name in pred:
        res = pred[name] - true[name]
        entry = out[name]
        entry["per_primary"] = {p: core.residual_stats(res[primary == i])
                                for i, p in enumerate(primaries) if (primary == i).any()}
        entry["vs_lg_energy"] = [{"lg_e_lo": float(lo), "lg_e_hi": float(hi),
                                  **core.residual_stats(res[(lg_energy >= lo) & (lg_energy < hi)])}
                                 for lo, hi in zip(edges[:-1], edges[1:])]
    if "xmax" in pred and "p" in primaries and "Fe" in primaries:
        ip, ife = list(primaries).index("p"), list(primaries).index("Fe")
        out["xmax"]["merit_factor_p_fe"] = merit_factor(pred["xmax"][primary == ip], pred["xmax"][primary == ife])
        out["xmax"]["merit_factor_p_fe_true"] = merit_factor(true["xmax"][primary == ip], true["xmax"][primary == ife])
    return out


def primary_summary(probs: np.ndarray, labels: np.ndarray, primaries: Sequence[str],
                    primary_lna: Sequence[float] | None = None) -> dict[str, Any]:
    """Accuracy, ``auc_macro`` (one-vs-rest, over the primaries that occur), row-normalised confusion matrix
    ``C[i][j] = P(predicted j | true i)`` (4 decimals) of the primary classification and, given ``primary_lna``,
    bias and resolution of ln A = Σ_k P(k) ln A_k."""
    out: dict[str, Any] = {
        "accuracy": accuracy(probs, labels),
        "auc_macro": auc_macro(probs, labels),
        "confusion": confusion_matrix(probs, labels, normalize=True).round(4).tolist(),
        "classes": list(primaries),
    }
    if primary_lna is not None:
        lna = np.asarray(primary_lna, dtype=np.float64)
        out["lna_from_probs"] = core.residual_stats(probs @ lna - lna[labels])
    return out


class AugerRegressionTask(core.RegressionTask):
    """X_max / ln A regression of Auger SD events, with an optional primary classifier (module docstring).

    Parameters
    ----------
    net, target_names, target_mean, target_std, **kwargs
        As :class:`~physics_tf.tasks.regression.RegressionTask` (loss, loss_weights, huber_delta, optimisation).
    primaries
        Names of the primary indices in ``aux_primary`` (for the per-primary metrics).
    lg_e_bins
        Bin edges in lg(E/eV) of the test metrics.
    num_classes
        Logits of the primary after the regression outputs (0 = no classification).
    class_loss_weight
        Weight of their cross-entropy.
    primary_lna
        ln A of each primary class.
    """

    COUNT_KEY = "num_events"

    def __init__(self, net: nn.Module, target_names: Sequence[str], target_mean: Sequence[float],
                 target_std: Sequence[float], primaries: Sequence[str] = PRIMARIES,
                 lg_e_bins: Sequence[float] = (18.5, 18.8, 19.1, 19.4, 19.7, 20.0, 20.3), num_classes: int = 0,
                 class_loss_weight: float = 1.0, primary_lna: Sequence[float] | None = None, **kwargs) -> None:
        # plain Python values (not OmegaConf lists) so checkpoints load with torch.load(weights_only=True)
        primaries = [str(p) for p in primaries]
        lg_e_bins = [float(e) for e in lg_e_bins]
        num_classes, class_loss_weight = int(num_classes), float(class_loss_weight)
        primary_lna = None if primary_lna is None else [float(v) for v in primary_lna]
        if num_classes and num_classes != len(primaries):
            raise ValueError(f"num_classes={num_classes} but primaries {primaries} name {len(primaries)} classes")
        super().__init__(net, target_names, target_mean, target_std, **kwargs)
        self.primaries = primaries
        self.num_extra_outputs = num_classes
        probs = ("probs",) if num_classes else ()
        self.declare_samples("weight", "pred", "true", "aux_lg_energy", "aux_primary", *probs)

    # ------------------------------------------------------------------ primary classifier
    def extra_loss(self, extra: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``class_loss_weight`` × cross-entropy ``(B,)`` of the primary logits ``extra (B, num_classes)``."""
        if "aux_primary" not in batch:
            raise ValueError("batch: the primary classification needs the truth field 'aux_primary'")
        ce = F.cross_entropy(extra, batch["aux_primary"].long(), reduction="none")  # (B,)
        return self.hparams.class_loss_weight * ce

    def extra_predict_columns(self, extra: torch.Tensor | None) -> dict[str, np.ndarray]:
        """With the classifier: ``score_<primary>``, the softmax probability of each primary."""
        if extra is None:
            return {}
        probs = extra.float().softmax(-1).numpy()
        return {f"score_{name}": probs[:, k] for k, name in enumerate(self.primaries)}

    # ------------------------------------------------------------------ validation / test
    def extra_eval_samples(self, extra: torch.Tensor | None, batch: Mapping[str, torch.Tensor]
                           ) -> dict[str, torch.Tensor]:
        """The truth the numbers are binned in (``aux_lg_energy``, ``aux_primary``) and the primary's
        probabilities."""
        samples = {}
        for key in ("aux_lg_energy", "aux_primary"):
            if key not in batch:
                raise ValueError(f"batch: the validation and test numbers need the truth field '{key}'")
            samples[key] = batch[key].detach()
        if extra is not None:
            samples["probs"] = extra.softmax(-1).detach()
        return samples

    def validation_values(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """``loss``, ``accuracy`` of the primary (with the classifier), and ``resolution`` / ``bias`` of X_max."""
        values = super().validation_values(arrays)
        if "probs" in arrays:
            values["accuracy"] = accuracy(arrays["probs"], arrays["aux_primary"])
        if "xmax" in self.target_names and len(arrays["pred"]) > 1:
            pred, true = self.target_arrays(arrays)
            stats = core.residual_stats(pred["xmax"] - true["xmax"])
            values["resolution"], values["bias"] = stats["resolution"], stats["bias"]
        return values

    @staticmethod
    def _truth(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return arrays["aux_lg_energy"].astype(np.float64), arrays["aux_primary"].astype(np.int64)

    def summarize_test(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        pred, true = self.target_arrays(arrays)
        lge, prim = self._truth(arrays)
        summary = regression_summary(pred, true, lge, prim, self.primaries, self.hparams.lg_e_bins)
        if "probs" in arrays:
            summary["primary"] = primary_summary(arrays["probs"].astype(np.float64), prim, self.primaries,
                                                 self.hparams.primary_lna)
        return summary

    def test_log_values(self, summary: Mapping[str, Any]) -> dict[str, float]:
        """The head's per-target numbers, ``xmax_merit_factor`` and ``primary_accuracy``."""
        values = super().test_log_values(summary)
        if "xmax" in summary and "merit_factor_p_fe" in summary["xmax"]:
            values["xmax_merit_factor"] = summary["xmax"]["merit_factor_p_fe"]
        if "primary" in summary:
            values["primary_accuracy"] = summary["primary"]["accuracy"]
        return values

    def prediction_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        lge, prim = self._truth(arrays)
        extra = {"probs_primary": arrays["probs"]} if "probs" in arrays else {}
        return {"lg_energy": lge, "primary": prim, **super().prediction_arrays(arrays), **extra}

    def write_plots(self, out_dir: Path, summary: Mapping[str, Any], arrays: dict[str, np.ndarray]) -> list[str]:
        """``confusion.png`` (with the classifier), then per target ``resolution.png`` and ``residuals.png``
        (``resolution_<target>.png`` … for targets other than X_max)."""
        from physics_tf.auger.plots import plot_resolution, quantity_label, quantity_unit  # matplotlib when needed
        from physics_tf.tasks.plots import plot_confusion_matrix, plot_residuals

        out_dir = Path(out_dir)
        pred, true = self.target_arrays(arrays)
        lge, prim = self._truth(arrays)
        written = []
        if "probs" in arrays:
            plot_confusion_matrix(arrays["probs"], prim, self.primaries, out_dir / "confusion.png")
            written.append("confusion.png")
        for name in pred:
            suffix = "" if name == "xmax" else f"_{name}"
            plot_resolution(summary[name]["vs_lg_energy"], pred[name] - true[name], lge, prim, self.primaries, name,
                            out_dir / f"resolution{suffix}.png")
            plot_residuals(pred[name], true[name], quantity_label(name), out_dir / f"residuals{suffix}.png",
                           groups=prim, group_names=self.primaries, unit=quantity_unit(name))
            written += [f"resolution{suffix}.png", f"residuals{suffix}.png"]
        return written

