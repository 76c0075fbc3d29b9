"""Image tests of every plot: each is rendered to a PNG from small synthetic arrays (a real, non-blank image), and
its Figure is inspected through matplotlib's objects: axis labels with units, legend entries, legend beside the
data, distinct class styles, readable confusion matrices."""

from __future__ import annotations

import itertools
import logging

import matplotlib.image
import numpy as np
import pytest

from physics_tf.auger.plots import quantity_label, quantity_unit, resolution_figure
from physics_tf.jets.metrics import resolve_background
from physics_tf.jets.plots import rejection_label, rejection_roc_figure
from physics_tf.lightcurves.plots import early_classification_figure
from physics_tf.tasks.plots import (
    class_styles,
    confusion_matrix_figure,
    plot_roc_curves,
    residuals_figure,
    roc_curves_figure,
    save_figure,
    training_curves_figure,
)
from physics_tf.tasks.regression import residual_stats

LC_NAMES = ["SNIa_90", "SNII_42", "SNIbc_62", "SLSN-I_95", "TDE_15", "KN_64", "AGN_88", "RRLyrae_92", "EB_16",
            "Mdwarf_65", "Mira_53", "mu-Lens-Single_6"]


def _probs(n: int, k: int, seed: int = 0, sep: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k  # every class present
    logits = rng.normal(size=(n, k)) + sep * np.eye(k)[labels]
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True), labels


def assert_png(fig, path):
    """Saved through the project's writer, ``fig`` is a decodable, non-blank PNG of a sensible size."""
    save_figure(fig, path)
    assert path.stat().st_size > 10_000
    img = matplotlib.image.imread(path)  # (H, W, 3|4) floats in [0, 1]
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300
    rgb = img[..., :3]
    assert rgb.std() > 0.05  # not one flat colour
    assert (rgb.min(axis=-1) < 0.9).mean() > 0.01  # more than a frame: ink on over 1 % of the pixels
    return img


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def assert_legend_beside(fig, ax):
    """The legend lies right of the axes: it covers no data."""
    fig.draw_without_rendering()
    legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= frame.x1, (legend, frame)


def test_class_styles_are_distinct():
    styles = class_styles(40)
    assert len({(s["color"], s["linestyle"]) for s in styles}) == 40
    assert len({s["color"] for s in styles[:10]}) == 10  # the first ten classes differ in colour alone


def test_multiclass_roc_one_panel_auc_per_class(tmp_path):
    probs, labels = _probs(600, 12)
    fig = roc_curves_figure(probs, labels, LC_NAMES)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_xlabel() == "False-positive rate (other classes)" and ax.get_ylabel() == "True-positive rate"
    texts = legend_texts(ax)
    assert len(texts) == 13  # every class and the macro average
    assert [t.split(" (")[0] for t in texts[:12]] == LC_NAMES
    assert texts[-1].startswith("macro average (")
    assert not any("inf" in t or "nan" in t for t in texts)
    aucs = [float(t.rsplit("(", 1)[1].rstrip(")")) for t in texts]
    assert all(0.5 < a <= 1.0 for a in aucs)
    assert aucs[-1] == pytest.approx(np.mean(aucs[:12]), abs=2e-3)  # macro = mean of the classes'
    styles = {(line.get_color(), line.get_linestyle()) for line in ax.get_legend().get_lines()[:12]}
    assert len(styles) == 12  # no colour repeated with the same line style
    assert_legend_beside(fig, ax)
    assert_png(fig, tmp_path / "roc.png")


def test_roc_two_classes_one_curve_and_many_classes_a_few(tmp_path):
    probs, labels = _probs(200, 2)
    texts = legend_texts(roc_curves_figure(probs, labels, ["bkg", "sig"]).axes[0])
    assert len(texts) == 1 and texts[0].startswith("sig (")
    probs, labels = _probs(900, 15, sep=1.5)
    fig = roc_curves_figure(probs, labels, [f"c{i}" for i in range(15)], max_curves=5)
    ax = fig.axes[0]
    texts = legend_texts(ax)
    assert len(texts) == 6 and texts[-1].startswith("macro average")
    aucs = {t.split(" (")[0]: float(t.rsplit("(", 1)[1].rstrip(")")) for t in texts[:5]}
    all_aucs = roc_curves_figure(probs, labels, [f"c{i}" for i in range(15)]).axes[0].get_legend().get_texts()
    ranked = sorted((float(t.get_text().rsplit("(", 1)[1].rstrip(")")), t.get_text().split(" (")[0])
                    for t in all_aucs[:15])
    assert set(aucs) == {name for _, name in ranked[:5]}  # the five lowest AUCs
    assert "5 of 15" in ax.get_legend().get_title().get_text()
    out = plot_roc_curves(probs, labels, [f"c{i}" for i in range(15)], tmp_path / "sub" / "roc.png", max_curves=5)
    assert out == tmp_path / "sub" / "roc.png" and matplotlib.image.imread(out).shape[0] > 300


