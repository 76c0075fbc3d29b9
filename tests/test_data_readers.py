"""Writers, readers, feature expressions and bad-input errors of the jet data layer."""

from __future__ import annotations

import awkward as ak
import h5py
import numpy as np
import pytest
import uproot

from conftest import synth_jetclass
from physics_tf.jets.features import FEATURE_SETS, JetDataConfig, chunk_to_arrays
from physics_tf.jets.dataset import JetIterableDataset, build_pieces
from physics_tf.data.errors import (
    ConfigError,
    CorruptFileError,
    DataError,
    EmptyFileError,
    InvalidValueError,
    MissingFieldError,
    UnknownLabelError,
)
from physics_tf.jets.readers import TopTaggingH5Reader, make_reader
from physics_tf.jets.writers import toptagging_columns, write_jetclass_root, write_toptagging_h5
from physics_tf.data.atomic import atomic_path


def _cfg(**kw):
    kw.setdefault("files", {})
    kw.setdefault("labels", ["label_QCD", "label_Tbqq"])
    return JetDataConfig(**kw)


def _read_all(path, cfg, step=1000, stats=None):
    return [chunk_to_arrays(c, cfg, source=str(path), stats=stats) for c in make_reader(path, cfg).iterate(0, None, step)]


# ------------------------------------------------------------------------------------------ writers
def test_atomic_path_failure_leaves_target_untouched(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_jetclass_root_round_trip(tmp_path):
    particles, jets, labels = synth_jetclass(30, seed=1)
    path = write_jetclass_root(tmp_path / "rt.root", particles, jets, labels)
    tree = uproot.open(path)["tree"]
    assert tree.num_entries == 30
    # one shared counter 'n', branch names exactly part_*
    jagged = [k for k in tree.keys() if k.startswith("part_")]
    assert sorted(jagged) == sorted(particles)
    assert {tree[k].count_branch.name for k in jagged} == {"n"}
    arr = tree.arrays(library="ak")
    for name, vals in particles.items():
        want_dt = np.int32 if name.startswith("part_is") else np.float32
        got = arr[name]
        assert ak.to_numpy(ak.flatten(got)).dtype == want_dt, name
        np.testing.assert_array_equal(ak.to_numpy(ak.flatten(got)), ak.to_numpy(ak.flatten(vals)).astype(want_dt))
        np.testing.assert_array_equal(ak.to_numpy(ak.num(got)), ak.to_numpy(ak.num(vals)))
    for name, vals in jets.items():
        assert ak.to_numpy(arr[name]).dtype == np.float32
        np.testing.assert_array_equal(ak.to_numpy(arr[name]), vals.astype(np.float32))
    want = {"label_QCD": np.float32, "label_Hbb": np.bool_, "label_Tbqq": np.int32}
    for name, dt in want.items():
        assert ak.to_numpy(arr[name]).dtype == dt, name
        np.testing.assert_array_equal(ak.to_numpy(arr[name]), labels[name])
    np.testing.assert_array_equal(ak.to_numpy(arr["n"]), ak.to_numpy(ak.num(particles["part_px"])))


def test_jetclass_writer_rejects_mismatched_counts(tmp_path):
    with pytest.raises(ValueError, match="part_py"):
        write_jetclass_root(tmp_path / "bad.root", {"part_px": [np.ones(2)], "part_py": [np.ones(3)]},
                            {"jet_pt": np.ones(1)}, {"label_QCD": np.ones(1)})
    assert not (tmp_path / "bad.root").exists()


def test_toptagging_layout_two_blocks(tmp_path, toptagging_arrays):
    E, PX, PY, PZ, sig = toptagging_arrays
    path = write_toptagging_h5(tmp_path / "t.h5", E, PX, PY, PZ, sig, n_constituents=12)
    floats, ints = toptagging_columns(12)
    assert floats[:5] == ["E_0", "PX_0", "PY_0", "PZ_0", "E_1"]
    assert floats[-5:] == ["truthE", "truthPX", "truthPY", "truthPZ", "ttv"]
    with h5py.File(path) as f:
        g = f["table"]
        assert g.attrs["pandas_type"] == b"frame" and g.attrs["nblocks"] == 2
        assert [s.decode() for s in g["axis0"][()]] == floats + ints
        assert [s.decode() for s in g["block1_items"][()]] == ["is_signal_new"]
        assert g["block1_values"].dtype == np.int64 and g["block1_values"].shape == (12, 1)
        assert g["block0_values"].shape == (12, 4 * 12 + 5)
        np.testing.assert_array_equal(g["block0_values"][:, 4 * 3 + 1], PX[:, 3].astype(np.float32))
        np.testing.assert_array_equal(g["axis1"][()], np.arange(12))


# ------------------------------------------------------------------------------------------ features
def test_feature_expressions_match_numpy(tmp_path):
    particles, jets, labels = synth_jetclass(25, seed=2, max_particles=8)
    path = write_jetclass_root(tmp_path / "f.root", particles, jets, labels)
    cfg = _cfg(features="full", pad_length=6)
    stats = {}
    (x, v, mask, y), = _read_all(path, cfg, stats=stats)
    assert x.shape == (len(y), 6, 17) and x.dtype == np.float32 and mask.dtype == bool and y.dtype == np.int64
    f32 = {k: [np.asarray(a, np.float32).astype(np.float64) for a in ak.to_list(val)] for k, val in particles.items()}
    jet = {k: np.asarray(val, np.float32).astype(np.float64) for k, val in jets.items()}
    for i in range(len(y)):
        px, py = f32["part_px"][i], f32["part_py"][i]
        e, deta, dphi = f32["part_energy"][i], f32["part_deta"][i], f32["part_dphi"][i]
        pt = np.hypot(px, py)
        ref = [np.log(pt) - 1.7, np.log(e) - 2.0, np.log(pt / jet["jet_pt"][i]) + 4.7,
               np.log(e / jet["jet_energy"][i]) + 4.7, np.hypot(deta, dphi) - 0.2]
        ref = [r * m for r, m in zip(ref, [0.7, 0.7, 0.7, 0.7, 4.0])] + [deta, dphi, f32["part_charge"][i]]
        ref += [f32[n][i] for n in ("part_isChargedHadron", "part_isNeutralHadron", "part_isPhoton",
                                    "part_isElectron", "part_isMuon")]
        ref += [np.tanh(f32["part_d0val"][i]), np.clip(f32["part_d0err"][i], 0, 1),
                np.tanh(f32["part_dzval"][i]), np.clip(f32["part_dzerr"][i], 0, 1)]
        ref = np.clip(np.stack(ref, axis=-1), -5, 5)  # (n_i, 17)
        k = min(len(px), 6)
        np.testing.assert_allclose(x[i, :k], ref[:k], rtol=1e-5, atol=1e-5)
        assert (x[i, k:] == 0).all() and mask[i, :k].all() and not mask[i, k:].any()
        np.testing.assert_array_equal(v[i, :k, 0], px[:k])
        np.testing.assert_array_equal(v[i, :k, 3], e[:k])
        want_y = 0 if labels["label_QCD"][i] else 1
        assert y[i] == want_y
    assert cfg.feature_names == list(FEATURE_SETS["full"])


def test_custom_expression_selection_and_jet_broadcast(tmp_path, jetclass_file):
    path = jetclass_file(n_jets=40, seed=4)
    cfg = _cfg(features={"a": {"expr": "np.log(jet_pt) + 0 * part_px", "clip": None},
                         "b": {"expr": "where(part_px > 0, 1.0, -1.0)", "multiply": 2.0}},
               selection="jet_pt > 750", pad_length=4)
    stats = {}
    (x, v, mask, y), = _read_all(path, cfg, stats=stats)
    arr = uproot.open(path)["tree"].arrays(library="ak")
    sel = ak.to_numpy(arr["jet_pt"]) > 750
    assert stats["dropped_selection"] == (~sel).sum() and len(y) == sel.sum()
    jpt = ak.to_numpy(arr["jet_pt"])[sel].astype(np.float64)
    np.testing.assert_allclose(x[:, 0, 0], np.log(jpt), rtol=1e-6)
    assert set(np.unique(x[mask][:, 1])) <= {-2.0, 2.0}


def test_label_subset_skips_other_classes(tmp_path, jetclass_file):
    path = jetclass_file(n_jets=60, seed=5, classes=(0, 1, 6, 8))
    arr = uproot.open(path)["tree"].arrays(library="ak")
    cfg = _cfg(labels=["label_Tbqq", "label_Hbb"])
    stats = {}
    (x, v, mask, y), = _read_all(path, cfg, stats=stats)
    tb, hbb = ak.to_numpy(arr["label_Tbqq"]) == 1, ak.to_numpy(arr["label_Hbb"])
    keep = tb | hbb
    np.testing.assert_array_equal(y, np.where(tb[keep], 0, 1))
    assert stats["dropped_unlabelled"] == (~keep).sum()
    np.testing.assert_array_equal(v[:, 0, 0], 1000 + np.nonzero(keep)[0])


def test_toptagging_reader_matches_inputs(tmp_path, toptagging_arrays):
    E, PX, PY, PZ, sig = toptagging_arrays
    path = write_toptagging_h5(tmp_path / "t.h5", E, PX, PY, PZ, sig, n_constituents=12)
    cfg = _cfg(format="toptagging_h5", labels=["label_QCD", "label_Top"], features="kin", pad_length=12)
    (x, v, mask, y), = _read_all(path, cfg)
    np.testing.assert_array_equal(y, sig)
    real = E > 0
    np.testing.assert_array_equal(mask[:, :10], real)
    np.testing.assert_array_equal(v[:, :10, 0][real], PX.astype(np.float32)[real])
    np.testing.assert_array_equal(v[:, :10, 3][real], E.astype(np.float32)[real])
    E32, PX32, PY32, PZ32 = (a.astype(np.float32).astype(np.float64) for a in (E, PX, PY, PZ))
    jpx, jpy, jpz, jE = PX32.sum(1), PY32.sum(1), PZ32.sum(1), E32.sum(1)
    jpt, jeta, jphi = np.hypot(jpx, jpy), np.arcsinh(jpz / np.hypot(jpx, jpy)), np.arctan2(jpy, jpx)
    pt = np.hypot(PX32, PY32)
    deta = np.sign(jeta)[:, None] * (np.arcsinh(PZ32 / np.where(real, pt, 1)) - jeta[:, None])
    dphi = (np.arctan2(PY32, PX32) - jphi[:, None] + np.pi) % (2 * np.pi) - np.pi
    ref = np.stack([(np.log(np.where(real, pt, 1)) - 1.7) * 0.7, (np.log(np.where(real, E32, 1)) - 2) * 0.7,
                    (np.log(np.where(real, pt, 1) / jpt[:, None]) + 4.7) * 0.7,
                    (np.log(np.where(real, E32, 1) / jE[:, None]) + 4.7) * 0.7,
                    (np.hypot(deta, dphi) - 0.2) * 4.0, deta, dphi], axis=-1)
    np.testing.assert_allclose(x[:, :10][real], np.clip(ref, -5, 5)[real], rtol=1e-4, atol=1e-4)


def test_toptagging_columns_mapped_through_items(tmp_path):
    """A file whose blocks are ordered differently (int block first, floats shuffled) reads the same."""
    rng = np.random.default_rng(7)
    n, k = 6, 3
    cols = {f"{c}_{i}": rng.uniform(1, 5, n) for i in range(k) for c in ("E", "PX", "PY", "PZ")}
    sig = rng.integers(0, 2, n)
    names = list(cols)
    rng.shuffle(names)
    path = tmp_path / "perm.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("table")
        g.attrs["nblocks"] = 2
        g["block0_items"] = np.array(["is_signal_new"], dtype="S")
        g["block0_values"] = sig[:, None].astype(np.int64)
        g["block1_items"] = np.array(names, dtype="S")
        g["block1_values"] = np.stack([cols[c] for c in names], axis=1).astype(np.float32)
    reader = TopTaggingH5Reader(path, ["part_px", "part_energy", "label_Top"])
    (chunk,) = list(reader.iterate(0, None, 100))
    np.testing.assert_array_equal(ak.to_numpy(chunk["label_Top"]), sig.astype(np.float32))
    np.testing.assert_array_equal(ak.to_numpy(chunk["part_px"]),
                                  np.stack([cols[f"PX_{i}"] for i in range(k)], 1).astype(np.float32))
    np.testing.assert_array_equal(ak.to_numpy(chunk["part_energy"]),
                                  np.stack([cols[f"E_{i}"] for i in range(k)], 1).astype(np.float32))


# ------------------------------------------------------------------------------------------ bad input
def _one_line(exc: Exception, path, field=None):
    msg = str(exc)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    if field is not None:
        assert f"field '{field}'" in msg, msg


def test_missing_branch(tmp_path):
    particles, jets, labels = synth_jetclass(10)
    del particles["part_deta"]
    path = write_jetclass_root(tmp_path / "m.root", particles, jets, labels)
    with pytest.raises(MissingFieldError) as ei:
        _read_all(path, _cfg(features="kin"))
    _one_line(ei.value, path, "part_deta")


def test_unknown_label_and_bad_expression(jetclass_file):
    path = jetclass_file()
    with pytest.raises(MissingFieldError) as ei:  # any branch may be a label; one the tree lacks is named on reading
        _read_all(path, _cfg(labels=["label_QCD", "label_Higgs"]))
    _one_line(ei.value, path, "label_Higgs")
    with pytest.raises(UnknownLabelError, match="label_Tbqq"):
        _cfg(format="toptagging_h5", labels=["label_Tbqq"])
    with pytest.raises(ConfigError, match="__import__"):
        _cfg(features={"evil": {"expr": "__import__('os').getcwd()"}})
    with pytest.raises(ConfigError, match="field 'f': .*not allowed"):
        _cfg(features={"f": {"expr": "(lambda: 1)()"}})


@pytest.mark.parametrize("kind", ["half", "random"])
def test_corrupt_root(tmp_path, jetclass_file, kind):
    path = jetclass_file(n_jets=200)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if kind == "half" else np.random.default_rng(0).bytes(len(data)))
    with pytest.raises(CorruptFileError) as ei:
        _read_all(path, _cfg())
    _one_line(ei.value, path)


