"""Jet substructure of the generated jets: soft-drop mass, N-subjettiness and the JetClass features of one jet.

Stored branches (JetClass layout, :mod:`physics_tf.jets.schema`)
-----------------------------------------------------------------
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

FastJet is imported inside the functions: the module imports without the optional ``gen`` extra.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from physics_tf.jets.schema import wrap_phi

__all__ = ["JetCuts", "fastjet_banner", "softdrop_mass", "nsubjettiness", "jet_features"]


def fastjet_banner(show: bool) -> None:
    """FastJet prints its banner (authors, the paper to cite, the licence) on stdout at the first clustering of
    every process, so a generator with two workers printed it twice, glued to its progress bar.

    ``show=True`` prints it now (the generator, before its progress bar); FastJet prints it once per process, so a
    later clustering here prints nothing. ``show=False`` silences it in this process (the workers). Both the
    vectorised and the PseudoJet interface share one library, so this covers both. Nothing without FastJet.
    """
    try:
        from fastjet._swig import ClusterSequence
    except ImportError:  # the optional gen extra is missing: generate_jets says so in one line
        return
    if show:
        sys.stdout.flush()  # FastJet writes to C++'s std::cout, past Python's buffer
        ClusterSequence.print_banner()
    else:
        ClusterSequence.set_fastjet_banner_stream(None)


@dataclass(frozen=True)
class JetCuts:
    """Jet definition and selection (JetClass values by default).

    ``r`` and the soft-drop / N-subjettiness parameters are used here; the pT, η and p̂T windows, ``n_leading``
    and ``require_containment`` by the event selection (:mod:`physics_tf.jets.generate.events`).
    """

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
        "part_dphi": wrap_phi(phi - jet_phi).astype(np.float32),
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

