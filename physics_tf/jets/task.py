"""Jet tagging: the classification head plus the ParT test numbers (background rejection at fixed signal
efficiency) and the rejection ROC plot.

The network is any ``nn.Module`` with ``forward(x, v=None, mask=None) -> logits (B, K)`` (ParT, PFN); batches
follow the batch contract (``x (B, P, C)``, ``v (B, P, 4)``, ``mask (B, P)`` bool, ``y (B,)`` int64). Training,
validation and the test-stage plumbing are :class:`~physics_tf.tasks.classification.ClassificationTask`'s; the
test summary is :func:`physics_tf.jets.metrics.summarize` (``accuracy``, ``auc_macro``, ``num_jets``,
``rej<eff>_<class>``), ``roc.png`` shows background rejection against signal efficiency, and the W&B per-class
table gains the rejection columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from physics_tf.jets.metrics import DEFAULT_BACKGROUND, DEFAULT_REJECTION_EFFS, rejection_columns, signal_name, summarize
from physics_tf.tasks.classification import ClassificationTask
from physics_tf.training.reporting import Table

__all__ = ["JetTaggingTask"]


class JetTaggingTask(ClassificationTask):
    """Train / evaluate a jet tagger (module docstring).

    Parameters
    ----------
    net, class_names, label_smoothing, **kwargs
        As :class:`~physics_tf.tasks.classification.ClassificationTask`.
    background : str or int
        Background class (name or index) for the rejection metrics; ``label_QCD``, ``QCD`` and ``qcd`` name the
        same class (:func:`~physics_tf.jets.metrics.find_class`); falls back to class 0 when the name is not in
        ``class_names``. ``data.background`` (the data module's ``task_kwargs``) overrides it.
    rejection_effs : sequence of float
        Signal efficiencies at which the test stage reports background rejection.
    """

    COUNT_KEY = "num_jets"

    def __init__(self, net: nn.Module, class_names: Sequence[str], background: str | int | None = DEFAULT_BACKGROUND,
                 rejection_effs: Sequence[float] = DEFAULT_REJECTION_EFFS, **kwargs) -> None:
        super().__init__(net, class_names, **kwargs)
        self.hparams["background"] = background
        self.hparams["rejection_effs"] = [float(e) for e in rejection_effs]  # plain floats in the checkpoint

    def summarize_test(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        return summarize(arrays["probs"], arrays["labels"], self.class_names, self.hparams.background,
                         self.hparams.rejection_effs)

    def write_plots(self, out_dir: Path, summary: Mapping[str, Any], arrays: dict[str, np.ndarray]) -> list[str]:
        """``roc.png`` (background rejection vs signal efficiency) and ``confusion.png``."""
        from physics_tf.jets.plots import plot_rejection_roc  # matplotlib only when needed
        from physics_tf.tasks.plots import plot_confusion_matrix

        probs, labels = arrays["probs"], arrays["labels"]
        plot_rejection_roc(probs, labels, self.class_names, Path(out_dir) / "roc.png", background=self.hparams.background)
        plot_confusion_matrix(probs, labels, [signal_name(n) for n in self.class_names], Path(out_dir) / "confusion.png")
        return ["roc.png", "confusion.png"]

    def report_tables(self) -> dict[str, Table]:
        """The head's ``per_class`` table with each class's background rejections appended (``rej50``, …)."""
        tables = super().report_tables()
        if "per_class" in tables and self.test_summary is not None:
            columns, rows = tables["per_class"]
            extra, values = rejection_columns(self.test_summary, self.class_names, self.hparams.rejection_effs)
            tables["per_class"] = (columns + extra, [row + vals for row, vals in zip(rows, values)])
        return tables
