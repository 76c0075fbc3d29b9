"""Light-curve classification: :class:`ClassificationTask` plus the PLAsTiCC metrics and an early-classification curve.

The head's test numbers (``accuracy``, ``auc_macro``; the count is ``num_objects``), plots (``roc.png``,
``confusion.png``) and ``predictions.npz``, with these numbers added (``metrics.json``, the logged ``test/*`` and
the printed table):

* ``plasticc_logloss`` — the PLAsTiCC weighted multi-class log-loss (Malz et al. 2019, arXiv 1809.11145)::

      L = − Σ_i w_i · (1/N_i) Σ_{j ∈ class i} ln p_ij  /  Σ_i w_i

  with p clipped to [1e-15, 1 − 1e-15] and each row renormalised, w_i = 2 for classes 15 (TDE), 64 (kilonova)
  and 99 (other), 1 otherwise; the sums run over the classes present in the test set (N_i > 0).
* ``balanced_accuracy`` — the mean over present classes of the per-class recall (:mod:`physics_tf.tasks.metrics`).
* ``early_{d}d_logloss`` / ``early_{d}d_accuracy`` — the same net on every test light curve truncated to the
  observations up to ``d`` days after its first detection (``aux_first_detection`` of the batch), for every
  ``d`` in ``early_days``: the early-classification curve, also drawn in ``early_classification.png``.

Only the hooks that need it are overridden: ``test_samples`` (adds the truncated evaluations as the per-sample
field ``early_probs`` (B, D, K), gathered and counted once per object with the others; validation does not run
them), ``summarize_test`` (adds the numbers) and ``write_plots`` (adds the plot).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from physics_tf.tasks.classification import ClassificationTask
from physics_tf.tasks.metrics import accuracy, balanced_accuracy

__all__ = ["PLASTICC_WEIGHTS", "plasticc_weighted_logloss", "LightCurveClassificationTask"]

PLASTICC_WEIGHTS = {15: 2.0, 64: 2.0, 99: 2.0}


def plasticc_weighted_logloss(probs, labels, class_codes: Sequence[int], eps: float = 1e-15) -> float:
    """The PLAsTiCC weighted log-loss (module docstring) of ``probs`` (N, K) for label indices ``labels`` (N,);
    ``class_codes[k]`` is the PLAsTiCC code of column k."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    p = p / p.sum(axis=1, keepdims=True)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or p.shape[1] != len(class_codes) or y.shape != (p.shape[0],):
        raise ValueError(f"probs {p.shape} / labels {y.shape} / {len(class_codes)} class codes do not fit")
    num = den = 0.0
    for k, code in enumerate(class_codes):
        sel = y == k
        if not sel.any():
            continue
        w = PLASTICC_WEIGHTS.get(int(code), 1.0)
        num += w * float(-np.log(p[sel, k]).mean())
        den += w
    return num / den if den else float("nan")


def _codes_from_names(names: Sequence[str]) -> list[int]:
    codes = []
    for n in names:
        m = re.search(r"(\d+)$", str(n))
        if m is None:
            raise ValueError(f"class_codes not given and class name {n!r} does not end in a PLAsTiCC code")
        codes.append(int(m.group(1)))
    return codes


class LightCurveClassificationTask(ClassificationTask):
    """:class:`ClassificationTask` for light curves (net: ``forward(flux, flux_err, time, band, mask, meta)``).

    Parameters (besides the head's)
    ----------
    class_codes
        PLAsTiCC code of every class (data module ``task_kwargs``); default: parsed from names ``"<name>_<code>"``.
    early_days
        Days after the first detection at which the early-classification curve is evaluated (empty: none).
    background, rejection_effs
        Jet-tagging settings that configs and checkpoints written before the move carried (as ``null`` and
        ``[]``); accepted so those still build this task, and refused when set, since light curves have no
        background class.
    """

    COUNT_KEY = "num_objects"

    def __init__(self, net: nn.Module, class_names: Sequence[str], class_codes: Sequence[int] | None = None,
                 early_days: Sequence[float] = (0, 5, 10, 20, 50, 100), background: str | int | None = None,
                 rejection_effs: Sequence[float] = (), **kwargs) -> None:
        if background is not None or len(rejection_effs):
            raise ValueError(f"background={background!r}, rejection_effs={list(rejection_effs)}: jet-tagging "
                             "settings; light-curve classification has no background class")
        # plain Python in the checkpoint (Hydra hands over ListConfigs, which torch.load(weights_only=True) refuses)
        class_codes = [int(c) for c in class_codes] if class_codes is not None else _codes_from_names(class_names)
        early_days = [float(d) for d in early_days]
        super().__init__(net, class_names, **kwargs)
        if len(class_codes) != len(self.class_names):
            raise ValueError(f"class_codes {class_codes} do not match class_names {self.class_names}")
        self.class_codes = class_codes
        self.early_days = early_days
        self.hparams["class_codes"], self.hparams["early_days"] = class_codes, early_days  # plain Python
        self.declare_samples("probs", "labels", test_only=("early_probs",) if early_days else ())

    EARLY_FIELDS = frozenset({"aux_first_detection", "time", "mask"})

    def test_samples(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The head's samples and ``early_probs`` (B, D, K): the probabilities of each light curve truncated at
        each of the D ``early_days`` after its first detection."""
        samples = self.eval_samples(batch)
        if not self.early_days:
            return samples
        if not self.EARLY_FIELDS <= set(batch):
            raise ValueError(f"batch: the early-classification curve needs the fields {sorted(self.EARLY_FIELDS)} "
                             f"(have {sorted(batch)}); task.early_days=[] turns it off")
        first = batch["aux_first_detection"].to(batch["time"].dtype)[:, None]  # (B, 1)
        early = []
        for days in self.early_days:
            truncated = {**batch, "mask": batch["mask"].bool() & (batch["time"] <= first + days)}  # (B, L)
            early.append(self._logits(truncated).float().softmax(dim=-1))
        return {**samples, "early_probs": torch.stack(early, dim=1)}

    def summarize_test(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """The head's numbers (with ``num_objects``), the PLAsTiCC log-loss, balanced accuracy and the early-
        classification curve (module docstring)."""
        summary = super().summarize_test(arrays)
        probs, labels = arrays["probs"], arrays["labels"]
        summary["plasticc_logloss"] = plasticc_weighted_logloss(probs, labels, self.class_codes)
        summary["balanced_accuracy"] = balanced_accuracy(probs, labels)
        if "early_probs" in arrays:
            for j, days in enumerate(self.early_days):
                p = arrays["early_probs"][:, j]  # (N, K)
                summary[f"early_{days:g}d_logloss"] = plasticc_weighted_logloss(p, labels, self.class_codes)
                summary[f"early_{days:g}d_accuracy"] = accuracy(p, labels)
        return summary

    def write_plots(self, out_dir: Path, summary: Mapping[str, Any], arrays: dict[str, np.ndarray]) -> list[str]:
        """The head's plots and ``early_classification.png``."""
        written = super().write_plots(out_dir, summary, arrays)
        days = [d for d in self.early_days if f"early_{d:g}d_logloss" in summary]
        if days:
            from physics_tf.lightcurves.plots import plot_early_classification  # matplotlib only when needed

            plot_early_classification(days, summary, Path(out_dir) / "early_classification.png")
            written.append("early_classification.png")
        return written
