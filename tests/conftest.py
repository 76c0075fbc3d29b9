"""Shared fixtures: tiny synthetic JetClass ROOT / top-tagging HDF5 files, and ``data_dir``, a tiny data directory of
every wing for the end-to-end tests (one per test module)."""

from __future__ import annotations

import os

# One intra-op thread in the test process and in every process it starts (they inherit the environment), unless the
# caller sets its own: the models here are tiny, and on a shared machine torch's default of one OpenMP thread per
# core spins against the other jobs (a light-curve GRU step took 0.29 s with 2 threads beside one busy core, 0.07 s
# with 1). Set before numpy / torch are imported, which read it once.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

JETCLASS_LABELS = ("label_QCD", "label_Hbb", "label_Hcc", "label_Hgg", "label_H4q",
                   "label_Hqql", "label_Zqq", "label_Wqq", "label_Tbqq", "label_Tbl")
PID_FLAGS = ("part_isChargedHadron", "part_isNeutralHadron", "part_isPhoton", "part_isElectron", "part_isMuon")


def synth_jetclass(n_jets: int, seed: int = 0, *, classes=(0, 8), max_particles: int = 12, id_offset: int = 0,
                   min_particles: int = 1):
    """Random JetClass-layout branches (particles, jets, labels) with JetClass label dtypes.

    The first particle's ``part_px`` of jet i is ``1000 + id_offset + i`` so tests can identify jets.
    """
    import awkward as ak

    rng = np.random.default_rng(seed)
    counts = rng.integers(min_particles, max_particles + 1, size=n_jets)
    tot = int(counts.sum())
    pt = rng.uniform(1.0, 50.0, tot)
    eta = rng.normal(0.0, 0.3, tot)
    phi = rng.uniform(-np.pi, np.pi, tot)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    px[starts[counts > 0]] = 1000.0 + id_offset + np.arange(n_jets)[counts > 0]
    energy = np.sqrt(px**2 + py**2 + pz**2) + 0.1
    charge = rng.integers(-1, 2, tot)
    pid = rng.integers(0, 5, tot)

    def jag(a):
        return ak.unflatten(a, counts)

    particles = {"part_px": jag(px), "part_py": jag(py), "part_pz": jag(pz), "part_energy": jag(energy),
                 "part_deta": jag(eta), "part_dphi": jag(rng.normal(0, 0.3, tot)),
                 "part_charge": jag(charge.astype(float)),
                 "part_d0val": jag(rng.normal(0, 2, tot)), "part_d0err": jag(rng.uniform(0, 2, tot)),
                 "part_dzval": jag(rng.normal(0, 2, tot)), "part_dzerr": jag(rng.uniform(0, 2, tot))}
    for k, name in enumerate(PID_FLAGS):
        particles[name] = jag((pid == k).astype(np.int32))
    jets = {"jet_pt": rng.uniform(500, 1000, n_jets), "jet_eta": rng.normal(0, 1, n_jets),
            "jet_phi": rng.uniform(-np.pi, np.pi, n_jets), "jet_energy": rng.uniform(600, 1500, n_jets),
            "jet_nparticles": counts.astype(float)}
    cls = rng.choice(np.asarray(classes), size=n_jets)
    dtypes = [np.float32, bool, bool, bool, bool, bool, np.int32, np.int32, np.int32, np.int32]
    labels = {name: (cls == k).astype(dt) for k, (name, dt) in enumerate(zip(JETCLASS_LABELS, dtypes))}
    return particles, jets, labels


@pytest.fixture
def jetclass_file(tmp_path):
    """Factory: write a synthetic JetClass file and return its path."""
    from physics_tf.jets.writers import write_jetclass_root

    def make(name="jets.root", n_jets=50, seed=0, **kw):
        p, j, lab = synth_jetclass(n_jets, seed, **kw)
        return write_jetclass_root(tmp_path / name, p, j, lab)

    return make


@pytest.fixture
def toptagging_arrays():
    """(E, PX, PY, PZ, is_signal) zero-padded (N, 10) constituents, pT-ordered."""
    rng = np.random.default_rng(3)
    n, k = 12, 10
    counts = rng.integers(1, k + 1, n)
    pt = np.sort(rng.uniform(1, 100, (n, k)), axis=1)[:, ::-1]
    eta, phi = rng.normal(0, 0.4, (n, k)), rng.uniform(-np.pi, np.pi, (n, k))
    real = np.arange(k)[None, :] < counts[:, None]
    PX, PY, PZ = pt * np.cos(phi) * real, pt * np.sin(phi) * real, pt * np.sinh(eta) * real
    E = np.sqrt(PX**2 + PY**2 + PZ**2) * real
    return E, PX, PY, PZ, rng.integers(0, 2, n)


class StopAfterEpoch:
    """Lightning callback for resume tests: stop the run at the end of epoch ``epoch`` (as a pre-emption would)."""

    def __new__(cls, epoch: int = 0):
        import lightning as L

        class _Stop(L.Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                if trainer.current_epoch >= epoch:
                    trainer.should_stop = True

        return _Stop()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data directory laid out like the generators': generated/jets_demo/{train,val,test}_000.root (120 jets
    each), generated/lightcurves_sim (24 / 12 / 24 objects), generated/auger_sim (80 / 16 / 16 events)."""
    return write_generated_layout(tmp_path_factory.mktemp("data"), jets=120, max_particles=20,
                                  lightcurves=(24, 12, 24), auger=(80, 16, 16))


def write_generated_jets(root, jets: int, max_particles: int):
    """generated/jets_demo/{train,val,test}_000.root under ``root``: ``jets`` synthetic QCD/top jets each (seeds
    0, 1, 2), as the jet generator lays them out; returns ``root``."""
    from physics_tf.jets.writers import write_jetclass_root

    out = root / "generated" / "jets_demo"
    out.mkdir(parents=True)
    for i, split in enumerate(["train", "val", "test"]):
        p, j, lab = synth_jetclass(jets, seed=i, classes=(0, 8), max_particles=max_particles)
        write_jetclass_root(out / f"{split}_000.root", p, j, lab)
    return root


def write_generated_layout(root, jets: int, max_particles: int, lightcurves: tuple[int, int, int],
                           auger: tuple[int, int, int]):
    """Tiny data laid out under ``root`` as the generators lay it out: generated/jets_demo/{train,val,test}_000.root
    (``jets`` synthetic QCD/top jets each), generated/lightcurves_sim and generated/auger_sim (train/val/test
    sizes); returns ``root``."""
    from omegaconf import OmegaConf

    from physics_tf.auger.simulate import run_generate
    from physics_tf.lightcurves.simulate import write_dataset

    write_generated_jets(root, jets, max_particles)
    write_dataset(root / "generated" / "lightcurves_sim", dict(zip(("train", "val", "test"), lightcurves)), seed=1,
                  csv=False)
    n_train, n_val, n_test = auger
    run_generate(OmegaConf.create({"out_dir": str(root / "generated" / "auger_sim"), "n_train": n_train,
                                   "n_val": n_val, "n_test": n_test, "chunk": 16, "seed": 0, "progress": False}))
    return root