@pytest.mark.parametrize("kind", ["half", "random"])
def test_corrupt_h5(tmp_path, toptagging_arrays, kind):
    E, PX, PY, PZ, sig = toptagging_arrays
    path = write_toptagging_h5(tmp_path / "c.h5", E, PX, PY, PZ, sig, n_constituents=200)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if kind == "half" else np.random.default_rng(0).bytes(len(data)))
    cfg = _cfg(format="toptagging_h5", labels=["label_QCD", "label_Top"])
    with pytest.raises(CorruptFileError) as ei:
        _read_all(path, cfg)
    _one_line(ei.value, path)


def test_empty_file(tmp_path, jetclass_file):
    p, j, lab = synth_jetclass(0)
    empty = write_jetclass_root(tmp_path / "empty.root", p, j, lab)
    cfg = _cfg()
    assert make_reader(empty, cfg).num_entries() == 0
    assert _read_all(empty, cfg) == []
    assert build_pieces([str(empty)], cfg) == []  # skipped with a warning
    with pytest.raises(EmptyFileError) as ei:
        JetIterableDataset(cfg, [str(empty)], batch_size=4, train=True)
    _one_line(ei.value, empty)
    full = jetclass_file(n_jets=20)
    ds = JetIterableDataset(cfg, [str(empty), str(full)], batch_size=4, train=False)
    assert ds.num_entries == 20


