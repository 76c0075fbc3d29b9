"""Classification metrics shared by every task: accuracy, AUC, confusion, ROC curve, balanced accuracy.

Conventions, for probabilities ``probs (N, K)`` and integer labels ``labels (N,)``:

* ``accuracy`` is the plain (micro) fraction of samples whose arg-max class is the true one;
* ``auc_macro`` is the unweighted mean of the one-vs-rest AUCs (torchmetrics ``MulticlassAUROC(average="macro")``),
  or the binary AUC of ``p_1`` for 2 classes; :func:`per_class_auc` gives the one-vs-rest AUCs themselves;
* the confusion matrix ``C[i, j]`` counts samples of true class ``i`` predicted as ``j`` (torchmetrics); row-
  normalised it is ``P(predicted j | true i)``;
* ``balanced_accuracy`` is the mean over the classes present in ``labels`` of the recall ``C[k, k] / Σ_j C[k, j]``
  (classes only ever predicted are left out, as scikit-learn does);
* :func:`roc_curve` is the exact curve of a "higher score = more positive" discriminant (analyses build theirs on
  it, e.g. the jets' background rejection).

Ratios are taken in float64 from integer counts, so a summary does not depend on torch's float32 division.

Validation's ``acc`` / ``auc`` are :func:`classification_scores`: torchmetrics' accuracy and AUROC (a class without
samples counts as AUC 0 there, where ``auc_macro`` leaves it out).

DDP: :class:`PredictionAccumulator` keeps per-sample tensors in ``dist_reduce_fx="cat"`` states so that
``compute()`` returns the samples of *all* ranks; :func:`unique_samples` then keeps each sample once.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_confusion_matrix,
)
from torchmetrics.utilities import dim_zero_cat

from physics_tf.data.errors import DataError

__all__ = [
    "ClassificationMetrics",
    "PredictionAccumulator",
    "accuracy",
    "auc_macro",
    "balanced_accuracy",
    "check_probs_labels",
    "classification_scores",
    "classification_summary",
    "confusion_matrix",
    "per_class_auc",
    "per_class_table",
    "roc_curve",
    "sample_counts",
    "unique_samples",
]


# --------------------------------------------------------------------------- checks
def _to_numpy(a, name: str) -> np.ndarray:
    """Convert a torch tensor / array-like to a float64 or int numpy array."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        a = a.double().numpy() if a.is_floating_point() else a.numpy()
    arr = np.asarray(a)
    if arr.dtype == object:
        raise ValueError(f"{name}: cannot convert object array to numbers")
    return arr


