"""Jet-tagging metrics: accuracy, macro one-vs-rest AUC and background rejection.

Conventions follow the Particle Transformer paper (Qu, Li, Qian, "Particle Transformer
for Jet Tagging", ICML 2022, arXiv:2202.03772, Sec. 5 / Table 2):

* For every signal class ``s`` the discriminant against the background class ``b``
  (QCD) is the two-class likelihood ratio built from the softmax outputs,

      score_s = p_s / (p_s + p_b),

  evaluated on the jets whose true label is ``s`` (signal) or ``b`` (background) only.
  For a 2-class problem ``p_s + p_b = 1`` and the score is simply ``p_s``.
* The background rejection at signal efficiency ``eps_S`` is ``1 / eps_B(eps_S)`` where
  ``eps_B(eps_S)`` is read off the ROC curve by linear interpolation.  The paper quotes
  ``eps_S = 0.5`` for most classes and ``eps_S = 0.99 / 0.995`` for a few; this module
  defaults to ``(0.5, 0.3)`` and accepts any list.
* Accuracy is the plain (micro) fraction of jets whose arg-max class is the true one;
  ``auc_macro`` is the unweighted mean of the one-vs-rest AUCs (torchmetrics
  ``MulticlassAUROC(average="macro")``), or the binary AUC of ``p_1`` for 2 classes.

DDP: :class:`PredictionAccumulator` keeps the per-jet probabilities in
``dist_reduce_fx="cat"`` states so that ``compute()`` returns the jets of *all* ranks;
:class:`JetTaggingMetrics` wraps torchmetrics accuracy/AUROC, which sync themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassAUROC,
)
from torchmetrics.functional.classification import binary_auroc, multiclass_auroc
from torchmetrics.utilities import dim_zero_cat

log = logging.getLogger(__name__)

DEFAULT_BACKGROUND = "label_QCD"
DEFAULT_REJECTION_EFFS: tuple[float, ...] = (0.5, 0.3)

__all__ = [
    "DEFAULT_BACKGROUND",
    "DEFAULT_REJECTION_EFFS",
    "JetTaggingMetrics",
    "PredictionAccumulator",
    "accuracy",
    "auc_macro",
    "background_rejection",
    "check_probs_labels",
    "pairwise_scores",
    "rejection_key",
    "resolve_background",
    "roc_curve",
    "signal_name",
    "summarize",
]


# --------------------------------------------------------------------------- helpers
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


def resolve_background(class_names: Sequence[str], background: str | int | None = DEFAULT_BACKGROUND) -> int:
    """Index of the background class.

    ``background`` may be an index, a class name, or ``None``.  A name that is not in
    ``class_names`` (or ``None``) falls back to class 0 — the ParT convention puts QCD
    first — and the fallback is logged, because e.g. a top-tagging dataset may call its
    QCD class ``"is_qcd"``.
    """
    n = len(class_names)
    if n < 2:
        raise ValueError(f"class_names: need at least 2 classes, got {list(class_names)}")
    if isinstance(background, (int, np.integer)) and not isinstance(background, bool):
        if not 0 <= background < n:
            raise ValueError(f"background: index {background} out of range for {n} classes")
        return int(background)
    if background is not None:
        short = [signal_name(str(c)) for c in class_names]  # "label_QCD" and "QCD" name the same class
        if signal_name(str(background)) in short:
            return short.index(signal_name(str(background)))
    log.info("background class %r not in %s; using class 0 (%r)", background, list(class_names), class_names[0])
    return 0


def signal_name(class_name: str) -> str:
    """Short name used in metric keys: ``"label_Hbb" -> "Hbb"``."""
    return class_name[len("label_"):] if class_name.startswith("label_") else class_name


def rejection_key(eff_sig: float, class_name: str) -> str:
    """Metric key for a rejection value: ``(0.5, "label_Hbb") -> "rej50_Hbb"``, ``0.995 -> "rej99.5_..."``."""
    return f"rej{eff_sig * 100:g}_{signal_name(class_name)}"


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
        raise ValueError(f"roc_curve: need at least one signal and one background jet (got {s.size}, {b.size})")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(b))):
        raise ValueError("roc_curve: scores contain NaN or inf")
    scores = np.concatenate([s, b])  # (N,)
    is_sig = np.concatenate([np.ones(s.size), np.zeros(b.size)])  # (N,)
    order = np.argsort(-scores, kind="mergesort")
    scores, is_sig = scores[order], is_sig[order]
    tp = np.cumsum(is_sig)  # signal jets with score >= scores[i]
    fp = np.cumsum(1.0 - is_sig)
    # keep the last index of each group of tied scores -> one point per distinct threshold
    last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    eff_sig = np.r_[0.0, tp[last] / s.size]
    eff_bkg = np.r_[0.0, fp[last] / b.size]
    return eff_sig, eff_bkg


def background_rejection(scores_sig, scores_bkg, eff_sig: float | Sequence[float] = 0.5):
    """Background rejection ``1 / eps_B`` at the signal efficiency ``eff_sig``.

    ``eps_B(eff_sig)`` is linearly interpolated between neighbouring ROC points (see
    :func:`roc_curve`).  Where the ROC has a vertical segment (several background
    efficiencies at the same signal efficiency, i.e. background-only tied thresholds)
    the *lowest* background efficiency is used — the best working point that reaches
    that signal efficiency.  If ``eps_B = 0`` (no background passes the cut; e.g. perfectly
    separated classes) the rejection is ``float("inf")``.

    Parameters
    ----------
    scores_sig, scores_bkg : array-like or torch.Tensor, shape (N_sig,), (N_bkg,)
        Discriminant values of the signal and background jets.
    eff_sig : float or sequence of float in [0, 1]
        Signal efficiency/efficiencies at which to evaluate.

    Returns
    -------
    float or np.ndarray
        ``1 / eps_B``; a float for scalar ``eff_sig``.
    """
    effs = np.atleast_1d(np.asarray(eff_sig, dtype=np.float64))
    if np.any((effs < 0) | (effs > 1)) or not np.all(np.isfinite(effs)):
        raise ValueError(f"eff_sig: signal efficiencies must lie in [0, 1], got {eff_sig}")
    tpr, fpr = roc_curve(scores_sig, scores_bkg)
    # first occurrence of each eps_S value carries the minimum eps_B (both arrays non-decreasing)
    tpr_u, first = np.unique(tpr, return_index=True)
    eps_b = np.interp(effs, tpr_u, fpr[first])  # (E,)
    with np.errstate(divide="ignore"):
        rej = np.where(eps_b > 0, 1.0 / np.where(eps_b > 0, eps_b, 1.0), np.inf)
    return float(rej[0]) if np.ndim(eff_sig) == 0 else rej


def pairwise_scores(probs, labels, signal: int, background: int) -> tuple[np.ndarray, np.ndarray]:
    """ParT signal-vs-background discriminant ``p_s / (p_s + p_b)``.

    Returns the discriminant of the true-signal jets and of the true-background jets
    (jets of other classes are ignored).  If ``p_s + p_b == 0`` (numerical underflow)
    the score is 0.
    """
    p, y = check_probs_labels(probs, labels)
    num = p[:, signal]  # (N,)
    den = p[:, signal] + p[:, background]  # (N,)
    score = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return score[y == signal], score[y == background]


def accuracy(probs, labels) -> float:
    """Fraction of jets whose arg-max class equals the label."""
    p, y = check_probs_labels(probs, labels)
    if y.size == 0:
        raise ValueError("accuracy: no jets")
    return float(np.mean(np.argmax(p, axis=1) == y))


def auc_macro(probs, labels) -> float:
    """Macro-averaged one-vs-rest AUC (torchmetrics); binary AUC of ``p_1`` for 2 classes."""
    p, y = check_probs_labels(probs, labels)
    pt, yt = torch.from_numpy(p), torch.from_numpy(y)
    if p.shape[1] == 2:
        return float(binary_auroc(pt[:, 1], yt))
    return float(multiclass_auroc(pt, yt, num_classes=p.shape[1], average="macro"))


def summarize(
    probs,
    labels,
    class_names: Sequence[str],
    background: str | int | None = DEFAULT_BACKGROUND,
    rejection_effs: Sequence[float] = DEFAULT_REJECTION_EFFS,
) -> dict[str, float]:
    """All test-set numbers as a flat dict of plain Python floats.

    Keys: ``accuracy``, ``auc_macro``, ``num_jets`` and, for every signal class ``s`` (all
    classes but the background) and every efficiency ``e`` in ``rejection_effs``,
    ``rej{100 e:g}_{s}`` (e.g. ``rej50_Hbb``, ``rej30_Tbqq``) = background rejection of
    ``p_s / (p_s + p_b)`` at ``eps_S = e``.  Rejections may be ``inf`` (no background jet
    passes) and are ``nan`` if the test set has no jet of ``s`` or of the background class.
    ``json.dump`` writes these as ``Infinity`` / ``NaN`` (readable by Python's ``json``).
    """
    p, y = check_probs_labels(probs, labels)
    if p.shape[1] != len(class_names):
        raise ValueError(f"class_names: {len(class_names)} names for {p.shape[1]} probability columns")
    bkg = resolve_background(class_names, background)
    out: dict[str, float] = {
        "accuracy": accuracy(p, y),
        "auc_macro": auc_macro(p, y),
        "num_jets": float(y.size),
    }
    for sig, name in enumerate(class_names):
        if sig == bkg:
            continue
        s_scores, b_scores = pairwise_scores(p, y, sig, bkg)
        if s_scores.size == 0 or b_scores.size == 0:
            rej = np.full(len(rejection_effs), np.nan)
        else:
            rej = background_rejection(s_scores, b_scores, list(rejection_effs))
        for eff, r in zip(rejection_effs, rej):
            out[rejection_key(eff, name)] = float(r)
    return out


# --------------------------------------------------------------------------- torchmetrics
class PredictionAccumulator(Metric):
    """Collect per-jet probabilities and labels across batches and DDP ranks.

    ``compute()`` returns ``(probs (N, K) float32, labels (N,) int64)`` holding the jets of
    every rank (states are reduced with ``"cat"``).  Call it on *all* ranks — it performs a
    collective all-gather — then use the result on rank 0 only.  With a
    ``DistributedSampler`` that pads the last batch some jets may appear twice.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:  # probs (B, K), labels (B,)
        if probs.ndim != 2 or labels.shape != probs.shape[:1]:
            raise ValueError(f"probs/labels: expected (B, K)/(B,), got {tuple(probs.shape)}/{tuple(labels.shape)}")
        self.probs.append(probs.detach().float())
        self.labels.append(labels.detach().long())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.probs, list) and len(self.probs) == 0:
            raise ValueError("PredictionAccumulator: compute() called before any update()")
        return dim_zero_cat(self.probs), dim_zero_cat(self.labels)