def test_zero_particle_jets_dropped_and_counted(tmp_path):
    particles, jets, labels = synth_jetclass(30, seed=8, min_particles=0, max_particles=3)
    n_empty = int(np.sum(ak.to_numpy(ak.num(particles["part_px"])) == 0))
    assert n_empty > 0
    path = write_jetclass_root(tmp_path / "z.root", particles, jets, labels)
    stats = {}
    (x, v, mask, y), = _read_all(path, _cfg(), stats=stats)
    assert stats["dropped_no_particles"] == n_empty and len(y) == 30 - n_empty
    assert mask.any(axis=1).all()


def test_nan_and_inf_raise(tmp_path):
    particles, jets, labels = synth_jetclass(10, seed=9)
    px = ak.to_list(particles["part_px"])
    px[4][1] = np.nan
    particles["part_px"] = ak.Array(px)
    path = write_jetclass_root(tmp_path / "nan.root", particles, jets, labels)
    with pytest.raises(InvalidValueError) as ei:
        _read_all(path, _cfg())
    _one_line(ei.value, path, "part_px")
    assert "entry 4" in str(ei.value)

    particles, jets, labels = synth_jetclass(10, seed=9)
    e = ak.to_list(particles["part_energy"])
    e[2][0] = -1.0  # finite input, but log(E) is NaN -> the feature is named
    particles["part_energy"] = ak.Array(e)
    path = write_jetclass_root(tmp_path / "neg.root", particles, jets, labels)
    with pytest.raises(InvalidValueError) as ei:
        _read_all(path, _cfg())
    _one_line(ei.value, path, "part_e_log")
    assert isinstance(ei.value, DataError) and "entry 2" in str(ei.value)
