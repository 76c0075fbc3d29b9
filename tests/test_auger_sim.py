"""The Auger SD toy simulator: physics trends, reproducibility, HDF5 / ROOT round trips and bad input."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from physics_tf.auger.data import AugerDataModule, AugerDataset, augment_events
from physics_tf.auger.io import AugerEventFile, write_hdf5, write_root
from physics_tf.auger.schema import LN_A, PRIMARIES
from physics_tf.auger.simulate import (
    AugerSimulator,
    SimConfig,
    gumbel_parameters,
    height_of_depth,
    rise_time,
    run_generate,
    sample_xmax,
    vertical_depth,
)
from physics_tf.data.errors import DataError


@pytest.fixture(scope="module")
def sim():
    return AugerSimulator(SimConfig())


@pytest.fixture(scope="module")
def vertical_p(sim):
    """Protons at 10^19 eV, θ = 20°, with per-station truth."""
    return sim.simulate(150, np.random.default_rng(1), primary="p", lg_energy=19.0, zenith=math.radians(20),
                        return_truth=True)


def test_xmax_means_match_the_epos_lhc_sanity_values():
    rng = np.random.default_rng(0)
    expected = {"p": (808, 59), "He": (775, 38), "N": (748, 28), "Fe": (712, 17)}  # PHYSICS.md at 10^19 eV
    means = []
    for name, (mu, sigma) in expected.items():
        x = sample_xmax(rng, np.full(100_000, 19.0), np.full(100_000, LN_A[PRIMARIES.index(name)]))
        assert abs(x.mean() - mu) < 3.0, name
        assert abs(x.std() - sigma) < 3.0, name
        means.append(x.mean())
    assert np.all(np.diff(means) < -20)  # heavier → shallower
    # elongation rate at fixed A ≈ 55–58 g/cm² per decade
    m18, _, _ = gumbel_parameters(18.5, 0.0)
    m20, _, _ = gumbel_parameters(19.5, 0.0)
    assert 50 < m20 - m18 < 60


def test_atmosphere_ground_depth_and_inverse():
    assert 865 < vertical_depth(1400.0) < 880
    h = np.array([0.0, 1400.0, 6000.0, 9000.0, 20_000.0, 60_000.0])
    np.testing.assert_allclose(height_of_depth(vertical_depth(h)), h, atol=1e-3)
    assert np.all(np.diff(vertical_depth(h)) < 0)


def test_heavier_primaries_have_shallower_xmax_and_more_muons(sim):
    rng = np.random.default_rng(2)
    out = {}
    for p in ("p", "Fe"):
        ev = sim.simulate(200, rng, primary=p, lg_energy=19.0, zenith=math.radians(30), return_truth=True)
        near = ev["mask"] & (np.abs(ev["aux_r"] - 1000) < 250)
        out[p] = (ev["xmax"].mean(), np.median(ev["aux_muon_signal"][near]))
    assert out["p"][0] - out["Fe"][0] > 70
    ratio = out["Fe"][1] / out["p"][1]
    assert 1.15 < ratio < 1.6  # A^0.07 → 1.33 at fixed E


def test_signal_falls_with_distance_and_rise_time_and_delay_grow(vertical_p):
    ev = vertical_p
    r, m = ev["aux_r"], ev["mask"]
    rt = rise_time(ev["traces"].astype(np.float64))
    rings = [(300, 700), (800, 1200), (1300, 1700)]
    sig, rts, dts = [], [], []
    for lo, hi in rings:
        sel = m & (r > lo) & (r < hi) & (ev["signals"] < 500)  # avoid saturated traces for the rise time
        sig.append(np.median(ev["signals"][m & (r > lo) & (r < hi)]))
        rts.append(np.median(rt[sel]))
        # observed arrival time minus the plane front (θ known): the curvature delay behind the hottest station
        dts.append(np.median(ev["aux_front_time"][sel]))
    assert sig[0] > 3 * sig[1] > 9 * sig[2]
    assert rts[0] < rts[1] < rts[2]
    assert 80 < rts[1] < 450  # t1/2 at 1000 m ≈ 100–400 ns
    # total time delay relative to the hottest station: plane front averages out over azimuth, curvature grows
    assert dts[0] < dts[1] < dts[2]


def test_observed_times_of_vertical_showers_grow_with_distance(sim):
    ev = sim.simulate(100, np.random.default_rng(3), primary="N", lg_energy=19.3, zenith=0.0, return_truth=True)
    r, m = ev["aux_r"], ev["mask"]
    t = [np.median(ev["times"][m & (r > lo) & (r < hi)]) for lo, hi in ((800, 1200), (1300, 1700), (1800, 2200))]
    assert t[0] < t[1] < t[2]
    assert t[2] - t[0] > 150  # ns, curvature r²/(2 R_c c)


def test_deeper_showers_have_longer_rise_times(sim):
    rng = np.random.default_rng(4)
    med = []
    for xm in (680.0, 820.0):
        ev = sim.simulate(100, rng, primary="p", lg_energy=19.2, zenith=math.radians(25), xmax=xm, return_truth=True)
        sel = ev["mask"] & (np.abs(ev["aux_r"] - 1000) < 200)
        med.append(np.median(rise_time(ev["traces"][sel].astype(np.float64))))
    assert med[1] - med[0] > 10  # ns: smaller DX → broader


def test_signal_grows_with_energy(sim):
    rng = np.random.default_rng(5)
    s = []
    for lge in (18.6, 19.2, 19.8):
        ev = sim.simulate(80, rng, primary="He", lg_energy=lge, zenith=math.radians(30), return_truth=True)
        sel = ev["mask"] & (np.abs(ev["aux_r"] - 1000) < 200)
        s.append(np.median(ev["signals"][sel]))
    assert s[0] < s[1] < s[2]
    assert 2.5 < s[1] / s[0] < 5.5  # ~E^0.95 over 0.6 decades → ×3.7


def test_layout_trigger_and_hottest_station(sim):
    ev = sim.simulate(100, np.random.default_rng(6))
    n = sim.cfg.grid_size
    assert ev["traces"].shape == (100, n, n, sim.cfg.n_bins)
    c = n // 2
    assert ev["mask"][:, c, c].all()
    assert (ev["signals"][:, c, c][:, None, None] >= ev["signals"]).all()
    assert (ev["signals"][ev["mask"]] >= sim.cfg.trigger_threshold).all()
    assert (ev["traces"][~ev["mask"]] == 0).all() and (ev["times"][:, c, c] == 0).all()
    assert (ev["mask"].sum(axis=(1, 2)) >= 3).all()
    np.testing.assert_allclose(ev["positions"][:, c, c, :2], 0.0, atol=1e-3)
    d = np.hypot(*(ev["positions"][:, c + 1, c, :2] - ev["positions"][:, c, c, :2]).T)
    np.testing.assert_allclose(d, 1500.0, rtol=1e-5)
    # zenith distribution dN ∝ sinθ cosθ: cos²θ uniform in [cos²60°, 1] → mean 0.625
    z = sim.simulate(400, np.random.default_rng(7))["zenith"]
    assert abs(np.mean(np.cos(z) ** 2) - 0.625) < 0.04 and z.max() <= math.radians(60) + 1e-9


def test_dead_stations_are_masked():
    sim = AugerSimulator(SimConfig(dead_fraction=0.5))
    ev = sim.simulate(50, np.random.default_rng(8), lg_energy=20.0, zenith=0.3)
    sim0 = AugerSimulator(SimConfig(dead_fraction=0.0))
    ev0 = sim0.simulate(50, np.random.default_rng(8), lg_energy=20.0, zenith=0.3)
    assert ev["mask"].sum() < 0.7 * ev0["mask"].sum()


def test_reproducible_and_configurable_trace_length():
    a = AugerSimulator().simulate(20, np.random.default_rng(9))
    b = AugerSimulator().simulate(20, np.random.default_rng(9))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    long = AugerSimulator(SimConfig(n_bins=360, grid_size=13)).simulate(5, np.random.default_rng(9))
    assert long["traces"].shape == (5, 13, 13, 360)


# ------------------------------------------------------------------------------------------ files
def _events(n=40, seed=10):
    return AugerSimulator().simulate(n, np.random.default_rng(seed))


def test_hdf5_and_root_round_trip(tmp_path):
    ev = _events()
    write_hdf5(tmp_path / "a.h5", ev, {"grid_size": 9}, chunk=16, trace_dtype="float32")
    write_root(tmp_path / "a.root", ev)
    for name in ("a.h5", "a.root"):
        f = AugerEventFile(tmp_path / name, grid_size=9, n_bins=120)
        assert f.n_events == 40
        got = f.read(5, 25)
        for k in ("traces", "times", "signals", "positions", "mask", "xmax", "primary", "core"):
            np.testing.assert_allclose(got[k], ev[k][5:25], rtol=1e-6, err_msg=f"{name}:{k}")


def test_generate_and_datamodule_batches(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"gen": {"out_dir": str(tmp_path), "n_train": 70, "n_val": 30, "n_test": 0, "chunk": 32,
                                    "events_per_file": 50, "seed": 1, "progress": False}})
    res = run_generate(cfg)
    assert res["files"]["train"] == ["train_000.h5", "train_001.h5"]
    again = run_generate(cfg)  # manifest matches: nothing regenerated
    assert again["files"] == res["files"]
    dm = AugerDataModule({"train": [str(tmp_path / "train_*.h5")], "val": [str(tmp_path / "val_*.h5")]},
                         targets=["xmax", "lna"], batch_size=16, chunk_events=32, augment=True)
    assert dm.model_dims == {"grid_size": 9, "n_bins": 120, "num_targets": 2, "num_classes": 0}
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == len(dm.datasets["train"]) == 70 // 16
    b = train[0]
    assert b["traces"].shape == (16, 9, 9, 120) and b["mask"].dtype.__repr__() == "torch.bool"
    assert b["y"].shape == (16, 2)
    np.testing.assert_allclose(b["y"][:, 0].numpy() * 70 + 750, b["aux_xmax"].numpy(), rtol=1e-5)
    val = list(dm.val_dataloader())
    assert sum(len(v["y"]) for v in val) == 30
    # epochs reshuffle, same epoch reproduces
    ds = dm.datasets["train"]
    e0 = [x["aux_xmax"] for x in ds.iter_worker(epoch=0)]
    e0b = [x["aux_xmax"] for x in ds.iter_worker(epoch=0)]
    e1 = [x["aux_xmax"] for x in ds.iter_worker(epoch=1)]
    assert all((a == c).all() for a, c in zip(e0, e0b)) and not all((a == c).all() for a, c in zip(e0, e1))
    # two ranks get the same number of batches and disjoint events
    ranks = [AugerDataset(sorted(map(str, tmp_path.glob("train_*.h5"))), 16, train=True, grid_size=9, n_bins=120,
                          targets=["xmax"], target_norm={"xmax": (750, 70)}, chunk_events=32, rank=r, world_size=2)
             for r in range(2)]
    got = [np.concatenate([x["aux_xmax"].numpy() for x in d.iter_worker(epoch=0)]) for d in ranks]
    assert len(got[0]) == len(got[1]) == 2 * 16


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (3, 2), (4, 3)])
def test_eval_splits_give_every_rank_the_same_batches_and_cover_every_event(tmp_path_factory, world, workers):
    """Validation/test under DDP: equal batch counts per rank (or collectives hang), every event read, at most
    world − 1 repeated (wrap-around padding), file order kept."""
    from omegaconf import OmegaConf

    out = tmp_path_factory.mktemp("eval")
    run_generate(OmegaConf.create({"gen": {"out_dir": str(out), "n_train": 0, "n_val": 53, "n_test": 0, "chunk": 16,
                                           "events_per_file": 20, "seed": 3, "progress": False}}))
    files = sorted(map(str, out.glob("val_*.h5")))
    truth = np.concatenate([h5py.File(f)["xmax"][:] for f in files])
    per_rank = []
    for r in range(world):
        ds = AugerDataset(files, 8, train=False, grid_size=9, n_bins=120, targets=["xmax"],
                          target_norm={"xmax": (750, 70)}, chunk_events=16, rank=r, world_size=world)
        batches = [b for w in range(workers) for b in ds.iter_worker(w, workers)]
        assert len(batches) == len(ds)
        per_rank.append(np.concatenate([b["aux_xmax"].numpy() for b in batches]))
    assert len({len(x) for x in per_rank}) == 1
    seen = np.concatenate(per_rank)
    span = -(-53 // world)
    np.testing.assert_allclose(seen, truth[np.arange(world * span) % 53], rtol=1e-6)


def test_augmentation_keeps_hex_geometry():
    ev = _events(20)
    aug = augment_events(ev, np.random.default_rng(0))
    c = 4
    for i in range(20):
        # neighbours of the centre stay at 1500 m; station signal follows its position
        d = np.hypot(*(aug["positions"][i, :, :, :2] - aug["positions"][i, c, c, :2]).reshape(-1, 2).T)
        d0 = np.hypot(*(ev["positions"][i, :, :, :2] - ev["positions"][i, c, c, :2]).reshape(-1, 2).T)
        np.testing.assert_allclose(np.sort(d), np.sort(d0), atol=1e-2)
        key = lambda e: sorted(zip(np.round(e["positions"][i, ..., 0].ravel(), 1).tolist(),  # noqa: E731
                                   np.round(e["positions"][i, ..., 1].ravel(), 1).tolist(),
                                   e["signals"][i].ravel().tolist()))
        assert {(round(s, 3)) for *_, s in key(aug)} == {(round(s, 3)) for *_, s in key(ev)}
        axial_x = aug["positions"][i, c + 1, c, 0] - aug["positions"][i, c, c, 0]
        assert abs(abs(axial_x) - 1500) < 1e-2 or abs(abs(axial_x) - 750) < 1e-2


def _write_bad(tmp_path, name, mutate):
    ev = _events(8, seed=11)
    mutate(ev)
    return write_hdf5(tmp_path / name, ev, {}, chunk=8, trace_dtype="float32")


def test_bad_inputs_give_one_line_errors(tmp_path):
    p = _write_bad(tmp_path, "nan.h5", lambda e: e["traces"].__setitem__((3, 4, 4, 7), np.nan))
    with pytest.raises(DataError, match=r"nan\.h5: field 'traces': non-finite values in event 3"):
        AugerEventFile(p, 9, 120).read(0, 8)
    p = _write_bad(tmp_path, "empty.h5", lambda e: e["mask"].__setitem__(2, False))
    with pytest.raises(DataError, match=r"field 'mask': event 2 has every station masked"):
        AugerEventFile(p, 9, 120).read(0, 8)
    p = _write_bad(tmp_path, "ok.h5", lambda e: None)
    with pytest.raises(DataError, match=r"ok\.h5: field 'traces':.*grid_size=13"):
        AugerEventFile(p, 13, 120)
    with pytest.raises(DataError, match=r"traces have 120 bins, the config expects n_bins=240"):
        AugerEventFile(p, 9, 240)
    import h5py

    with h5py.File(p, "a") as f:
        del f["xmax"]
    with pytest.raises(DataError, match=r"field 'xmax': missing"):
        AugerEventFile(p, 9, 120)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match=r"junk\.h5: cannot open"):
        AugerEventFile(junk, 9, 120)
    for err in (DataError,):
        assert "\n" not in str(err(junk, "x\ny", "f"))


def test_generated_directory_is_complete_or_refused(tmp_path):
    """The manifest ends complete with every file's events and size (old keys kept); a missing file is refused."""
    import json

    from omegaconf import OmegaConf

    from physics_tf.data.errors import DataError

    cfg = OmegaConf.create({"gen": {"out_dir": str(tmp_path), "n_train": 20, "n_val": 0, "n_test": 0, "chunk": 10,
                                    "events_per_file": 12, "seed": 2, "progress": False}})
    res = run_generate(cfg)
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["complete"] is True and man["files"]["train"] == ["train_000.h5", "train_001.h5"] and "config" in man
    assert {k: v["entries"] for k, v in man["data_files"].items()} == {"train_000.h5": 12, "train_001.h5": 8}
    assert man["data_files"]["train_001.h5"]["bytes"] == (tmp_path / "train_001.h5").stat().st_size
    assert res == man
    (tmp_path / "train_001.h5").unlink()
    dm = AugerDataModule({"train": [str(tmp_path / "train_*.h5")]}, targets=["xmax"], batch_size=4, chunk_events=8)
    with pytest.raises(DataError, match="re-run the generator"):
        dm.setup("fit")
