"""JetClass-like jet generation with Pythia 8 and FastJet.

A small, self-contained replacement for the JetClass production chain (Qu, Li, Qian 2022, arXiv 2202.03772;
Zenodo 6619768) without a detector simulation: Pythia 8 (``pythia8mc``) generates pp collisions at
√s = 14 TeV, final-state *visible* particles (neutrinos excluded) are clustered with anti-kT, R = 0.8
(FastJet), and every selected jet is stored with the full JetClass branch set through
:func:`physics_tf.jets.writers.write_jetclass_root`.

Processes (``PROCESSES``)
-------------------------
==========  ==============================================  =====================  ============================
class       Pythia processes                                forced decays          matched parent (pdg)
==========  ==============================================  =====================  ============================
``QCD``     ``HardQCD:all``                                 —                      none: the leading jets
``Tbqq``    ``Top:gg2ttbar``, ``Top:qqbar2ttbar``            W → q q̄' (24: 1–5)     t (6); b, q, q̄' contained
``Wqq``     ``WeakDoubleBoson:ffbar2WW``                     W → q q̄' (24: 1–5)     W (24); q, q̄' contained
``Zqq``     ``WeakDoubleBoson:ffbar2gmZgmZ`` (pure Z)        Z → q q̄  (23: 1–5)     Z (23); q, q̄ contained
==========  ==============================================  =====================  ============================

``PhaseSpace:pTHatMin/Max = 450/1100`` GeV puts the hard objects where the jet window 500 < pT < 1000 GeV
is populated efficiently; multiple parton interactions are off (``PartonLevel:MPI = off``) for speed
(no underlying event — documented difference to JetClass).

Jet selection
-------------
* anti-kT R = 0.8 on all final-state visible particles (E-scheme), 500 < pT < 1000 GeV, |η| < 2.
* QCD: the ``n_leading`` (2) hardest jets of the event, each kept if it passes the cuts.
* Signal (t / W / Z): for every parent (last copy of the particle before its decay) the jet closest in
  (η, φ) is taken; it is kept if ΔR(jet, parent) < R and — as in JetClass, whose signal jets "contain all
  decay products" — every decay quark (t: b and the two quarks of the W; W/Z: the two quarks, taken as
  produced in the decay, before their showers) lies within ΔR < R of the jet axis (``require_containment``).
  ΔR is computed from pseudorapidity and azimuth throughout.

Stored branches (JetClass layout)
---------------------------------
``part_*`` (pT-descending): px, py, pz, energy; ``part_deta = sign(η_jet)(η − η_jet)``,
``part_dphi = φ − φ_jet`` wrapped to [−π, π); ``part_d0val, part_d0err, part_dzval, part_dzerr`` are all 0
— there is no tracking/detector simulation here, so no impact parameters and no errors (readers that build
``tanh(d0)`` etc. get 0; the published "full" feature set therefore carries no information beyond "kinpid");
``part_charge`` (Pythia charge); ``part_isChargedHadron`` (charged, not e/μ), ``part_isNeutralHadron``
(neutral, not γ), ``part_isPhoton`` (|pid| = 22), ``part_isElectron`` (11), ``part_isMuon`` (13).
``jet_pt, jet_eta, jet_phi, jet_energy, jet_nparticles, jet_sdmass`` (soft drop, z_cut = 0.1, β = 0,
:func:`softdrop_mass`), ``jet_tau1..jet_tau4`` (N-subjettiness, β = 1, :func:`nsubjettiness`).
Labels: ``label_QCD`` (float32), ``label_Hbb/Hcc/Hgg/H4q/Hqql`` (bool), ``label_Zqq/Wqq/Tbqq/Tbl`` (int32) —
the types of the real files. Truth information goes to ``aux_parent_{pt,eta,phi,mass,pid}`` (0 for QCD),
never to be used as training inputs.

Speed
-----
Events come from ``Pythia.nextBatch`` (an awkward array per batch) and are clustered per batch with FastJet's
vectorised interface; only the selected jets go through the per-jet Python code (soft drop, τ_N). The
decay-chain walk (last copy = Pythia's ``iBotCopyId``: follow the unique same-id daughter) and visibility
(|pdg| ∉ {12, 14, 16}) are reimplemented on the batch arrays; they were checked to reproduce, jet for jet,
an event-by-event version using Pythia's own ``iBotCopyId`` / ``isVisible`` / ``charge``. About 225 jets/s per
core (QCD ≈ 1.0, tt̄ ≈ 0.66, W/Z ≈ 1 selected jets per event). ``n_events`` in the outputs counts generated
events including the unused tail of the last batch.

Reproducibility
---------------
The work is cut into *chunks* (class, split, file, chunk index); each chunk runs its own Pythia instance with
``Random:seed`` derived from (seed, class, split, file, chunk) by a hash (:func:`chunk_seed`). Files are
assembled from their chunks in a fixed order and shuffled with a seed-derived RNG, so the same seed gives
byte-identical arrays **whatever the number of workers**.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import queue as queue_mod
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "PROCESSES",
    "LABELS",
    "LABEL_DTYPES",
    "PARTICLE_BRANCHES",
    "JET_BRANCHES",
    "AUX_BRANCHES",
    "ProcessSpec",
    "JetCuts",
    "softdrop_mass",
    "nsubjettiness",
    "jet_features",
    "generate_jets",
    "chunk_seed",
    "generate_dataset",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------------------

#: JetClass label branches, in the order of the real files.
LABELS = ("label_QCD", "label_Hbb", "label_Hcc", "label_Hgg", "label_H4q", "label_Hqql",
          "label_Zqq", "label_Wqq", "label_Tbqq", "label_Tbl")

#: dtypes of the label branches in the real JetClass files.
LABEL_DTYPES = {
    "label_QCD": np.float32,
    "label_Hbb": np.bool_, "label_Hcc": np.bool_, "label_Hgg": np.bool_, "label_H4q": np.bool_,
    "label_Hqql": np.bool_,
    "label_Zqq": np.int32, "label_Wqq": np.int32, "label_Tbqq": np.int32, "label_Tbl": np.int32,
}

#: per-particle branches (part_is* int32, the rest float32).
PARTICLE_BRANCHES = (
    "part_px", "part_py", "part_pz", "part_energy", "part_deta", "part_dphi",
    "part_d0val", "part_d0err", "part_dzval", "part_dzerr", "part_charge",
    "part_isChargedHadron", "part_isNeutralHadron", "part_isPhoton", "part_isElectron", "part_isMuon",
)

#: per-jet branches (float32).
JET_BRANCHES = ("jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_nparticles", "jet_sdmass",
                "jet_tau1", "jet_tau2", "jet_tau3", "jet_tau4")

#: truth branches (float32): the matched parent's kinematics (0 for QCD). Never training inputs.
AUX_BRANCHES = ("aux_parent_pt", "aux_parent_eta", "aux_parent_phi", "aux_parent_mass", "aux_parent_pid")

# --------------------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------------------

_HADRONIC = "1 2 3 4 5"  # d u s c b


@dataclass(frozen=True)
class ProcessSpec:
    """One jet class: Pythia settings and how its jets are selected.

    Attributes
    ----------
    name
        Class name; the label branch is ``label_<name>``.
    settings
        Process-specific Pythia ``readString`` settings (hard process and forced decays).
    parent_ids
        |pdg| of the particles whose jets are signal (empty: QCD, take the leading jets).
    """

    name: str
    settings: tuple[str, ...]
    parent_ids: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        return f"label_{self.name}"


PROCESSES: dict[str, ProcessSpec] = {
    "QCD": ProcessSpec("QCD", ("HardQCD:all = on",)),
    "Tbqq": ProcessSpec(
        "Tbqq",
        ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on", "24:onMode = off", f"24:onIfAny = {_HADRONIC}"),
        (6,),
    ),
    "Wqq": ProcessSpec(
        "Wqq",
        ("WeakDoubleBoson:ffbar2WW = on", "24:onMode = off", f"24:onIfAny = {_HADRONIC}"),
        (24,),
    ),
    "Zqq": ProcessSpec(
        "Zqq",
        # gmZmode = 2: pure Z (no γ* interference), so every parent is an on-shell-ish Z(91).
        ("WeakDoubleBoson:ffbar2gmZgmZ = on", "WeakZ0:gmZmode = 2", "23:onMode = off",
         f"23:onIfAny = {_HADRONIC}"),
        (23,),
    ),
}

#: settings shared by every process (beam, phase space, speed, quietness).
COMMON_SETTINGS = (
    "Beams:eCM = 14000.",
    "PartonLevel:MPI = off",
    "Next:numberCount = 0",
    "Next:numberShowEvent = 0",
    "Next:numberShowInfo = 0",
    "Next:numberShowProcess = 0",
    "Print:quiet = on",
    "Random:setSeed = on",
)


@dataclass(frozen=True)
class JetCuts:
    """Jet definition and selection (JetClass values by default)."""

    r: float = 0.8
    pt_min: float = 500.0
    pt_max: float = 1000.0
    eta_max: float = 2.0
    pthat_min: float = 450.0
    pthat_max: float = 1100.0
    n_leading: int = 2
    require_containment: bool = True
    sd_zcut: float = 0.1
    sd_beta: float = 0.0
    tau_beta: float = 1.0


def _require_gen_deps():
    """Import pythia8mc and fastjet, with one clear error if the optional ``gen`` extra is missing."""
    try:
        import fastjet  # noqa: F401
        import pythia8mc  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "jet generation needs the optional dependencies pythia8mc and fastjet: "
            "pip install 'physics_tf[gen]'"
        ) from exc
    return pythia8mc, fastjet


# --------------------------------------------------------------------------------------------------------------
# Substructure helpers
# --------------------------------------------------------------------------------------------------------------

def _pseudojets(p4: np.ndarray) -> list:
    """FastJet PseudoJets from a (N, 4) array of (px, py, pz, E), user_index = row."""
    import fastjet

    out = []
    for i, (px, py, pz, e) in enumerate(np.asarray(p4, dtype=np.float64)):
        pj = fastjet.PseudoJet(float(px), float(py), float(pz), float(e))
        pj.set_user_index(i)
        out.append(pj)
    return out


def _softdrop_from_pseudojets(constituents: list, zcut: float, beta: float, r0: float) -> float:
    """Soft-drop mass of the jet made of ``constituents`` (see :func:`softdrop_mass`)."""
    import fastjet

    if not constituents:
        return 0.0
    # One C/A jet containing everything: R at FastJet's maximum (as fastjet::Recluster does).
    cs = fastjet.ClusterSequence(constituents, fastjet.JetDefinition(fastjet.cambridge_algorithm, 999.0))
    jets = cs.inclusive_jets(0.0)
    j = max(jets, key=lambda x: x.pt())  # a single jet for R = 999
    while True:
        p1, p2 = fastjet.PseudoJet(), fastjet.PseudoJet()
        if not j.has_parents(p1, p2):
            break
        pt1, pt2 = p1.pt(), p2.pt()
        z = min(pt1, pt2) / (pt1 + pt2)
        threshold = zcut * (p1.delta_R(p2) / r0) ** beta if beta != 0.0 else zcut
        if z > threshold:
            break
        j = p1 if pt1 >= pt2 else p2  # groom away the softer branch
    return float(max(j.m(), 0.0))


def softdrop_mass(p4: np.ndarray, zcut: float = 0.1, beta: float = 0.0, r0: float = 0.8) -> float:
    """Soft-drop groomed jet mass (Larkoski, Marzani, Soyez, Thaler, JHEP 05 (2014) 146).

    The constituents are reclustered into one Cambridge/Aachen tree; starting from the top the last merging
    j → j1 + j2 is undone and the softer branch is dropped while

        min(pT1, pT2) / (pT1 + pT2) < z_cut · (ΔR12 / R0)^β

    (ΔR in rapidity–azimuth). The mass of the first branch that passes (or of the single remaining particle)
    is returned. With β = 0 this is the modified mass-drop tagger (mMDT).

    Parameters
    ----------
    p4
        (N, 4) constituent four-momenta (px, py, pz, E) in GeV.
    zcut, beta, r0
        Soft-drop parameters (JetClass: 0.1, 0, 0.8).

    Returns
    -------
    float
        Groomed mass in GeV (0 for an empty jet).
    """
    p4 = np.asarray(p4, dtype=np.float64).reshape(-1, 4)
    return _softdrop_from_pseudojets(_pseudojets(p4), zcut, beta, r0)


def _nsub_from_pseudojets(constituents: list, n_max: int, beta: float, r0: float) -> np.ndarray:
    """τ_1..τ_n_max of the jet made of ``constituents`` (see :func:`nsubjettiness`)."""
    import fastjet

    taus = np.zeros(n_max, dtype=np.float64)
    n = len(constituents)
    if n == 0:
        return taus
    pt = np.array([c.pt() for c in constituents])  # (N,)
    rap = np.array([c.rap() for c in constituents])  # (N,)
    phi = np.array([c.phi() for c in constituents])  # (N,)
    d0 = float(np.sum(pt)) * r0 ** beta
    cs = fastjet.ClusterSequence(constituents, fastjet.JetDefinition(fastjet.kt_algorithm, 999.0))
    for k in range(1, n_max + 1):
        if k >= n:  # as many axes as particles: every particle is its own axis
            break
        axes = cs.exclusive_jets(k)
        a_rap = np.array([a.rap() for a in axes])  # (k,)
        a_phi = np.array([a.phi() for a in axes])  # (k,)
        dphi = (phi[:, None] - a_phi[None, :] + np.pi) % (2 * np.pi) - np.pi  # (N, k)
        dr = np.sqrt((rap[:, None] - a_rap[None, :]) ** 2 + dphi ** 2)  # (N, k)
        taus[k - 1] = float(np.sum(pt * np.min(dr, axis=1) ** beta)) / d0
    return taus


def nsubjettiness(p4: np.ndarray, n_max: int = 4, beta: float = 1.0, r0: float = 0.8) -> np.ndarray:
    """Normalised N-subjettiness τ_1..τ_n_max with exclusive-kT axes (Thaler, Van Tilburg, JHEP 03 (2011) 015).

        τ_N = Σ_k pT_k · min_i ΔR(k, a_i)^β / Σ_k pT_k · R0^β

    where the axes a_1..a_N are the N exclusive kT jets of the constituents (fastjet
    ``exclusive_jets(N)`` of a kT clustering, "KT_Axes" of fastjet-contrib) and ΔR is measured in
    rapidity–azimuth. τ_N = 0 when the jet has ≤ N particles.

    Parameters
    ----------
    p4
        (N, 4) constituent four-momenta (px, py, pz, E) in GeV.
    n_max
        Largest N.
    beta, r0
        Angular exponent and characteristic radius (JetClass: 1, 0.8).

    Returns
    -------
    numpy.ndarray
        (n_max,) float64 array [τ_1, ..., τ_n_max].
    """
    p4 = np.asarray(p4, dtype=np.float64).reshape(-1, 4)
    return _nsub_from_pseudojets(_pseudojets(p4), n_max, beta, r0)


def _wrap_phi(dphi: np.ndarray) -> np.ndarray:
    """Azimuth difference wrapped to [−π, π)."""
    return (dphi + np.pi) % (2.0 * np.pi) - np.pi


def _eta(px, py, pz):
    """Pseudorapidity η = asinh(pz / pT)."""
    return np.arcsinh(pz / np.hypot(px, py))


def jet_features(p4: np.ndarray, pid: np.ndarray, charge: np.ndarray, cuts: JetCuts = JetCuts(),
                 constituents: list | None = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """JetClass per-particle and per-jet features of one jet.

    Parameters
    ----------
    p4
        (N, 4) constituent four-momenta (px, py, pz, E) in GeV (any order).
    pid, charge
        (N,) PDG ids and electric charges.
    cuts
        Soft-drop / N-subjettiness parameters and R.
    constituents
        Optional FastJet PseudoJets of the same constituents (saves rebuilding them).

    Returns
    -------
    (dict, dict)
        ``part_*`` name -> (N,) array sorted by pT descending (float32; part_is* int32), and
        ``jet_*`` name -> float. The jet four-momentum is the E-scheme sum of the constituents.
    """
    p4 = np.asarray(p4, dtype=np.float64).reshape(-1, 4)  # (N, 4)
    pid = np.asarray(pid)
    charge = np.asarray(charge, dtype=np.float64)
    pt = np.hypot(p4[:, 0], p4[:, 1])  # (N,)
    order = np.argsort(-pt, kind="stable")
    p4, pid, charge, pt = p4[order], pid[order], charge[order], pt[order]

    jet = p4.sum(axis=0)  # (4,) E-scheme
    jet_pt = math.hypot(jet[0], jet[1])
    jet_eta = math.asinh(jet[2] / jet_pt)
    jet_phi = math.atan2(jet[1], jet[0])

    eta = _eta(p4[:, 0], p4[:, 1], p4[:, 2])  # (N,)
    phi = np.arctan2(p4[:, 1], p4[:, 0])  # (N,)
    apid = np.abs(pid)
    charged = charge != 0
    is_e, is_mu, is_gamma = apid == 11, apid == 13, apid == 22
    zeros = np.zeros(len(pt), dtype=np.float32)
    part = {
        "part_px": p4[:, 0].astype(np.float32),
        "part_py": p4[:, 1].astype(np.float32),
        "part_pz": p4[:, 2].astype(np.float32),
        "part_energy": p4[:, 3].astype(np.float32),
        "part_deta": (np.sign(jet_eta) * (eta - jet_eta)).astype(np.float32),
        "part_dphi": _wrap_phi(phi - jet_phi).astype(np.float32),
        "part_d0val": zeros, "part_d0err": zeros.copy(), "part_dzval": zeros.copy(), "part_dzerr": zeros.copy(),
        "part_charge": charge.astype(np.float32),
        "part_isChargedHadron": (charged & ~is_e & ~is_mu).astype(np.int32),
        "part_isNeutralHadron": (~charged & ~is_gamma).astype(np.int32),
        "part_isPhoton": is_gamma.astype(np.int32),
        "part_isElectron": is_e.astype(np.int32),
        "part_isMuon": is_mu.astype(np.int32),
    }
    pjs = constituents if constituents is not None else _pseudojets(p4)
    taus = _nsub_from_pseudojets(pjs, 4, cuts.tau_beta, cuts.r)
    jets = {
        "jet_pt": jet_pt, "jet_eta": jet_eta, "jet_phi": jet_phi, "jet_energy": float(jet[3]),
        "jet_nparticles": float(len(pt)),
        "jet_sdmass": _softdrop_from_pseudojets(pjs, cuts.sd_zcut, cuts.sd_beta, cuts.r),
        "jet_tau1": taus[0], "jet_tau2": taus[1], "jet_tau3": taus[2], "jet_tau4": taus[3],
    }
    return part, jets


# --------------------------------------------------------------------------------------------------------------
# Event loop
# --------------------------------------------------------------------------------------------------------------

def _make_pythia(spec: ProcessSpec, seed: int, cuts: JetCuts, extra_settings: Sequence[str] = ()):
    pythia8, _ = _require_gen_deps()
    py = pythia8.Pythia("", False)  # no banner
    settings = [*COMMON_SETTINGS, f"Random:seed = {int(seed)}",
                f"PhaseSpace:pTHatMin = {cuts.pthat_min}", f"PhaseSpace:pTHatMax = {cuts.pthat_max}",
                *spec.settings, *extra_settings]
    for s in settings:
        if not py.readString(s):
            raise ValueError(f"<pythia settings>: field '{s}': Pythia rejected the setting")
    if not py.init():
        raise RuntimeError(f"Pythia initialisation failed for process {spec.name} with settings {settings}")
    return py


#: |pdg| of the invisible final-state particles (Pythia's ParticleData::isVisible is False for the SM
#: neutrinos; no BSM particles are produced here).
_INVISIBLE = (12, 14, 16)


@dataclass
class _Batch:
    """A batch of Pythia events as flat numpy arrays (from ``Pythia.nextBatch``, an awkward array).

    ``off[e]:off[e+1]`` is event ``e``'s slice of the flat particle arrays; mother/daughter indices are local
    to the event (as in ``Pythia.event``).
    """

    off: np.ndarray  # (E+1,)
    pid: np.ndarray  # (N,)
    status: np.ndarray  # (N,)
    d1: np.ndarray  # (N,)
    d2: np.ndarray  # (N,)
    p4: np.ndarray  # (N, 4) px, py, pz, E
    m: np.ndarray  # (N,)

    @property
    def n_events(self) -> int:
        return len(self.off) - 1


def _next_batch(py, n: int) -> _Batch:
    """Generate ``n`` events (failed ones are skipped by Pythia) and flatten them to numpy."""
    import awkward as ak

    prt = py.nextBatch(int(n))["prt"]
    counts = ak.to_numpy(ak.num(prt, axis=1)).astype(np.int64)
    flat = ak.flatten(prt)
    mom = flat["p"]
    p4 = np.stack([ak.to_numpy(mom[c]) for c in ("px", "py", "pz", "e")], axis=1)  # (N, 4)
    return _Batch(
        off=np.concatenate([[0], np.cumsum(counts)]),
        pid=ak.to_numpy(flat["id"]).astype(np.int64),
        status=ak.to_numpy(flat["status"]).astype(np.int64),
        d1=ak.to_numpy(flat["daughter1"]).astype(np.int64),
        d2=ak.to_numpy(flat["daughter2"]).astype(np.int64),
        p4=p4.astype(np.float64),
        m=ak.to_numpy(flat["m"]).astype(np.float64),
    )


def _daughters(d1: int, d2: int) -> list[int]:
    """Pythia's daughter encoding -> list (0/0 none; d1 = d2 or d2 = 0 one; d1 < d2 range; d2 < d1 two)."""
    if d1 <= 0:
        return []
    if d2 == 0 or d2 == d1:
        return [d1]
    if d2 > d1:
        return list(range(d1, d2 + 1))
    return [d1, d2]


