"""Regression of standardised targets (Auger X_max, ln A) as a LightningModule.

The network returns (B, K) predictions of the K standardised targets ``y = (value − mean) / std`` — or (B, 2K)
means and log-variances with ``loss="gaussian"``. Losses, averaged over targets with ``loss_weights``:

* ``mse``: (ŷ − y)²;
* ``huber``: Huber loss with threshold ``huber_delta`` (in standardised units);
* ``gaussian``: the Gaussian negative log-likelihood ½ (ln σ̂² + (ŷ − y)²/σ̂²) (Nix & Weigend 1994).

Optimiser and schedule as :class:`physics_tf.tasks.classification.ClassificationTask` (AdamW without decay on
norms/biases, linear warm-up then cosine/linear decay).

Validation logs ``val/loss`` and, for X_max, ``val/resolution`` (std of the residual, g/cm²) and ``val/bias``.
With ``num_classes > 0`` (data ``classify_primary=true``) the network also returns that many logits of the
primary (p, He, N, Fe) after the regression outputs, trained with cross-entropy on ``aux_primary`` weighted by
``class_loss_weight``; validation logs ``val/accuracy`` and the test stage adds accuracy, macro AUC, the
confusion matrix (``confusion.png``) and ln A estimated as Σ_k P(k) ln A_k.

The test stage gathers predictions of all ranks; rank 0 writes ``metrics.json`` — X_max bias and resolution
(std of residuals) overall, per primary and in bins of lg E; the merit factor
MF = |μ_p − μ_Fe| / sqrt(σ_p² + σ_Fe²) of the *predicted* X_max (and of the true one for reference); ln A
bias/resolution when ln A is a target — plus ``predictions.npz``, ``resolution.png`` (bias and resolution vs
lg E per primary) and ``residuals.png`` (predicted vs true, residual histogram), all atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from physics_tf.tasks.metrics import accuracy, auc_macro
from physics_tf.tasks.classification import split_weight_decay_params
from physics_tf.tasks.base import model_inputs
from physics_tf.tasks.schedulers import SCHEDULES, build_warmup_decay_scheduler
from physics_tf.data.atomic import atomic_path

__all__ = ["RegressionTask", "regression_summary", "classification_summary", "merit_factor"]

LOSSES = ("mse", "huber", "gaussian")


def merit_factor(a: np.ndarray, b: np.ndarray) -> float:
    """MF = |μ_a − μ_b| / sqrt(σ_a² + σ_b²); NaN if either sample has fewer than 2 entries."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(abs(a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) + b.var(ddof=1)))


def _stats(res: np.ndarray) -> dict[str, float]:
    if len(res) == 0:
        return {"n": 0, "bias": float("nan"), "resolution": float("nan")}
    return {"n": int(len(res)), "bias": float(res.mean()),
            "resolution": float(res.std(ddof=1)) if len(res) > 1 else float("nan")}


def regression_summary(pred: Mapping[str, np.ndarray], true: Mapping[str, np.ndarray], lg_energy: np.ndarray,
                       primary: np.ndarray, primaries: Sequence[str], lg_e_bins: Sequence[float]) -> dict[str, Any]:
    """Metrics of predictions ``pred[name]`` vs ``true[name]`` in physical units (see module docstring)."""
    out: dict[str, Any] = {"num_events": int(len(lg_energy))}
    for name in pred:
        res = pred[name] - true[name]
        entry: dict[str, Any] = {**_stats(res), "rms": float(np.sqrt(np.mean(res**2))),
                                 "true_std": float(true[name].std(ddof=1)) if len(res) > 1 else float("nan")}
        entry["per_primary"] = {p: _stats(res[primary == i]) for i, p in enumerate(primaries) if (primary == i).any()}
        bins = []
        edges = np.asarray(lg_e_bins, dtype=float)
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (lg_energy >= lo) & (lg_energy < hi)
            bins.append({"lg_e_lo": float(lo), "lg_e_hi": float(hi), **_stats(res[sel])})
        entry["vs_lg_energy"] = bins
        out[name] = entry
    if "xmax" in pred and "p" in primaries and "Fe" in primaries:
        ip, ife = list(primaries).index("p"), list(primaries).index("Fe")
        out["xmax"]["merit_factor_p_fe"] = merit_factor(pred["xmax"][primary == ip], pred["xmax"][primary == ife])
        out["xmax"]["merit_factor_p_fe_true"] = merit_factor(true["xmax"][primary == ip], true["xmax"][primary == ife])
    return out


