"""Regression head: standardised targets, MSE / Huber / Gaussian-likelihood loss, generic test numbers.

The network returns (B, K) predictions of the K standardised targets ``y = (value − mean) / std`` — or (B, 2K)
means and log-variances with ``loss="gaussian"``. Losses, averaged over targets with ``loss_weights``:

* ``mse``: (ŷ − y)²;
* ``huber``: Huber loss with threshold ``huber_delta`` (in standardised units);
* ``gaussian``: the Gaussian negative log-likelihood ½ (ln σ̂² + (ŷ − y)²/σ̂²) (Nix & Weigend 1994).

With a per-example ``weight`` in the batch the loss is the weighted mean. Optimisation, output directory and the
test-stage plumbing come from :class:`~physics_tf.tasks.base.Task`.

An analysis may give the network outputs besides the targets (``num_extra_outputs``, after the regression ones)
and train them with a loss of its own: it overrides :meth:`RegressionTask.extra_loss`, and adds per-sample fields
through :meth:`RegressionTask.extra_eval_samples` and numbers through ``validation_values`` / ``summarize_test``
(Auger: the primary's logits).

Validation logs ``val/loss``, the (weighted) mean loss of the samples of every rank, each counted once. The test
stage gathers the predictions of all ranks in physical units (mean + std · output) the same way; rank 0 writes
:func:`regression_summary` (per target: bias, resolution = std of the residual, rms, spread of the truth) to
``metrics.json``, ``predictions.npz`` (``pred_<target>``, ``true_<target>``) and ``residuals_<target>.png``.
Prediction on new files (:mod:`physics_tf.training.predict`) takes its columns from
:meth:`RegressionTask.predict_columns`: every target in physical units, ``<target>_sigma`` with
``loss="gaussian"``, and an analysis's :meth:`RegressionTask.extra_predict_columns`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from physics_tf.tasks.base import Task, model_inputs

__all__ = ["LOSSES", "RegressionTask", "regression_summary", "residual_stats"]

LOSSES = ("mse", "huber", "gaussian")


def residual_stats(res: np.ndarray) -> dict[str, Any]:
    """``n``, ``bias`` (mean) and ``resolution`` (standard deviation, ddof=1) of residuals; NaN where undefined."""
    if len(res) == 0:
        return {"n": 0, "bias": float("nan"), "resolution": float("nan")}
    return {"n": int(len(res)), "bias": float(res.mean()),
            "resolution": float(res.std(ddof=1)) if len(res) > 1 else float("nan")}


def regression_summary(pred: Mapping[str, np.ndarray], true: Mapping[str, np.ndarray],
                       count_key: str = "num_samples") -> dict[str, Any]:
    """``{count_key: N, target: {n, bias, resolution, rms, true_std}}`` of predictions vs truth (physical units)."""
    names = list(pred)
    out: dict[str, Any] = {count_key: int(len(pred[names[0]])) if names else 0}
    for name in names:
        res = pred[name] - true[name]
        out[name] = {**residual_stats(res), "rms": float(np.sqrt(np.mean(res**2))),
                     "true_std": float(true[name].std(ddof=1)) if len(res) > 1 else float("nan")}
    return out


class RegressionTask(Task):
    """Train / evaluate a regression network on standardised targets (module docstring).

    Parameters
    ----------
    net: ``forward(**batch inputs) -> (B, K)`` or (B, 2K) for ``loss="gaussian"`` (plus ``num_extra_outputs``).
    target_names, target_mean, target_std: from the data module (``task_kwargs``); physical value =
        mean + std · prediction.
    loss: ``mse`` | ``huber`` | ``gaussian``; loss_weights: per target (default 1 each); huber_delta.
    **kwargs: optimisation, ``output_dir``, ``compile``, ``net_config`` (:class:`~physics_tf.tasks.base.Task`).
    """

    def __init__(self, net: nn.Module, target_names: Sequence[str], target_mean: Sequence[float],
                 target_std: Sequence[float], loss: str = "mse", loss_weights: Sequence[float] | None = None,
                 huber_delta: float = 1.0, **kwargs) -> None:
        # plain Python values (not OmegaConf lists) so checkpoints load with torch.load(weights_only=True)
        target_names = [str(t) for t in target_names]
        target_mean, target_std = [float(v) for v in target_mean], [float(v) for v in target_std]
        loss_weights = None if loss_weights is None else [float(w) for w in loss_weights]
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
        k = len(target_names)
        if not (len(target_mean) == len(target_std) == k) or k == 0:
            raise ValueError(f"target_names/mean/std: lengths {k}, {len(target_mean)}, {len(target_std)} differ")
        weights = [1.0] * k if loss_weights is None else loss_weights
        if len(weights) != k:
            raise ValueError(f"loss_weights: {len(weights)} values for targets {target_names}")
        super().__init__(net, **kwargs)
        # as converted here (a subclass passes them on as given)
        self.hparams.update(target_names=target_names, target_mean=target_mean, target_std=target_std,
                            loss_weights=loss_weights)
        self.target_names = target_names
        self.register_buffer("mean", torch.tensor(target_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(target_std, dtype=torch.float32), persistent=False)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / sum(weights), persistent=False)
        self.num_reg = k * (2 if loss == "gaussian" else 1)
        self.num_extra_outputs = 0
        self.declare_samples("weight", "pred", "true")

    # ------------------------------------------------------------------ core
    @property
    def num_out(self) -> int:
        return self.num_reg + self.num_extra_outputs

    def _outputs(self, batch: Mapping[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(means (B, K), log-variances (B, K) or None, extra outputs (B, E) or None) of a batch."""
        if not isinstance(batch, Mapping) or "y" not in batch:
            raise ValueError("batch: expected a dict of tensors with the target 'y'")
        out = self(**model_inputs(batch, self.net)).float()
        if out.ndim != 2 or out.shape[1] != self.num_out:
            extra = f" and {self.num_extra_outputs} extra outputs" if self.num_extra_outputs else ""
            raise ValueError(f"net output: expected shape (B, {self.num_out}) for targets {self.target_names} "
                             f"with loss={self.hparams.loss!r}{extra}, got {tuple(out.shape)}")
        k = len(self.target_names)
        extra = out[:, self.num_reg:] if self.num_extra_outputs else None
        if self.hparams.loss == "gaussian":
            return out[:, :k], out[:, k : 2 * k], extra
        return out[:, :k], None, extra

    def _loss(self, mu: torch.Tensor, logvar: torch.Tensor | None, extra: torch.Tensor | None,
              batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        per, w = self._sample_losses(mu, logvar, extra, batch)
        if w is not None:
            return (per * w).sum() / w.sum().clamp_min(1e-12)
        return per.mean()

    def _sample_losses(self, mu: torch.Tensor, logvar: torch.Tensor | None, extra: torch.Tensor | None,
                       batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-example loss ``(B,)`` and the batch's ``weight`` (B,) or None (the loss is their weighted mean)."""
        y = batch["y"].float().view(mu.shape)
        if self.hparams.loss == "mse":
            per = (mu - y) ** 2
        elif self.hparams.loss == "huber":
            per = F.huber_loss(mu, y, reduction="none", delta=self.hparams.huber_delta)
        else:
            logvar = logvar.clamp(-10.0, 10.0)
            per = 0.5 * (logvar + (mu - y) ** 2 * torch.exp(-logvar))
        per = (per * self.weights).sum(-1)  # (B,)
        if extra is not None:
            per = per + self.extra_loss(extra, batch)
        w = batch.get("weight")
        return per, (None if w is None else w.float().view(per.shape))

    def predict_columns(self, outputs: torch.Tensor) -> dict[str, np.ndarray]:
        """The prediction table's columns (:mod:`physics_tf.training.predict`) from the network's outputs
        ``(B, num_out)`` (a tensor, or an onnxruntime array): every target in physical units (mean + std · output)
        and, with ``loss="gaussian"``, ``<target>_sigma`` = std · exp(½ ln σ̂²) (ln σ̂² clamped as in the loss);
        then :meth:`extra_predict_columns` of the extra outputs."""
        out = torch.as_tensor(outputs).detach().float().cpu()
        if out.ndim != 2 or out.shape[1] != self.num_out:
            raise ValueError(f"net output: expected shape (B, {self.num_out}) for targets {self.target_names} "
                             f"with loss={self.hparams.loss!r}, got {tuple(out.shape)}")
        k, mean, std = len(self.target_names), self.mean.cpu(), self.std.cpu()
        columns = {name: (out[:, i] * std[i] + mean[i]).numpy() for i, name in enumerate(self.target_names)}
        if self.hparams.loss == "gaussian":
            sigma = std * torch.exp(0.5 * out[:, k : 2 * k].clamp(-10.0, 10.0))
            columns.update({f"{name}_sigma": sigma[:, i].numpy() for i, name in enumerate(self.target_names)})
        extra = out[:, self.num_reg :] if self.num_extra_outputs else None
        return {**columns, **self.extra_predict_columns(extra)}

    def extra_predict_columns(self, extra: torch.Tensor | None) -> dict[str, np.ndarray]:
        """Prediction columns of the extra outputs ``(B, E)`` (none here)."""
        return {}

    def extra_loss(self, extra: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-example loss ``(B,)`` of the extra outputs ``(B, E)``, added to the regression loss."""
        raise NotImplementedError(f"{type(self).__name__} has extra outputs but no loss for them")

    def physical(self, standardised: torch.Tensor) -> torch.Tensor:
        return standardised * self.std + self.mean

    # ------------------------------------------------------------------ steps
    def training_step(self, batch, batch_idx):
        mu, lv, extra = self._outputs(batch)
        loss = self._loss(mu, lv, extra, batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=mu.shape[0])
        return loss

    def eval_samples(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``loss``, ``weight`` (1 without a batch ``weight``), ``pred`` and ``true`` (B, K) in physical units, and
        :meth:`extra_eval_samples`."""
        mu, lv, extra = self._outputs(batch)
        per, w = self._sample_losses(mu, lv, extra, batch)
        samples = {"loss": per.detach(), "weight": torch.ones_like(per) if w is None else w.detach(),
                   "pred": self.physical(mu).detach(), "true": self.physical(batch["y"].float().view(mu.shape))}
        return {**samples, **self.extra_eval_samples(extra, batch)}

    def extra_eval_samples(self, extra: torch.Tensor | None, batch: Mapping[str, torch.Tensor]
                           ) -> dict[str, torch.Tensor]:
        """Per-sample tensors gathered in validation and test besides those of :meth:`eval_samples` (fields named
        with :meth:`declare_samples`); none here."""
        return {}

    # ------------------------------------------------------------------ test report
    def target_arrays(self, arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(pred, true)``: float64 arrays ``(N,)`` per target name, in physical units."""
        pred = {n: arrays["pred"][:, i].astype(np.float64) for i, n in enumerate(self.target_names)}
        true = {n: arrays["true"][:, i].astype(np.float64) for i, n in enumerate(self.target_names)}
        return pred, true

    def summarize_test(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        return regression_summary(*self.target_arrays(arrays), count_key=self.COUNT_KEY)

    def test_log_values(self, summary: Mapping[str, Any]) -> dict[str, float]:
        """``<target>_bias``, ``<target>_resolution`` and ``<target>_rms`` of every target."""
        return {f"{name}_{key}": summary[name][key] for name in self.target_names
                for key in ("bias", "resolution", "rms")}

    def prediction_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pred, true = self.target_arrays(arrays)
        return {**{f"pred_{k}": v for k, v in pred.items()}, **{f"true_{k}": v for k, v in true.items()}}

    def write_plots(self, out_dir: Path, summary: Mapping[str, Any], arrays: dict[str, np.ndarray]) -> list[str]:
        """``residuals_<target>.png``: predicted vs true and the residual histogram of every target."""
        from physics_tf.tasks.plots import plot_residuals  # matplotlib only when needed

        pred, true = self.target_arrays(arrays)
        names = []
        for name in self.target_names:
            plot_residuals(pred[name], true[name], name, Path(out_dir) / f"residuals_{name}.png")
            names.append(f"residuals_{name}.png")
        return names