def _bot_copy(pid: np.ndarray, d1: np.ndarray, d2: np.ndarray, i: int) -> int:
    """Last copy of particle ``i`` (Pythia ``iBotCopyId``): follow the unique daughter with the same id."""
    while True:
        same = [k for k in _daughters(int(d1[i]), int(d2[i])) if pid[k] == pid[i]]
        if len(same) != 1:
            return i
        i = same[0]


def _eta_phi(p4: np.ndarray) -> tuple[float, float]:
    px, py, pz = float(p4[0]), float(p4[1]), float(p4[2])
    pt = math.hypot(px, py)
    return (math.asinh(pz / pt) if pt > 0 else math.copysign(1e9, pz)), math.atan2(py, px)


def _parents(ev: dict[str, np.ndarray], parent_ids: tuple[int, ...]) -> list[dict[str, object]]:
    """Signal parents of one event: last copy before the decay, and the (η, φ) of its decay quarks.

    Parents are outgoing resonances of the hard process (status −22, |pdg| in ``parent_ids``).
    Top: t → W b with W → q q̄'; the quarks are the non-W daughters of the last top copy (the b) and the
    daughters of the last W copy. W/Z: the two decay quarks. Decay products are taken as produced in the decay
    (before their own showers).
    """
    pid, d1, d2, p4 = ev["pid"], ev["d1"], ev["d2"], ev["p4"]
    out = []
    for i in np.flatnonzero((ev["status"] == -22) & np.isin(np.abs(pid), parent_ids)):
        last = _bot_copy(pid, d1, d2, int(i))
        quarks = []
        for d in _daughters(int(d1[last]), int(d2[last])):
            if abs(pid[d]) == 24 and abs(pid[i]) == 6:  # t → W b: follow the W to its decay
                w = _bot_copy(pid, d1, d2, d)
                quarks += _daughters(int(d1[w]), int(d2[w]))
            else:
                quarks.append(d)
        eta, phi = _eta_phi(p4[last])
        out.append({
            "pt": math.hypot(p4[last, 0], p4[last, 1]), "eta": eta, "phi": phi, "mass": float(ev["m"][last]),
            "pid": float(pid[last]),
            "quarks": [_eta_phi(p4[q]) for q in quarks if math.hypot(p4[q, 0], p4[q, 1]) > 0],
        })
    return out


