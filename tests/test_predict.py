"""Prediction on new files (physics_tf/training/predict.py, physics_tf/data/tables.py, the wings' predict methods):
one row per input entry in input order, scores equal to evaluate's predictions.npz, observers copied exactly,
files without labels, the three output formats, ONNX = checkpoint, DDP = one process, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from physics_tf.cli import is_input_error, one_line
from physics_tf.data.errors import DataError
from physics_tf.training.predict import run_predict

from test_pipelines import MID_EPOCH, compose_train

ROOT = Path(__file__).resolve().parents[1]
AUGER_TINY = [*MID_EPOCH["auger_transformer"], "model.predict_variance=true", "task.loss=gaussian",
              "data.targets=[xmax,lna]", "data.classify_primary=true"]


def predict(tmp_path: Path, ckpt: Path | None, files, output: Path, *extra: str) -> dict:
    """run_predict in this process on a composed conf/predict.yaml."""
    overrides = [f"files=[{','.join(str(f) for f in files)}]", f"output={output}", *extra]
    if ckpt is not None:
        overrides.append(f"ckpt_path={ckpt}")
    return run_predict(compose_train(overrides, tmp_path / f"run_{output.stem}", config_name="predict"))


def read_table(path: Path) -> dict[str, np.ndarray]:
    """A prediction table read back with the format's own library (uproot, pyarrow, h5py)."""
    if path.suffix == ".root":
        import uproot

        with uproot.open(path) as f:
            assert f.classnames()["predictions;1"] == "TTree"
            cols = f["predictions"].arrays(library="np")
            paths = f["files"].arrays(library="np")["path"]
        cols["file"] = paths[cols["file_index"]]
        return cols
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return {k: np.asarray(v) for k, v in pq.read_table(path).to_pydict().items()}
    with h5py.File(path, "r") as f:
        return {k: (f[k].asstr()[:] if f[k].dtype.kind == "O" else f[k][:]) for k in f}


