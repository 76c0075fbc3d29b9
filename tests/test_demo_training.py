"""A short training on Pythia-generated top-vs-QCD jets must separate them: AUC ≥ 0.90 on held-out jets."""

from __future__ import annotations

import pytest

pytest.importorskip("pythia8mc")
pytest.importorskip("fastjet")

from physics_tf.jets.generate.orchestrate import generate_dataset  # noqa: E402

from test_pipelines import compose_train  # noqa: E402


@pytest.mark.gen
def test_short_part_training_on_generated_jets_reaches_auc_090(tmp_path):
    data_dir = tmp_path / "data"
    summary = generate_dataset(data_dir / "generated" / "jets_demo", processes=("QCD", "Tbqq"), n_train=2000,
                               n_val=300, n_test=700, seed=7, n_workers=2, jets_per_file=4000, chunk_size=500,
                               progress=False)
    assert summary["n_jets"] == {"train": 4000, "val": 600, "test": 1400}
    cfg = compose_train(["experiment=jets_demo", f"paths.data_dir={data_dir}", "trainer.max_epochs=3", "data.batch_size=64",
                         "logger=csv", "callbacks.progress_bar.refresh_rate=0"], tmp_path / "run")
    metrics = run(cfg)
    assert metrics["num_jets"] == 1400  # held-out test split, every jet once
    assert metrics["auc_macro"] >= 0.90, metrics
    assert metrics["accuracy"] >= 0.80, metrics
    assert metrics["rej50_Tbqq"] > 10, metrics  # 1/ε_B at ε_S = 50 %: far better than chance (2)


def run(cfg):
    from physics_tf.training.run import run_train

    return run_train(cfg)
