"""Jet-tagging metrics: the ParT pairwise discriminant and background rejection at fixed signal efficiency.

Conventions follow the Particle Transformer paper (Qu, Li, Qian, "Particle Transformer
for Jet Tagging", ICML 2022, arXiv:2202.03772, Sec. 5 / Table 2):

* For every signal class ``s`` the discriminant against the background class ``b``
  (QCD) is the two-class likelihood ratio built from the softmax outputs,

      score_s = p_s / (p_s + p_b),

  evaluated on the jets whose true label is ``s`` (signal) or ``b`` (background) only.
  For a 2-class problem ``p_s + p_b = 1`` and the score is simply ``p_s``.
* The background rejection at signal efficiency ``eps_S`` is ``1 / eps_B(eps_S)`` where
  ``eps_B(eps_S)`` is read off the ROC curve (:func:`physics_tf.tasks.metrics.roc_curve`) by linear
  interpolation.  The paper quotes ``eps_S = 0.5`` for most classes and ``eps_S = 0.99 / 0.995`` for a few;
  this module defaults to ``(0.5, 0.3)`` and accepts any list.
* Accuracy and ``auc_macro`` are the core's (:mod:`physics_tf.tasks.metrics`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from physics_tf.tasks.metrics import check_probs_labels, classification_summary, roc_curve

log = logging.getLogger(__name__)

DEFAULT_BACKGROUND = "label_QCD"
DEFAULT_REJECTION_EFFS: tuple[float, ...] = (0.5, 0.3)
_FALLBACKS_LOGGED: set[tuple[Any, tuple[str, ...]]] = set()  # (background, class names) whose fallback was logged

__all__ = [
    "DEFAULT_BACKGROUND",
    "DEFAULT_REJECTION_EFFS",
    "background_rejection",
    "find_class",
    "pairwise_scores",
    "rejection_columns",
    "rejection_key",
    "resolve_background",
    "signal_name",
    "summarize",
]


def signal_name(class_name: str) -> str:
    """Short name used in metric keys: ``"label_Hbb" -> "Hbb"``."""
    return class_name[len("label_"):] if class_name.startswith("label_") else class_name


def rejection_key(eff_sig: float, class_name: str) -> str:
    """Metric key for a rejection value: ``(0.5, "label_Hbb") -> "rej50_Hbb"``, ``0.995 -> "rej99.5_..."``."""
    return f"rej{eff_sig * 100:g}_{signal_name(class_name)}"


def find_class(class_names: Sequence[str], name: str) -> int | None:
    """Index of the class ``name`` in ``class_names``: the same name, else the same without a ``label_`` prefix
    (``label_QCD`` and ``QCD``), else that ignoring case (``qcd``) when one class matches; None if none does."""
    names = [str(c) for c in class_names]
    if str(name) in names:
        return names.index(str(name))
    short = [signal_name(c) for c in names]
    if signal_name(str(name)) in short:
        return short.index(signal_name(str(name)))
    folded = [c.casefold() for c in short]
    hits = [i for i, c in enumerate(folded) if c == signal_name(str(name)).casefold()]
    return hits[0] if len(hits) == 1 else None


def resolve_background(class_names: Sequence[str], background: str | int | None = DEFAULT_BACKGROUND) -> int:
    """Index of the background class.

    ``background`` may be an index, a class name (matched as :func:`find_class` does: ``label_QCD``, ``QCD`` and
    ``qcd`` name the same class), or ``None``.  A name that is not in ``class_names`` (or ``None``) falls back to
    class 0 — the ParT convention puts QCD
    first — and the fallback is logged once per process and class list (the test stage resolves it for the
    numbers and again for the plot), because e.g. a top-tagging dataset may call its QCD class ``"is_qcd"``.
    """
    n = len(class_names)
    if n < 2:
        raise ValueError(f"class_names: need at least 2 classes, got {list(class_names)}")
    if isinstance(background, (int, np.integer)) and not isinstance(background, bool):
        if not 0 <= background < n:
            raise ValueError(f"background: index {background} out of range for {n} classes")
        return int(background)
    if background is not None:
        index = find_class(class_names, str(background))
        if index is not None:
            return index
    key = (background, tuple(str(c) for c in class_names))
    if key not in _FALLBACKS_LOGGED:
        _FALLBACKS_LOGGED.add(key)
        reason = "no background class given" if background is None else \
            f"background class {background!r} not in {list(key[1])}"
        log.info("%s; using class 0 (%r) as the background", reason, class_names[0])
    return 0


def background_rejection(scores_sig, scores_bkg, eff_sig: float | Sequence[float] = 0.5):
    """Background rejection ``1 / eps_B`` at the signal efficiency ``eff_sig``.

    ``eps_B(eff_sig)`` is linearly interpolated between neighbouring ROC points (see
    :func:`physics_tf.tasks.metrics.roc_curve`).  Where the ROC has a vertical segment (several background
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


def summarize(
    probs,
    labels,
    class_names: Sequence[str],
    background: str | int | None = DEFAULT_BACKGROUND,
    rejection_effs: Sequence[float] = DEFAULT_REJECTION_EFFS,
) -> dict[str, float]:
    """All test-set numbers of a jet tagger as a flat dict of plain Python floats.

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
    out = classification_summary(p, y, count_key="num_jets")
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


def rejection_columns(summary: Mapping[str, Any], class_names: Sequence[str], rejection_effs: Sequence[float]
                      ) -> tuple[list[str], list[list[Any]]]:
    """Per-class rejection columns for a per-class table: names ``rej<100 e:g>`` and, per class, its rejections
    read from ``summary`` (:func:`summarize`; ``None`` for the background class, which has none)."""
    columns = [f"rej{eff * 100:g}" for eff in rejection_effs]
    values = [[summary.get(rejection_key(eff, str(name))) for eff in rejection_effs] for name in class_names]
    return columns, values
