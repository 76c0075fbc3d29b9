"""The core classification metrics and plots (physics_tf.tasks.metrics / plots) and the jet-tagging ones
(physics_tf.jets.metrics / plots) against hand-computed answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from physics_tf.jets.metrics import (
    background_rejection,
    pairwise_scores,
    rejection_columns,
    rejection_key,
    resolve_background,
    summarize,
)
from physics_tf.jets.plots import plot_rejection_roc
from physics_tf.tasks.metrics import (
    ClassificationMetrics,
    PredictionAccumulator,
    accuracy,
    auc_macro,
    balanced_accuracy,
    classification_summary,
    confusion_matrix,
    per_class_auc,
    per_class_table,
    roc_curve,
)
from physics_tf.tasks.plots import plot_confusion_matrix, plot_residuals, plot_roc_curves, plot_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def mann_whitney_auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """AUC = P(s_pos > s_neg) + 0.5 P(s_pos == s_neg), by brute force over all pairs."""
    diff = scores_pos[:, None] - scores_neg[None, :]  # (N_pos, N_neg)
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


# ----------------------------------------------------------------------------- ROC / rejection
def test_roc_curve_hand_example():
    # sorted: .9 S, .8 B, .7 S, .5 B, .4 S, .3 B, .2 S, .1 B -> a staircase
    sig = np.array([0.9, 0.7, 0.4, 0.2])
    bkg = np.array([0.8, 0.5, 0.3, 0.1])
    tpr, fpr = roc_curve(sig, bkg)
    np.testing.assert_allclose(tpr, [0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0])
    np.testing.assert_allclose(fpr, [0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0])


def test_background_rejection_interpolation_by_hand():
    sig = np.array([0.9, 0.7, 0.4, 0.2])
    bkg = np.array([0.8, 0.5, 0.3, 0.1])
    # best working points per eps_S: (0.25, 0), (0.5, 0.25), (0.75, 0.5), (1, 0.75)
    assert background_rejection(sig, bkg, 0.5) == pytest.approx(4.0)
    # eps_S = 0.3: eps_B = 0 + (0.3 - 0.25) / 0.25 * 0.25 = 0.05
    assert background_rejection(sig, bkg, 0.3) == pytest.approx(20.0)
    # eps_S = 0.6: eps_B = 0.25 + 0.1 / 0.25 * 0.25 = 0.35
    assert background_rejection(sig, bkg, 0.6) == pytest.approx(1 / 0.35)
    assert background_rejection(sig, bkg, 1.0) == pytest.approx(4 / 3)
    # eps_S <= 0.25 is reachable with no background -> infinite rejection
    assert math.isinf(background_rejection(sig, bkg, 0.2))
    out = background_rejection(torch.tensor(sig), torch.tensor(bkg), [0.5, 0.3])
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [4.0, 20.0])


def test_background_rejection_ties():
    # one threshold (0.5) admits both signal jets and one background jet at once
    sig = np.array([0.5, 0.5])
    bkg = np.array([0.5, 0.1])
    tpr, fpr = roc_curve(sig, bkg)
    np.testing.assert_allclose(tpr, [0, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0.5, 1])
    # interpolate (0, 0) -> (1, 0.5): eps_B(0.5) = 0.25
    assert background_rejection(sig, bkg, 0.5) == pytest.approx(4.0)


def test_perfect_separation_gives_inf_rejection_and_auc_one():
    rng = np.random.default_rng(0)
    n = 500
    p1 = np.r_[rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.4, n)]
    labels = np.r_[np.ones(n, int), np.zeros(n, int)]
    probs = np.stack([1 - p1, p1], axis=1)
    s = summarize(probs, labels, ["label_QCD", "label_Tbqq"])
    assert s["accuracy"] == 1.0
    assert s["auc_macro"] == pytest.approx(1.0)
    assert math.isinf(s["rej50_Tbqq"]) and math.isinf(s["rej30_Tbqq"])


def test_random_scores_auc_half_and_rejection_inverse_eff():
    rng = np.random.default_rng(1)
    n = 40000
    p1 = rng.uniform(size=n)
    labels = rng.integers(0, 2, size=n)
    probs = np.stack([1 - p1, p1], axis=1)
    s = summarize(probs, labels, ["label_QCD", "label_Tbqq"], rejection_effs=(0.5, 0.3))
    assert s["auc_macro"] == pytest.approx(0.5, abs=0.015)
    # uninformative scores: eps_B = eps_S  ->  rejection = 1 / eps_S
    assert s["rej50_Tbqq"] == pytest.approx(2.0, rel=0.05)
    assert s["rej30_Tbqq"] == pytest.approx(1 / 0.3, rel=0.05)


def test_binary_auc_matches_mann_whitney_with_ties():
    rng = np.random.default_rng(2)
    n = 600
    labels = rng.integers(0, 2, size=n)
    p1 = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1), 2)  # rounding -> many ties
    probs = np.stack([1 - p1, p1], axis=1)
    expected = mann_whitney_auc(p1[labels == 1], p1[labels == 0])
    assert auc_macro(probs, labels) == pytest.approx(expected, abs=1e-6)


def test_multiclass_macro_auc_matches_mann_whitney():
    rng = np.random.default_rng(3)
    n, k = 900, 4
    labels = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + 1.0 * np.eye(k)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs = np.round(probs, 3)
    per_class = [mann_whitney_auc(probs[labels == c, c], probs[labels != c, c]) for c in range(k)]
    assert auc_macro(probs, labels) == pytest.approx(np.mean(per_class), abs=1e-6)
    assert accuracy(probs, labels) == pytest.approx(np.mean(probs.argmax(1) == labels))


# ----------------------------------------------------------------------------- multi-class convention
def test_pairwise_scores_and_summarize_keys():
    class_names = ["label_Hbb", "label_QCD", "label_Tbqq"]  # QCD deliberately not first
    probs = np.array(
        [
            [0.6, 0.2, 0.2],  # Hbb jet
            [0.1, 0.3, 0.6],  # QCD jet
            [0.2, 0.2, 0.6],  # Tbqq jet
            [0.5, 0.4, 0.1],  # QCD jet
        ]
    )
    labels = np.array([0, 1, 2, 1])
    s_sig, s_bkg = pairwise_scores(probs, labels, signal=0, background=1)
    np.testing.assert_allclose(s_sig, [0.6 / 0.8])
    np.testing.assert_allclose(s_bkg, [0.1 / 0.4, 0.5 / 0.9])
    s = summarize(probs, labels, class_names, rejection_effs=(0.5, 0.3, 0.995))
    assert set(s) == {
        "accuracy", "auc_macro", "num_jets",
        "rej50_Hbb", "rej30_Hbb", "rej99.5_Hbb", "rej50_Tbqq", "rej30_Tbqq", "rej99.5_Tbqq",
    }
    assert s["num_jets"] == 4.0
    assert s["accuracy"] == pytest.approx(0.5)  # jets 0 and 2 right
    # Hbb: sig 0.75 beats both bkg (0.25, 0.556) -> eps_B = 0 at any eps_S < 1
    assert math.isinf(s["rej50_Hbb"])
    # Tbqq: sig 0.6/0.8=0.75 vs bkg 0.6/0.9=0.667, 0.1/0.5=0.2 -> eps_B = 0 below eps_S = 1
    assert math.isinf(s["rej30_Tbqq"])
    assert all(type(v) is float for v in s.values())
    json.loads(json.dumps(s))  # serialisable (inf -> Infinity)


def test_two_class_pairwise_score_is_p_signal():
    p1 = np.array([0.1, 0.7, 0.4, 0.9])
    probs = np.stack([1 - p1, p1], axis=1)
    labels = np.array([0, 1, 0, 1])
    s_sig, s_bkg = pairwise_scores(probs, labels, signal=1, background=0)
    np.testing.assert_allclose(s_sig, [0.7, 0.9])
    np.testing.assert_allclose(s_bkg, [0.1, 0.4])


def test_resolve_background_and_keys():
    assert resolve_background(["a", "label_QCD"], "label_QCD") == 1
    assert resolve_background(["is_qcd", "is_top"], "label_QCD") == 0  # fallback: first class
    assert resolve_background(["a", "b", "c"], 2) == 2
    with pytest.raises(ValueError, match="background"):
        resolve_background(["a", "b"], 5)
    assert rejection_key(0.5, "label_Hbb") == "rej50_Hbb"
    assert rejection_key(0.995, "top") == "rej99.5_top"


def test_bad_inputs_raise_clear_errors():
    probs = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="labels"):
        summarize(probs, np.array([0, 1, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        summarize(probs, np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="class_names"):
        summarize(probs, np.array([0, 1, 1]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="eff_sig"):
        background_rejection([0.5], [0.2], 1.5)
    with pytest.raises(ValueError, match="roc_curve"):
        roc_curve([], [0.1])


# ----------------------------------------------------------------------------- torchmetrics wrappers
@pytest.mark.parametrize("k", [2, 3])
def test_streaming_metrics_match_summarize(k):
    g = torch.Generator().manual_seed(4)
    n = 300
    labels = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, k)
    probs = logits.softmax(-1)
    acc_metric, collector = ClassificationMetrics(k), PredictionAccumulator("probs", "labels")
    for chunk in range(0, n, 64):  # batches of 64
        acc_metric.update(probs[chunk:chunk + 64], labels[chunk:chunk + 64])
        collector.update(probs=probs[chunk:chunk + 64], labels=labels[chunk:chunk + 64])
    got = acc_metric.compute()
    p_all, y_all = collector.compute().values()
    assert p_all.shape == (n, k) and torch.equal(y_all, labels)
    names = [f"c{i}" for i in range(k)]
    ref = summarize(probs.numpy(), labels.numpy(), names, background=0)
    assert float(got["acc"]) == pytest.approx(ref["accuracy"], abs=1e-6)
    assert float(got["auc"]) == pytest.approx(ref["auc_macro"], abs=1e-5)
    acc_metric.reset()
    assert not acc_metric.has_data


def test_prediction_accumulator_empty_and_shape_errors():
    acc = PredictionAccumulator("probs", "labels")
    assert not acc.has_data
    with pytest.raises(ValueError, match="before any update"):
        acc.compute()
    with pytest.raises(ValueError, match="probs/labels"):
        acc.update(probs=torch.rand(4, 2), labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="expected fields"):
        acc.update(probs=torch.rand(4, 2))
    acc.update(probs=torch.rand(4, 2), labels=torch.zeros(4, dtype=torch.int32))
    acc.update(probs=torch.rand(2, 2), labels=torch.ones(2, dtype=torch.int32))
    out = acc.compute()
    assert out["probs"].shape == (6, 2) and out["labels"].tolist() == [0, 0, 0, 0, 1, 1]
    assert out["labels"].dtype == torch.int32  # kept as given


# ----------------------------------------------------------------------------- plotting
def _png_ok(path):
    return path.exists() and path.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_pngs_atomically(tmp_path):
    rng = np.random.default_rng(5)
    n, k = 400, 3
    labels = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    names = ["label_QCD", "label_Hbb", "label_Tbqq"]
    roc = plot_rejection_roc(probs, labels, names, tmp_path / "sub" / "roc.png")
    ovr = plot_roc_curves(probs, labels, names, tmp_path / "ovr.png")
    cm = plot_confusion_matrix(probs, labels, names, tmp_path / "cm.png")
    res = plot_residuals(probs[:, 0], probs[:, 1], "p", tmp_path / "res.png", groups=labels, group_names=names)
    assert _png_ok(roc) and _png_ok(ovr) and _png_ok(cm) and _png_ok(res)
    # no temp files left
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["cm.png", "ovr.png", "res.png", "roc.png"]


def test_training_curves_from_csv(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(
        "epoch,step,train/loss,val/loss,val/acc,val/auc\n"
        "0,9,0.70,,,\n0,19,0.60,,,\n0,19,,0.62,0.70,0.75\n1,29,0.50,,,\n1,39,0.40,,,\n1,39,,0.45,0.80,0.88\n"
    )
    out = plot_training_curves(csv_path, tmp_path / "curves.png")
    assert _png_ok(out)
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,step,other\n0,1,2\n")
    with pytest.raises(ValueError, match="bad.csv"):
        plot_training_curves(bad, tmp_path / "x.png")


def test_background_matches_with_or_without_label_prefix():
    assert resolve_background(["Tbqq", "QCD"], "label_QCD") == 1
    assert resolve_background(["label_Tbqq", "label_QCD"], "QCD") == 1


# ----------------------------------------------------------------------------- core: confusion, per class
def test_confusion_matrix_balanced_accuracy_and_summary_by_hand():
    # arg-max predictions [0, 0, 1, 1, 2, 0, 3]; labels [0, 0, 1, 2, 2, 1, 1]; class 3 is only ever predicted
    probs = np.array([[.8, .1, .1, 0], [.6, .3, .1, 0], [.2, .7, .1, 0], [.1, .5, .4, 0], [.1, .2, .7, 0],
                      [.5, .4, .1, 0], [.1, .2, .1, .6]])
    labels = np.array([0, 0, 1, 2, 2, 1, 1])
    counts = confusion_matrix(probs, labels)
    assert counts.tolist() == [[2, 0, 0, 0], [1, 1, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0]]
    norm = confusion_matrix(probs, labels, normalize=True)
    np.testing.assert_allclose(norm[1], [1 / 3, 1 / 3, 0, 1 / 3])
    assert norm[3].tolist() == [0, 0, 0, 0]  # absent class: row left at 0
    # recalls of the classes present: 1, 1/3, 1/2 (class 3, never true, is left out)
    assert balanced_accuracy(probs, labels) == (1 + 1 / 3 + 1 / 2) / 3
    s = classification_summary(probs, labels, count_key="num_objects")
    assert set(s) == {"accuracy", "auc_macro", "num_objects"} and s["num_objects"] == 7.0
    assert s["accuracy"] == pytest.approx(4 / 7)


def test_per_class_auc_and_table_match_pair_counting():
    rng = np.random.default_rng(6)
    n, k = 300, 3
    labels = rng.integers(0, k, size=n)
    probs = np.round(np.exp(rng.normal(size=(n, k)) + np.eye(k)[labels]), 1)
    probs /= probs.sum(1, keepdims=True)
    auc = per_class_auc(probs, labels)
    for c in range(k):
        assert auc[c] == pytest.approx(mann_whitney_auc(probs[labels == c, c], probs[labels != c, c]), abs=1e-6)
    assert np.isnan(per_class_auc(probs[labels != 2], labels[labels != 2])[2])  # no sample of class 2
    columns, rows = per_class_table(probs, labels, ["a", "b", "c"])
    assert columns == ["class", "n_true", "n_predicted", "efficiency", "purity", "auc_vs_rest"]
    pred = probs.argmax(1)
    for c, row in enumerate(rows):
        tp = int(((pred == c) & (labels == c)).sum())
        assert row[:5] == ["abc"[c], int((labels == c).sum()), int((pred == c).sum()),
                           pytest.approx(tp / (labels == c).sum()), pytest.approx(tp / (pred == c).sum())]
        assert row[5] == pytest.approx(auc[c])


def test_rejection_columns_for_the_per_class_table():
    summary = {"rej50_Hbb": 3.0, "rej50_Tbqq": float("inf"), "rej99.5_Hbb": 1.5, "rej99.5_Tbqq": 2.0}
    columns, values = rejection_columns(summary, ["label_QCD", "label_Hbb", "label_Tbqq"], [0.995, 0.5])
    assert columns == ["rej99.5", "rej50"]
    assert values == [[None, None], [1.5, 3.0], [2.0, float("inf")]]


def test_auc_macro_averages_only_the_classes_present():
    """A class without test samples has no AUC: it is left out of the macro average (torchmetrics alone scores it
    0), and a two-class test set with one class only has none."""
    import numpy as np

    from physics_tf.tasks.metrics import auc_macro

    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1]])
    labels = np.array([0, 1, 0, 1])  # class 2 absent, classes 0 and 1 perfectly separated
    assert auc_macro(probs, labels) == 1.0
    assert np.isnan(auc_macro(np.array([[0.3, 0.7], [0.6, 0.4]]), np.array([1, 1])))