def check_probs_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``probs (N, K)`` / ``labels (N,)`` to float64 / int64 numpy arrays.

    Raises ``ValueError`` naming the offending argument on wrong shapes, non-integer or
    out-of-range labels, or non-finite probabilities.
    """
    p = _to_numpy(probs, "probs").astype(np.float64)
    y = _to_numpy(labels, "labels")
    if p.ndim != 2:
        raise ValueError(f"probs: expected shape (N, K), got {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"labels: expected shape ({p.shape[0]},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("labels: expected integer class indices")
        y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels: class indices must lie in [0, {p.shape[1]}), got [{y.min()}, {y.max()}]")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs: contains NaN or inf")
    return p, y.astype(np.int64)


# --------------------------------------------------------------------------- ROC
def roc_curve(scores_sig, scores_bkg) -> tuple[np.ndarray, np.ndarray]:
    """Exact ROC curve of a "higher score = more signal-like" discriminant.

    For each distinct threshold ``t`` (scanned from high to low) the signal and background
    efficiencies are ``eps_S(t) = #{sig >= t} / N_sig`` and ``eps_B(t) = #{bkg >= t} / N_bkg``.
    Tied scores form a single operating point.  The curve starts at ``(0, 0)`` and ends at
    ``(1, 1)``; both arrays are non-decreasing.

    Returns
    -------
    eff_sig, eff_bkg : np.ndarray
        Signal efficiency (true-positive rate) and background efficiency (false-positive rate).
    """
    s = _to_numpy(scores_sig, "scores_sig").astype(np.float64).ravel()
    b = _to_numpy(scores_bkg, "scores_bkg").astype(np.float64).ravel()
    if s.size == 0 or b.size == 0:
        raise ValueError(f"roc_curve: need at least one signal and one background sample (got {s.size}, {b.size})")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(b))):
        raise ValueError("roc_curve: scores contain NaN or inf")
    scores = np.concatenate([s, b])  # (N,)
    is_sig = np.concatenate([np.ones(s.size), np.zeros(b.size)])  # (N,)
    order = np.argsort(-scores, kind="mergesort")
    scores, is_sig = scores[order], is_sig[order]
    tp = np.cumsum(is_sig)  # signal samples with score >= scores[i]
    fp = np.cumsum(1.0 - is_sig)
    # keep the last index of each group of tied scores -> one point per distinct threshold
    last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    eff_sig = np.r_[0.0, tp[last] / s.size]
    eff_bkg = np.r_[0.0, fp[last] / b.size]
    return eff_sig, eff_bkg


# --------------------------------------------------------------------------- scalar metrics
def accuracy(probs, labels) -> float:
    """Fraction of samples whose arg-max class equals the label."""
    p, y = check_probs_labels(probs, labels)
    if y.size == 0:
        raise ValueError("accuracy: no samples")
    return float(np.mean(np.argmax(p, axis=1) == y))


def auc_macro(probs, labels) -> float:
    """Macro-averaged one-vs-rest AUC (torchmetrics): the mean over the classes whose AUC is defined (present in
    ``labels``, and not alone), so a class without samples does not count as AUC 0; binary AUC of ``p_1`` for 2
    classes. NaN when no class has a defined AUC."""
    p, y = check_probs_labels(probs, labels)
    if p.shape[1] == 2:
        if np.unique(y).size < 2:
            return float("nan")
        return float(binary_auroc(torch.from_numpy(p[:, 1]), torch.from_numpy(y)))
    auc = per_class_auc(p, y)  # (K,), NaN where undefined
    return float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan")


def per_class_auc(probs, labels) -> np.ndarray:
    """One-vs-rest AUC of every class's probability (torchmetrics), shape ``(K,)``; NaN for a class that has no
    sample, or only samples, in ``labels`` (its AUC is undefined)."""
    p, y = check_probs_labels(probs, labels)
    k = p.shape[1]
    with warnings.catch_warnings():  # torchmetrics warns, then returns 0, for a class without samples
        warnings.filterwarnings("ignore", message="No positive samples in targets")
        warnings.filterwarnings("ignore", message="No negative samples in targets")
        auc = multiclass_auroc(torch.from_numpy(p), torch.from_numpy(y), num_classes=k, average=None)
    counts = np.bincount(y, minlength=k)  # (K,)
    return np.where((counts > 0) & (counts < y.size), auc.double().numpy(), np.nan)


def confusion_matrix(probs, labels, normalize: bool = False) -> np.ndarray:
    """``C[i, j]`` = samples of true class ``i`` whose arg-max class is ``j`` (torchmetrics), shape ``(K, K)``.

    ``normalize=True``: rows divided by their sums (float64), ``P(predicted j | true i)``; rows of classes absent
    from ``labels`` stay 0.
    """
    p, y = check_probs_labels(probs, labels)
    k = p.shape[1]
    counts = multiclass_confusion_matrix(torch.from_numpy(p), torch.from_numpy(y), num_classes=k).numpy()
    if not normalize:
        return counts
    counts = counts.astype(np.float64)
    rows = counts.sum(axis=1, keepdims=True)  # (K, 1)
    return np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)


def balanced_accuracy(probs, labels) -> float:
    """Mean over the classes present in ``labels`` of the recall ``P(arg-max = k | true k)``."""
    counts = confusion_matrix(probs, labels).astype(np.float64)  # (K, K)
    support = counts.sum(axis=1)  # (K,)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(counts)[present] / support[present]))


def classification_summary(probs, labels, count_key: str = "num_samples") -> dict[str, float]:
    """``accuracy``, ``auc_macro`` and the number of samples under ``count_key``, as plain Python floats."""
    p, y = check_probs_labels(probs, labels)
    return {"accuracy": accuracy(p, y), "auc_macro": auc_macro(p, y), count_key: float(y.size)}


def per_class_table(probs, labels, class_names: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)``, one row per class: true and predicted counts, efficiency (recall) and purity
    (precision) of the arg-max decision, and the one-vs-rest AUC of the class probability (NaN where undefined)."""
    p, y = check_probs_labels(probs, labels)
    if len(class_names) != p.shape[1]:
        raise ValueError(f"class_names: {len(class_names)} names for {p.shape[1]} probability columns")
    counts = confusion_matrix(p, y)  # (K, K)
    auc = per_class_auc(p, y)  # (K,)
    rows = []
    for k, name in enumerate(class_names):
        n_true, n_pred, tp = int(counts[k].sum()), int(counts[:, k].sum()), int(counts[k, k])
        rows.append([str(name), n_true, n_pred, tp / n_true if n_true else float("nan"),
                     tp / n_pred if n_pred else float("nan"), float(auc[k])])
    return ["class", "n_true", "n_predicted", "efficiency", "purity", "auc_vs_rest"], rows


