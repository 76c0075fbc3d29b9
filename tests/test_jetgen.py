"""Pythia 8 + FastJet jet generator (physics_tf.jets.generate): helpers, layout, physics, reproducibility.

The substructure helpers are tested on hand-built jets; the generation tests (marked ``gen``) run small
Pythia samples (tens of jets per class, one worker) and check the JetClass layout, the selection, the
kinematic consistency of the stored branches and the mass peaks of the classes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

fastjet = pytest.importorskip("fastjet")

from physics_tf.jets.generate import orchestrate  # noqa: E402
from physics_tf.jets.generate.events import generate_jets  # noqa: E402
from physics_tf.jets.generate.orchestrate import generate_dataset  # noqa: E402
from physics_tf.jets.generate.substructure import JetCuts, jet_features, nsubjettiness, softdrop_mass  # noqa: E402
from physics_tf.jets.schema import (  # noqa: E402
    AUX_BRANCHES,
    JET_BRANCHES,
    LABEL_DTYPES,
    PARTICLE_BRANCHES,
)
from physics_tf.jets.schema import JETCLASS_LABELS as LABELS  # noqa: E402


def p4_from(pt, eta, phi, m=0.0):
    """(N, 4) (px, py, pz, E) from pT, η, φ, m arrays."""
    pt, eta, phi = (np.atleast_1d(np.asarray(a, dtype=float)) for a in (pt, eta, phi))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + np.asarray(m, dtype=float) ** 2)
    return np.stack([px, py, pz, e], axis=1)


def inv_mass(p4):
    s = np.asarray(p4).sum(axis=0)
    return math.sqrt(max(s[3] ** 2 - s[0] ** 2 - s[1] ** 2 - s[2] ** 2, 0.0))


# ----------------------------------------------------------------------------------------------------------------
# Substructure helpers on hand-built inputs
# ----------------------------------------------------------------------------------------------------------------

def test_tau1_of_single_particle_is_zero():
    taus = nsubjettiness(p4_from([300.0], [0.5], [1.0]))
    assert taus.shape == (4,)
    np.testing.assert_allclose(taus, 0.0, atol=1e-12)


def test_tau_ratios_two_prong():
    # two equal, well separated prongs: tau1 = 2 * pt * (dR/2) / (2 pt * R0) = dR / (2 R0), tau2 = 0
    p4 = p4_from([200.0, 200.0], [0.0, 0.0], [-0.2, 0.2])
    t1, t2, t3, t4 = nsubjettiness(p4)
    assert t1 == pytest.approx(0.4 / (2 * 0.8), rel=1e-3)
    assert t2 == pytest.approx(0.0, abs=1e-12)
    assert t3 == 0.0 and t4 == 0.0  # fewer particles than axes


def test_tau_three_prong_beats_two_prong():
    # three prongs, each slightly smeared: tau3/tau2 small, tau2/tau1 not small
    rng = np.random.default_rng(0)
    centres = [(0.0, -0.3), (0.25, 0.15), (-0.25, 0.15)]
    parts = [p4_from(rng.uniform(20, 40, 5), e + rng.normal(0, 0.01, 5), f + rng.normal(0, 0.01, 5))
             for e, f in centres]
    t1, t2, t3, _ = nsubjettiness(np.concatenate(parts))
    assert t3 / t2 < 0.2
    assert t2 / t1 > 0.4


def test_softdrop_removes_soft_wide_particle():
    # hard two-prong "W" (mass ~80) plus a soft wide-angle particle that raises the plain mass
    prongs = p4_from([250.0, 250.0], [0.0, 0.0], [-0.16, 0.16])
    soft = p4_from([10.0], [0.6], [0.55])
    p4 = np.concatenate([prongs, soft])
    sd = softdrop_mass(p4, zcut=0.1, beta=0.0)
    assert sd == pytest.approx(inv_mass(prongs), rel=1e-6)
    assert inv_mass(p4) > sd + 10.0


def test_softdrop_grooms_asymmetric_split_to_single_prong():
    # z = 20 / 420 < 0.1: the soft prong is groomed away, leaving a single massless particle
    p4 = p4_from([400.0, 20.0], [0.0, 0.0], [0.0, 0.3])
    assert softdrop_mass(p4, zcut=0.1, beta=0.0) == pytest.approx(0.0, abs=1e-6)
    # with a smaller z_cut the split is kept
    assert softdrop_mass(p4, zcut=0.01, beta=0.0) == pytest.approx(inv_mass(p4), rel=1e-6)


def test_jet_features_on_hand_built_jet():
    p4 = p4_from([10.0, 300.0, 50.0, 5.0], [-1.0, -1.1, -0.9, -1.3], [3.1, -3.1, 3.0, -3.0], m=0.0)
    pid = np.array([22, 211, -11, 130])
    charge = np.array([0.0, 1.0, 1.0, 0.0])
    part, jet = jet_features(p4, pid, charge)
    # pT descending
    pt = np.hypot(part["part_px"], part["part_py"])
    assert np.all(np.diff(pt) <= 0)
    np.testing.assert_array_equal(part["part_isChargedHadron"], [1, 0, 0, 0])  # 211
    np.testing.assert_array_equal(part["part_isElectron"], [0, 1, 0, 0])  # -11
    np.testing.assert_array_equal(part["part_isPhoton"], [0, 0, 1, 0])
    np.testing.assert_array_equal(part["part_isNeutralHadron"], [0, 0, 0, 1])  # K_L
    assert part["part_isChargedHadron"].dtype == np.int32 and part["part_px"].dtype == np.float32
    # deta sign convention for a negative-eta jet, dphi wrapped across ±π
    assert jet["jet_eta"] < 0
    eta = np.arcsinh(part["part_pz"] / pt)
    np.testing.assert_allclose(part["part_deta"], -(eta - jet["jet_eta"]), atol=1e-5)
    assert np.all(np.abs(part["part_dphi"]) < 0.3)
    assert jet["jet_nparticles"] == 4.0
    for name in ("part_d0val", "part_d0err", "part_dzval", "part_dzerr"):
        assert np.all(part[name] == 0)


# ----------------------------------------------------------------------------------------------------------------
# Generation (Pythia 8)
# ----------------------------------------------------------------------------------------------------------------

N_PER_CLASS = 60
SEED = 7


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    pytest.importorskip("pythia8mc")
    out = tmp_path_factory.mktemp("jetgen") / "a"
    summary = generate_dataset(out, ["QCD", "Tbqq"], n_train=N_PER_CLASS, n_val=10, n_test=0, seed=SEED,
                               n_workers=1, jets_per_file=1000, chunk_size=40, progress=False)
    return out, summary


def read_tree(path):
    import uproot

    with uproot.open(path) as f:
        tree = f["tree"]
        arrays = tree.arrays(library="ak")
        types = {name: str(tree[name].interpretation) for name in tree.keys()}
    return arrays, types


@pytest.mark.gen
def test_layout_and_dtypes(demo_dir):
    import awkward as ak

    out, summary = demo_dir
    assert sorted(p.name for p in out.glob("*.root")) == ["train_000.root", "val_000.root"]
    assert summary["n_jets"] == {"train": 2 * N_PER_CLASS, "val": 20, "test": 0}
    arrays, types = read_tree(out / "train_000.root")
    assert len(arrays) == 2 * N_PER_CLASS
    for name in (*PARTICLE_BRANCHES, *JET_BRANCHES, *AUX_BRANCHES, *LABELS):
        assert name in arrays.fields, name
    for name in PARTICLE_BRANCHES:
        want = np.int32 if name.startswith("part_is") else np.float32
        assert ak.to_numpy(ak.flatten(arrays[name])).dtype == want, name
    for name in JET_BRANCHES:
        assert ak.to_numpy(arrays[name]).dtype == np.float32, name
    for name in LABELS:
        assert ak.to_numpy(arrays[name]).dtype == LABEL_DTYPES[name], name
    # one shared counter: every part_* branch has jet_nparticles entries
    n = ak.to_numpy(arrays["jet_nparticles"]).astype(int)
    assert np.all(n > 0)
    for name in PARTICLE_BRANCHES:
        np.testing.assert_array_equal(ak.to_numpy(ak.num(arrays[name])), n)
    # one-hot, balanced, only the two generated classes
    onehot = np.stack([ak.to_numpy(arrays[l]).astype(int) for l in LABELS], axis=1)
    np.testing.assert_array_equal(onehot.sum(axis=1), 1)
    assert onehot[:, LABELS.index("label_QCD")].sum() == N_PER_CLASS
    assert onehot[:, LABELS.index("label_Tbqq")].sum() == N_PER_CLASS
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config_hash"] == summary["config_hash"]


@pytest.mark.gen
def test_cuts_matching_and_kinematic_consistency(demo_dir):
    import awkward as ak

    out, _ = demo_dir
    a, _ = read_tree(out / "train_000.root")
    pt, eta, phi, e = (ak.to_numpy(a[k]).astype(float) for k in ("jet_pt", "jet_eta", "jet_phi", "jet_energy"))
    assert np.all((pt > 500) & (pt < 1000)) and np.all(np.abs(eta) < 2)

    # constituents sum to the jet four-momentum
    sums = {k: ak.to_numpy(ak.sum(a[f"part_{k}"], axis=1)).astype(float) for k in ("px", "py", "pz", "energy")}
    np.testing.assert_allclose(np.hypot(sums["px"], sums["py"]), pt, rtol=1e-4)
    np.testing.assert_allclose(sums["energy"], e, rtol=1e-4)
    np.testing.assert_allclose(np.arcsinh(sums["pz"] / np.hypot(sums["px"], sums["py"])), eta, atol=1e-4)
    dphi_jet = (np.arctan2(sums["py"], sums["px"]) - phi + np.pi) % (2 * np.pi) - np.pi
    np.testing.assert_allclose(dphi_jet, 0.0, atol=1e-4)

    # part_deta / part_dphi agree with the particle four-vectors; pT-descending order
    ppx, ppy, ppz = (ak.to_numpy(ak.flatten(a[f"part_{k}"])).astype(float) for k in ("px", "py", "pz"))
    ppt = np.hypot(ppx, ppy)
    counts = ak.to_numpy(ak.num(a["part_px"]))
    jeta, jphi = np.repeat(eta, counts), np.repeat(phi, counts)
    deta = np.sign(jeta) * (np.arcsinh(ppz / ppt) - jeta)
    dphi = (np.arctan2(ppy, ppx) - jphi + np.pi) % (2 * np.pi) - np.pi
    np.testing.assert_allclose(ak.to_numpy(ak.flatten(a["part_deta"])), deta, atol=2e-3)
    np.testing.assert_allclose(ak.to_numpy(ak.flatten(a["part_dphi"])), dphi, atol=2e-3)
    assert np.all(np.abs(ak.to_numpy(ak.flatten(a["part_dphi"]))) <= np.pi)
    assert all(np.all(np.diff(np.hypot(x, y)) <= 1e-3) for x, y in zip(ak.to_list(a["part_px"][:20]),
                                                                       ak.to_list(a["part_py"][:20])))
    # anti-kT R = 0.8: constituents lie (almost always) within R of the axis
    assert np.mean(np.hypot(deta, dphi) < 0.8) > 0.99

    # signal jets are matched to a top within R; QCD jets carry no parent
    top = ak.to_numpy(a["label_Tbqq"]) == 1
    pe, pp = ak.to_numpy(a["aux_parent_eta"]), ak.to_numpy(a["aux_parent_phi"])
    dr = np.hypot(eta - pe, (phi - pp + np.pi) % (2 * np.pi) - np.pi)
    assert np.all(dr[top] < 0.8)
    assert np.all(np.abs(ak.to_numpy(a["aux_parent_pid"])[top]) == 6)
    assert np.all(ak.to_numpy(a["aux_parent_pt"])[~top] == 0)
    # particle ID flags are exclusive and complete; charge consistent with them
    flags = np.stack([ak.to_numpy(ak.flatten(a[n])) for n in PARTICLE_BRANCHES if n.startswith("part_is")])
    np.testing.assert_array_equal(flags.sum(axis=0), 1)
    q = ak.to_numpy(ak.flatten(a["part_charge"]))
    assert np.all(q[ak.to_numpy(ak.flatten(a["part_isPhoton"])) == 1] == 0)
    assert np.all(q[ak.to_numpy(ak.flatten(a["part_isChargedHadron"])) == 1] != 0)


@pytest.mark.gen
def test_mass_peaks_and_substructure(demo_dir):
    import awkward as ak

    out, _ = demo_dir
    a, _ = read_tree(out / "train_000.root")
    top = ak.to_numpy(a["label_Tbqq"]) == 1
    sd = ak.to_numpy(a["jet_sdmass"])
    assert 120 < np.median(sd[top]) < 210
    assert np.median(sd[~top]) < 110
    tau32 = ak.to_numpy(a["jet_tau3"]) / ak.to_numpy(a["jet_tau2"])
    assert np.median(tau32[top]) < np.median(tau32[~top])
    # with exclusive-kT (not minimised) axes tau_N is only *almost always* decreasing in N
    t1, t2 = ak.to_numpy(a["jet_tau1"]), ak.to_numpy(a["jet_tau2"])
    assert np.all((t1 > 0) & (t1 < 1)) and np.mean(t2 <= t1) > 0.9


@pytest.mark.gen
@pytest.mark.parametrize("process, lo, hi, pid", [("Wqq", 65, 95, 24), ("Zqq", 75, 105, 23)])
def test_boson_mass_peaks(process, lo, hi, pid):
    pytest.importorskip("pythia8mc")
    out = generate_jets(process, 40, seed=11)
    sd = out["jet_sdmass"]
    assert lo < np.median(sd) < hi
    assert np.all(np.abs(out["aux_parent_pid"]) == pid)
    assert np.all(out[f"label_{process}"] == 1) and np.all(out["label_QCD"] == 0)
    assert out[f"label_{process}"].dtype == np.int32 and out["label_Hbb"].dtype == np.bool_


@pytest.mark.gen
def test_reproducible_and_skips_when_up_to_date(demo_dir, tmp_path):
    import uproot

    out, summary = demo_dir
    # same seed -> identical arrays (here with a different directory and two workers: spawn pool)
    again = generate_dataset(tmp_path / "b", ["QCD", "Tbqq"], n_train=N_PER_CLASS, n_val=10, n_test=0,
                             seed=SEED, n_workers=2, jets_per_file=1000, chunk_size=40, progress=False)
    assert again["config_hash"] == summary["config_hash"]
    for name in ("train_000.root", "val_000.root"):
        with uproot.open(out / name) as f1, uproot.open(tmp_path / "b" / name) as f2:
            t1, t2 = f1["tree"], f2["tree"]
            assert t1.keys() == t2.keys()
            for k in t1.keys():
                a1, a2 = t1[k].array(library="np"), t2[k].array(library="np")
                if a1.dtype == object:
                    assert all(np.array_equal(x, y) for x, y in zip(a1, a2)), k
                else:
                    assert a1.tobytes() == a2.tobytes(), k

    # unchanged config -> skipped (no rewrite); force -> regenerated
    mtime = (out / "train_000.root").stat().st_mtime_ns
    skipped = generate_dataset(out, ["QCD", "Tbqq"], n_train=N_PER_CLASS, n_val=10, n_test=0, seed=SEED,
                               n_workers=1, jets_per_file=1000, chunk_size=40, progress=False)
    assert skipped["skipped"] is True
    assert (out / "train_000.root").stat().st_mtime_ns == mtime

    # a different seed changes the jets
    other = generate_dataset(tmp_path / "c", ["QCD", "Tbqq"], n_train=20, n_val=0, n_test=0, seed=SEED + 1,
                             n_workers=1, jets_per_file=1000, chunk_size=40, progress=False)
    assert other["config_hash"] != summary["config_hash"]
    with uproot.open(Path(other["files"][0])) as f, uproot.open(out / "train_000.root") as g:
        assert not np.array_equal(f["tree"]["jet_pt"].array(library="np")[:20],
                                  g["tree"]["jet_pt"].array(library="np")[:20])


def test_bad_configuration_raises(tmp_path):
    with pytest.raises(ValueError, match="processes"):
        generate_dataset(tmp_path, ["QCD", "Hbb_nonexistent"], n_train=1, n_val=0, n_test=0, progress=False)
    with pytest.raises(ValueError, match="n_val"):
        generate_dataset(tmp_path, ["QCD"], n_train=1, n_val=-1, n_test=0, progress=False)
    with pytest.raises(ValueError, match="seed"):
        generate_jets("QCD", 1, seed=0)


def test_plan_is_balanced_and_seeds_are_stable():
    plan = orchestrate._plan(["QCD", "Tbqq"], {"train": 25, "val": 5, "test": 0}, seed=1, jets_per_file=20,
                        chunk_size=4, cuts=JetCuts(), extra_settings=())
    # 25 jets/class * 2 classes / 20 per file -> 3 train files, 1 val file, no test file
    assert sorted(plan) == [("train", 0), ("train", 1), ("train", 2), ("val", 0)]
    for chunks in plan.values():
        per_class = {p: sum(c.n for c in chunks if c.process == p) for p in ("QCD", "Tbqq")}
        assert per_class["QCD"] == per_class["Tbqq"]
        assert all(c.n <= 4 for c in chunks)
    assert sum(c.n for k, chs in plan.items() if k[0] == "train" for c in chs) == 50
    seeds = [c.seed for chs in plan.values() for c in chs]
    assert len(set(seeds)) == len(seeds) and all(1 <= s <= 900_000_000 for s in seeds)
    assert orchestrate.chunk_seed(1, "QCD", "train", 0, 0) == orchestrate.chunk_seed(1, "QCD", "train", 0, 0)


def test_generate_config_composes():
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose(config_name="generate", overrides=["gen=jets_large", "paths.data_dir=/tmp/x"])
        default = compose(config_name="generate")
        by_data = compose(config_name="generate", overrides=["data=auger_sim"])  # the data config's name picks gen
    assert cfg.gen.processes == ["QCD", "Tbqq", "Wqq", "Zqq"]
    assert cfg.gen.out_dir == "/tmp/x/generated/jets_large"
    assert JetCuts(**cfg.gen.cuts) == JetCuts()
    assert cfg.gen._target_ == default.gen._target_ == "physics_tf.jets.generate.orchestrate.run_generate"
    assert default.gen.processes == ["QCD", "Tbqq"]
    assert by_data.gen._target_ == "physics_tf.auger.simulate.run_generate"


def test_manifest_complete_with_jets_per_file(demo_dir):
    from physics_tf.data.streaming import expand_files

    out, summary = demo_dir
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] is True and man["summary"]["config_hash"] == man["config_hash"]
    assert sorted(man["data_files"]) == ["train_000.root", "val_000.root"]
    assert sum(v["entries"] for v in man["data_files"].values()) == sum(summary["n_jets"].values())
    assert expand_files([str(out / "*.root")]) == [str(out / "train_000.root"), str(out / "val_000.root")]
