"""No sample counted twice: the test stage keeps each sample once by its ``aux_index`` (DDP padding, re-reads), checks
the count against the split, and a jet with no label flag set is a one-line error or, with
``data.skip_unlabelled=true``, skipped and counted. Under DDP on 2 CPU processes with an odd number of test samples,
through the CLI, for every analysis (jets, Auger, light curves)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from conftest import synth_jetclass
from test_pipelines import MID_EPOCH, compose_train

from physics_tf.auger.data import AugerDataset
from physics_tf.auger.simulate import run_generate
from physics_tf.data.errors import DataError
from physics_tf.jets.task import JetTaggingTask
from physics_tf.jets.writers import write_jetclass_root
from physics_tf.tasks.metrics import sample_counts, unique_samples
from physics_tf.training.run import run_train

ROOT = Path(__file__).resolve().parents[1]
UNLABELLED = [17, 30, 31, 64, 99, 100, 128, 150, 151, 177, 200]  # 11 of the 201 test jets


def empty_jets(particles: dict, jets: dict, entries) -> dict:
    """``particles`` (of :func:`synth_jetclass`) with the jets ``entries`` emptied; ``jets["jet_nparticles"]``
    updated in place."""
    import awkward as ak

    n = len(jets["jet_nparticles"])
    keep = np.where(np.isin(np.arange(n), list(entries)), 0, 10**6)[:, None]  # particles kept per jet
    particles = {name: a[ak.local_index(a) < keep] for name, a in particles.items()}
    jets["jet_nparticles"] = ak.to_numpy(ak.num(particles["part_px"])).astype(float)
    return particles


def _jets_dir(root: Path, n_test: int = 201, unlabelled=(), empty=()) -> Path:
    """generated/jets_demo/{train,val,test}_000.root (QCD / top jets; ``unlabelled`` test entries carry no flag,
    ``empty`` test entries no particle)."""
    out = root / "generated" / "jets_demo"
    out.mkdir(parents=True)
    for i, (split, n) in enumerate([("train", 48), ("val", 32), ("test", n_test)]):
        p, j, lab = synth_jetclass(n, seed=i, classes=(0, 8), max_particles=10)
        if split == "test":
            for name in lab:
                lab[name][list(unlabelled)] = 0
            p = empty_jets(p, j, empty)
        write_jetclass_root(out / f"{split}_000.root", p, j, lab)
    return root


COMMON = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "logger=csv",
          "callbacks.progress_bar.refresh_rate=0"]
FAST = ["experiment=jets_pfn", "data.batch_size=16", "data.shuffle_buffer=32", *COMMON]


def _cli(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "pipelines/train.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ the task base
def test_unique_samples_keeps_the_first_occurrence_in_order():
    probs = np.arange(12, dtype=np.float64).reshape(6, 2)
    out = unique_samples({"probs": probs, "labels": np.array([0, 1, 0, 1, 0, 1])}, np.array([4, 2, 4, 7, 2, 0]))
    np.testing.assert_array_equal(out["index"], [4, 2, 7, 0])
    np.testing.assert_array_equal(out["probs"], probs[[0, 1, 3, 5]])
    np.testing.assert_array_equal(out["labels"], [0, 1, 1, 1])
    with pytest.raises(ValueError, match="3 indices"):
        unique_samples({"probs": probs}, np.array([0, 1, 2]))


def test_sample_counts_against_the_split():
    assert sample_counts(np.arange(10), {"num_entries": 10}) == {}
    assert sample_counts(np.arange(8), {"num_entries": 10, "num_skipped_unlabelled": 2}) == {
        "num_skipped_unlabelled": 2}
    with pytest.raises(DataError, match="appear twice"):
        sample_counts(np.array([0, 1, 1]), {"num_entries": 10})
    with pytest.raises(DataError, match="the split holds 10"):
        sample_counts(np.array([0, 10]), {"num_entries": 10})  # out of range
    with pytest.raises(DataError, match="the split holds 10"):
        sample_counts(np.arange(9), {"num_entries": 10, "num_skipped_unlabelled": 2})  # more than can be
    with pytest.warns(UserWarning, match="7 distinct samples of the 10"):
        sample_counts(np.arange(7), {"num_entries": 10})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample_counts(np.arange(7), {"num_entries": 10}, complete=False)  # a limited test: no count to meet


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, x, v=None, mask=None):
        return self.head(x.mean(1))  # (B, 2)


def test_task_test_stage_counts_repeated_samples_once(tmp_path):
    """Batches as a padded / re-reading loader gives them (indices 0, 5 and 9 twice): metrics and predictions hold
    each of the 12 samples once, with their index."""
    g = torch.Generator().manual_seed(0)
    index = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [0, 5, 9]]
    batches = [{"x": torch.randn(len(i), 4, 3, generator=g), "mask": torch.ones(len(i), 4, dtype=torch.bool),
                "y": torch.tensor(i) % 2, "aux_index": torch.tensor(i)} for i in index]
    task = JetTaggingTask(_Net(), ["QCD", "Tbqq"], output_dir=tmp_path)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.test(task, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_jets"] == 12
    pred = np.load(tmp_path / "predictions.npz")
    np.testing.assert_array_equal(pred["index"], np.arange(12))
    assert len(pred["probs"]) == len(pred["labels"]) == 12
    np.testing.assert_array_equal(pred["labels"], np.arange(12) % 2)


def test_auger_eval_batches_name_their_events(tmp_path):
    """53 events over 3 ranks: 54 rows, one padded event read twice under the same index; each event once."""
    from omegaconf import OmegaConf

    run_generate(OmegaConf.create({"gen": {"out_dir": str(tmp_path), "n_train": 0, "n_val": 53, "n_test": 0,
                                           "chunk": 16, "events_per_file": 20, "seed": 3, "progress": False}}))
    files = sorted(map(str, tmp_path.glob("val_*.h5")))
    rows = {"xmax": [], "index": []}
    for r in range(3):
        ds = AugerDataset(files, 8, train=False, grid_size=9, n_bins=120, targets=["xmax"],
                          target_norm={"xmax": (750, 70)}, chunk_events=16, rank=r, world_size=3)
        for b in ds.iter_worker(0, 1):
            rows["xmax"].append(b["aux_xmax"].numpy())
            rows["index"].append(b["aux_index"].numpy())
    xmax, index = np.concatenate(rows["xmax"]), np.concatenate(rows["index"])
    assert len(index) == 54
    out = unique_samples({"xmax": xmax}, index)
    np.testing.assert_array_equal(out["index"], np.arange(53))
    truth = np.concatenate([h5py.File(f)["xmax"][:] for f in files])
    np.testing.assert_allclose(out["xmax"], truth, rtol=1e-6)
    assert sample_counts(out["index"], {"num_entries": ds.num_entries}) == {}


# ------------------------------------------------------------------------------------------ jets through the CLI
def test_unlabelled_jet_is_one_line_error(tmp_path):
    data = _jets_dir(tmp_path / "data", unlabelled=UNLABELLED)
    res = _cli([*FAST, f"paths.data_dir={data}", f"hydra.run.dir={tmp_path}/run"])
    assert res.returncode == 2, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"physics_tf: error: {data}/generated/jets_demo/test_000.root: field 'labels': "
                           "entry 17 has no label flag set"), res.stderr[-3000:]
    assert "data.skip_unlabelled=true" in last
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_skip_unlabelled_counts_the_labelled_jets_once(tmp_path):
    data = _jets_dir(tmp_path / "data", unlabelled=UNLABELLED)
    cfg = compose_train([*FAST, f"paths.data_dir={data}", "data.skip_unlabelled=true"], tmp_path / "run")
    metrics = run_train(cfg)
    assert metrics["num_jets"] == 201 - len(UNLABELLED)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["num_jets"] == 190 and written["num_skipped_unlabelled"] == len(UNLABELLED)
    pred = np.load(tmp_path / "run" / "predictions.npz")
    assert len(pred["index"]) == len(pred["probs"]) == 190
    np.testing.assert_array_equal(np.sort(pred["index"]), np.setdiff1d(np.arange(201), UNLABELLED))


def _ddp_test_counts(args: list[str], data: Path, run: Path, count_key: str, index: np.ndarray):
    """Train + test through the CLI on 2 CPU processes (DDP inside pytest would re-run pytest's argv): the test
    count in ``metrics.json`` is that of the distinct samples ``index`` and ``predictions.npz`` holds each of them
    once. Returns (metrics, predictions, the console output)."""
    res = _cli([*args, "trainer=ddp_cpu", "trainer.devices=2", f"paths.data_dir={data}", f"hydra.run.dir={run}"],
               timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics[count_key] == len(index)
    pred = dict(np.load(run / "predictions.npz"))
    np.testing.assert_array_equal(np.sort(pred["index"]), index)
    assert {name: len(a) for name, a in pred.items() if a.ndim and name != "class_names"} == {
        name: len(index) for name, a in pred.items() if a.ndim and name != "class_names"}
    return metrics, pred, res.stdout + res.stderr


EMPTY = [3, 40, 41, 90, 131, 160]  # test jets with zero particles


def test_ddp_two_processes_count_every_test_jet_once(tmp_path):
    """161 test jets, 6 of them empty, over 2 ranks × 2 workers in batches of 16: a rank must read jets twice to
    yield as many batches as the other; each counts once, and the dropped empty jets are summed over workers and
    ranks into metrics.json and warned about once."""
    data = _jets_dir(tmp_path / "data", n_test=161, empty=EMPTY)
    metrics, pred, output = _ddp_test_counts([*FAST, "data.num_workers=2"], data, tmp_path / "run", "num_jets",
                                             np.setdiff1d(np.arange(161), EMPTY))
    assert metrics["num_dropped_empty"] == len(EMPTY)
    warned = [line for line in output.splitlines() if "num_dropped_empty=" in line]
    assert len(warned) == 1 and "test, all ranks and workers: num_dropped_empty=6 (jets with zero particles" in \
        warned[0], output[-3000:]
    assert "distinct samples of the" not in output  # the count check knows why 6 are missing
    # test/loss (CSV log) is the mean cross-entropy of the distinct jets
    (csv,) = (tmp_path / "run").rglob("metrics.csv")
    logged = [line.split(",") for line in csv.read_text().splitlines()]
    loss = float(logged[-1][logged[0].index("test/loss")])
    expected = -np.log(pred["probs"][np.arange(len(pred["labels"])), pred["labels"]]).mean()
    assert loss == pytest.approx(expected, rel=1e-4)


def test_ddp_two_processes_count_every_auger_event_once(tmp_path):
    """37 test events over 2 ranks: each reads 19, rank 1 one event wrapped around from the start; each counts once.
    (16 training events are one block of 16: rank 1, dealt none, borrows it rather than hang the other rank.)"""
    from omegaconf import OmegaConf

    run_generate(OmegaConf.create({"out_dir": str(tmp_path / "data" / "generated" / "auger_sim"), "n_train": 16,
                                   "n_val": 8, "n_test": 37, "chunk": 16, "seed": 0, "progress": False}))
    _ddp_test_counts(["experiment=auger_hexconv", *MID_EPOCH["auger_hexconv"], *COMMON], tmp_path / "data",
                     tmp_path / "run", "num_events", np.arange(37))


def test_ddp_two_processes_count_every_light_curve_once(tmp_path):
    """25 test objects over 2 ranks (Lightning's DistributedSampler pads to 26); each counts once, also in the
    early-classification curve: truncated after 10⁵ days it is the full light curve, so its numbers are the
    test's own."""
    from physics_tf.lightcurves.simulate import write_dataset

    write_dataset(tmp_path / "data" / "generated" / "lightcurves_sim", {"train": 16, "val": 8, "test": 25}, seed=1,
                  csv=False)
    from physics_tf.lightcurves.task import plasticc_weighted_logloss

    metrics, pred, _ = _ddp_test_counts(["experiment=lightcurves_gru", *MID_EPOCH["lightcurves_gru"], *COMMON,
                                         "task.early_days=[0,100000]"], tmp_path / "data", tmp_path / "run",
                                        "num_objects", np.arange(25))
    assert metrics["early_100000d_logloss"] == pytest.approx(metrics["plasticc_logloss"], rel=1e-9)
    assert metrics["early_100000d_accuracy"] == pytest.approx(metrics["accuracy"], rel=1e-9)
    # the padded row (object 0 again) would have shown: the log-loss of the 26 rows is another number
    codes = [90, 42, 62, 95, 15, 64, 88, 92, 16, 65, 53, 6]
    first = int(np.flatnonzero(pred["index"] == 0)[0])
    padded = plasticc_weighted_logloss(np.concatenate([pred["probs"], pred["probs"][[first]]]),
                                       np.concatenate([pred["labels"], pred["labels"][[first]]]), codes)
    assert padded != pytest.approx(metrics["plasticc_logloss"], rel=1e-9)