class JetTaggingMetrics(torch.nn.Module):
    """Streaming accuracy + macro AUC for validation, DDP-synchronised by torchmetrics.

    ``update(probs (B, K), labels (B,))``; ``compute() -> {"acc": tensor, "auc": tensor}``;
    ``reset()``.  For 2 classes uses ``BinaryAccuracy``/``BinaryAUROC`` on ``p_1`` (threshold
    0.5 on ``p_1`` equals the arg-max); otherwise ``MulticlassAccuracy(average="micro")`` and
    ``MulticlassAUROC(average="macro")``.  AUROC keeps all scores (exact, ``thresholds=None``).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes: need at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.binary = num_classes == 2
        if self.binary:
            self.acc = BinaryAccuracy()
            self.auc = BinaryAUROC()
        else:
            self.acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
            self.auc = MulticlassAUROC(num_classes=num_classes, average="macro")

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:  # probs (B, K), labels (B,)
        preds = probs[:, 1] if self.binary else probs  # (B,) or (B, K)
        self.acc.update(preds, labels)
        self.auc.update(preds, labels)

    @property
    def has_data(self) -> bool:
        return self.acc.update_count > 0

    def compute(self) -> dict[str, torch.Tensor]:
        return {"acc": self.acc.compute(), "auc": self.auc.compute()}

    def reset(self) -> None:
        self.acc.reset()
        self.auc.reset()

