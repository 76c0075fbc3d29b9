"""The jet file layouts: JetClass branch names and dtypes (Qu, Li, Qian 2022, Zenodo 6619768) and the top-tagging
labels, shared by the generator (:mod:`physics_tf.jets.generate`), the readers and the feature sets; and the
published ParT input feature sets over those branches (:data:`FEATURE_SETS`)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "FEATURE_SETS",
    "JETCLASS_LABELS",
    "LABEL_DTYPES",
    "PARTICLE_BRANCHES",
    "JET_BRANCHES",
    "AUX_BRANCHES",
    "TOPTAGGING_BRANCHES",
    "TOPTAGGING_LABELS",
    "wrap_phi",
]

#: the 10 one-hot label branches of JetClass, in the published class order.
JETCLASS_LABELS = (
    "label_QCD", "label_Hbb", "label_Hcc", "label_Hgg", "label_H4q",
    "label_Hqql", "label_Zqq", "label_Wqq", "label_Tbqq", "label_Tbl",
)

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

#: truth branches of generated files (float32): the matched parent's kinematics (0 for QCD). Never inputs.
AUX_BRANCHES = ("aux_parent_pt", "aux_parent_eta", "aux_parent_phi", "aux_parent_mass", "aux_parent_pid")

#: label branches the top-tagging reader derives from ``is_signal_new`` (0 -> QCD, 1 -> top).
TOPTAGGING_LABELS = ("label_QCD", "label_Top")

#: branches the top-tagging reader can provide (:class:`physics_tf.jets.readers.TopTaggingH5Reader`).
TOPTAGGING_BRANCHES = (
    "part_px", "part_py", "part_pz", "part_energy", "part_eta", "part_phi", "part_deta", "part_dphi",
    "jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_mass", "jet_nparticles",
    "label_QCD", "label_Top", "is_signal_new",
)


def wrap_phi(dphi):
    """Azimuth difference wrapped to [−π, π) (numpy arrays or floats)."""
    return (dphi + np.pi) % (2.0 * np.pi) - np.pi


_KIN: dict[str, dict] = {
    "part_pt_log": {"expr": "log(part_pt)", "subtract": 1.7, "multiply": 0.7},
    "part_e_log": {"expr": "log(part_energy)", "subtract": 2.0, "multiply": 0.7},
    "part_logptrel": {"expr": "log(part_pt / jet_pt)", "subtract": -4.7, "multiply": 0.7},
    "part_logerel": {"expr": "log(part_energy / jet_energy)", "subtract": -4.7, "multiply": 0.7},
    "part_deltaR": {"expr": "hypot(part_deta, part_dphi)", "subtract": 0.2, "multiply": 4.0},
    "part_deta": {"expr": "part_deta"},
    "part_dphi": {"expr": "part_dphi"},
}
_PID: dict[str, dict] = {name: {"expr": name} for name in (
    "part_charge", "part_isChargedHadron", "part_isNeutralHadron", "part_isPhoton", "part_isElectron",
    "part_isMuon")}
_TRACK: dict[str, dict] = {
    "part_d0": {"expr": "tanh(part_d0val)"},
    "part_d0err": {"expr": "part_d0err", "clip": [0.0, 1.0]},
    "part_dz": {"expr": "tanh(part_dzval)"},
    "part_dzerr": {"expr": "part_dzerr", "clip": [0.0, 1.0]},
}
#: published ParT input feature sets (Qu, Li, Qian 2022): name -> YAML-style feature mapping.
FEATURE_SETS: dict[str, dict[str, dict]] = {
    "kin": dict(_KIN),
    "kinpid": {**_KIN, **_PID},
    "full": {**_KIN, **_PID, **_TRACK},
}
