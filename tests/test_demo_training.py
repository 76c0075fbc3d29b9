"""A short training on Pythia-generated top-vs-QCD jets must separate them: AUC ≥ 0.90 on held-out jets (slow), and
a smaller one in the default suite that must beat chance by a wide margin."""

from __future__ import annotations

import pytest

pytest.importorskip("pythia8mc")
pytest.importorskip("fastjet")

from physics_tf.jets.generate.orchestrate import generate_dataset  # noqa: E402

from test_pipelines import compose_train  # noqa: E402


def _generate_and_train(tmp_path, n_train: int, n_val: int, n_test: int, epochs: int, seed: int = 7) -> dict:
    """``n_*`` jets per class (QCD, Tbqq) generated with Pythia, ``experiment=jets_demo`` trained on them; the test
    metrics."""
    data_dir = tmp_path / "data"
    summary = generate_dataset(data_dir / "generated" / "jets_demo", processes=("QCD", "Tbqq"), n_train=n_train,
                               n_val=n_val, n_test=n_test, seed=seed, n_workers=2, jets_per_file=4000,
                               chunk_size=min(500, n_train), progress=False)
    assert summary["n_jets"] == {"train": 2 * n_train, "val": 2 * n_val, "test": 2 * n_test}
    cfg = compose_train(["experiment=jets_demo", f"paths.data_dir={data_dir}", f"trainer.max_epochs={epochs}",
                         "data.batch_size=64", "logger=csv", "callbacks.progress_bar.refresh_rate=0"], tmp_path / "run")
    metrics = run(cfg)
    assert metrics["num_jets"] == 2 * n_test  # held-out test split, every jet once
    return metrics


@pytest.mark.slow
@pytest.mark.gen
def test_short_part_training_on_generated_jets_reaches_auc_090(tmp_path):
    """4,000 training jets, 3 epochs (~80 s on 2 cores)."""
    metrics = _generate_and_train(tmp_path, 2000, 300, 700, 3)
    assert metrics["auc_macro"] >= 0.90, metrics
    assert metrics["accuracy"] >= 0.80, metrics
    assert metrics["rej50_Tbqq"] > 10, metrics  # 1/ε_B at ε_S = 50 %: far better than chance (2)


@pytest.mark.gen
def test_smaller_part_training_on_generated_jets_beats_chance(tmp_path):
    """The same at a quarter of the size for the default suite (1,000 training jets, 2 epochs; ~25 s on 2 cores): on
    600 held-out jets AUC ≥ 0.75 and 1/ε_B at ε_S = 50 % above 4 (chance: 0.5 and 2). Measured: AUC 0.899,
    1/ε_B 11.5 (this seed); AUC 0.859, 1/ε_B 8.8 (generator seed 1). Accuracy is not asserted: after 32 steps the
    0.5 threshold is not yet calibrated (0.50 here, 0.81 with seed 1)."""
    metrics = _generate_and_train(tmp_path, 500, 100, 300, 2)
    assert metrics["auc_macro"] >= 0.75, metrics
    assert metrics["rej50_Tbqq"] > 4, metrics


def run(cfg):
    from physics_tf.training.run import run_train

    return run_train(cfg)