def _delta_r(eta1, phi1, eta2, phi2) -> float:
    return math.hypot(eta1 - eta2, (phi1 - phi2 + math.pi) % (2 * math.pi) - math.pi)


def _select_jets(jets: list[dict[str, object]], parents: list[dict[str, object]] | None,
                 cuts: JetCuts) -> list[tuple[dict[str, object], dict[str, object] | None]]:
    """(jet, parent or None) pairs kept from one event; ``jets`` sorted by pT (see the module docstring).

    ``parents`` None means QCD: the ``cuts.n_leading`` hardest jets that pass the cuts.
    """

    def passes(j) -> bool:
        return cuts.pt_min < j["pt"] < cuts.pt_max and abs(j["eta"]) < cuts.eta_max

    if parents is None:
        return [(j, None) for j in jets[: cuts.n_leading] if passes(j)]
    kept, used = [], set()
    for parent in parents:
        if not jets:
            break
        dists = [_delta_r(j["eta"], j["phi"], parent["eta"], parent["phi"]) for j in jets]
        k = int(np.argmin(dists))
        j = jets[k]
        if k in used or dists[k] >= cuts.r or not passes(j):
            continue
        if cuts.require_containment and (
            not parent["quarks"]
            or any(_delta_r(j["eta"], j["phi"], qe, qp) >= cuts.r for qe, qp in parent["quarks"])
        ):
            continue
        used.add(k)
        kept.append((j, parent))
    return kept


