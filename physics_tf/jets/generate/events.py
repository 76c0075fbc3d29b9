"""Pythia 8 events → selected jets of one class: process specs, Pythia set-up, clustering, parent matching.

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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from physics_tf.jets.generate.substructure import JetCuts, jet_features
from physics_tf.jets.schema import (AUX_BRANCHES, JET_BRANCHES, JETCLASS_LABELS, LABEL_DTYPES, PARTICLE_BRANCHES,
                                    wrap_phi)

__all__ = ["PROCESSES", "COMMON_SETTINGS", "ProcessSpec", "generate_jets", "require_gen_deps"]

_HADRONIC = "1 2 3 4 5"  # d u s c b


@dataclass(frozen=True)
class ProcessSpec:
    """One jet class: its ``name`` (label branch ``label_<name>``), the process-specific Pythia ``readString``
    ``settings`` (hard process and forced decays) and the |pdg| ``parent_ids`` of the particles whose jets are
    signal (empty: QCD, take the leading jets)."""

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



def require_gen_deps():
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



def _make_pythia(spec: ProcessSpec, seed: int, cuts: JetCuts, extra_settings: Sequence[str] = ()):
    pythia8, _ = require_gen_deps()
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
    return math.hypot(eta1 - eta2, wrap_phi(phi1 - phi2))


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
    require_gen_deps()
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
    for lab in JETCLASS_LABELS:
        out[lab] = np.full(n_jets, lab == spec.label, dtype=LABEL_DTYPES[lab])
    out["n_events"] = n_events
    return out

