"""PLAsTiCC readers, our HDF5 layout, CSV ↔ HDF5 round trips, bad inputs, padding and the data module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physics_tf.data.errors import CorruptFileError, DataError, MissingFieldError, UnknownLabelError
from physics_tf.lightcurves.data import LightCurveDataModule
from physics_tf.lightcurves.simulate import simulate
from physics_tf.lightcurves.hdf5 import convert_plasticc_csv, read_lightcurves_h5, write_lightcurves_h5
from physics_tf.lightcurves.io import (
    LightCurves, iter_lightcurve_csv, pad_lightcurves, read_plasticc_csv, write_plasticc_csv,
)

LC_HEAD = "object_id,mjd,passband,flux,flux_err,detected\n"
META_HEAD = ("object_id,ra,decl,gal_l,gal_b,ddf,hostgal_specz,hostgal_photoz,hostgal_photoz_err,distmod,mwebv,"
             "target\n")
GOOD_LC = ["615,59750.4229,2,-544.810303,3.622952,1", "615,59750.4306,1,-816.434326,5.553370,1",
           "615,59751.4,3,10.0,2.0,0", "713,59825.26,2,5.5,1.2,0", "713,59826.1,4,-3.0,1.0,0"]
GOOD_META = ["615,349.046051,-61.943836,320.796530,-51.753706,1,0.0,0.0,0.0,,0.017,92",
             "713,53.085938,-27.784405,223.525509,-54.460748,1,1.8181,1.6267,0.2552,45.4063,0.007,88"]


@pytest.fixture(scope="module")
def sim_lc():
    return simulate(36, seed=11)


def _write(tmp_path, lc_rows=GOOD_LC, meta_rows=GOOD_META, lc_head=LC_HEAD, meta_head=META_HEAD):
    lc, meta = tmp_path / "x_set.csv", tmp_path / "x_metadata.csv"
    lc.write_text(lc_head + "\n".join(lc_rows) + "\n")
    meta.write_text(meta_head + "\n".join(meta_rows) + "\n")
    return lc, meta


def _assert_same(a: LightCurves, b: LightCurves, exact=True):
    np.testing.assert_array_equal(a.object_id, b.object_id)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    for f in a.obs:  # the CSV keeps mjd to 1e-4 d and fluxes to 1e-6
        (np.testing.assert_array_equal if exact else np.testing.assert_allclose)(a.obs[f], b.obs[f], atol=5e-5, rtol=0) \
            if not exact else np.testing.assert_array_equal(a.obs[f], b.obs[f])
    assert set(a.meta) == set(b.meta)
    for c in a.meta:
        if exact:
            np.testing.assert_array_equal(a.meta[c], b.meta[c])
        else:
            np.testing.assert_allclose(a.meta[c], b.meta[c], atol=5e-7, rtol=0)


def test_read_plasticc_csv_groups_objects(tmp_path):
    lc = read_plasticc_csv(*_write(tmp_path))
    assert lc.object_id.tolist() == [615, 713] and lc.counts.tolist() == [3, 2]
    assert lc.meta["target"].tolist() == [92, 88] and np.isnan(lc.meta["distmod"][0])
    arr = lc.to_awkward()
    import awkward as ak

    assert ak.num(arr.flux).tolist() == [3, 2]
    assert arr.passband[0].tolist() == [2, 1, 3] and arr.flux[1][1] == -3.0 and arr.target.tolist() == [92, 88]


def test_round_trips_csv_h5_csv(tmp_path, sim_lc):
    write_plasticc_csv(sim_lc, tmp_path / "a_set.csv", tmp_path / "a_metadata.csv")
    from_csv = read_plasticc_csv(tmp_path / "a_set.csv", tmp_path / "a_metadata.csv", chunk_rows=97)
    _assert_same(from_csv, sim_lc.select(np.arange(len(sim_lc))), exact=False)  # CSV keeps 1e-4 d, 1e-6 flux
    assert np.abs(from_csv.obs["flux"] - sim_lc.obs["flux"]).max() <= 5e-7
    # CSV → HDF5 (streaming, chunks smaller than an object) == reading the CSV, exactly
    convert_plasticc_csv(tmp_path / "a_set.csv", tmp_path / "a_metadata.csv", tmp_path / "a.h5", chunk_rows=53)
    _assert_same(read_lightcurves_h5(tmp_path / "a.h5"), from_csv)
    # HDF5 → CSV → HDF5 reproduces the text and the arrays exactly
    write_plasticc_csv(read_lightcurves_h5(tmp_path / "a.h5"), tmp_path / "b_set.csv", tmp_path / "b_metadata.csv")
    assert (tmp_path / "b_set.csv").read_text() == (tmp_path / "a_set.csv").read_text()
    assert (tmp_path / "b_metadata.csv").read_text() == (tmp_path / "a_metadata.csv").read_text()
    # partial reads and the file layout
    part = read_lightcurves_h5(tmp_path / "a.h5", 5, 9)
    _assert_same(part, from_csv.select(np.arange(5, 9)))
    import h5py

    with h5py.File(tmp_path / "a.h5") as f:
        assert f["obs/flux"].compression == "gzip" and f["obs/flux"].chunks is not None
        assert f["offsets"].shape == (len(sim_lc) + 1,) and f.attrs["num_observations"] == sim_lc.offsets[-1]


def test_streaming_chunks_hold_whole_objects(tmp_path, sim_lc):
    write_plasticc_csv(sim_lc, tmp_path / "a_set.csv")
    chunks = list(iter_lightcurve_csv(tmp_path / "a_set.csv", chunk_rows=100))
    assert len(chunks) > 10
    np.testing.assert_array_equal(np.concatenate([c.object_id for c in chunks]), sim_lc.object_id)
    np.testing.assert_array_equal(np.concatenate([c.counts for c in chunks]), sim_lc.counts)


@pytest.mark.parametrize("case, error, column, object_id", [
    ("missing_column", MissingFieldError, "flux_err", None),
    ("unknown_passband", DataError, "passband", 713),
    ("nan_flux", DataError, "flux", 615),
    ("unsorted_mjd", DataError, "mjd", 615),
    ("not_contiguous", DataError, "object_id", 615),
    ("no_observations", DataError, "object_id", 999),
    ("not_in_metadata", DataError, "object_id", 713),
    ("metadata_missing_column", MissingFieldError, "mwebv", None),
])
def test_bad_inputs_one_line_errors(tmp_path, case, error, column, object_id):
    lc_rows, meta_rows, lc_head, meta_head = list(GOOD_LC), list(GOOD_META), LC_HEAD, META_HEAD
    if case == "missing_column":
        lc_head = LC_HEAD.replace(",flux_err", "")
        lc_rows = [",".join(r.split(",")[:4] + r.split(",")[5:]) for r in GOOD_LC]
    elif case == "unknown_passband":
        lc_rows[4] = "713,59826.1,7,-3.0,1.0,0"
    elif case == "nan_flux":
        lc_rows[1] = "615,59750.4306,1,nan,5.553370,1"
    elif case == "unsorted_mjd":
        lc_rows[2] = "615,59740.0,3,10.0,2.0,0"
    elif case == "not_contiguous":
        lc_rows.append("615,59900.0,3,10.0,2.0,0")
    elif case == "no_observations":
        meta_rows.append("999,1,1,1,1,0,0.1,0.1,0.01,38.0,0.01,90")
    elif case == "not_in_metadata":
        meta_rows = meta_rows[:1]
    elif case == "metadata_missing_column":
        meta_head = META_HEAD.replace(",mwebv", "")
        meta_rows = [",".join(r.split(",")[:10] + r.split(",")[11:]) for r in GOOD_META]
    lc_path, meta_path = _write(tmp_path, lc_rows, meta_rows, lc_head, meta_head)
    for read in (lambda: read_plasticc_csv(lc_path, meta_path, chunk_rows=2),
                 lambda: convert_plasticc_csv(lc_path, meta_path, tmp_path / "out.h5", chunk_rows=2)):
        with pytest.raises(error) as info:
            read()
        msg = str(info.value)
        assert "\n" not in msg and f"'{column}'" in msg
        assert str(lc_path) in msg or str(meta_path) in msg
        if object_id is not None:
            assert f"object_id {object_id}" in msg
    assert not (tmp_path / "out.h5").exists()  # atomic: nothing left behind
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_corrupt_and_foreign_h5(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CorruptFileError, match="junk.h5"):
        read_lightcurves_h5(tmp_path / "junk.h5")
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1]
    with pytest.raises(CorruptFileError, match="not a physics_tf light-curve file"):
        read_lightcurves_h5(tmp_path / "other.h5")


def test_pad_and_truncate_with_masks(sim_lc):
    out = pad_lightcurves(sim_lc, 64)
    assert out["flux"].shape == (len(sim_lc), 64) and out["mask"].dtype == bool
    np.testing.assert_array_equal(out["mask"].sum(1), np.minimum(sim_lc.counts, 64))
    k = int(np.argmax(sim_lc.counts))
    o = sim_lc.object(k)
    np.testing.assert_array_equal(out["flux"][k], o["flux"][:64])
    np.testing.assert_array_equal(pad_lightcurves(sim_lc, 64, keep="last")["mjd"][k], o["mjd"][-64:])
    peak = pad_lightcurves(sim_lc, 64, keep="peak")
    snr = o["flux"] / o["flux_err"]
    assert snr.max() in peak["flux"][k] / np.where(peak["mask"][k], peak["flux_err"][k], 1)
    short = pad_lightcurves(sim_lc, 2000)
    assert np.all(short["flux"][~short["mask"]] == 0)


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory, sim_lc):
    d = tmp_path_factory.mktemp("lc")
    write_lightcurves_h5(sim_lc, d / "train.h5")
    write_plasticc_csv(sim_lc, d / "train_set.csv", d / "train_metadata.csv")
    return d


CODES = [90, 42, 62, 95, 15, 64, 88, 92, 16, 65, 53, 6]


def test_datamodule_batches(sim_files):
    dm = LightCurveDataModule({"train": str(sim_files / "train.h5"), "test": str(sim_files / "train.h5")}, CODES,
                              max_length=48, batch_size=8, seed=0)
    assert dm.model_dims == {"num_classes": 12, "meta_dim": 6, "num_bands": 6}
    assert dm.task_kwargs["class_codes"] == CODES and dm.task_kwargs["class_names"][0] == "SNIa_90"
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert sum(len(b["y"]) for b in batches) == 36
    b = batches[0]
    assert set(b) == {"flux", "flux_err", "time", "band", "mask", "meta", "y", "aux_first_detection", "aux_object_id",
                      "aux_index"}
    assert b["flux"].dtype == torch.float32 and b["band"].dtype == torch.long and b["mask"].dtype == torch.bool
    assert b["flux"].shape[1] <= 48 and b["meta"].shape == (8, 6)
    m = b["mask"]
    assert torch.all(m[:, :-1] | ~m[:, 1:])  # real observations first
    assert torch.all(b["time"][:, 0] == 0) and torch.all((b["time"].diff(dim=1) >= 0) | ~m[:, 1:])
    assert torch.all(b["flux"][~m] == 0)
    again = next(iter(dm.test_dataloader()))
    assert torch.equal(again["flux"], b["flux"])  # evaluation is deterministic
    labels = torch.cat([x["y"] for x in batches])
    assert sorted(CODES[i] for i in labels.tolist()) == sorted(simulate(36, seed=11).meta["target"].tolist())


def test_datamodule_training_augmentations(sim_files):
    dm = LightCurveDataModule({"train": str(sim_files / "train.h5")}, CODES, max_length=4000, batch_size=36,
                              truncate_prob=1.0, drop_prob=0.3, flux_noise=0.5)
    dm.setup("fit")
    ds = dm.datasets["train"]
    a = ds[3]
    torch.manual_seed(0)  # the draws are keyed by (seed, epoch, index), not taken from the global RNG
    assert np.array_equal(ds[3]["flux"], a["flux"])
    ds.set_epoch(1)
    b = ds[3]
    n = int(ds.lc.counts[3])
    assert len(a["time"]) < n and len(b["time"]) < n and not np.array_equal(a["flux"], b["flux"])
    item = ds[3]
    assert np.all(item["flux_err"] > 0) and item["time"][0] == 0
    t_first = item["aux_first_detection"]
    assert 0 <= t_first <= item["time"][-1]


def test_datamodule_from_csv_with_val_fraction(sim_files, tmp_path):
    files = {"train": {"lightcurves": str(sim_files / "train_set.csv"), "metadata": str(sim_files / "train_metadata.csv")}}
    dm = LightCurveDataModule(files, CODES, val_fraction=0.25, cache_dir=str(tmp_path), batch_size=4)
    dm.prepare_data()
    assert (tmp_path / "train_set.h5").is_file()
    dm.setup("fit")
    tr, va = dm.datasets["train"].lc.object_id, dm.datasets["val"].lc.object_id
    assert len(va) == 9 and len(tr) == 27 and not set(tr) & set(va)
    with pytest.raises(UnknownLabelError, match="target 92 is not in data.classes"):
        bad = LightCurveDataModule({"test": str(sim_files / "train.h5")}, [c for c in CODES if c != 92])
        bad.setup("test")
    with pytest.raises(DataError, match="generate.py gen=lightcurves_sim"):
        LightCurveDataModule({"test": str(tmp_path / "nope.h5")}, CODES).setup("test")


def test_unblinded_column_aliases_gzip_and_partial_metadata(tmp_path):
    import gzip

    lc_rows = [r for r in GOOD_LC]
    lc_path = tmp_path / "t_lightcurves_01.csv.gz"
    with gzip.open(lc_path, "wt") as fh:
        fh.write(LC_HEAD.replace("detected", "detected_bool") + "\n".join(lc_rows) + "\n")
    meta_path = tmp_path / "t_metadata.csv"
    head = META_HEAD.replace(",ddf,", ",ddf_bool,").replace("target", "true_target")
    meta_path.write_text(head + "\n".join(GOOD_META + ["999,1,1,1,1,0,0.1,0.1,0.01,38.0,0.01,991"]) + "\n")
    with pytest.raises(DataError, match="object_id 999"):
        read_plasticc_csv(lc_path, meta_path)
    lc = read_plasticc_csv(lc_path, meta_path, partial_metadata=True)
    assert lc.object_id.tolist() == [615, 713] and lc.meta["ddf"].tolist() == [1, 1]
    assert lc.meta["target"].tolist() == [92, 88] and lc.obs["detected"].tolist() == [1, 1, 0, 0, 0]


def test_datamodule_rejects_values_beyond_float32(tmp_path, sim_lc):
    bad = sim_lc.select(np.arange(len(sim_lc)))
    bad.obs["flux"][bad.offsets[5] + 2] = 1e60
    write_lightcurves_h5(bad, tmp_path / "bad.h5")
    with pytest.raises(DataError, match=f"object_id {int(bad.object_id[5])}: value not finite in float32"):
        LightCurveDataModule({"train": str(tmp_path / "bad.h5")}, CODES).setup("fit")
    dm = LightCurveDataModule({"test": str(tmp_path / "bad.h5")}, CODES, batch_size=4, chunk_objects=4)
    dm.setup("test")  # the test split streams: the batch holding the object fails, naming it
    with pytest.raises(DataError, match=f"object_id {int(bad.object_id[5])}: value not finite in float32"):
        list(dm.test_dataloader())
