"""Light-curve prediction batches (the predict contract): our HDF5 files and PLAsTiCC CSVs with one metadata file,
every object once in file order, ``pred_file`` / ``pred_entry``, observers, options and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physics_tf.data.errors import ConfigError, DataError
from physics_tf.lightcurves.data import LightCurveDataModule
from physics_tf.lightcurves.hdf5 import write_lightcurves_h5
from physics_tf.lightcurves.io import LightCurves, write_plasticc_csv
from physics_tf.lightcurves.simulate import simulate

CODES = [90, 42, 62, 95, 15, 64, 88, 92, 16, 65, 53, 6]
INPUTS = {"flux", "flux_err", "time", "band", "mask", "meta", "aux_first_detection"}


@pytest.fixture(scope="module")
def parts():
    lc = simulate(23, seed=3)
    return [lc.select(np.arange(0, 9)), lc.select(np.arange(9, 23))]


@pytest.fixture(scope="module")
def h5_files(tmp_path_factory, parts):
    d = tmp_path_factory.mktemp("pred")
    for k, p in enumerate(parts):  # written in reverse name order: the glob sorts them
        write_lightcurves_h5(p, d / f"part_{1 - k}.h5")
    return d


def _dm(**kw):
    return LightCurveDataModule({}, CODES, max_length=40, batch_size=kw.pop("batch_size", 4), **kw)


def _collect(loader):
    batches = list(loader)
    cat = {k: (torch.cat([b[k] for b in batches]) if torch.is_tensor(batches[0][k])
               else np.concatenate([np.asarray(b[k]) for b in batches])) for k in batches[0]}
    return batches, cat


def test_h5_files_every_object_once_in_file_order(h5_files, parts):
    dm = _dm()
    files = dm.predict_files([str(h5_files / "part_*.h5")])
    assert [f.rsplit("/", 1)[1] for f in files] == ["part_0.h5", "part_1.h5"]
    batches, cat = _collect(dm.predict_dataloader(files, batch_size=4))
    in_order = [parts[1], parts[0]]  # part_0.h5 holds parts[1]
    assert [len(b["pred_file"]) for b in batches] == [4] * 5 + [3]  # the last batch short, no wrap-around
    assert cat["pred_file"].tolist() == [0] * 14 + [1] * 9 and cat["pred_file"].dtype == torch.int64
    assert cat["pred_entry"].tolist() == list(range(14)) + list(range(9))
    assert cat["pred_valid"].dtype == torch.bool and bool(cat["pred_valid"].all())
    np.testing.assert_array_equal(np.asarray(cat["obs/object_id"]), np.concatenate([p.object_id for p in in_order]))
    np.testing.assert_array_equal(np.asarray(cat["obs/target"]), np.concatenate([p.meta["target"] for p in in_order]))
    assert INPUTS <= set(batches[0]) and "y" not in batches[0]
    assert set(dm.default_observers()) >= {"object_id", "ra", "decl", "gal_l", "gal_b", "hostgal_photoz", "target"}
    # the same model inputs as the evaluation batches of the same objects
    test = LightCurveDataModule({"test": files}, CODES, max_length=40, batch_size=4)
    test.setup("test")
    _, ev = _collect(test.test_dataloader())
    for key in INPUTS:
        assert torch.equal(ev[key], cat[key]), key
    assert ev["y"].tolist() == [CODES.index(c) for c in np.asarray(cat["obs/target"])]
    # DataLoader workers keep the order; a subset of observers
    _, two = _collect(dm.predict_dataloader(files, ["object_id"], batch_size=3, num_workers=2))
    assert torch.equal(two["pred_entry"], cat["pred_entry"]) and torch.equal(two["flux"][:, :5], cat["flux"][:, :5])
    assert {k for k in two if k.startswith("obs/")} == {"obs/object_id"}


def test_csv_files_with_one_metadata_file(tmp_path, parts):
    """Two light-curve CSVs of the unblinded layout (detected_bool; metadata without gal_l/gal_b, true_target)."""
    both = LightCurves.concatenate(parts)
    for k, p in enumerate(parts):
        write_plasticc_csv(p, tmp_path / f"lc_{k + 1:02d}.csv")
        text = (tmp_path / f"lc_{k + 1:02d}.csv").read_text()
        (tmp_path / f"lc_{k + 1:02d}.csv").write_text(text.replace(",detected\n", ",detected_bool\n", 1))
    head = "object_id,ra,decl,ddf_bool,hostgal_specz,hostgal_photoz,hostgal_photoz_err,distmod,mwebv,target,true_target"
    rows = [f"{o},{m['ra']:.6f},{m['decl']:.6f},{int(m['ddf'])},{m['hostgal_specz']:.4f},{m['hostgal_photoz']:.4f},"
            f"{m['hostgal_photoz_err']:.4f},{m['distmod']:.4f},{m['mwebv']:.4f},0,{int(m['target'])}"
            for o, m in zip(both.object_id, ({c: both.meta[c][k] for c in both.meta} for k in range(len(both))))]
    (tmp_path / "meta.csv").write_text(head + "\n" + "\n".join(rows) + "\n")
    dm = _dm(cache_dir=str(tmp_path / "cache"))
    files = dm.predict_files([str(tmp_path / "lc_*.csv")], metadata=str(tmp_path / "meta.csv"))
    _, cat = _collect(dm.predict_dataloader(files, batch_size=5, metadata=str(tmp_path / "meta.csv")))
    assert cat["pred_file"].tolist() == [0] * 9 + [1] * 14 and cat["pred_entry"].tolist()[-3:] == [11, 12, 13]
    np.testing.assert_array_equal(np.asarray(cat["obs/object_id"]), both.object_id)
    np.testing.assert_array_equal(np.asarray(cat["obs/target"]), both.meta["target"])  # true_target, not target
    np.testing.assert_allclose(np.asarray(cat["obs/gal_l"]), both.meta["gal_l"], atol=1e-4)  # computed
    assert (tmp_path / "cache" / "lc_01.h5").is_file() and (tmp_path / "cache" / "lc_02.h5").is_file()
    with pytest.raises(ConfigError, match="metadata"):
        dm.predict_dataloader(files)
    with pytest.raises(ConfigError, match="field 'bogus'"):
        dm.predict_files(files, bogus=1)
    with pytest.raises(DataError, match="no file matches"):
        dm.predict_files([str(tmp_path / "nothing_*.csv")])
    with pytest.raises(DataError, match=r"lc_01\.h5: field 'true_z': observer 'true_z' is not a column"):
        dm.predict_dataloader(files, ["object_id", "true_z"], metadata=str(tmp_path / "meta.csv"))


def test_unlabelled_files_predict_without_target(tmp_path, parts):
    """A blinded metadata file (no class column): predict works and leaves target out of the default observers."""
    write_plasticc_csv(parts[0], tmp_path / "x_set.csv", tmp_path / "x_meta.csv")
    text = (tmp_path / "x_meta.csv").read_text().splitlines()
    (tmp_path / "x_meta.csv").write_text("\n".join(",".join(r.split(",")[:-1]) for r in text) + "\n")
    dm, meta = _dm(), str(tmp_path / "x_meta.csv")
    files = dm.predict_files([str(tmp_path / "x_set.csv")], metadata=meta)  # as the predict driver calls them
    observers = dm.default_observers()
    assert "target" not in observers and {"object_id", "mwebv", "gal_b"} <= set(observers)
    _, cat = _collect(dm.predict_dataloader(files, observers, metadata=meta))
    assert "obs/target" not in cat and "obs/mwebv" in cat and len(cat["pred_entry"]) == 9
    _, cat = _collect(dm.predict_dataloader(files, metadata=meta))  # observers=None: the same defaults
    assert "obs/target" not in cat and "obs/gal_l" in cat
    with pytest.raises(DataError, match="field 'target': observer 'target'"):
        dm.predict_dataloader([str(tmp_path / "x_set.csv")], ["target"], metadata=str(tmp_path / "x_meta.csv"))