# ---------------------------------------------------------------------------------------------- Auger
@pytest.fixture(scope="module")
def auger(tmp_path_factory):
    """A tiny Auger transformer (X_max and ln A with σ, primary classifier) trained for 2 batches and tested (its
    predictions.npz), its test file, and the same events without truth (station fields, energy and geometry)."""
    from omegaconf import OmegaConf

    from physics_tf.auger.io import write_hdf5
    from physics_tf.auger.simulate import run_generate
    from physics_tf.training.run import run_train

    root = tmp_path_factory.mktemp("auger")
    data = root / "data" / "generated" / "auger_sim"
    run_generate(OmegaConf.create({"out_dir": str(data), "n_train": 32, "n_val": 16, "n_test": 40, "chunk": 16,
                                   "seed": 0, "progress": False}))
    run_train(compose_train(["experiment=auger_transformer", *AUGER_TINY, f"paths.data_dir={root / 'data'}",
                             "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                             "logger=none"], root / "run"))
    test = data / "test_000.h5"
    with h5py.File(test, "r") as f:
        events = {k: f[k][:] for k in f}
    unlabelled = root / "new" / "measured.h5"
    write_hdf5(unlabelled, {k: v for k, v in events.items() if k not in ("xmax", "mass_number", "primary")}, {})
    return {"root": root, "ckpt": root / "run" / "checkpoints" / "best.ckpt", "test": test, "events": events,
            "unlabelled": unlabelled, "npz": np.load(root / "run" / "predictions.npz")}


def test_auger_rows_in_input_order_equal_evaluate_with_observers_copied(auger, tmp_path):
    out = tmp_path / "pred.parquet"
    summary = predict(tmp_path, auger["ckpt"], [auger["test"]], out)
    got, ev, npz = read_table(out), auger["events"], auger["npz"]
    n = len(ev["xmax"])
    assert summary["rows"] == n and len(got["entry"]) == n
    np.testing.assert_array_equal(got["entry"], np.arange(n))
    assert set(got["file"]) == {str(auger["test"])} and got["valid"].all()
    order = np.argsort(npz["index"])  # evaluate's predictions, by the event's position in the split
    np.testing.assert_array_equal(npz["index"][order], np.arange(n))
    np.testing.assert_allclose(got["xmax"], npz["pred_xmax"][order], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["lna"], npz["pred_lna"][order], rtol=0, atol=1e-6)
    for k, p in enumerate(["p", "He", "N", "Fe"]):
        np.testing.assert_allclose(got[f"score_{p}"], npz["probs_primary"][order][:, k], rtol=0, atol=1e-6)
    assert (got["xmax_sigma"] > 0).all() and (got["lna_sigma"] > 0).all()
    # observers: the file's values exactly (the truth renamed where it clashes with a prediction column)
    np.testing.assert_array_equal(got["obs_xmax"], ev["xmax"])
    np.testing.assert_array_equal(got["energy"], ev["energy"])
    np.testing.assert_array_equal(got["core_y"], ev["core"][:, 1])
    np.testing.assert_array_equal(got["primary"], ev["primary"])
    np.testing.assert_array_equal(got["obs_lna"], np.log(ev["mass_number"]))


def test_auger_files_without_labels_and_unscorable_events(auger, tmp_path):
    """Measured events (no X_max, mass or primary; HDF5 and ROOT), one with every station off: that event is a row
    with NaN predictions, the others equal evaluate's; the default observers are the fields the files have; two
    DataLoader workers keep the order."""
    from physics_tf.auger.io import write_root

    ev = {k: v.copy() for k, v in auger["events"].items() if k not in ("xmax", "mass_number", "primary")}
    ev["mask"][3] = False
    measured = tmp_path / "in" / "measured.root"
    write_root(measured, ev)
    files = [auger["unlabelled"], measured]
    predict(tmp_path, auger["ckpt"], files, tmp_path / "out.root", "num_workers=2", "batch_size=6")  # order kept
    got, npz = read_table(tmp_path / "out.root"), auger["npz"]
    n = len(ev["mask"])
    assert set(got) == {"file_index", "file", "entry", "valid", "xmax", "lna", "xmax_sigma", "lna_sigma", "score_p",
                        "score_He", "score_N", "score_Fe", "energy", "zenith", "azimuth", "core_x", "core_y", "core_z"}
    np.testing.assert_array_equal(got["file_index"], np.repeat([0, 1], n))
    np.testing.assert_array_equal(got["entry"], np.tile(np.arange(n), 2))
    assert list(got["file"][[0, n]]) == [str(f) for f in files]
    assert list(got["valid"]) == [True] * (n + 3) + [False] + [True] * (n - 4)
    assert np.isnan(got["xmax"][n + 3]) and np.isnan(got["score_Fe"][n + 3]) and np.isnan(got["lna_sigma"][n + 3])
    ref = npz["pred_xmax"][np.argsort(npz["index"])]
    np.testing.assert_allclose(got["xmax"][:n], ref, rtol=0, atol=1e-4)
    others = np.arange(n) != 3
    np.testing.assert_allclose(got["xmax"][n:][others], ref[others], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got["zenith"], np.tile(ev["zenith"], 2))


def test_onnx_model_gives_the_checkpoints_predictions(auger, tmp_path):
    """model_path=<exported .onnx> (no checkpoint): the checkpoint's predictions within 1e-4 (X_max: 1e-4 of its
    standardisation's std, 70 g/cm²); the HDF5 table read back with h5py."""
    pytest.importorskip("onnxruntime")
    from omegaconf import OmegaConf

    from physics_tf.training.export import run_export

    onnx_path = tmp_path / "auger.onnx"
    run_export(OmegaConf.create({"ckpt_path": str(auger["ckpt"]), "output": str(onnx_path),
                                 "paths": {"output_dir": str(tmp_path)}}))
    predict(tmp_path, None, [auger["test"]], tmp_path / "onnx.h5", f"model_path={onnx_path}")
    got, npz = read_table(tmp_path / "onnx.h5"), auger["npz"]
    order = np.argsort(npz["index"])
    np.testing.assert_array_equal(got["entry"], np.arange(len(order)))
    np.testing.assert_allclose(got["xmax"], npz["pred_xmax"][order], rtol=0, atol=1e-4 * 70)
    np.testing.assert_allclose(got["lna"], npz["pred_lna"][order], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["score_He"], npz["probs_primary"][order][:, 1], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got["obs_xmax"], auger["events"]["xmax"])


# ---------------------------------------------------------------------------------------------- jets
@pytest.fixture(scope="module")
def jets(tmp_path_factory):
    """A tiny ParT (jets_demo) trained for 2 batches and tested (predictions.npz) on synthetic JetClass files; the
    test jets again without label branches, one of them with no particle."""
    import awkward as ak

    from conftest import synth_jetclass, write_generated_jets
    from physics_tf.jets.writers import write_jetclass_root
    from physics_tf.training.run import run_train

    root = tmp_path_factory.mktemp("jets")
    out = write_generated_jets(root / "data", 60, max_particles=16) / "generated" / "jets_demo"
    run_train(compose_train(["experiment=jets_demo", *MID_EPOCH["jets_demo"], f"paths.data_dir={root / 'data'}",
                             "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                             "logger=none"], root / "run"))
    p, j, _ = synth_jetclass(60, seed=2, classes=(0, 8), max_particles=16)
    p = {k: ak.concatenate([v[:5], v[5:6][:, :0], v[6:]]) for k, v in p.items()}  # jet 5 loses its particles
    unlabelled = root / "new" / "unlabelled.root"
    write_jetclass_root(unlabelled, p, j, {})
    return {"ckpt": root / "run" / "checkpoints" / "best.ckpt", "test": out / "test_000.root", "jets": j,
            "unlabelled": unlabelled, "npz": np.load(root / "run" / "predictions.npz")}


def test_jets_rows_in_order_equal_evaluate_observers_and_unlabelled_files(jets, tmp_path):
    """Labelled then unlabelled file: one row per jet in order; the scores of the labelled file are evaluate's;
    the unlabelled file scores the same jets the same (its empty jet: NaN); observers are the files' branches."""
    out = tmp_path / "jets.root"
    predict(tmp_path, jets["ckpt"], [jets["test"], jets["unlabelled"]], out, "observers=[jet_pt,jet_energy]")
    got, npz = read_table(out), jets["npz"]
    n = len(jets["jets"]["jet_pt"])
    np.testing.assert_array_equal(got["file_index"], np.repeat([0, 1], n))
    np.testing.assert_array_equal(got["entry"], np.tile(np.arange(n), 2))
    order = np.argsort(npz["index"])
    np.testing.assert_array_equal(npz["index"][order], np.arange(n))
    for k, name in enumerate(npz["class_names"]):
        np.testing.assert_allclose(got[f"score_{name}"][:n], npz["probs"][order][:, k], rtol=0, atol=1e-6)
    same = np.arange(n) != 5
    np.testing.assert_allclose(got["score_QCD"][n:][same], got["score_QCD"][:n][same], rtol=0, atol=1e-6)
    assert not got["valid"][n + 5] and np.isnan(got["score_Tbqq"][n + 5]) and got["valid"].sum() == 2 * n - 1
    np.testing.assert_array_equal(got["jet_pt"], np.tile(jets["jets"]["jet_pt"].astype(np.float32), 2))
    np.testing.assert_array_equal(got["jet_energy"][:n], jets["jets"]["jet_energy"].astype(np.float32))


# ---------------------------------------------------------------------------------------------- light curves
@pytest.fixture(scope="module")
def lightcurves(tmp_path_factory):
    """A tiny light-curve transformer trained for 2 batches and tested (predictions.npz) on simulated objects,
    written both as our HDF5 and as PLAsTiCC CSVs."""
    from physics_tf.lightcurves.simulate import write_dataset
    from physics_tf.training.run import run_train

    root = tmp_path_factory.mktemp("lightcurves")
    out = root / "data" / "generated" / "lightcurves_sim"
    write_dataset(out, {"train": 24, "val": 12, "test": 30}, seed=1, csv=True)
    run_train(compose_train(["experiment=lightcurves_transformer", *MID_EPOCH["lightcurves_transformer"],
                             f"paths.data_dir={root / 'data'}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                             "trainer.limit_val_batches=1", "logger=none"], root / "run"))
    return {"ckpt": root / "run" / "checkpoints" / "best.ckpt", "dir": out,
            "npz": np.load(root / "run" / "predictions.npz")}


def test_lightcurves_hdf5_and_csv_inputs_equal_evaluate(lightcurves, tmp_path):
    """Our HDF5 and the PLAsTiCC CSV (+ metadata=...) of the same objects: rows in file order with evaluate's
    scores, object_id and target copied exactly."""
    import pandas as pd

    d, npz = lightcurves["dir"], lightcurves["npz"]
    out = tmp_path / "lc.parquet"
    predict(tmp_path, lightcurves["ckpt"], [d / "test.h5", d / "test_set.csv"], out,
            f"metadata={d / 'test_metadata.csv'}", "observers=[object_id,target,hostgal_photoz]")
    got = read_table(out)
    n = len(npz["index"])
    np.testing.assert_array_equal(got["file_index"], np.repeat([0, 1], n))
    np.testing.assert_array_equal(got["entry"], np.tile(np.arange(n), 2))
    order = np.argsort(npz["index"])
    scores = np.stack([got[f"score_{c}"] for c in npz["class_names"]], axis=1)
    np.testing.assert_allclose(scores[:n], npz["probs"][order], rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores[n:], scores[:n], rtol=0, atol=1e-5)
    meta = pd.read_csv(d / "test_metadata.csv")
    np.testing.assert_array_equal(got["object_id"], np.tile(meta["object_id"].to_numpy(), 2))
    np.testing.assert_array_equal(got["target"], np.tile(meta["target"].to_numpy(), 2))
    assert got["valid"].all()


# ---------------------------------------------------------------------------------------------- tables
@pytest.mark.parametrize("ext", [".root", ".parquet", ".h5"])
def test_tables_round_trip_merge_in_file_order_and_write_atomically(tmp_path, ext):
    """Each format read back by its own library (numbers, booleans, NaN, strings), chunked writes, parts of
    interleaved files merged in file order; a failed write or a table without rows leaves no file."""
    from physics_tf.data.tables import TableWriter, iter_table, merge_tables

    files = ["a.root", "b.root", "c.root"]

    def rows(fi: int, start: int, n: int) -> dict:
        entry = np.arange(start, start + n)
        return {"file_index": np.full(n, fi), "entry": entry, "score": np.where(entry == 1, np.nan, entry / 10),
                "valid": entry != 1, "object_id": np.array([f"{files[fi]}:{e}" for e in entry])}

    parts = [tmp_path / f"part{r}{ext}" for r in range(2)]
    for r, part in enumerate(parts):
        with TableWriter(part, files, chunk_rows=3) as w:
            for fi in range(r, 3, 2):  # rank r: files r, r + 2
                for start in range(0, 5, 2):
                    w.write(rows(fi, start, min(2, 5 - start)))
    assert merge_tables(parts, tmp_path / f"all{ext}", files, chunk_rows=4) == 15
    got = read_table(tmp_path / f"all{ext}")
    np.testing.assert_array_equal(got["file_index"], np.repeat([0, 1, 2], 5))
    np.testing.assert_array_equal(got["entry"], np.tile(np.arange(5), 3))
    assert list(got["file"]) == [f for f in files for _ in range(5)]
    assert list(got["object_id"]) == [f"{f}:{e}" for f in files for e in range(5)]
    assert np.isnan(got["score"][1]) and got["score"][4] == 0.4 and got["valid"].dtype == bool
    assert [len(c["entry"]) for c in iter_table(tmp_path / f"all{ext}", chunk_rows=4)] == [4, 4, 4, 3]
    with pytest.raises(RuntimeError), TableWriter(tmp_path / f"failed{ext}", files, chunk_rows=2) as w:
        w.write(rows(0, 0, 4))
        raise RuntimeError("stopped")
    with TableWriter(tmp_path / f"empty{ext}", files):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"all{ext}", *(p.name for p in parts)])


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", ["no_file", "extension", "observer", "unknown_observer", "checkpoint", "no_model"])
def test_bad_input_is_one_line(auger, tmp_path, case):
    ckpt, files, out, extra = auger["ckpt"], [auger["test"]], tmp_path / "p.root", []
    if case == "no_file":
        files, expect = [tmp_path / "nowhere_*.h5"], ["nowhere_*.h5", "files", "no file matches"]
    elif case == "extension":
        out, expect = tmp_path / "p.csv", ["p.csv", "output", ".csv"]
    elif case == "observer":
        files, extra, expect = [auger["unlabelled"]], ["observers=[energy,xmax]"], ["measured.h5", "'xmax'"]
    elif case == "unknown_observer":
        extra, expect = ["observers=[jet_pt]"], ["observers", "jet_pt"]
    elif case == "checkpoint":
        ckpt, expect = tmp_path / "gone.ckpt", ["gone.ckpt", "ckpt_path", "not found"]
    else:
        ckpt, expect = None, ["ckpt_path", "model_path"]
    with pytest.raises(DataError) as err:
        predict(tmp_path, ckpt, files, out, *extra)
    message = one_line(err.value)
    assert is_input_error(err.value) and "\n" not in message
    assert all(e in message for e in expect), message
    assert not out.exists() and not list(tmp_path.glob(".p.*"))


def _cli(args: list[str]):
    env = {**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "pipelines/predict.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_cli_bad_input_is_one_line_exit_2(auger, tmp_path):
    res = _cli([f"ckpt_path={auger['ckpt']}", f"files=[{tmp_path}/none_*.h5]", f"output={tmp_path}/p.parquet",
                f"hydra.run.dir={tmp_path}/run"])
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("physics_tf: error: ") and "none_*.h5" in last and "no file matches" in last, last


@pytest.mark.slow  # three CLI runs, two of them with two DDP processes: ~1-2 min on 2 cores
def test_cli_ddp_two_processes_equal_one(auger, tmp_path):
    """trainer=ddp_cpu: the files are split over 2 ranks, the parts merged in order: the same table as one process
    (through the CLI: Lightning starts the second rank by re-running the command)."""
    files = f"files=[{auger['test'].parent}/*.h5]"
    outs = {}
    for name, trainer in [("one", "trainer=cpu"), ("ddp", "trainer=ddp_cpu")]:
        outs[name] = tmp_path / f"{name}.root"
        res = _cli([f"ckpt_path={auger['ckpt']}", files, f"output={outs[name]}", trainer,
                    f"hydra.run.dir={tmp_path}/run_{name}"])
        assert res.returncode == 0, res.stderr[-3000:]
    a, b = read_table(outs["one"]), read_table(outs["ddp"])
    assert len(set(a["file_index"])) == 3 and len(a["entry"]) == 88
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    # more ranks than files: rank 1 idles, rank 0 writes the one file
    res = _cli([f"ckpt_path={auger['ckpt']}", f"files=[{auger['test']}]", f"output={tmp_path / 'idle.root'}",
                "trainer=ddp_cpu", f"hydra.run.dir={tmp_path}/run_idle"])
    assert res.returncode == 0, res.stderr[-3000:]
    c, first = read_table(tmp_path / "idle.root"), a["file_index"] == 0
    for k in ("entry", "xmax", "score_p", "energy"):
        np.testing.assert_array_equal(c[k], a[k][first], err_msg=k)
    assert not list(tmp_path.glob(".*.root*"))  # the parts are gone