# --------------------------------------------------------------------------- torchmetrics
class PredictionAccumulator(Metric):
    """Collect per-sample tensors (predictions, labels, truth) across batches and DDP ranks.

    ``PredictionAccumulator("probs", "labels")``, then ``update(probs=(B, K), labels=(B,))`` per batch;
    ``compute()`` returns ``{"probs": (N, K), "labels": (N,)}`` holding the samples of every rank (states are
    reduced with ``"cat"``; dtypes as given). Call it on *all* ranks — it performs a collective all-gather — then
    use the result on rank 0 only. With a ``DistributedSampler`` that pads the last batch some samples may appear
    twice: :func:`unique_samples` keeps one of each.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, *fields: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if not fields:
            raise ValueError("PredictionAccumulator: name at least one field")
        self.fields = tuple(fields)
        for name in self.fields:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, **tensors: torch.Tensor) -> None:
        if set(tensors) != set(self.fields):
            raise ValueError(f"PredictionAccumulator: expected fields {list(self.fields)}, got {sorted(tensors)}")
        rows = {name: tuple(t.shape) for name, t in tensors.items()}
        if len({shape[:1] for shape in rows.values()}) != 1 or () in rows.values():
            raise ValueError(f"{'/'.join(self.fields)}: expected the same number of rows, got shapes {rows}")
        for name in self.fields:
            getattr(self, name).append(tensors[name].detach())

    @property
    def has_data(self) -> bool:
        return len(getattr(self, self.fields[0])) > 0

    def compute(self) -> dict[str, torch.Tensor]:
        if not self.has_data:
            raise ValueError("PredictionAccumulator: compute() called before any update()")
        return {name: dim_zero_cat(getattr(self, name)) for name in self.fields}


def unique_samples(arrays: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of ``arrays`` (each ``(N, ...)``) with the first occurrence of each sample ``index (N,)`` only, in
    their order, plus ``"index"``: a sample a sharded loader read twice (DDP padding, a re-read) counts once."""
    index = np.asarray(index, dtype=np.int64)
    rows = {k: len(a) for k, a in arrays.items() if len(a) != len(index)}
    if rows:
        raise ValueError(f"unique_samples: {len(index)} indices but rows {rows}")
    keep = np.sort(np.unique(index, return_index=True)[1])  # (n,) first occurrences, in gathered order
    return {**{k: a[keep] for k, a in arrays.items()}, "index": index[keep]}


def sample_counts(index: np.ndarray, counts: dict[str, int], split: str = "test", rows: int | None = None,
                  complete: bool = True) -> dict[str, int]:
    """Check the distinct sample ``index (n,)`` of a split against what its data module says it holds (and log
    the count; ``rows``: the gathered rows before :func:`unique_samples`; ``complete``: False when the test read
    only a part of the split, then only repeats are checked).

    ``counts``: ``num_entries`` (samples in the split's files, entries ``0 .. num_entries - 1``) and counts of
    samples left out on purpose (e.g. ``num_skipped_unlabelled``). Repeated or out-of-range indices are a one-line
    :class:`DataError`; fewer samples than expected a warning. Returns the purposeful counts (for the summary).
    """
    n = len(index)
    rank_zero_info(f"{split}: {n} distinct samples ({(rows or n) - n} repeated rows left out)")
    if np.unique(index).size != n:
        raise DataError(f"<{split} split>", f"{n - np.unique(index).size} sample(s) appear twice in the outputs",
                        "aux_index")
    extra = {k: int(v) for k, v in counts.items() if k != "num_entries"}
    total = counts.get("num_entries")
    if total is None or not complete:
        return extra
    expected = total - sum(extra.values())  # at most: labels, selection or empty samples may drop more
    left_out = ", ".join(f"{k} {v}" for k, v in extra.items()) or "none left out on purpose"
    if n and (index.min() < 0 or index.max() >= total or n > expected):
        raise DataError(f"<{split} split>", f"{n} distinct samples with indices {index.min()}-{index.max()}, but "
                        f"the split holds {total} ({left_out})", "aux_index")
    if n < expected:
        warnings.warn(f"{split}: {n} distinct samples of the {total} entries the split holds ({left_out}): "
                      f"{expected - n} dropped by labels, selection or empty samples", stacklevel=2)
    return extra


def classification_scores(probs, labels) -> dict[str, float]:
    """Validation's ``acc`` and ``auc`` of ``probs (N, K)`` / ``labels (N,)``, as torchmetrics defines them: for 2
    classes binary accuracy (threshold 0.5 on ``p_1``, the arg-max) and binary AUROC of ``p_1``; otherwise micro
    accuracy and macro one-vs-rest AUROC (exact; a class without samples counts as 0)."""
    p = torch.as_tensor(probs).float()  # (N, K)
    y = torch.as_tensor(labels).long()  # (N,)
    k = p.shape[1]
    if k == 2:
        return {"acc": float(binary_accuracy(p[:, 1], y)), "auc": float(binary_auroc(p[:, 1], y))}
    return {"acc": float(multiclass_accuracy(p, y, num_classes=k, average="micro")),
            "auc": float(multiclass_auroc(p, y, num_classes=k, average="macro"))}


class ClassificationMetrics(torch.nn.Module):
    """Streaming :func:`classification_scores`: ``update(probs (B, K), labels (B,))`` per batch, ``compute() ->
    {"acc": tensor, "auc": tensor}`` over the samples of every rank (a collective), ``reset()``. (The tasks'
    validation gathers its samples with their ``aux_index`` instead, to count each once.)"""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes: need at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.samples = PredictionAccumulator("probs", "labels")

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:  # probs (B, K), labels (B,)
        self.samples.update(probs=probs, labels=labels)

    @property
    def has_data(self) -> bool:
        return self.samples.has_data

    def compute(self) -> dict[str, torch.Tensor]:
        out = self.samples.compute()
        return {k: torch.tensor(v) for k, v in classification_scores(out["probs"].cpu(), out["labels"].cpu()).items()}

    def reset(self) -> None:
        self.samples.reset()