def test_confusion_matrix_normalised_and_legible_at_12_classes(tmp_path):
    probs, labels = _probs(600, 12, sep=1.5)
    fig = confusion_matrix_figure(probs, labels, LC_NAMES)
    ax, cbar = fig.axes  # the matrix and its colour bar
    assert ax.get_xlabel() == "Predicted class" and ax.get_ylabel() == "True class (n)"
    assert cbar.get_ylabel() == "% of true class"
    matrix = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(matrix.sum(axis=1), 100.0)  # row-normalised, in %
    assert [t.get_text() for t in ax.get_xticklabels()] == LC_NAMES
    assert all(t.get_rotation() == 45 for t in ax.get_xticklabels())
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"{n} (50)" for n in LC_NAMES]
    cells = [t for t in ax.texts]
    assert len(cells) == int((np.round(matrix) >= 1).sum()) > 12  # zero cells are left blank
    assert all(t.get_text().isdigit() for t in cells)  # whole per cent, no "0.0"
    assert min(t.get_fontsize() for t in cells) >= 9
    assert_png(fig, tmp_path / "confusion.png")
    # above annotate_max the colour bar alone reads it
    assert len(confusion_matrix_figure(probs, labels, LC_NAMES, annotate_max=10).axes[0].texts) == 0


def test_residuals_with_units_and_stats(tmp_path):
    rng = np.random.default_rng(1)
    true = rng.uniform(650.0, 900.0, 400)
    groups = np.arange(400) % 4
    pred = true + rng.normal(10.0 * groups, 20.0)
    fig = residuals_figure(pred, true, quantity_label("xmax"), groups, ["p", "He", "N", "Fe"],
                           unit=quantity_unit("xmax"))
    ax_s, ax_h = fig.axes
    assert ax_s.get_xlabel() == r"True $X_\mathrm{max}$ [g/cm²]"
    assert ax_s.get_ylabel() == r"Predicted $X_\mathrm{max}$ [g/cm²]"
    assert ax_h.get_xlabel() == r"Δ$X_\mathrm{max}$ = predicted − true [g/cm²]"
    texts = legend_texts(ax_h)
    fe = pred[groups == 3] - true[groups == 3]
    assert texts[3] == f"Fe: μ = {fe.mean():+.3g}, σ = {fe.std(ddof=1):.3g}"
    assert_legend_beside(fig, ax_h)
    assert_png(fig, tmp_path / "residuals.png")
    plain = residuals_figure(pred, true, "y").axes  # no unit: no brackets
    assert plain[0].get_xlabel() == "True y" and legend_texts(plain[1])[0].startswith("all: μ = ")