def classification_summary(probs: np.ndarray, labels: np.ndarray, primaries: Sequence[str],
                           primary_lna: Sequence[float] | None = None) -> dict[str, Any]:
    """Accuracy, macro AUC (one-vs-rest), row-normalised confusion matrix ``C[i][j] = P(predicted j | true i)``
    of the primary classification and, given ``primary_lna``, the resolution of ln A = Σ_k P(k) ln A_k."""
    k = probs.shape[1]
    counts = np.zeros((k, k))
    np.add.at(counts, (labels, probs.argmax(1)), 1.0)
    rows = counts.sum(1, keepdims=True)
    out: dict[str, Any] = {
        "accuracy": accuracy(probs, labels),
        "macro_auc": auc_macro(probs, labels) if len(np.unique(labels)) == k else float("nan"),
        "confusion": np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0).round(4).tolist(),
        "classes": list(primaries),
    }
    if primary_lna is not None:
        lna = np.asarray(primary_lna, dtype=np.float64)
        out["lna_from_probs"] = _stats(probs @ lna - lna[labels])
    return out


class RegressionTask(L.LightningModule):
    """Train / evaluate a regression network on standardised targets (module docstring).

    Parameters
    ----------
    net: ``forward(**batch inputs) -> (B, K)`` or (B, 2K) for ``loss="gaussian"``.
    target_names, target_mean, target_std: from the data module (``task_kwargs``); physical value =
        mean + std · prediction.
    primaries: names of the primary indices in ``aux_primary`` (for the per-primary metrics).
    loss: ``mse`` | ``huber`` | ``gaussian``; loss_weights: per target (default 1 each); huber_delta.
    lr, weight_decay, betas, eps, warmup_steps, warmup_fraction, schedule, min_lr_ratio: optimisation.
    lg_e_bins: bin edges in lg(E/eV) of the test metrics; output_dir, compile: as the classification task.
    num_classes: logits of the primary after the regression outputs (0 = no classification);
    class_loss_weight: weight of their cross-entropy; primary_lna: ln A of each primary class.
    """

    def __init__(self, net: nn.Module, target_names: Sequence[str], target_mean: Sequence[float],
                 target_std: Sequence[float], primaries: Sequence[str] = ("p", "He", "N", "Fe"), loss: str = "mse",
                 loss_weights: Sequence[float] | None = None, huber_delta: float = 1.0, lr: float = 1e-3,
                 weight_decay: float = 0.01, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                 warmup_steps: int | None = None, warmup_fraction: float = 0.05, schedule: str = "cosine",
                 min_lr_ratio: float = 0.01, lg_e_bins: Sequence[float] = (18.5, 18.8, 19.1, 19.4, 19.7, 20.0, 20.3),
                 output_dir: str | os.PathLike | None = None, compile: bool = False, num_classes: int = 0,
                 class_loss_weight: float = 1.0, primary_lna: Sequence[float] | None = None) -> None:
        super().__init__()
        # plain Python values (not OmegaConf lists) so checkpoints load with torch.load(weights_only=True)
        target_names = [str(t) for t in target_names]
        target_mean, target_std = [float(v) for v in target_mean], [float(v) for v in target_std]
        primaries = [str(p) for p in primaries]
        loss_weights = None if loss_weights is None else [float(w) for w in loss_weights]
        betas = tuple(float(b) for b in betas)
        lg_e_bins = [float(e) for e in lg_e_bins]
        num_classes, class_loss_weight = int(num_classes), float(class_loss_weight)
        primary_lna = None if primary_lna is None else [float(v) for v in primary_lna]
        if num_classes and num_classes != len(primaries):
            raise ValueError(f"num_classes={num_classes} but primaries {primaries} name {len(primaries)} classes")
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
        k = len(target_names)
        if not (len(target_mean) == len(target_std) == k) or k == 0:
            raise ValueError(f"target_names/mean/std: lengths {k}, {len(target_mean)}, {len(target_std)} differ")
        weights = [1.0] * k if loss_weights is None else [float(w) for w in loss_weights]
        if len(weights) != k:
            raise ValueError(f"loss_weights: {len(weights)} values for targets {list(target_names)}")
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        if compile:
            self.net.compile()
        self.target_names = [str(t) for t in target_names]
        self.primaries = [str(p) for p in primaries]
        self.register_buffer("mean", torch.tensor(list(target_mean), dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(list(target_std), dtype=torch.float32), persistent=False)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / sum(weights), persistent=False)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.num_reg = k * (2 if loss == "gaussian" else 1)
        self.num_out = self.num_reg + num_classes
        self._val: list[torch.Tensor] = []
        self._test: list[dict[str, torch.Tensor]] = []
        self.test_summary: dict[str, Any] | None = None

    # ------------------------------------------------------------------ core
    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.net(**inputs)

    def _outputs(self, batch: Mapping[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(means, log-variances or None, class logits or None) of a batch."""
        if not isinstance(batch, Mapping) or "y" not in batch:
            raise ValueError("batch: expected a dict of tensors with the target 'y'")
        out = self(**model_inputs(batch, self.net)).float()
        if out.ndim != 2 or out.shape[1] != self.num_out:
            raise ValueError(f"net output: expected shape (B, {self.num_out}) for targets {self.target_names} "
                             f"with loss={self.hparams.loss!r} and num_classes={self.hparams.num_classes}, "
                             f"got {tuple(out.shape)}")
        k = len(self.target_names)
        logits = out[:, self.num_reg:] if self.hparams.num_classes else None
        if self.hparams.loss == "gaussian":
            return out[:, :k], out[:, k : 2 * k], logits
        return out[:, :k], None, logits

    def _loss(self, mu: torch.Tensor, logvar: torch.Tensor | None, logits: torch.Tensor | None,
              batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        y = batch["y"].float().view(mu.shape)
        if self.hparams.loss == "mse":
            per = (mu - y) ** 2
        elif self.hparams.loss == "huber":
            per = F.huber_loss(mu, y, reduction="none", delta=self.hparams.huber_delta)
        else:
            logvar = logvar.clamp(-10.0, 10.0)
            per = 0.5 * (logvar + (mu - y) ** 2 * torch.exp(-logvar))
        per = (per * self.weights).sum(-1)  # (B,)
        if logits is not None:
            if "aux_primary" not in batch:
                raise ValueError("batch: the primary classification needs the truth field 'aux_primary'")
            ce = F.cross_entropy(logits, batch["aux_primary"].long(), reduction="none")  # (B,)
            per = per + self.hparams.class_loss_weight * ce
        w = batch.get("weight")
        if w is not None:
            return (per * w).sum() / w.sum().clamp_min(1e-12)
        return per.mean()

    def physical(self, standardised: torch.Tensor) -> torch.Tensor:
        return standardised * self.std + self.mean

    # ------------------------------------------------------------------ steps
    def training_step(self, batch, batch_idx):
        mu, lv, logits = self._outputs(batch)
        loss = self._loss(mu, lv, logits, batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=mu.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        mu, lv, logits = self._outputs(batch)
        loss = self._loss(mu, lv, logits, batch)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=mu.shape[0])
        if logits is not None:
            acc = (logits.argmax(-1) == batch["aux_primary"].long()).float().mean()
            self.log("val/accuracy", acc, on_epoch=True, sync_dist=True, batch_size=mu.shape[0])
        if "xmax" in self.target_names:
            i = self.target_names.index("xmax")
            self._val.append((self.physical(mu)[:, i] - self.physical(batch["y"].float())[:, i]).detach())
        return loss

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        res = self.all_gather(torch.cat(self._val)).reshape(-1)
        self._val.clear()
        if res.numel() > 1:
            self.log("val/resolution", res.std(), prog_bar=True, sync_dist=True)
            self.log("val/bias", res.mean(), sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self._test.clear()
        self.test_summary = None

    def test_step(self, batch, batch_idx):
        mu, lv, logits = self._outputs(batch)
        loss = self._loss(mu, lv, logits, batch)
        self.log("test/loss", loss, on_epoch=True, sync_dist=True, batch_size=mu.shape[0])
        item = {"pred": self.physical(mu).detach(), "true": self.physical(batch["y"].float()).detach()}
        if logits is not None:
            item["probs"] = logits.softmax(-1).detach()
        for key in ("aux_lg_energy", "aux_primary"):
            if key not in batch:
                raise ValueError(f"batch: test metrics need the truth field '{key}'")
            item[key] = batch[key].detach()
        self._test.append(item)
        return loss

    def on_test_epoch_end(self) -> None:
        if not self._test:
            return
        local = {k: torch.cat([t[k] for t in self._test]) for k in self._test[0]}
        self._test.clear()
        gathered = {k: self.all_gather(v) for k, v in local.items()}
        if not self.trainer.is_global_zero:
            return
        arr = {k: v.reshape(-1, *local[k].shape[1:]).cpu().numpy() for k, v in gathered.items()}
        pred = {n: arr["pred"][:, i].astype(np.float64) for i, n in enumerate(self.target_names)}
        true = {n: arr["true"][:, i].astype(np.float64) for i, n in enumerate(self.target_names)}
        lge, prim = arr["aux_lg_energy"].astype(np.float64), arr["aux_primary"].astype(np.int64)
        summary = regression_summary(pred, true, lge, prim, self.primaries, self.hparams.lg_e_bins)
        probs = arr.get("probs")
        if probs is not None:
            summary["primary"] = classification_summary(probs.astype(np.float64), prim, self.primaries,
                                                        self.hparams.primary_lna)
            self.log("test/primary_accuracy", summary["primary"]["accuracy"], rank_zero_only=True)
        self.test_summary = summary
        for name in self.target_names:
            for key in ("bias", "resolution", "rms"):
                self.log(f"test/{name}_{key}", summary[name][key], rank_zero_only=True)
        if "xmax" in summary and "merit_factor_p_fe" in summary["xmax"]:
            self.log("test/xmax_merit_factor", summary["xmax"]["merit_factor_p_fe"], rank_zero_only=True)
        self.write_test_outputs(self.resolve_output_dir(), summary, pred, true, lge, prim, probs)

    def resolve_output_dir(self) -> Path:
        if self.output_dir is not None:
            return self.output_dir
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def write_test_outputs(self, out_dir: Path, summary, pred, true, lge, prim, probs=None) -> None:
        """``metrics.json``, ``predictions.npz``, ``resolution.png``, ``residuals.png`` (and ``confusion.png``
        with the primary classification) written atomically."""
        out_dir = Path(out_dir)
        with atomic_path(out_dir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        extra = {} if probs is None else {"probs_primary": probs}
        with atomic_path(out_dir / "predictions.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, lg_energy=lge, primary=prim, **{f"pred_{k}": v for k, v in pred.items()},
                         **{f"true_{k}": v for k, v in true.items()}, **extra)
        try:
            if probs is not None:
                from physics_tf.tasks.plots import plot_confusion_matrix

                plot_confusion_matrix(probs, prim, self.primaries, out_dir / "confusion.png")
            plot_resolution(summary, pred, true, lge, prim, self.primaries, out_dir)
        except Exception as err:  # a plot must not lose the metrics
            rank_zero_warn(f"RegressionTask: plots failed: {err}")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay, no_decay = split_weight_decay_params(self.net)
        params = dict(self.net.named_parameters())
        groups = [g for g in ({"params": [params[n] for n in decay], "weight_decay": hp.weight_decay},
                              {"params": [params[n] for n in no_decay], "weight_decay": 0.0}) if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        total = None
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            try:
                total = float(trainer.estimated_stepping_batches)
            except Exception:
                total = None
        finite = total is not None and math.isfinite(total) and total > 0
        warmup = int(hp.warmup_steps) if hp.warmup_steps is not None else (
            int(round(hp.warmup_fraction * total)) if finite else 0)
        scheduler = build_warmup_decay_scheduler(optimizer, warmup, total if finite else None, hp.schedule,
                                                 hp.min_lr_ratio)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1, "name": "lr"}}


def plot_resolution(summary, pred, true, lge, prim, primaries, out_dir: Path) -> None:
    """Bias and resolution vs lg E per primary (``resolution.png``); predicted vs true (``residuals.png``)."""
    from matplotlib.figure import Figure

    from physics_tf.tasks.plots import save_figure

    for name in pred:
        fig = Figure(figsize=(12, 5))
        ax_b, ax_r = fig.subplots(1, 2)
        bins = summary[name]["vs_lg_energy"]
        centres = np.array([0.5 * (b["lg_e_lo"] + b["lg_e_hi"]) for b in bins])
        ax_b.plot(centres, [b["bias"] for b in bins], "ko-", label="all")
        ax_r.plot(centres, [b["resolution"] for b in bins], "ko-", label="all")
        res = pred[name] - true[name]
        for i, p in enumerate(primaries):
            per = [_stats(res[(prim == i) & (lge >= b["lg_e_lo"]) & (lge < b["lg_e_hi"])]) for b in bins]
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
        save_figure(fig, out_dir / ("resolution.png" if name == "xmax" else f"resolution_{name}.png"))
        fig = Figure(figsize=(12, 5))
        ax_s, ax_h = fig.subplots(1, 2)
        for i, p in enumerate(primaries):
            sel = prim == i
            if sel.any():
                ax_s.scatter(true[name][sel], pred[name][sel], s=4, alpha=0.5, label=p)
                ax_h.hist(pred[name][sel] - true[name][sel], bins=40, histtype="step", label=p)
        lo, hi = float(np.min(true[name])), float(np.max(true[name]))
        ax_s.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax_s.set_xlabel(f"true {name}")
        ax_s.set_ylabel(f"predicted {name}")
        ax_h.set_xlabel(f"predicted − true {name}")
        ax_s.legend()
        ax_h.legend()
        save_figure(fig, out_dir / ("residuals.png" if name == "xmax" else f"residuals_{name}.png"))
