"""Classification head: cross-entropy training, validation accuracy + AUC, a generic test report.

The network is any ``nn.Module`` returning logits ``(B, K)`` from the batch's input fields (batch contract of
:mod:`physics_tf.tasks.base`); the targets ``y (B,)`` are class indices. Optimisation, output directory and the
test-stage plumbing come from :class:`~physics_tf.tasks.base.Task`.

Validation logs ``val/loss``, ``val/acc`` and ``val/auc`` (:func:`physics_tf.tasks.metrics.classification_scores`)
of the samples of every rank, each counted once (:mod:`physics_tf.tasks.samples`). The test stage gathers the
softmax probabilities of every rank the same way; global rank 0 logs and writes the summary of
:func:`physics_tf.tasks.metrics.classification_summary` (``accuracy``, ``auc_macro``, sample count) to
``metrics.json``, ``predictions.npz`` (``probs``, ``labels``, ``class_names``), ``roc.png`` (one-vs-rest ROC per
class) and ``confusion.png``. An analysis adds its own numbers by subclassing (jets: background rejection).
Prediction on new files (:mod:`physics_tf.training.predict`) takes its columns from
:meth:`ClassificationTask.predict_columns`: ``score_<class>``, the softmax probabilities.
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
from physics_tf.tasks.metrics import classification_scores, classification_summary, per_class_table
from physics_tf.training.reporting import Table

__all__ = ["ClassificationTask"]


class ClassificationTask(Task):
    """Train / evaluate a classifier (module docstring).

    Parameters
    ----------
    net : nn.Module
        ``forward(**inputs) -> logits (B, K)``; see :class:`~physics_tf.tasks.base.Task` for its optional hooks.
    class_names : list of str
        Class labels in label-index order; ``K = len(class_names)``.
    label_smoothing : float
        Cross-entropy label smoothing.
    **kwargs
        Optimisation, ``output_dir``, ``compile``, ``net_config``: see :class:`~physics_tf.tasks.base.Task`.
    """

    def __init__(self, net: nn.Module, class_names: Sequence[str], label_smoothing: float = 0.0, **kwargs) -> None:
        class_names = [str(c) for c in class_names]
        if len(class_names) < 2:
            raise ValueError(f"class_names: need at least 2 classes, got {class_names}")
        super().__init__(net, **kwargs)
        self.hparams["class_names"] = class_names  # as converted here (a subclass passes them on as given)
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.declare_samples("probs", "labels")

    # ------------------------------------------------------------------ plumbing
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

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing, reduction=reduction)

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

    # ------------------------------------------------------------------ validation / test
    def eval_samples(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self._logits(batch)  # (B, K)
        y = self._labels(batch)  # (B,)
        return {"loss": self._loss(logits, y, reduction="none"), "probs": logits.float().softmax(dim=-1), "labels": y}

    def validation_values(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """``loss``, ``acc`` and ``auc`` of the validation samples."""
        return {**super().validation_values(arrays), **classification_scores(arrays["probs"], arrays["labels"])}

    def summarize_test(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        return classification_summary(arrays["probs"], arrays["labels"], self.COUNT_KEY)

    def prediction_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"probs": arrays["probs"], "labels": arrays["labels"], "class_names": np.asarray(self.class_names)}

    def write_plots(self, out_dir: Path, summary: Mapping[str, Any], arrays: dict[str, np.ndarray]) -> list[str]:
        """``roc.png`` (one-vs-rest ROC per class) and ``confusion.png``."""
        from physics_tf.tasks.plots import plot_confusion_matrix, plot_roc_curves  # matplotlib only when needed

        probs, labels = arrays["probs"], arrays["labels"]
        plot_roc_curves(probs, labels, self.class_names, Path(out_dir) / "roc.png")
        plot_confusion_matrix(probs, labels, self.class_names, Path(out_dir) / "confusion.png")
        return ["roc.png", "confusion.png"]

    def report_tables(self) -> dict[str, Table]:
        """``per_class``: counts, efficiency, purity and one-vs-rest AUC of every class (last test stage)."""
        if self.test_arrays is None:
            return {}
        return {"per_class": per_class_table(self.test_arrays["probs"], self.test_arrays["labels"], self.class_names)}

    # ------------------------------------------------------------------ predict
    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Softmax probabilities ``(B, K)``."""
        return self._logits(batch).float().softmax(dim=-1)

    def predict_columns(self, outputs: torch.Tensor) -> dict[str, np.ndarray]:
        """The prediction table's columns (:mod:`physics_tf.training.predict`) from the network's logits ``(B, K)``
        (a tensor, or an onnxruntime array): ``score_<class>``, the softmax probability of every class."""
        logits = torch.as_tensor(outputs).detach().float().cpu()
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"net output: expected logits of shape (B, {self.num_classes}) for classes "
                             f"{self.class_names}, got {tuple(logits.shape)}")
        probs = logits.softmax(dim=-1).numpy()
        return {f"score_{name}": probs[:, k] for k, name in enumerate(self.class_names)}