def test_training_curves(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    rows = ["epoch,step,train/loss,train/acc,val/loss,val/acc,val/auc"]
    for step in range(1, 41):
        rows.append(f"{step // 10},{step},{1.0 / step:.4f},{1 - 1.0 / step:.4f},,,")
        if step % 10 == 0:
            rows.append(f"{step // 10 - 1},{step},,,{1.2 / step:.4f},{1 - 1.5 / step:.4f},{1 - 1.0 / step:.4f}")
    csv_path.write_text("\n".join(rows) + "\n")
    fig = training_curves_figure(csv_path)
    ax_loss, ax_score = fig.axes
    assert (ax_loss.get_xlabel(), ax_loss.get_ylabel()) == ("Optimizer step", "Loss")
    assert ax_score.get_ylabel() == "Accuracy, AUC"
    assert legend_texts(ax_loss) == ["train loss", "val loss"]
    assert legend_texts(ax_score) == ["train acc", "val acc", "val auc"]
    lines = {line.get_label(): line for line in ax_loss.lines}
    assert lines["train loss"].get_color() == lines["val loss"].get_color()  # one colour per quantity
    assert len(lines["val loss"].get_xdata()) == 4
    assert_legend_beside(fig, ax_score)
    assert_png(fig, tmp_path / "curves.png")


def test_jets_rejection_roc_reads_well(tmp_path):
    probs, labels = _probs(600, 4, sep=2.5)
    probs[labels == 3] = np.eye(4)[3] * 0.999 + 0.00025  # Tbqq perfectly separated: infinite rejection
    names = ["label_QCD", "label_Hbb", "label_Hcc", "label_Tbqq"]
    fig = rejection_roc_figure(probs, labels, names)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == r"Signal efficiency $\varepsilon_S$"
    assert ax.get_ylabel() == r"Background rejection $1/\varepsilon_B$"
    texts = legend_texts(ax)
    assert [t.split(" (")[0] for t in texts] == ["Hbb", "Hcc", "Tbqq"]
    assert texts[2] == "Tbqq (> 150)"  # 150 QCD jets, none passes
    assert not any("inf" in t for t in texts)
    assert "vs QCD" in ax.get_legend().get_title().get_text()
    assert_legend_beside(fig, ax)
    assert_png(fig, tmp_path / "rejection.png")
    assert [rejection_label(v, 10) for v in (np.inf, np.nan, 3.25, 666.7)] == ["> 10", "n/a", "3.25", "667"]


def test_auger_resolution_axes_in_physical_units(tmp_path):
    rng = np.random.default_rng(2)
    n = 600
    lge, prim = rng.uniform(18.5, 20.3, n), np.arange(n) % 4
    res = rng.normal(0.0, 40.0 - 5.0 * prim)
    edges = [18.5, 18.8, 19.1, 19.4, 19.7, 20.0, 20.3]
    bins = [{"lg_e_lo": lo, "lg_e_hi": hi, **residual_stats(res[(lge >= lo) & (lge < hi)])}
            for lo, hi in itertools.pairwise(edges)]
    fig = resolution_figure(bins, res, lge, prim, ["p", "He", "N", "Fe"], "xmax")
    ax_b, ax_r = fig.axes
    assert ax_b.get_xlabel() == ax_r.get_xlabel() == "lg(E/eV)"
    assert ax_b.get_ylabel() == r"Bias $\langle \Delta X_\mathrm{max} \rangle$ [g/cm²]"
    assert ax_r.get_ylabel() == r"Resolution $\sigma(\Delta X_\mathrm{max})$ [g/cm²]"
    assert legend_texts(ax_r) == ["p", "He", "N", "Fe", "all"]
    assert_legend_beside(fig, ax_r)
    assert_png(fig, tmp_path / "resolution.png")
    lna = resolution_figure(bins, res / 40.0, lge, prim, ["p", "He", "N", "Fe"], "lna").axes
    assert lna[1].get_ylabel() == r"Resolution $\sigma(\Delta \ln A)$"  # dimensionless: no unit
    assert (quantity_unit("xmax"), quantity_unit("lna"), quantity_label("other")) == ("g/cm²", None, "other")


def test_early_classification(tmp_path):
    days = [0, 5, 10, 20, 50, 100]
    summary = {"plasticc_logloss": 1.0, "accuracy": 0.7}
    for i, d in enumerate(days):
        summary[f"early_{d:g}d_logloss"], summary[f"early_{d:g}d_accuracy"] = 1.5 - 0.08 * i, 0.4 + 0.05 * i
    fig = early_classification_figure(days, summary)
    ax_ll, ax_acc = fig.axes
    assert ax_ll.get_ylabel() == "Weighted log-loss" and ax_acc.get_ylabel() == "Accuracy"
    assert ax_acc.get_xlabel() == "Time since first detection [d]"
    assert legend_texts(ax_ll) == legend_texts(ax_acc) == ["light curve cut", "full light curve"]
    assert list(ax_acc.lines[0].get_ydata()) == [summary[f"early_{d:g}d_accuracy"] for d in days]
    assert_legend_beside(fig, ax_acc)
    assert_png(fig, tmp_path / "early.png")


def test_background_fallback_logged_once(caplog):
    names = ["SNIa_90", "SNII_42", "KN_64"]
    with caplog.at_level(logging.INFO, logger="physics_tf.jets.metrics"):
        for _ in range(3):  # the numbers and the plot each resolve it
            assert resolve_background(names, None) == 0
    lines = [r.getMessage() for r in caplog.records if "background" in r.getMessage()]
    assert lines == ["no background class given; using class 0 ('SNIa_90') as the background"]
