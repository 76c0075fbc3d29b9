"""Prediction batches of the jet data module (the predict driver's contract): every entry of every file once, in
order, no labels needed, observers, and one-line errors."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import torch

from physics_tf.data.errors import DataError
from physics_tf.jets.data import JetDataModule
from physics_tf.jets.writers import write_jetclass_root, write_toptagging_h5

from conftest import synth_jetclass

SIZES = (37, 23)  # jets per file; chunk_size 10 and batch 4 put unit, chunk and file boundaries inside batches


def _dm(**kw):
    kw = {"files": {}, "labels": ["label_QCD", "label_Tbqq"], "features": "kinpid", "chunk_size": 10,
          "batch_size": 4, "pad_length": 8, **kw}
    return JetDataModule(**kw)


@pytest.fixture
def unlabelled(tmp_path):
    """Two JetClass-layout files without any label branch (some jets with zero particles); returns (dir, truth) with
    truth per file: (particle counts, jet_pt)."""
    truth = []
    for k, n in enumerate(SIZES):
        p, j, _ = synth_jetclass(n, seed=k, min_particles=0, id_offset=100 * k)
        write_jetclass_root(tmp_path / f"part_{k}.root", p, j, {})
        truth.append((ak.to_numpy(ak.num(p["part_px"], axis=1)), np.asarray(j["jet_pt"], np.float32)))
    return tmp_path, truth


def _collect(batches) -> dict[str, np.ndarray]:
    batches = list(batches)
    return {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]}, batches


@pytest.mark.parametrize("workers", [0, 2])
def test_every_entry_once_in_order_without_labels(unlabelled, workers):
    folder, truth = unlabelled
    dm = _dm(selection="jet_pt > 600")
    files = dm.predict_files([str(folder / "part_*.root")])
    assert files == [str(folder / "part_0.root"), str(folder / "part_1.root")]
    loader = dm.predict_dataloader(files, num_workers=workers)
    out, batches = _collect(loader)
    assert len(loader) == len(batches) == -(-sum(SIZES) // 4)
    assert [len(b["pred_file"]) for b in batches] == [4] * (len(batches) - 1) + [sum(SIZES) % 4 or 4]
    assert out["pred_file"].tolist() == [0] * SIZES[0] + [1] * SIZES[1]
    assert out["pred_entry"].tolist() == [*range(SIZES[0]), *range(SIZES[1])]
    assert "y" not in batches[0] and batches[0]["x"].dtype == torch.float32
    assert batches[0]["pred_valid"].dtype == torch.bool and batches[0]["pred_entry"].dtype == torch.int64
    counts = np.concatenate([c for c, _ in truth])
    pt = np.concatenate([p for _, p in truth])
    want_valid = (counts > 0) & (pt > 600)
    assert 0 < want_valid.sum() < len(want_valid) and (counts == 0).any()
    np.testing.assert_array_equal(out["pred_valid"], want_valid)
    # each valid row holds its own jet: the first particle's px is 1000 + 100 * file + entry (synth_jetclass)
    marker = 1000 + 100 * out["pred_file"] + out["pred_entry"]
    np.testing.assert_allclose(out["v"][want_valid, 0, 0], marker[want_valid])
    assert not out["mask"][~want_valid].any() and out["mask"][want_valid, 0].all()
    np.testing.assert_allclose(out["obs/jet_pt"], pt, rtol=1e-6)  # observers for every row, valid or not


def test_default_observers_are_the_jet_branches_and_present_labels(tmp_path):
    p, j, lab = synth_jetclass(9, seed=3)
    labelled = write_jetclass_root(tmp_path / "a.root", p, j, {k: lab[k] for k in ("label_QCD", "label_Tbqq")})
    bare = write_jetclass_root(tmp_path / "b.root", p, j, {})
    jets = ["jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_nparticles"]
    dm = _dm()
    dm.predict_files([str(labelled)])
    assert dm.default_observers() == [*jets, "label_QCD", "label_Tbqq"]
    out, _ = _collect(dm.predict_dataloader([str(labelled)]))
    names = [*jets, "label_QCD", "label_Tbqq"]
    assert sorted(k for k in out if k.startswith("obs/")) == sorted(f"obs/{n}" for n in names)
    np.testing.assert_array_equal(out["obs/label_Tbqq"], lab["label_Tbqq"])
    dm = _dm()
    assert dm.predict_files([str(bare)]) == [str(bare)] and dm.default_observers() == jets
    out, _ = _collect(dm.predict_dataloader([str(bare)], observers=["jet_eta"]))
    assert [k for k in out if k.startswith("obs/")] == ["obs/jet_eta"]
    # a labelled file and an unlabelled one together: only what both hold, so the unlabelled file reads too
    dm = _dm()
    dm.predict_files([str(labelled), str(bare)])
    assert dm.default_observers() == jets
    out, _ = _collect(dm.predict_dataloader([str(labelled), str(bare)]))
    assert sorted(k for k in out if k.startswith("obs/")) == sorted(f"obs/{n}" for n in jets)


def test_toptagging_hdf5(tmp_path, toptagging_arrays):
    E, PX, PY, PZ, sig = toptagging_arrays
    path = str(write_toptagging_h5(tmp_path / "t.h5", E, PX, PY, PZ, sig, n_constituents=10))
    dm = _dm(format="toptagging_h5", labels=["label_QCD", "label_Top"], features="kin")
    dm.predict_files([path])
    assert dm.default_observers() == ["jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_mass", "jet_nparticles",
                                      "is_signal_new", "label_QCD", "label_Top"]
    out, _ = _collect(dm.predict_dataloader([path], batch_size=5))
    assert out["pred_entry"].tolist() == list(range(len(sig))) and out["pred_valid"].all()
    np.testing.assert_array_equal(out["obs/is_signal_new"], sig)
    np.testing.assert_array_equal(out["obs/jet_nparticles"], (E > 0).sum(axis=1))


def _one_line(err, *parts):
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert str(part) in msg, msg


def test_one_line_errors(unlabelled):
    folder, _ = unlabelled
    dm = _dm()
    with pytest.raises(DataError) as err:
        dm.predict_files([str(folder / "part_*.root"), str(folder / "nothing_*.root")])
    _one_line(err, folder / "nothing_*.root", "no file matches")
    f = str(folder / "part_1.root")
    with pytest.raises(DataError) as err:
        list(dm.predict_dataloader([f], observers=["jet_pt", "jet_sdmass"]))
    _one_line(err, f, "'jet_sdmass'", "not found")
    with pytest.raises(DataError) as err:
        list(dm.predict_dataloader([f], observers=["part_px"]))
    _one_line(err, f, "'part_px'", "one value per jet")
    with pytest.raises(DataError) as err:
        dm.predict_dataloader([f], metadata="x.csv")
    _one_line(err, "metadata")