class _ChargeTable:
    """PDG id -> electric charge, cached from Pythia's particle data."""

    def __init__(self, py):
        self._pd = py.particleData
        self._cache: dict[int, float] = {}

    def __call__(self, pid: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(pid, return_inverse=True)
        for u in uniq.tolist():
            if u not in self._cache:
                self._cache[u] = float(self._pd.charge(int(u)))
        return np.array([self._cache[u] for u in uniq.tolist()], dtype=np.float64)[inv]


def _batch_jets(batch: _Batch, charge_of: _ChargeTable, cuts: JetCuts):
    """Per event of the batch: event arrays, visible-particle arrays and the anti-kT jets (pT-sorted)."""
    import awkward as ak
    import fastjet

    vis = (batch.status > 0) & ~np.isin(np.abs(batch.pid), _INVISIBLE)  # (N,) final and visible
    ev_of = np.repeat(np.arange(batch.n_events), np.diff(batch.off))  # (N,)
    n_vis = np.bincount(ev_of[vis], minlength=batch.n_events)  # (E,)
    vis_off = np.concatenate([[0], np.cumsum(n_vis)])
    vp4 = batch.p4[vis]  # (N_vis, 4)
    vpid = batch.pid[vis]
    vcharge = charge_of(vpid)
    arr = ak.unflatten(ak.zip({"px": vp4[:, 0], "py": vp4[:, 1], "pz": vp4[:, 2], "E": vp4[:, 3]}), n_vis)
    cs = fastjet.ClusterSequence(arr, fastjet.JetDefinition(fastjet.antikt_algorithm, cuts.r))
    # Jets well below the window cannot pass; 0.5·pt_min keeps the nearest-jet matching honest.
    const_idx = ak.to_list(cs.constituent_index(0.5 * cuts.pt_min))  # [event][jet][constituent]
    for e in range(batch.n_events):
        a, b = batch.off[e], batch.off[e + 1]
        ev = {"pid": batch.pid[a:b], "status": batch.status[a:b], "d1": batch.d1[a:b], "d2": batch.d2[a:b],
              "p4": batch.p4[a:b], "m": batch.m[a:b]}
        va, vb = vis_off[e], vis_off[e + 1]
        p4, pid, charge = vp4[va:vb], vpid[va:vb], vcharge[va:vb]
        jets = []
        for idx in const_idx[e]:
            idx = np.asarray(idx, dtype=np.int64)
            s = p4[idx].sum(axis=0)  # (4,) E-scheme jet momentum
            eta, phi = _eta_phi(s)
            jets.append({"pt": math.hypot(s[0], s[1]), "eta": eta, "phi": phi, "idx": idx})
        jets.sort(key=lambda j: -j["pt"])
        yield ev, p4, pid, charge, jets


def generate_jets(
    process: str,
    n_jets: int,
    seed: int,
    cuts: JetCuts = JetCuts(),
    extra_settings: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
    max_events: int | None = None,
) -> dict[str, object]:
    """Generate exactly ``n_jets`` selected jets of one class with one Pythia instance.

    Events are generated in batches (``Pythia.nextBatch``, clustered together with FastJet's vectorised
    interface); the batch sizes depend only on the jets found so far, so the output is a function of
    (process, n_jets, seed, cuts, extra_settings) alone.

    Parameters
    ----------
    process
        Key of :data:`PROCESSES` (``QCD``, ``Tbqq``, ``Wqq``, ``Zqq``).
    n_jets
        Number of jets to return (surplus jets of the last batch are dropped).
    seed
        Pythia ``Random:seed`` (1 … 900 000 000).
    cuts
        Jet definition and selection.
    extra_settings
        Further Pythia settings appended after the process settings.
    progress
        Called with the number of new jets after each batch that produced some.
    max_events
        Safety limit on generated events (default 200 · n_jets + 1000); exceeded -> RuntimeError.

    Returns
    -------
    dict
        ``part_*`` -> list of (N_i,) arrays, ``jet_*`` and ``aux_*`` -> (n_jets,) float32 arrays,
        ``label_*`` -> (n_jets,) arrays with the JetClass dtypes, and ``n_events`` (int).
    """
    if process not in PROCESSES:
        raise ValueError(f"<gen config>: field 'processes': unknown process '{process}' "
                         f"(known: {sorted(PROCESSES)})")
    if not 1 <= int(seed) <= 900_000_000:
        raise ValueError(f"<gen config>: field 'seed': Pythia seed {seed} outside 1..900000000")
    _require_gen_deps()
    spec = PROCESSES[process]
    parts: dict[str, list[np.ndarray]] = {b: [] for b in PARTICLE_BRANCHES}
    jetvals: dict[str, list[float]] = {b: [] for b in (*JET_BRANCHES, *AUX_BRANCHES)}
    limit = max_events if max_events is not None else 200 * n_jets + 1000
    n_events = 0
    n_done = 0
    if n_jets > 0:
        py = _make_pythia(spec, seed, cuts, extra_settings)
        charge_of = _ChargeTable(py)
        while n_done < n_jets:
            if n_events >= limit:
                raise RuntimeError(f"process {process}: only {n_done}/{n_jets} jets after {n_events} events")
            rate = n_done / n_events if n_done > 0 else 1.0  # jets per event so far
            n_batch = int(min(100, max(5, math.ceil(1.1 * (n_jets - n_done) / rate) + 2)))
            n_events += n_batch
            batch = _next_batch(py, n_batch)
            new = 0
            for ev, p4, pid, charge, jets in _batch_jets(batch, charge_of, cuts):
                if n_done + new >= n_jets:
                    break
                parents = _parents(ev, spec.parent_ids) if spec.parent_ids else None
                for j, parent in _select_jets(jets, parents, cuts):
                    if n_done + new >= n_jets:
                        break
                    idx = j["idx"]
                    part, jv = jet_features(p4[idx], pid[idx], charge[idx], cuts)
                    for b in PARTICLE_BRANCHES:
                        parts[b].append(part[b])
                    for b in JET_BRANCHES:
                        jetvals[b].append(jv[b])
                    aux = (0.0,) * 5 if parent is None else tuple(parent[k] for k in
                                                                  ("pt", "eta", "phi", "mass", "pid"))
                    for b, v in zip(AUX_BRANCHES, aux):
                        jetvals[b].append(v)
                    new += 1
            if new:
                n_done += new
                if progress is not None:
                    progress(new)
    out: dict[str, object] = dict(parts)
    out.update({b: np.asarray(v, dtype=np.float32) for b, v in jetvals.items()})
    for lab in LABELS:
        out[lab] = np.full(n_jets, lab == spec.label, dtype=LABEL_DTYPES[lab])
    out["n_events"] = n_events
    return out


# --------------------------------------------------------------------------------------------------------------
# Dataset production
# --------------------------------------------------------------------------------------------------------------

SPLITS = ("train", "val", "test")


def chunk_seed(seed: int, *key: object) -> int:
    """Pythia seed in 1..900 000 000 derived from ``seed`` and a chunk key by SHA-256 (stable across runs)."""
    text = ":".join(str(k) for k in (seed, *key))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") % 900_000_000 + 1


@dataclass(frozen=True)
class _Chunk:
    """One unit of work: ``n`` jets of ``process`` for chunk ``chunk`` of file ``file`` of ``split``."""

    split: str
    file: int
    process: str
    chunk: int
    n: int
    seed: int
    cuts: JetCuts
    extra_settings: tuple[str, ...] = ()

    @property
    def key(self) -> tuple:
        return (self.split, self.file, self.process, self.chunk)


def _split_counts(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible (earlier parts get the remainder)."""
    base, rem = divmod(total, parts)
    return [base + (1 if i < rem else 0) for i in range(parts)]


def _plan(processes: Sequence[str], n_per_split: Mapping[str, int], seed: int, jets_per_file: int,
          chunk_size: int, cuts: JetCuts, extra_settings: tuple[str, ...]) -> dict[tuple[str, int], list[_Chunk]]:
    """(split, file) -> its chunks; files hold ``n_per_split / n_files`` jets of every class."""
    plan: dict[tuple[str, int], list[_Chunk]] = {}
    n_cls = len(processes)
    for split in SPLITS:
        n = int(n_per_split.get(split, 0))
        if n <= 0:
            continue
        n_files = max(1, math.ceil(n * n_cls / jets_per_file))
        for f, n_file in enumerate(_split_counts(n, n_files)):
            chunks = []
            for proc in processes:
                for c, n_chunk in enumerate(_split_counts(n_file, max(1, math.ceil(n_file / chunk_size)))):
                    chunks.append(_Chunk(split, f, proc, c, n_chunk, chunk_seed(seed, proc, split, f, c), cuts,
                                         extra_settings))
            plan[(split, f)] = chunks
    return plan


def _run_chunk(chunk: _Chunk, progress_queue=None) -> tuple[tuple, dict[str, object], float]:
    """Worker entry point (top level, spawn-safe): generate one chunk; returns (key, arrays, seconds)."""
    t0 = time.perf_counter()
    report = None
    if progress_queue is not None:
        def report(n: int) -> None:
            progress_queue.put(n)
    arrays = generate_jets(chunk.process, chunk.n, chunk.seed, chunk.cuts, chunk.extra_settings, progress=report)
    return chunk.key, arrays, time.perf_counter() - t0


def _assemble_file(path: Path, chunks: list[_Chunk], results: Mapping[tuple, dict[str, object]],
                   seed: int) -> int:
    """Concatenate a file's chunks in plan order, shuffle with a seed-derived RNG, write it; returns n_jets."""
    import awkward as ak

    from physics_tf.jets.writers import write_jetclass_root

    per_jet: list[np.ndarray] = []  # jet -> its particles' branch values, used only for the counts below
    flat: dict[str, list[np.ndarray]] = {b: [] for b in (*JET_BRANCHES, *AUX_BRANCHES, *LABELS)}
    for ch in chunks:
        arr = results[ch.key]
        per_jet.extend(arr["part_px"])
        for b in flat:
            flat[b].append(arr[b])
    n = len(per_jet)
    split, f = chunks[0].split, chunks[0].file
    perm = np.random.default_rng(chunk_seed(seed, "shuffle", split, f)).permutation(n)  # (n,)
    counts = np.array([len(per_jet[i]) for i in perm], dtype=np.int64)  # (n,) particles per shuffled jet
    particles = {}
    for b in PARTICLE_BRANCHES:
        rows = [r for ch in chunks for r in results[ch.key][b]]  # jets in plan order
        values = np.concatenate([rows[i] for i in perm]) if n else np.zeros(0, np.float32)  # (sum counts,)
        particles[b] = ak.unflatten(values, counts)  # (n, var) jagged
    cat = {b: np.concatenate(v)[perm] for b, v in flat.items()}
    jets = {b: cat[b] for b in (*JET_BRANCHES, *AUX_BRANCHES)}
    labels = {b: cat[b].astype(LABEL_DTYPES[b]) for b in LABELS}
    write_jetclass_root(path, particles, jets, labels, treename="tree")
    return n


def _config_hash(config: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


MANIFEST = "manifest.json"


def generate_dataset(
    out_dir: str | os.PathLike,
    processes: Sequence[str] = ("QCD", "Tbqq"),
    n_train: int = 8000,
    n_val: int = 2000,
    n_test: int = 2000,
    seed: int = 42,
    n_workers: int | None = 1,
    jets_per_file: int = 20_000,
    chunk_size: int = 1000,
    cuts: JetCuts | Mapping[str, object] | None = None,
    extra_settings: Sequence[str] = (),
    force: bool = False,
    progress: bool = True,
) -> dict[str, object]:
    """Generate a JetClass-layout dataset ``{out_dir}/{split}_{i:03d}.root`` for train / val / test.

    Parameters
    ----------
    out_dir
        Output directory (created). A ``manifest.json`` with the configuration hash is written next to the
        files; if it matches and all files exist, nothing is regenerated (unless ``force``).
    processes
        Jet classes, keys of :data:`PROCESSES`; every file holds the same number of jets of each class.
    n_train, n_val, n_test
        Jets **per class** in each split (0 skips the split).
    seed
        Master seed; chunk seeds derive from it (:func:`chunk_seed`).
    n_workers
        Worker processes (``spawn``); ``None`` = ``os.cpu_count()``; 1 = in this process. The output does
        not depend on it.
    jets_per_file
        Upper bound on jets (all classes) per output file.
    chunk_size
        Jets of one class generated by one Pythia instance (unit of parallel work).
    cuts
        :class:`JetCuts` or a mapping of its fields.
    extra_settings
        Extra Pythia settings for every process (e.g. ``["PartonLevel:MPI = on"]``).
    force
        Regenerate even if the manifest matches.
    progress
        Show a tqdm progress bar counting jets.

    Returns
    -------
    dict
        Summary: ``files``, ``n_jets`` (per split), ``n_events`` (per process), ``wall_s``, ``cpu_s`` (sum of
        chunk times), ``jets_per_s``, ``jets_per_s_per_core`` (jets / cpu_s), ``skipped``, ``config_hash``.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    processes = list(processes)
    if not processes:
        raise ValueError("<gen config>: field 'processes': empty list")
    unknown = [p for p in processes if p not in PROCESSES]
    if unknown:
        raise ValueError(f"<gen config>: field 'processes': unknown {unknown} (known: {sorted(PROCESSES)})")
    if len(set(processes)) != len(processes):
        raise ValueError(f"<gen config>: field 'processes': duplicates in {processes}")
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if int(v) < 0:
            raise ValueError(f"<gen config>: field '{name}': must be >= 0, got {v}")
    if int(jets_per_file) < 1 or int(chunk_size) < 1:
        raise ValueError("<gen config>: field 'jets_per_file'/'chunk_size': must be >= 1")
    if cuts is None:
        cuts = JetCuts()
    elif not isinstance(cuts, JetCuts):
        cuts = JetCuts(**dict(cuts))
    extra = tuple(str(s) for s in extra_settings)
    n_workers = (os.cpu_count() or 1) if n_workers is None else int(n_workers)

    config = {
        "generator": "physics_tf.jetgen/1",
        "pythia8mc": _package_version("pythia8mc"),
        "fastjet": _package_version("fastjet"),
        "processes": processes,
        "process_settings": {p: list(PROCESSES[p].settings) for p in processes},
        "common_settings": list(COMMON_SETTINGS),
        "n": {"train": int(n_train), "val": int(n_val), "test": int(n_test)},
        "seed": int(seed), "jets_per_file": int(jets_per_file), "chunk_size": int(chunk_size),
        "cuts": asdict(cuts), "extra_settings": list(extra),
    }
    chash = _config_hash(config)
    plan = _plan(processes, config["n"], int(seed), int(jets_per_file), int(chunk_size), cuts, extra)
    paths = {key: out / f"{key[0]}_{key[1]:03d}.root" for key in plan}
    manifest_path = out / MANIFEST

    if not force and manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("config_hash") == chash and all(p.exists() for p in paths.values()):
            summary = dict(old.get("summary", {}))
            summary.update(skipped=True, wall_s=time.perf_counter() - t0)
            log.info("jet dataset in %s is up to date (config hash %s); use force=true to regenerate", out, chash)
            return summary

    out.mkdir(parents=True, exist_ok=True)
    if manifest_path.exists():  # stale: remove first so a crash cannot leave a matching manifest behind
        manifest_path.unlink()
    chunks = [ch for key in plan for ch in plan[key]]
    total = sum(ch.n for ch in chunks)
    results: dict[tuple, dict[str, object]] = {}
    pending = dict(plan)
    n_jets = {s: 0 for s in SPLITS}
    n_events = {p: 0 for p in processes}
    cpu_s = 0.0

    bar = _progress_bar(total, progress)

    def collect(key, arrays, secs):
        nonlocal cpu_s
        cpu_s += secs
        n_events[key[2]] += int(arrays.pop("n_events"))
        results[key] = arrays
        for fkey in [k for k, chs in pending.items() if all(c.key in results for c in chs)]:
            chs = pending.pop(fkey)
            n_jets[fkey[0]] += _assemble_file(paths[fkey], chs, results, int(seed))
            for c in chs:
                del results[c.key]

    try:
        if n_workers <= 1:
            for ch in chunks:
                collect(*_run_chunk_inline(ch, bar))
        else:
            ctx = mp.get_context("spawn")
            with ctx.Manager() as manager, ctx.Pool(min(n_workers, len(chunks))) as pool:
                q = manager.Queue()
                asyncs = [pool.apply_async(_run_chunk, (ch, q)) for ch in chunks]
                done = 0
                while done < len(asyncs):
                    _drain(q, bar, timeout=0.2)
                    ready = [i for i, a in enumerate(asyncs) if a is not None and a.ready()]
                    for i in ready:
                        collect(*asyncs[i].get())  # re-raises a worker's exception
                        asyncs[i] = None
                        done += 1
                _drain(q, bar, timeout=0.0)
    finally:
        bar.close()

    wall = time.perf_counter() - t0
    summary = {
        "out_dir": str(out),
        "files": [str(paths[k]) for k in plan],
        "processes": processes,
        "n_jets": n_jets,
        "n_events": n_events,
        "wall_s": wall,
        "cpu_s": cpu_s,
        "n_workers": n_workers,
        "jets_per_s": total / wall if wall > 0 else float("nan"),
        "jets_per_s_per_core": total / cpu_s if cpu_s > 0 else float("nan"),
        "jets_per_event": {p: (total / len(processes)) / max(n_events[p], 1) for p in processes},
        "config_hash": chash,
        "skipped": False,
    }
    from physics_tf.data.atomic import atomic_path

    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps({"config_hash": chash, "config": config, "summary": summary}, indent=2))
    log.info("generated %d jets in %.1f s (%.1f jets/s, %.1f jets/s per core) -> %s",
             total, wall, summary["jets_per_s"], summary["jets_per_s_per_core"], out)
    return summary


def _run_chunk_inline(chunk: _Chunk, bar) -> tuple[tuple, dict[str, object], float]:
    t0 = time.perf_counter()
    arrays = generate_jets(chunk.process, chunk.n, chunk.seed, chunk.cuts, chunk.extra_settings,
                           progress=bar.update)
    return chunk.key, arrays, time.perf_counter() - t0


def _drain(q, bar, timeout: float) -> None:
    """Move the workers' progress increments from the queue to the bar."""
    try:
        n = q.get(timeout=timeout) if timeout > 0 else q.get_nowait()
        bar.update(n)
        while True:
            bar.update(q.get_nowait())
    except queue_mod.Empty:
        pass


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="jet", desc="generating jets", dynamic_ncols=True)


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"


def run_generate(cfg) -> dict[str, object]:
    """Hydra entry (``pipelines/generate.py``, ``physics-tf-generate``): run the generation described by ``cfg.gen``."""
    import json

    from omegaconf import OmegaConf

    g = OmegaConf.to_container(cfg.gen, resolve=True)
    summary = generate_dataset(
        out_dir=g["out_dir"],
        processes=g["processes"],
        n_train=g["n_train"],
        n_val=g["n_val"],
        n_test=g["n_test"],
        seed=g["seed"],
        n_workers=g["n_workers"],
        jets_per_file=g["jets_per_file"],
        chunk_size=g["chunk_size"],
        cuts=g.get("cuts"),
        extra_settings=g.get("extra_settings") or (),
        force=g["force"],
        progress=g.get("progress", True),
    )
    logging.getLogger("physics_tf").info("generation summary:\n%s", json.dumps(summary, indent=2, default=str))
    return summary
