"""Physics of the light-curve simulator: time dilation, dimming, shapes, periodicity, achromaticity, noise."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from physics_tf.lightcurves import simulate as sim
from physics_tf.lightcurves.hdf5 import read_lightcurves_h5
from physics_tf.lightcurves.io import read_plasticc_csv

DAYS = np.linspace(sim.MJD_START - 100, sim.MJD_START + 400, 20001)


def _params(code, seed=0, **over):
    p = sim.draw_params(code, np.random.default_rng(seed), (sim.MJD_START, sim.MJD_START + 200))
    p["t0"] = sim.MJD_START
    p.update(over)
    return p


def _curve(p, band=2, mwebv=0.0, t=DAYS):
    return sim.model_flux(p, t, np.full(len(t), band), mwebv, np.random.default_rng(0))[0]


def _fwhm_and_sides(t, f):
    """(full width at half maximum, half-max → peak time, peak → half-max time)."""
    k = int(np.argmax(f))
    above = np.flatnonzero(f >= f[k] / 2)
    return t[above[-1]] - t[above[0]], t[k] - t[above[0]], t[above[-1]] - t[k]


def test_twelve_plasticc_classes():
    assert {90, 42, 62, 95, 15, 64, 88, 92, 16, 65, 53, 6} <= set(sim.CLASSES)
    extragalactic = {c for c, s in sim.CLASSES.items() if s.extragalactic}
    assert extragalactic == {90, 42, 62, 95, 15, 64, 88}


def test_distance_modulus_flat_lcdm():
    # low z: Hubble law D_L = cz/H0 → μ = 5 log10(cz/H0 · 1e5)
    assert sim.distmod(0.001) == pytest.approx(5 * math.log10(299792.458 * 0.001 / 70 * 1e5), abs=0.01)
    assert sim.distmod(0.1) == pytest.approx(38.33, abs=0.03)  # H0 = 70, Ωm = 0.3
    assert sim.distmod(1.0) == pytest.approx(44.10, abs=0.05)


def test_sn_ia_time_dilation_and_dimming():
    p = _params(90, red_slope=0.0)
    lo, hi = {**p, "z": 0.1}, {**p, "z": 0.5}
    w_lo, _, _ = _fwhm_and_sides(DAYS, _curve(lo))
    w_hi, _, _ = _fwhm_and_sides(DAYS, _curve(hi))
    assert w_hi / w_lo == pytest.approx(1.5 / 1.1, rel=0.01)  # every time scale stretched by (1 + z)
    # peak flux: distance dimming 10^(−0.4 Δμ) times the change of the rest-frame colour
    c_lo = sim._colour(sim.CLASSES[90], 0.1, p["colour_jitter"])[2]
    c_hi = sim._colour(sim.CLASSES[90], 0.5, p["colour_jitter"])[2]
    expected = 10 ** (-0.4 * (sim.distmod(0.5) - sim.distmod(0.1) + c_hi - c_lo))
    assert _curve(hi).max() / _curve(lo).max() == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("code", [90, 62, 95, 64, 15])
def test_transients_rise_faster_than_they_decline(code):
    for seed in range(5):
        _, rise, fall = _fwhm_and_sides(DAYS, _curve(_params(code, seed, z=0.05 if code != 95 else 0.5)))
        assert rise < fall


def test_sn_ii_has_a_plateau():
    p = _params(42, z=0.0, nu=0.1, gamma=80.0, tau_rise=3.0, tau_fall=15.0)
    f = _curve(p)
    at = lambda d: f[np.argmin(np.abs(DAYS - (p["t0"] + d)))]  # noqa: E731
    assert at(40) / at(20) > 0.85 and at(75) / at(20) > 0.8  # slow decline (ν = 0.1 over γ = 80 d)
    assert at(140) / at(75) < 0.05  # then exponential drop


@pytest.mark.parametrize("code", [92, 16, 53])
def test_periodic_classes_repeat_at_their_period(code):
    p = _params(code, 3)
    t = np.sort(np.random.default_rng(1).uniform(sim.MJD_START, sim.MJD_START + 50, 200))
    for band in range(6):
        f = _curve(p, band, t=t)
        assert np.allclose(_curve(p, band, t=t + p["period"]), f, rtol=1e-6, atol=1e-9 * np.abs(f).max())
        assert np.allclose(_curve(p, band, t=t + 7 * p["period"]), f, rtol=1e-6, atol=1e-9 * np.abs(f).max())
        assert np.ptp(f) > 0  # and do vary


def test_rr_lyrae_rises_fast_and_eb_has_two_unequal_dips():
    p = _params(92, 0, rise=0.15)
    phase = np.linspace(0, 1, 1000, endpoint=False)
    t = p["t0"] + (phase - p["phase0"]) * p["period"]
    f = _curve(p, 1, t=t)
    k_max, k_min = int(np.argmax(f)), int(np.argmin(f))
    rising = ((k_max - k_min) % 1000) / 1000  # phase from minimum to maximum
    assert rising == pytest.approx(0.15, abs=0.01)
    q = _params(16, 0, depth1=0.5, depth2=0.2, ellip=0.0)
    t = q["t0"] + (phase - q["phase0"]) * q["period"]
    g = _curve(q, 2, t=t)
    assert g[0] < g[500] < g[250]  # primary eclipse at phase 0 deeper than the secondary at 0.5


def test_microlensing_is_paczynski_and_achromatic():
    p = _params(6, 0, u0=0.2, t_e=30.0)
    t = p["t0"] + np.linspace(-90, 90, 181)
    base = 10 ** (-0.4 * (p["m0"] + sim._colour(sim.CLASSES[6], 0.0, p["colour_jitter"]) - sim.ZP))
    ratios = np.stack([_curve(p, b, t=t) / base[b] + 1.0 for b in range(6)])  # F/F_base per band
    assert np.allclose(ratios, ratios[0], rtol=1e-10)  # achromatic
    a_peak = (0.2**2 + 2) / (0.2 * math.sqrt(0.2**2 + 4))
    assert ratios[0, 90] == pytest.approx(a_peak, rel=1e-10)
    assert np.allclose(ratios[0], ratios[0][::-1])  # symmetric about t0


def test_extinction_dims_blue_bands_most():
    p = _params(92, 0)
    t = np.array([p["t0"] + 0.1])
    for b in range(6):
        total0 = sim.model_flux(p, t, np.array([b]), 0.0)[1]
        total1 = sim.model_flux(p, t, np.array([b]), 0.2)[1]
        assert total1 / total0 == pytest.approx(10 ** (-0.4 * sim.R_EXT[b] * 0.2), rel=1e-10)
    assert np.all(np.diff(sim.R_EXT) < 0)


def test_damped_random_walk_structure_function():
    tau, sf = 50.0, 0.2
    t = np.arange(0, 200_000, 5.0)
    x = sim.drw(t, tau, sf, np.random.default_rng(0))
    for lag in (1, 4, 20):  # Δt = 5, 20, 100 d
        d = x[lag:] - x[:-lag]
        assert d.var() == pytest.approx(sf**2 * (1 - math.exp(-5.0 * lag / tau)), rel=0.08)
    assert x.var() == pytest.approx(sf**2 / 2, rel=0.15)


def test_cadence_seasons_and_deep_drilling_density():
    rng = np.random.default_rng(0)
    mjd, band, m5 = sim.cadence(rng, 100.0, ddf=False)
    gaps = np.diff(mjd)
    assert np.all(gaps >= 0) and set(band.tolist()) == set(range(6))
    assert (gaps > 150).sum() == 2  # three seasons
    nights = gaps[(gaps > 0.1) & (gaps < 150)]  # same-night second bands come 0.02-0.05 d later
    assert 3.0 < nights.mean() < 4.0  # 0.5 d + Exp(3 d): ~3-day revisits in the wide survey
    ddf, _, m5_ddf = sim.cadence(np.random.default_rng(0), 100.0, ddf=True)
    assert len(ddf) > 2 * len(mjd) and m5_ddf.mean() > m5.mean() + 0.5


def test_simulated_objects_noise_detection_and_metadata():
    lc = sim.simulate(120, seed=5)
    flux, err, det = lc.obs["flux"], lc.obs["flux_err"], lc.obs["detected"]
    assert np.all(err > 0)
    assert np.abs(flux).max() < 1e8  # brightest: Mira at m ≈ 11 → 1e6.6
    np.testing.assert_array_equal(det.astype(bool), np.abs(flux / err) > 5)
    assert np.all(np.add.reduceat(det, lc.offsets[:-1]) >= 2)  # min_detections
    gal = np.isin(lc.meta["target"], [c for c, s in sim.CLASSES.items() if not s.extragalactic])
    assert np.all(np.isnan(lc.meta["distmod"][gal])) and np.all(lc.meta["hostgal_photoz"][gal] == 0)
    np.testing.assert_allclose(lc.meta["distmod"][~gal], sim.distmod(lc.meta["hostgal_photoz"][~gal]))
    assert np.all(lc.meta["hostgal_specz"][~gal] > 0)
    for k in range(len(lc)):
        assert np.all(np.diff(lc.object(k)["mjd"]) >= 0)


def test_reproducible_by_seed_and_class_balance():
    a, b, c = sim.simulate(24, seed=1), sim.simulate(24, seed=1), sim.simulate(24, seed=2)
    np.testing.assert_array_equal(a.obs["flux"], b.obs["flux"])
    assert a.obs["flux"].shape != c.obs["flux"].shape or not np.array_equal(a.obs["flux"], c.obs["flux"])
    assert np.bincount(a.meta["target"], minlength=100)[list(sim.CLASSES)].tolist() == [2] * 12
    assert sim.class_counts(10, [90, 42], {90: 3.0}) == {90: 8, 42: 2}
    d = sim.simulate(30, seed=1, classes=[90, 6], fractions={90: 2.0})
    assert sorted(np.bincount(d.meta["target"])[[90, 6]].tolist()) == [10, 20]


def test_write_dataset_files_and_round_trip(tmp_path):
    manifest = sim.write_dataset(tmp_path, {"train": 12, "test": 6}, seed=3, progress=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["manifest.json", "test.h5", "test_metadata.csv", "test_set.csv", "train.h5",
                     "train_metadata.csv", "train_set.csv"]  # no temporary files left
    assert json.loads((tmp_path / "manifest.json").read_text())["splits"]["train"]["objects"] == 12
    assert manifest["splits"]["test"]["objects"] == 6
    h5 = read_lightcurves_h5(tmp_path / "train.h5")
    csv = read_plasticc_csv(tmp_path / "train_set.csv", tmp_path / "train_metadata.csv")
    np.testing.assert_array_equal(h5.object_id, csv.object_id)
    np.testing.assert_allclose(h5.obs["flux"], csv.obs["flux"], atol=5e-7)
    np.testing.assert_array_equal(h5.meta["target"], csv.meta["target"])


def test_run_generate_skips_a_matching_request_and_redoes_a_changed_or_incomplete_one(tmp_path):
    from omegaconf import OmegaConf

    gen = {"out_dir": str(tmp_path), "n_train": 8, "n_val": 0, "n_test": 4, "seed": 2, "classes": [90, 6],
           "fractions": {90: 2.0}, "csv": False, "progress": False}  # int keys: stored as strings in JSON
    first = sim.run_generate(OmegaConf.create({"gen": gen}))
    assert first["request"]["n"] == {"train": 8, "val": 0, "test": 4}
    inode = (tmp_path / "train.h5").stat().st_ino  # an atomic rewrite makes a new file
    again = sim.run_generate(OmegaConf.create({"gen": gen}))  # the manifest matches: nothing rewritten
    assert (tmp_path / "train.h5").stat().st_ino == inode and again["splits"] == first["splits"]
    (tmp_path / "test.h5").unlink()  # a file is missing: regenerated although the request matches
    sim.run_generate(OmegaConf.create({"gen": gen}))
    assert (tmp_path / "test.h5").is_file() and (tmp_path / "train.h5").stat().st_ino != inode
    inode = (tmp_path / "train.h5").stat().st_ino
    sim.run_generate(OmegaConf.create({"gen": {**gen, "force": True}}))
    assert (tmp_path / "train.h5").stat().st_ino != inode
    changed = sim.run_generate(OmegaConf.create({"gen": {**gen, "seed": 3}}))
    assert json.loads((tmp_path / "manifest.json").read_text())["request"]["seed"] == changed["seed"] == 3


def test_write_dataset_manifest_lists_every_file(tmp_path):
    from physics_tf.data.streaming import expand_files

    man = sim.write_dataset(tmp_path, {"train": 7}, seed=4, progress=False)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert man == on_disk and on_disk["complete"] is True
    obs = on_disk["splits"]["train"]["observations"]
    assert {k: v["entries"] for k, v in on_disk["data_files"].items()} == {
        "train.h5": 7, "train_set.csv": obs, "train_metadata.csv": 7}
    assert expand_files(str(tmp_path / "train.h5")) == [str(tmp_path / "train.h5")]
