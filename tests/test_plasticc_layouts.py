"""Both PLAsTiCC layouts read by their headers (Kaggle 2018 and the unblinded Zenodo 2539456 release), computed
Galactic coordinates, class codes, errors naming CSV / line / object / column, the per-file HDF5 caches, and the
test split streamed over many files in flat memory (sharded over DDP ranks without losing an object)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from physics_tf.data.errors import UnknownLabelError
from physics_tf.lightcurves.data import LightCurveDataModule
from physics_tf.lightcurves.hdf5 import read_lightcurves_h5
from physics_tf.lightcurves.io import read_plasticc_csv

KAGGLE_META = ("object_id,ra,decl,gal_l,gal_b,ddf,hostgal_specz,hostgal_photoz,hostgal_photoz_err,distmod,mwebv,"
               "target")
KAGGLE_LC = "object_id,mjd,passband,flux,flux_err,detected"
UNBLINDED_META = ("object_id,ra,decl,ddf_bool,hostgal_specz,hostgal_photoz,hostgal_photoz_err,distmod,mwebv,target,"
                  "true_target,true_submodel,true_z,true_distmod,true_lensdmu,true_vpec,true_rv,true_av,true_peakmjd,"
                  "libid_cadence,tflux_u,tflux_g,tflux_r,tflux_i,tflux_z,tflux_y")
UNBLINDED_LC = "object_id,mjd,passband,flux,flux_err,detected_bool"

# Kaggle training layout (rows as in training_set_metadata.csv: a Galactic object has an empty distmod)
KAGGLE_ROWS = ["615,349.046051,-61.943836,320.796530,-51.753706,1,0.0000,0.0000,0.0000,,0.017,92",
               "713,53.085938,-27.784405,223.525509,-54.460748,1,1.8181,1.6267,0.2552,45.4063,0.007,88",
               "730,33.574219,-6.579593,170.455585,-61.548219,1,0.2320,0.2262,0.0157,40.2561,0.021,42"]
# unblinded layout: target is a placeholder (0), true_target the class; −9 = no spectroscopic redshift
UNBLINDED_ROWS = ["13,34.453125,-5.229529,1,0.3048,0.3193,0.0542,41.1123,0.019,0,90,2,0.3048,41.1123,0.0,-81.2,"
                  "3.1,0.2,60385.7,1,-102.1,213.5,600.2,803.4,901.0,925.6",
                  "14,33.398438,-4.331149,1,-9.0000,0.6323,0.0179,42.8774,0.018,0,995,1,0.6104,42.7920,0.0,29.8,"
                  "3.1,0.0,60100.2,2,1.1,5.2,20.3,22.4,23.0,21.9",
                  "17,348.529419,-61.755440,1,-9.0000,0.8286,0.0550,43.6000,0.016,0,42,6,0.8420,43.6542,0.0,-120.3,"
                  "3.1,0.4,60200.1,3,-1.0,0.5,1.4,2.2,3.0,3.3",
                  "23,34.804688,-5.829153,1,-9.0000,0.0000,0.0000,nan,0.020,0,65,1,0.0,nan,0.0,0.0,3.1,0.0,60300.0,4,"
                  "1.0,1.0,1.0,1.0,1.0,1.0"]


def _lc_rows(ids, n=5, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for oid in ids:
        for k in range(n):
            flux = rng.normal(50, 20)
            rows.append(f"{oid},{59580.0 + 3.1 * k:.4f},{k % 6},{flux:.6f},{abs(rng.normal(3, 0.5)):.6f},{int(k == 2)}")
    return rows


def _write(path: Path, head: str, rows) -> Path:
    path.write_text(head + "\n" + "\n".join(rows) + "\n")
    return path


def _unblinded(tmp_path, rows=UNBLINDED_ROWS, split=((13, 14), (17, 23))):
    meta = _write(tmp_path / "plasticc_test_metadata.csv", UNBLINDED_META, rows)
    lcs = [_write(tmp_path / f"plasticc_test_lightcurves_{k + 1:02d}.csv", UNBLINDED_LC, _lc_rows(ids, seed=k))
           for k, ids in enumerate(split)]
    return meta, lcs


def test_kaggle_layout(tmp_path):
    meta = _write(tmp_path / "training_set_metadata.csv", KAGGLE_META, KAGGLE_ROWS)
    lc = _write(tmp_path / "training_set.csv", KAGGLE_LC, _lc_rows([615, 713, 730]))
    got = read_plasticc_csv(lc, meta)
    assert got.meta["target"].tolist() == [92, 88, 42] and got.meta["gal_l"][0] == 320.796530  # as written
    assert np.isnan(got.meta["distmod"][0]) and got.meta["hostgal_specz"].tolist()[1:] == [1.8181, 0.2320]
    assert got.meta["ddf"].tolist() == [1, 1, 1] and got.obs["detected"].sum() == 3
    dm = LightCurveDataModule({"train": {"lightcurves": str(lc), "metadata": str(meta)}}, [92, 88, 42],
                              cache_dir=str(tmp_path / "h5"), batch_size=2)
    dm.setup("fit")
    assert dm.datasets["train"].labels.tolist() == [0, 1, 2]


def test_unblinded_layout_true_target_galactic_and_specz(tmp_path):
    from astropy.coordinates import SkyCoord
    import astropy.units as u

    meta, lcs = _unblinded(tmp_path)
    got = read_plasticc_csv(lcs[0], meta, partial_metadata=True)
    assert got.object_id.tolist() == [13, 14]
    assert got.meta["target"].tolist() == [90, 995]  # true_target, not the placeholder target = 0
    assert got.meta["ddf"].tolist() == [1, 1] and got.obs["detected"].sum() == 2
    assert got.meta["hostgal_specz"][0] == 0.3048 and np.isnan(got.meta["hostgal_specz"][1])  # −9 → NaN
    ra, dec = np.array([34.453125, 33.398438]), np.array([-5.229529, -4.331149])
    ref = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs").galactic
    np.testing.assert_allclose(got.meta["gal_l"], ref.l.deg, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.meta["gal_b"], ref.b.deg, rtol=0, atol=1e-6)
    # over the whole sky too, against astropy, to 1e-6 degrees
    from physics_tf.lightcurves.coords import galactic_from_equatorial

    rng = np.random.default_rng(1)
    ra, dec = rng.uniform(0, 360, 500), np.degrees(np.arcsin(rng.uniform(-1, 1, 500)))
    ref = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs").galactic
    lon, lat = galactic_from_equatorial(ra, dec)
    assert np.abs((lon - ref.l.deg + 180) % 360 - 180).max() < 1e-6 and np.abs(lat - ref.b.deg).max() < 1e-6


def test_unblinded_test_split_streams_all_files_and_maps_995(tmp_path):
    meta, _ = _unblinded(tmp_path)
    classes = [90, 42, 65, 99]
    dm = LightCurveDataModule({"test": {"lightcurves": str(tmp_path / "plasticc_test_lightcurves_*.csv"),
                                        "metadata": str(meta)}}, classes, cache_dir=str(tmp_path / "h5"),
                              batch_size=3)
    dm.prepare_data()
    assert sorted(p.name for p in (tmp_path / "h5").iterdir()) == ["plasticc_test_lightcurves_01.h5",
                                                                   "plasticc_test_lightcurves_02.h5"]
    dm.setup("test")
    assert dm.split_counts("test") == {"num_entries": 4}
    batches = list(dm.test_dataloader())
    ids = torch.cat([b["aux_object_id"] for b in batches]).tolist()
    y = torch.cat([b["y"] for b in batches]).tolist()
    assert ids == [13, 14, 17, 23] and [classes[k] for k in y] == [90, 99, 42, 65]  # 995 → 99


def test_plasticc_config_reads_the_files_as_downloaded(tmp_path):
    """conf/data/plasticc.yaml with the real file names: the Kaggle training set and the unblinded test set
    (light curves gzipped, as on Zenodo), no other setting."""
    import gzip

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from physics_tf.config import config_dir

    d = tmp_path / "plasticc"
    d.mkdir()
    _write(d / "training_set_metadata.csv", KAGGLE_META, [r[:-2] + c for r, c in zip(KAGGLE_ROWS, ("90", "42", "90"))]
           + ["731,33.6,-6.5,170.5,-61.5,1,0.2,0.2,0.01,40.2,0.021,65", "732,33.6,-6.5,170.5,-61.5,1,0.2,0.2,0.01,"
              "40.2,0.021,42"])
    _write(d / "training_set.csv", KAGGLE_LC, _lc_rows([615, 713, 730, 731, 732]))
    _unblinded(d)
    for k in (1, 2):
        src = d / f"plasticc_test_lightcurves_{k:02d}.csv"
        with gzip.open(f"{src}.gz", "wt") as fh:
            fh.write(src.read_text())
        src.unlink()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=["data=plasticc", f"paths.data_dir={tmp_path}"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 5
    y = torch.cat([b["y"] for b in dm.test_dataloader()]).tolist()
    assert [dm.classes[k] for k in y] == [90, 99, 42, 65]
    assert sorted(p.name for p in (d / "h5").iterdir()) == ["plasticc_test_lightcurves_01.h5",
                                                            "plasticc_test_lightcurves_02.h5",
                                                            "training_set.h5"]


def test_errors_name_csv_line_object_and_column(tmp_path):
    meta, lcs = _unblinded(tmp_path)
    spec = {"test": {"lightcurves": [str(p) for p in lcs], "metadata": str(meta)}}
    dm = LightCurveDataModule(spec, [90, 65, 99], cache_dir=str(tmp_path / "h5"))  # 42 (object 17) not listed
    with pytest.raises(UnknownLabelError) as err:
        dm.setup("test")
    msg = str(err.value)
    assert msg.startswith(f"{meta}: field 'true_target': line 4: object_id 17: true_target 42 is not in data.classes")
    assert msg.endswith(f"(cached in {tmp_path / 'h5' / 'plasticc_test_lightcurves_02.h5'})") and "\n" not in msg
    bad = list(UNBLINDED_ROWS)
    bad[2] = bad[2].replace(",0,42,6,", ",0,SNII,6,")
    meta, lcs = _unblinded(tmp_path, bad)
    with pytest.raises(ValueError, match=rf"^{meta}: field 'true_target': line 4: object_id 17: .*\(found 'SNII'\)"):
        LightCurveDataModule(spec, [90, 65, 99], cache_dir=str(tmp_path / "h5")).prepare_data()


def test_caches_one_per_file_rebuilt_when_the_source_changes(tmp_path):
    meta, lcs = _unblinded(tmp_path)
    spec = {"test": {"lightcurves": [str(p) for p in lcs], "metadata": str(meta)}}
    dm = LightCurveDataModule(spec, [90, 42, 65, 99], cache_dir=str(tmp_path / "h5"))
    dm.prepare_data()
    caches = [tmp_path / "h5" / f"plasticc_test_lightcurves_0{k}.h5" for k in (1, 2)]
    stamps = [c.stat().st_mtime_ns for c in caches]
    dm.prepare_data()
    assert [c.stat().st_mtime_ns for c in caches] == stamps  # fresh: not converted again
    _write(lcs[1], UNBLINDED_LC, _lc_rows([17, 23], n=7, seed=5))  # one source changes (size and mtime)
    dm.prepare_data()
    assert caches[0].stat().st_mtime_ns == stamps[0] and caches[1].stat().st_mtime_ns != stamps[1]
    assert read_lightcurves_h5(caches[1]).counts.tolist() == [7, 7]
    os.utime(lcs[0], ns=(time.time_ns(), time.time_ns() + 10**9))  # same size, new mtime
    dm.prepare_data()
    assert caches[0].stat().st_mtime_ns != stamps[0]
    assert [p.name for p in (tmp_path / "h5").iterdir() if p.name.startswith(".")] == []  # atomic


def test_test_split_sharded_over_ranks_without_losing_objects(tmp_path):
    meta, lcs = _unblinded(tmp_path, split=((13,), (14, 17), (23,)))
    spec = {"test": {"lightcurves": [str(p) for p in lcs], "metadata": str(meta)}}
    dm = LightCurveDataModule(spec, [90, 42, 65, 99], cache_dir=str(tmp_path / "h5"), batch_size=1)
    dm.setup("test")
    stream, seen, counts = dm.datasets["test"], [], []
    for rank in range(3):
        stream.set_distributed(rank, 3)
        batches = list(stream)
        counts.append(len(batches))
        seen += torch.cat([b["aux_index"] for b in batches]).tolist()
    assert counts == [2, 2, 2] and sorted(set(seen)) == [0, 1, 2, 3] and len(seen) == 6  # padded, equal counts


def measure_sets(out: Path, n_files: list[int], per_file: int, chunk_rows: int, chunk_objects: int,
                 batch_size: int = 64, model: bool = False, trace: bool = True) -> list[dict]:
    """Convert + evaluate generated multi-file sets of ``n_files[i]`` light-curve files with one metadata file:
    the peak traced memory of each stage (``trace``), peak RSS, rows/s. The objects come from the project's
    simulator; each file repeats them under new object ids."""
    import resource
    import tracemalloc

    from physics_tf.lightcurves.io import write_plasticc_csv
    from physics_tf.lightcurves.simulate import simulate

    base = simulate(per_file, seed=7)
    codes = sorted(set(base.meta["target"].tolist()))
    results = []
    for n in n_files:
        d = Path(out) / f"set_{n}"
        d.mkdir()
        metas = []
        for k in range(n):
            lc = base.select(np.arange(per_file))
            lc.object_id = lc.object_id + k * per_file
            write_plasticc_csv(lc, d / f"lc_{k:03d}.csv", d / f"meta_{k:03d}.csv")
            metas.append((d / f"meta_{k:03d}.csv").read_text().splitlines())
        (d / "meta.csv").write_text("\n".join([metas[0][0]] + [r for m in metas for r in m[1:]]) + "\n")
        dm = LightCurveDataModule({"test": {"lightcurves": str(d / "lc_*.csv"), "metadata": str(d / "meta.csv")}},
                                  codes, batch_size=batch_size, chunk_rows=chunk_rows, chunk_objects=chunk_objects,
                                  cache_dir=str(d / "h5"))
        net = None
        if model:
            from physics_tf.lightcurves.transformer import LightCurveTransformer

            torch.manual_seed(0)
            net = LightCurveTransformer(**dm.model_dims).eval()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if trace:
            tracemalloc.start()
        t0 = time.perf_counter()
        dm.prepare_data()
        t1 = time.perf_counter()
        conv_peak = tracemalloc.get_traced_memory()[1] if trace else 0
        tracemalloc.reset_peak()
        dm.setup("test")
        t2 = time.perf_counter()
        seen = 0
        for batch in dm.test_dataloader():
            seen += len(batch["y"])
            if net is not None:
                with torch.no_grad():
                    net(batch["flux"], batch["flux_err"], batch["time"], batch["band"], batch["mask"], batch["meta"])
        t3 = time.perf_counter()
        eval_peak = tracemalloc.get_traced_memory()[1] if trace else 0
        tracemalloc.stop()
        rows = n * int(base.offsets[-1])
        results.append({"files": n, "objects": seen, "rows": rows, "convert_rows_per_s": rows / (t1 - t0),
                        "eval_rows_per_s": rows / (t3 - t2), "convert_peak_mb": conv_peak / 2**20,
                        "eval_peak_mb": eval_peak / 2**20, "rss_before_mb": rss0 / 1024,
                        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return results


def test_streaming_memory_is_flat_over_files(tmp_path):
    """2 files vs 20 files of the same size: the peak memory of conversion and of evaluation stays put."""
    # 20 objects (~4k rows) per file, read 16 objects at a time; the 1-file set is a warm-up (lazy imports, caches)
    _, small, big = measure_sets(tmp_path, [1, 2, 20], 20, chunk_rows=1000, chunk_objects=16, batch_size=8)
    assert big["objects"] == 10 * small["objects"]
    for key in ("convert_peak_mb", "eval_peak_mb"):  # the data grew 10× (~2 MB of arrays): the memory may not
        assert big[key] < 1.3 * small[key] + 0.2, (key, small, big)


@pytest.mark.slow
def test_streaming_memory_is_flat_on_a_large_set(tmp_path):
    """4 files vs 40 files of 1,000 simulated objects (~0.8 M vs ~7.6 M rows), each set in a fresh process: peak
    RSS stays flat; prints the figures (peak RSS, rows/s of conversion and of streaming the test split; with
    ``PHYSICS_TF_EVAL_MODEL=1`` the transformer also runs on every batch, on the CPU)."""
    import json

    figures = []
    for n in (4, 40):
        (tmp_path / str(n)).mkdir()
        code = (f"import json, sys; sys.path.insert(0, 'tests'); from test_plasticc_layouts import measure_sets; "
                f"print(json.dumps(measure_sets({str(tmp_path / str(n))!r}, [{n}], 1000, 1_000_000, 4096, "
                f"model={os.environ.get('PHYSICS_TF_EVAL_MODEL') == '1'}, trace=False)[0]))")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3000,
                             cwd=Path(__file__).resolve().parents[1])
        assert res.returncode == 0, res.stderr[-3000:]
        figures.append(json.loads(res.stdout.strip().splitlines()[-1]))
    small, big = figures
    print("\nsmall:", small, "\nbig:", big)
    assert big["objects"] == 10 * small["objects"]
    grew = (big["peak_rss_mb"] - big["rss_before_mb"]), (small["peak_rss_mb"] - small["rss_before_mb"])
    assert grew[0] < 1.3 * grew[1] + 100, (small, big)
