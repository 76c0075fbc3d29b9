"""Jet classification as a LightningModule: cross-entropy training, validation AUC, test report.

The network is any ``nn.Module`` with ``forward(x, v=None, mask=None) -> logits (B, K)``
(see ``physics_tf.models``).  Batches are dicts following the batch contract
(``x (B, P, C)``, ``v (B, P, 4)``, ``mask (B, P)`` bool, ``y (B,)`` int64).

Optimisation: AdamW (Loshchilov & Hutter, arXiv:1711.05101) with weight decay applied to
weight matrices/embeddings only — biases, normalisation parameters, any 0/1-d parameter and
the names returned by ``net.no_weight_decay()`` (ParT: ``{"cls_token"}``) are not decayed —
and a per-step linear warm-up + cosine/linear decay schedule
(:mod:`physics_tf.tasks.schedulers`).

Test stage: softmax probabilities of all jets (all DDP ranks) are gathered; global rank 0
computes :func:`physics_tf.tasks.metrics.summarize` (accuracy, macro AUC, background rejections
at fixed signal efficiency as in the ParT paper), logs them as ``test/*`` and writes
``metrics.json``, ``roc.png``, ``confusion.png`` and ``predictions.npz`` to the output
directory.
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
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from physics_tf.tasks.metrics import (
    DEFAULT_BACKGROUND,
    DEFAULT_REJECTION_EFFS,
    JetTaggingMetrics,
    PredictionAccumulator,
    summarize,
)
from physics_tf.tasks.base import estimate_total_steps, model_inputs
from physics_tf.data.atomic import atomic_path
from physics_tf.tasks.schedulers import SCHEDULES, build_warmup_decay_scheduler

__all__ = ["ClassificationTask", "split_weight_decay_params"]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm*d, InstanceNorm*d, SyncBatchNorm
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _is_norm(module: nn.Module) -> bool:
    """Normalisation layer: a torch norm class, or a custom class whose name ends in ``Norm``."""
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith("Norm")


def split_weight_decay_params(net: nn.Module) -> tuple[list[str], list[str]]:
    """Names of trainable parameters of ``net`` with and without weight decay.

    No decay for: parameters of normalisation modules, names ending in ``bias``, any
    parameter with ``ndim <= 1`` (biases, norm scales, learnable scalars) and names listed by
    ``no_weight_decay()`` of ``net`` or of any submodule (names relative to that module; an
    exact parameter name, or a module prefix ``"a.b"`` that excludes everything below it).
    This follows the timm / weaver (ParT) convention.

    Returns
    -------
    decay, no_decay : list[str]
        Parameter names relative to ``net``.
    """
    skip: set[str] = set()
    norm_params: set[str] = set()
    for mod_name, module in net.named_modules():
        if callable(getattr(module, "no_weight_decay", None)):  # honoured on submodules too (wrapped ParT)
            prefix = f"{mod_name}." if mod_name else ""
            skip.update(prefix + str(n) for n in module.no_weight_decay())
        if _is_norm(module):
            for p_name, _ in module.named_parameters(recurse=False):
                norm_params.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        listed = any(name == s or name.startswith(s + ".") for s in skip)
        if listed or name in norm_params or name.endswith("bias") or param.ndim <= 1:
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def _atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(fh)`` on a temp file next to ``path`` then move it into place (:func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


class ClassificationTask(L.LightningModule):
    """Train / evaluate a jet classifier.

    Parameters
    ----------
    net : nn.Module
        ``forward(x, v, mask) -> logits (B, K)``.  Optional hooks: ``no_weight_decay()``
        (names excluded from weight decay) and ``hparams_for_checkpoint`` (dict or callable
        returning the constructor kwargs; stored as ``hparams["net_config"]`` with a Hydra
        ``_target_`` so the net can be rebuilt with ``hydra.utils.instantiate``).
    class_names : list of str
        Class labels in label-index order; ``K = len(class_names)``.
    lr, weight_decay, betas, eps : AdamW settings (peak learning rate).
    warmup_steps : int or None
        Linear warm-up steps; if None, ``warmup_fraction`` of the total optimizer steps
        (``trainer.estimated_stepping_batches``), or 0 if the total is unknown.
    warmup_fraction : float
        Used when ``warmup_steps`` is None.
    schedule : {"cosine", "linear", "constant"}
        Decay after warm-up, down to ``min_lr_ratio * lr`` at the last step.  If the total
        step count is infinite (e.g. ``max_steps=-1`` with an unsized iterable dataset) the
        rate stays constant after warm-up.
    min_lr_ratio : float
        Final learning rate as a fraction of ``lr``.
    label_smoothing : float
        Cross-entropy label smoothing.
    background : str or int
        Background class (name or index) for the rejection metrics; falls back to class 0
        when the name is not in ``class_names``.
    rejection_effs : sequence of float
        Signal efficiencies at which the test stage reports background rejection.
    output_dir : str or None
        Where the test stage writes its files; default ``trainer.log_dir`` or
        ``trainer.default_root_dir``.
    compile : bool
        ``net.compile()`` in place (``torch.compile``; parameter names and checkpoints unchanged).
    net_config : dict or None
        Informational; filled from ``net.hparams_for_checkpoint`` when available.
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str],
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_steps: int | None = None,
        warmup_fraction: float = 0.05,
        schedule: str = "cosine",
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.0,
        background: str | int | None = DEFAULT_BACKGROUND,
        rejection_effs: Sequence[float] = DEFAULT_REJECTION_EFFS,
        output_dir: str | os.PathLike | None = None,
        compile: bool = False,
        net_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        class_names = [str(c) for c in class_names]
        if len(class_names) < 2:
            raise ValueError(f"class_names: need at least 2 classes, got {class_names}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
        if len(tuple(betas)) != 2:
            raise ValueError(f"betas: expected 2 values, got {betas}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction: must lie in [0, 1), got {warmup_fraction}")
        self.save_hyperparameters(ignore=["net"])
        self.hparams["class_names"] = class_names
        self.hparams["betas"] = tuple(float(b) for b in betas)
        self.hparams["rejection_effs"] = [float(e) for e in rejection_effs]
        cfg = self._net_config(net)
        if cfg is not None:
            self.hparams["net_config"] = cfg

        self.net = net
        if compile:
            self.net.compile()
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.val_metrics = JetTaggingMetrics(self.num_classes)
        self.test_outputs = PredictionAccumulator()
        self.test_summary: dict[str, float] | None = None

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def _net_config(net: nn.Module) -> dict[str, Any] | None:
        hp = getattr(net, "hparams_for_checkpoint", None)
        if hp is None:
            return None
        hp = hp() if callable(hp) else hp
        cls = type(net)
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **dict(hp)}

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)``; ``inputs`` are the net's keyword arguments (jets: ``x``, ``v``, ``mask``)."""
        return self.net(**inputs)

    def _logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Calls the net with every batch field except the targets as keyword arguments (batch contract)."""
        if not isinstance(batch, Mapping):
            raise ValueError(f"batch: expected a dict of tensors (net inputs + target 'y'); got {type(batch).__name__}")
        logits = self(**model_inputs(batch, self.net))  # (B, K)
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"net output: expected logits of shape (B, {self.num_classes}) for classes {self.class_names}, "
                f"got {tuple(logits.shape)}"
            )
        return logits

    @staticmethod
    def _labels(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if "y" not in batch:
            raise ValueError(f"batch: missing field 'y' (have {sorted(batch)})")
        return batch["y"].long()  # (B,)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)

    # ------------------------------------------------------------------ train / val
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self._logits(batch)  # (B, K)
        y = self._labels(batch)  # (B,)
        loss = self._loss(logits, y)
        acc = (logits.argmax(dim=-1) == y).float().mean()
        bs = y.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=bs)
        self.log("train/acc", acc, on_step=True, on_epoch=False, batch_size=bs)
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self._logits(batch)  # (B, K)
        y = self._labels(batch)  # (B,)
        loss = self._loss(logits, y)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=y.shape[0])
        self.val_metrics.update(logits.float().softmax(dim=-1), y)
        return loss

    def on_validation_epoch_end(self) -> None:
        if not self.val_metrics.has_data:
            return
        values = self.val_metrics.compute()  # torchmetrics all-gathers across ranks
        self.val_metrics.reset()
        # values are identical on every rank; sync_dist only silences Lightning's DDP warning
        self.log("val/acc", values["acc"], prog_bar=True, sync_dist=True)
        self.log("val/auc", values["auc"], prog_bar=True, sync_dist=True)

    # ------------------------------------------------------------------ test
    def on_test_epoch_start(self) -> None:
        self.test_outputs.reset()
        self.test_summary = None

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self._logits(batch)  # (B, K)
        y = self._labels(batch)  # (B,)
        loss = self._loss(logits, y)
        self.log("test/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=y.shape[0])
        self.test_outputs.update(logits.float().softmax(dim=-1), y)
        return loss

    def on_test_epoch_end(self) -> None:
        probs, labels = self.test_outputs.compute()  # all ranks' jets; collective, so every rank calls it
        self.test_outputs.reset()
        if not self.trainer.is_global_zero:
            return
        probs_np = probs.cpu().numpy()  # (N, K)
        labels_np = labels.cpu().numpy()  # (N,)
        summary = summarize(
            probs_np, labels_np, self.class_names, self.hparams.background, self.hparams.rejection_effs
        )
        self.test_summary = summary
        for key, value in summary.items():
            self.log(f"test/{key}", value, rank_zero_only=True)
        out_dir = self.resolve_output_dir()
        self.write_test_outputs(out_dir, summary, probs_np, labels_np)
        self._print_table(summary, out_dir)

    def resolve_output_dir(self) -> Path:
        """``output_dir`` if given, else the trainer's ``log_dir`` or ``default_root_dir``."""
        if self.output_dir is not None:
            return self.output_dir
        trainer = self.trainer
        return Path(trainer.log_dir or trainer.default_root_dir)

    def write_test_outputs(self, out_dir: Path, summary: dict[str, float], probs: np.ndarray, labels: np.ndarray) -> None:
        """Write ``metrics.json``, ``predictions.npz``, ``roc.png`` and ``confusion.png`` atomically."""
        from physics_tf.tasks.plots import plot_confusion_matrix, plot_roc  # matplotlib only when needed

        out_dir = Path(out_dir)
        text = json.dumps(summary, indent=2, sort_keys=True) + "\n"  # inf -> Infinity (Python json)
        _atomic_write_bytes(out_dir / "metrics.json", lambda fh: fh.write(text.encode()))
        _atomic_write_bytes(
            out_dir / "predictions.npz",
            lambda fh: np.savez(fh, probs=probs, labels=labels, class_names=np.asarray(self.class_names)),
        )
        plot_roc(probs, labels, self.class_names, out_dir / "roc.png", background=self.hparams.background)
        plot_confusion_matrix(probs, labels, self.class_names, out_dir / "confusion.png")

    @staticmethod
    def _print_table(summary: dict[str, float], out_dir: Path) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Test metrics")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in summary.items():
            text = f"{value:.0f}" if key == "num_jets" else ("inf" if math.isinf(value) else f"{value:.4g}")
            table.add_row(key, text)
        console = Console()
        console.print(table)
        console.print(f"metrics.json, roc.png, confusion.png, predictions.npz written to {out_dir}", soft_wrap=True)

    # ------------------------------------------------------------------ predict
    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Softmax probabilities ``(B, K)``."""
        return self._logits(batch).float().softmax(dim=-1)

    # ------------------------------------------------------------------ optimisation
    def _total_steps(self) -> float | None:
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return None
        try:
            return estimate_total_steps(trainer)
        except Exception as err:  # e.g. a dataloader without __len__ and no max_steps
            rank_zero_warn(f"ClassificationTask: cannot estimate total steps ({err}); LR constant after warm-up")
            return None

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay, no_decay = split_weight_decay_params(self.net)
        params = dict(self.net.named_parameters())
        groups = [
            {"params": [params[n] for n in decay], "weight_decay": hp.weight_decay, "names": decay},
            {"params": [params[n] for n in no_decay], "weight_decay": 0.0, "names": no_decay},
        ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)

        total = self._total_steps()
        finite = total is not None and math.isfinite(total) and total > 0
        if hp.warmup_steps is not None:
            warmup = int(hp.warmup_steps)
        elif finite:
            warmup = int(round(hp.warmup_fraction * total))
        else:
            warmup = 0
        if not finite:
            rank_zero_warn(
                "ClassificationTask: total optimizer steps unknown/infinite; "
                f"using {warmup} warm-up steps then a constant learning rate"
            )
        scheduler = build_warmup_decay_scheduler(
            optimizer, warmup, total if finite else None, hp.schedule, hp.min_lr_ratio
        )
        rank_zero_info(f"ClassificationTask: {scheduler.lr_lambdas[0]!r}")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1, "name": "lr"},
        }
