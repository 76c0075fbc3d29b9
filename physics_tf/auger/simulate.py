"""A physics-motivated toy of the Pierre Auger surface detector (SD): air showers → station traces.
Longer than 400 lines because it is one algorithm: the event simulation is a chain of published
parameterisations that share every intermediate array, and each formula stays next to its citation.

Not a shower simulation: every ingredient is a published parameterisation (cited where it is used) turned into
random numbers with vectorised numpy, so ~10³ events/s run on one core and a user can later swap in CORSIKA /
Offline events written in the same layout (see :mod:`physics_tf.auger.schema`). Units: g/cm², metres, ns, VEM,
eV; angles in radians.

Per event
---------
* primary p, He, N, Fe (ln A = 0, 1.39, 2.64, 4.03), chosen with configurable fractions;
* lg(E/eV) in [18.5, 20.2] from dN/dE ∝ E^−γ (γ configurable; γ = 1 is flat in lg E, good for training);
* zenith θ ≤ 60° with dN ∝ sinθ cosθ dθ (cos²θ uniform: isotropic flux through a flat detector); azimuth
  uniform; core uniform in the (infinite, translation-invariant) 1500 m triangular array;
* X_max from the Gumbel parameterisation of De Domenico et al., JCAP 07 (2013) 050, EPOS-LHC coefficients
  (:func:`gumbel_parameters`, :func:`sample_xmax`);
* ground depth from the CORSIKA 5-layer (Linsley) US-standard atmosphere (Keilhauer parameters,
  :func:`vertical_depth`, :func:`height_of_depth`); slant depth X_vert / cos θ (flat Earth);
  DX = X_ground / cos θ − X_max.

Per station (the n×n axial patch plus a one-station rim used to find the hottest station)
-------------------------------------------------------------------------------------------
* Lateral distribution, Auger-style modified NKG, S(r) = S(1000)·(r/1000)^β·((r+700)/1700)^(β+γ)
  (Auger, NIM A 798 (2015) 172), with S38 = (E / 0.186 EeV)^(1/1.03) VEM and S(1000) = S38·f_CIC(θ),
  f = 1 + a x + b x² + c x³, x = cos²θ − cos²38° (Auger, PRD 102 (2020) 062005). S(1000) is split into a
  muonic share f_μ(θ) (≈ 45 % vertical, rising with θ) and an electromagnetic share, each with its own slope
  (EM steeper, as in the toy of Erdmann, Glombitza, Walz, Astropart. Phys. 97 (2018) 46).
* Muons: Heitler–Matthews superposition N_μ ∝ A^(1−β_HM) E^β_HM, β_HM = 0.93 → ×A^0.07 (Fe/p ≈ 1.33)
  (Matthews, Astropart. Phys. 22 (2005) 387), with a log-normal shower-to-shower spread shrinking with A.
* EM attenuation past the maximum: S_em ∝ exp(−(DX − DX_ref)/λ_EM), DX_ref = X_ground/cosθ − X_ref.
* Time structure: particle delays behind the front are log-normal (Erdmann et al. 2018) with a median growing
  with core distance r and with the geometric time spread r²/(2 c D) of a source at distance D: the median
  scales with (D_ref / (D_Xmax + D_0))^κ, so deeper showers (smaller DX, X_max closer) are broader — the
  rise time t1/2 grows with r and falls with DX (proton − iron ≈ tens of ns at 1000 m, as measured by Auger,
  PRD 96 (2017) 122003). Muons arrive earlier and sharper than the EM part.
* Traces (n_bins × 25 ns, VEM per bin): muon and EM particles are Poisson counts per bin (a Poisson process,
  so identical to drawing individual particles), muons with ≈1 VEM·(sec θ)^0.6 and 20 % amplitude spread,
  EM quanta of q_em VEM; the sum is convolved with the tank's exponential light decay (τ ≈ 65 ns); then
  Poisson photo-electron statistics, Gaussian baseline noise and saturation of the per-bin signal.
* Arrival time: plane front −(s·â)/c plus the curvature delay r²/(2 R_c c), R_c = distance from the ground
  core to slant depth X_max − ΔX_c along the axis, plus Gaussian jitter.
* Trigger: total signal ≥ threshold (≈ 3 VEM); 1–2 % of stations are dead. Untriggered/dead stations are
  masked (their trace, time and signal are zero). Events need ≥ ``min_stations`` triggered stations.

Stored per event: the n×n patch in hexagonal axial coordinates (q, r) centred on the station with the largest
signal — ``traces`` (N, n, n, T), ``times`` (N, n, n) ns relative to the hottest station, ``signals`` (N, n, n)
VEM, ``positions`` (N, n, n, 3) metres (x, y relative to the hottest station, z a.s.l.), ``mask`` (N, n, n) —
and the truth ``energy`` (eV), ``zenith``, ``azimuth``, ``core`` (N, 3), ``xmax``, ``mass_number``,
``primary`` (index into :data:`~physics_tf.auger.schema.PRIMARIES`). Axial (q, r) → x = d·(q + r/2), y = d·r·√3/2; the six neighbours of a
station are (±1, 0), (0, ±1), (+1, −1), (−1, +1).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import lfilter
from scipy.special import ndtr

from physics_tf.auger.io import write_hdf5
from physics_tf.auger.schema import ALTITUDE, C_LIGHT, LN_A, MASS_NUMBER, PRIMARIES, SPACING
from physics_tf.data import manifest

__all__ = [
    "SimConfig",
    "AugerSimulator",
    "gumbel_parameters",
    "sample_xmax",
    "vertical_depth",
    "height_of_depth",
    "axial_to_xy",
    "rise_time",
    "run_generate",
]

log = logging.getLogger(__name__)

# --- X_max: De Domenico, Settimo, Riggi, Bertin, JCAP 07 (2013) 050, EPOS-LHC (coefficients of (1, lnA, lnA²))
_P0 = np.array([775.589, -7.047, -2.427])
_P1 = np.array([57.589, -0.743, 0.214])
_P2 = np.array([-0.820, -0.169, -0.027])
_S0 = np.array([29.403, 13.553, -3.154])
_S1 = np.array([0.096, -0.961, 0.150])
_L0 = np.array([0.563, 0.711, 0.058])
_L1 = np.array([0.039, 0.067, -0.004])

# --- CORSIKA 5-layer atmosphere, US standard (Keilhauer) parameters; X in g/cm², h in cm
_ATM_A = np.array([-149.801663, -57.932486, 0.63631894, 4.35453690e-4, 0.01128292])
_ATM_B = np.array([1183.6071, 1143.0425, 1322.9748, 655.67307, 1.0])
_ATM_C = np.array([954248.34, 800005.34, 629568.93, 737521.77, 1e9])
_ATM_H = np.array([0.0, 7.0e5, 11.4e5, 37.0e5, 100.0e5])  # lower layer boundaries, cm


def gumbel_parameters(lg_energy, ln_a) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(μ, σ, λ) of the generalised Gumbel X_max distribution (De Domenico et al., JCAP 07 (2013) 050).

    With lE = lg(E/eV) − 19 and D = (1, ln A, ln²A): μ = p0·D + (p1·D) lE + (p2·D) lE², σ = s0·D + (s1·D) lE,
    λ = l0·D + (l1·D) lE (EPOS-LHC coefficients).
    """
    le = np.asarray(lg_energy, dtype=np.float64) - 19.0
    la = np.asarray(ln_a, dtype=np.float64)
    d = np.stack([np.ones_like(la), la, la * la], axis=-1)  # (..., 3)
    mu = d @ _P0 + (d @ _P1) * le + (d @ _P2) * le**2
    sigma = d @ _S0 + (d @ _S1) * le
    lam = d @ _L0 + (d @ _L1) * le
    return mu, sigma, lam


def sample_xmax(rng: np.random.Generator, lg_energy, ln_a) -> np.ndarray:
    """X_max = μ − σ ln G, G ~ Gamma(shape λ, scale 1/λ): the Gumbel-like law with an exponential deep tail."""
    mu, sigma, lam = gumbel_parameters(lg_energy, ln_a)
    g = rng.gamma(lam, 1.0 / lam)
    return mu - sigma * np.log(np.maximum(g, 1e-300))


def vertical_depth(h_m) -> np.ndarray:
    """Vertical atmospheric depth (g/cm²) at altitude h (m a.s.l.), CORSIKA 5-layer US-standard model.

    X(h) = a_i + b_i exp(−h/c_i) in layers 1–4 and a_5 − b_5 h / c_5 above 100 km (Keilhauer parameters).
    """
    h = np.asarray(h_m, dtype=np.float64) * 100.0  # cm
    i = np.clip(np.searchsorted(_ATM_H, h, side="right") - 1, 0, 4)
    expo = _ATM_A[i] + _ATM_B[i] * np.exp(-h / _ATM_C[i])
    return np.where(i == 4, _ATM_A[4] - _ATM_B[4] * h / _ATM_C[4], expo)


_ATM_XB = vertical_depth(_ATM_H / 100.0)  # depth at the lower boundary of each layer (decreasing)


def height_of_depth(x_vert) -> np.ndarray:
    """Altitude (m) of a vertical depth (g/cm²): the inverse of :func:`vertical_depth`.

    Depths larger than the sea-level depth are extrapolated with the lowest layer (points "below ground").
    """
    x = np.asarray(x_vert, dtype=np.float64)
    i = np.clip(np.sum(x[..., None] <= _ATM_XB, axis=-1) - 1, 0, 4)  # layer whose lower boundary is deeper
    arg = np.maximum((x - _ATM_A[i]) / _ATM_B[i], 1e-12)
    h = np.where(i == 4, (_ATM_A[4] - x) * _ATM_C[4] / _ATM_B[4], -_ATM_C[i] * np.log(arg))
    return h / 100.0


def axial_to_xy(q, r, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Axial hex coordinates → metres: x = d (q + r/2), y = d r √3/2 (triangular grid of spacing d)."""
    q = np.asarray(q, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    return spacing * (q + 0.5 * r), spacing * (r * math.sqrt(3.0) / 2.0)


@dataclass
class SimConfig:
    """Simulator parameters (``conf/gen/auger_sim.yaml`` → ``sim``); defaults as in the module docstring."""

    grid_size: int = 9  # n of the n×n axial patch (odd)
    n_bins: int = 120  # trace length in 25 ns bins
    bin_ns: float = 25.0
    pre_trigger_bins: int = 8  # bins before the shower front in each trace
    spacing: float = SPACING  # m
    altitude: float = ALTITUDE  # m a.s.l.
    altitude_spread: float = 15.0  # m, per-station Gaussian spread of the tank altitude
    primaries: Sequence[str] = ("p", "He", "N", "Fe")
    fractions: Sequence[float] | None = None  # None → equal
    lg_energy_range: Sequence[float] = (18.5, 20.2)
    spectral_index: float = 1.0  # dN/dE ∝ E^−γ
    max_zenith_deg: float = 60.0
    # lateral distribution
    ldf_beta_vertical: float = -2.4  # β at θ = 0 ...
    ldf_beta_slope: float = 0.5  # ... + slope·(sec θ − 1)
    ldf_gamma: float = -0.3
    ldf_em_shift: float = -0.3  # β_em = β + shift (steeper)
    ldf_mu_shift: float = 0.35  # β_μ = β + shift (flatter)
    cic: Sequence[float] = (0.97, -1.6, -1.2)  # a, b, c of f_CIC
    muon_fraction_vertical: float = 0.45
    muon_fraction_60: float = 0.75
    muon_mass_exponent: float = 0.07  # 1 − β_HM
    muon_spread_p: float = 0.18  # σ(ln N_μ) for protons ...
    muon_spread_slope: float = -0.025  # ... + slope · ln A
    em_lambda: float = 200.0  # g/cm²
    em_xref: float = 750.0  # g/cm²
    em_quantum: float = 0.5  # VEM per EM Poisson quantum
    muon_amp_spread: float = 0.2
    # timing
    mu_median_1000: float = 180.0  # ns, median muon delay at 1000 m for D = D_ref
    em_median_factor: float = 1.8
    em_median_offset: float = 30.0  # ns
    time_r_exponent: float = 1.4
    time_d_exponent: float = 0.6
    time_d_ref: float = 4000.0  # m
    time_d_offset: float = 3000.0  # m
    mu_log_sigma: float = 0.6
    em_log_sigma: float = 0.75
    tank_tau: float = 65.0  # ns
    curvature_depth_offset: float = 250.0  # g/cm², R_c measured to X_max − this
    time_jitter: float = 20.0  # ns
    # detector
    pe_per_vem: float = 100.0
    baseline_noise: float = 0.01  # VEM per bin
    saturation: float = 250.0  # VEM per bin
    trigger_threshold: float = 3.0  # VEM
    dead_fraction: float = 0.015
    min_stations: int = 3
    active_cut: float = 0.2  # VEM: stations expected below this are silent (no trace drawn)

    def __post_init__(self) -> None:
        if self.grid_size < 3 or self.grid_size % 2 == 0:
            raise ValueError(f"grid_size must be an odd number >= 3, got {self.grid_size}")
        if self.n_bins < 16:
            raise ValueError(f"n_bins must be >= 16, got {self.n_bins}")
        unknown = [p for p in self.primaries if p not in PRIMARIES]
        if unknown:
            raise ValueError(f"primaries: unknown {unknown}; known {PRIMARIES}")
        if self.fractions is not None and len(self.fractions) != len(self.primaries):
            raise ValueError(f"fractions: {len(self.fractions)} values for {len(self.primaries)} primaries")
        lo, hi = self.lg_energy_range
        if not lo < hi:
            raise ValueError(f"lg_energy_range must be increasing, got {self.lg_energy_range}")


class AugerSimulator:
    """Vectorised event generator; ``simulate(n, rng)`` returns a dict of numpy arrays (see module docstring).

    Keyword overrides ``primary`` (name or index), ``lg_energy``, ``zenith`` (rad), ``xmax`` fix those
    quantities for every event (used by the tests and for studies at fixed geometry); ``return_truth`` adds
    ``aux_*`` per-station truth (distance to the axis ``aux_r``, muon and EM signals ``aux_muon_signal``,
    ``aux_em_signal`` before noise), which the writer does not store.
    """

    def __init__(self, config: SimConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = SimConfig()
        elif not isinstance(config, SimConfig):
            config = SimConfig(**dict(config))
        self.cfg = config
        self.primary_index = np.array([PRIMARIES.index(p) for p in config.primaries])
        fr = np.ones(len(self.primary_index)) if config.fractions is None else np.asarray(config.fractions, float)
        self.primary_prob = fr / fr.sum()
        self.x_ground = float(vertical_depth(config.altitude))
        h = config.grid_size // 2 + 1  # rim of one station around the stored patch
        off = np.arange(-h, h + 1)
        self._dq, self._dr = np.meshgrid(off, off, indexing="ij")  # (M, M) axial offsets, axis 0 = q

    # ------------------------------------------------------------------ per-event quantities
    def _sample_energy(self, rng: np.random.Generator, n: int) -> np.ndarray:
        lo, hi = self.cfg.lg_energy_range
        g = self.cfg.spectral_index
        u = rng.random(n)
        if abs(g - 1.0) < 1e-9:
            return lo + (hi - lo) * u
        a, b = 10.0 ** ((1 - g) * lo), 10.0 ** ((1 - g) * hi)  # inverse CDF of E^−γ in E^(1−γ)
        return np.log10(a + (b - a) * u) / (1 - g)

    def _sample_zenith(self, rng: np.random.Generator, n: int) -> np.ndarray:
        c2min = math.cos(math.radians(self.cfg.max_zenith_deg)) ** 2
        return np.arccos(np.sqrt(c2min + (1 - c2min) * rng.random(n)))  # dN ∝ sinθ cosθ dθ

    def axis_distance(self, slant_depth: np.ndarray, cos_t: np.ndarray) -> np.ndarray:
        """Distance (m) along the axis from the ground core up to a slant depth (negative: below ground)."""
        h = height_of_depth(slant_depth * cos_t)
        return (h - self.cfg.altitude) / cos_t

    def s1000_reference(self, lg_energy: np.ndarray, zenith: np.ndarray) -> np.ndarray:
        """S(1000) in VEM of the reference shower: S38 = (E/0.186 EeV)^(1/1.03) times f_CIC(θ)."""
        s38 = (10.0 ** (np.asarray(lg_energy) - 18.0) / 0.186) ** (1.0 / 1.03)
        a, b, c = self.cfg.cic
        x = np.cos(zenith) ** 2 - math.cos(math.radians(38.0)) ** 2
        return s38 * (1.0 + a * x + b * x**2 + c * x**3)

    def muon_fraction(self, zenith: np.ndarray) -> np.ndarray:
        """Muonic share of the reference S(1000), linear in sec θ from vertical to 60°."""
        t = (1.0 / np.cos(zenith) - 1.0) / (2.0 - 1.0)
        return self.cfg.muon_fraction_vertical + (self.cfg.muon_fraction_60 - self.cfg.muon_fraction_vertical) * t

    # ------------------------------------------------------------------ main entry
    def simulate(self, n: int, rng: np.random.Generator, *, primary=None, lg_energy=None, zenith=None, xmax=None,
                 return_truth: bool = False) -> dict[str, np.ndarray]:
        """``n`` accepted events (≥ ``min_stations`` triggered stations) as a dict of arrays."""
        parts: list[dict[str, np.ndarray]] = []
        have = 0
        while have < n:
            need = n - have
            batch = self._simulate_batch(max(need + need // 8 + 1, 1), rng, primary, lg_energy, zenith, xmax,
                                         return_truth)
            ok = batch["mask"].sum(axis=(1, 2)) >= self.cfg.min_stations
            batch = {k: v[ok][:need] for k, v in batch.items()}
            parts.append(batch)
            have += len(batch["xmax"])
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _simulate_batch(self, n, rng, primary, lg_energy, zenith, xmax, return_truth) -> dict[str, np.ndarray]:
        cfg = self.cfg
        # ---- event level
        if primary is None:
            pid = self.primary_index[rng.choice(len(self.primary_index), size=n, p=self.primary_prob)]
        else:
            pid = np.full(n, PRIMARIES.index(primary) if isinstance(primary, str) else int(primary))
        ln_a = LN_A[pid]
        lge = self._sample_energy(rng, n) if lg_energy is None else np.full(n, float(lg_energy))
        theta = self._sample_zenith(rng, n) if zenith is None else np.full(n, float(zenith))
        phi = rng.uniform(0.0, 2 * math.pi, n)
        xm = sample_xmax(rng, lge, ln_a) if xmax is None else np.full(n, float(xmax))
        cos_t = np.cos(theta)
        x_slant_ground = self.x_ground / cos_t
        dx = x_slant_ground - xm  # g/cm²
        d_xmax = self.axis_distance(xm, cos_t)  # m from ground core to X_max
        r_curv = np.maximum(self.axis_distance(np.maximum(xm - cfg.curvature_depth_offset, 50.0), cos_t), 1000.0)
        axis = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), cos_t], axis=-1)  # (n, 3)

        # ---- geometry: core uniform in the rhombus cell of station (0, 0); expected hottest corner = centre
        u, v = rng.random(n), rng.random(n)
        core_x, core_y = axial_to_xy(u, v, cfg.spacing)
        corner_q, corner_r = np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])
        cx, cy = axial_to_xy(corner_q, corner_r, cfg.spacing)
        d2 = (cx[None] - core_x[:, None]) ** 2 + (cy[None] - core_y[:, None]) ** 2  # (n, 4) nearest ≈ hottest
        k = np.argmin(d2, axis=1)
        cq, cr = corner_q[k], corner_r[k]
        q = cq[:, None, None] + self._dq[None]  # (n, M, M)
        r = cr[:, None, None] + self._dr[None]
        sx, sy = axial_to_xy(q, r, cfg.spacing)
        sz = cfg.altitude + cfg.altitude_spread * rng.standard_normal(q.shape)
        rel = np.stack([sx - core_x[:, None, None], sy - core_y[:, None, None], sz - cfg.altitude], axis=-1)
        along = np.einsum("nijc,nc->nij", rel, axis)  # (n, M, M) position along the axis (upstream > 0)
        r_ax = np.sqrt(np.maximum(np.sum(rel**2, axis=-1) - along**2, 0.0))
        r_ax = np.maximum(r_ax, 10.0)

        # ---- expected signals (VEM)
        s_ref = self.s1000_reference(lge, theta)  # (n,)
        fmu = self.muon_fraction(theta)
        spread = np.maximum(cfg.muon_spread_p + cfg.muon_spread_slope * ln_a, 0.02)
        mu_fluct = np.exp(spread * rng.standard_normal(n) - 0.5 * spread**2)
        s_mu_1000 = s_ref * fmu * np.exp(cfg.muon_mass_exponent * ln_a) * mu_fluct  # N_μ ∝ A^0.07
        dx_ref = x_slant_ground - cfg.em_xref
        s_em_1000 = s_ref * (1 - fmu) * np.exp(-(dx - dx_ref) / cfg.em_lambda)
        beta = cfg.ldf_beta_vertical + cfg.ldf_beta_slope * (1.0 / cos_t - 1.0)

        def ldf(b):  # modified NKG normalised at 1000 m, (n, M, M)
            b = b[:, None, None]
            return (r_ax / 1000.0) ** b * ((r_ax + 700.0) / 1700.0) ** (b + cfg.ldf_gamma)

        s_mu = s_mu_1000[:, None, None] * ldf(beta + cfg.ldf_mu_shift)
        s_em = s_em_1000[:, None, None] * ldf(beta + cfg.ldf_em_shift)

        # ---- time structure: log-normal delays behind the front, per-bin probabilities. Only stations with an
        # expected signal >= active_cut get a trace (P(>= 3 VEM | 0.2 VEM expected) ~ 1e-3); the rest are silent.
        geo = ((cfg.time_d_ref / np.maximum(d_xmax + cfg.time_d_offset, 300.0)) ** cfg.time_d_exponent)[:, None, None]
        rr = (r_ax / 1000.0) ** cfg.time_r_exponent
        active = (s_mu + s_em) >= cfg.active_cut  # (n, M, M)
        ev_i = np.nonzero(active)[0]
        med_mu = (cfg.mu_median_1000 * rr * geo + 10.0)[active]  # (K,)
        med_em = (cfg.em_median_factor * cfg.mu_median_1000 * rr * geo + cfg.em_median_offset)[active]
        edges = (np.arange(cfg.n_bins + 1) - cfg.pre_trigger_bins) * cfg.bin_ns  # ns after the front
        log_t = np.log(np.maximum(edges, 1e-3))[None, :]

        def binned(median, sig):  # (K, T)
            cdf = ndtr((log_t - np.log(median)[:, None]) / sig)
            cdf[:, edges <= 0] = 0.0
            return np.diff(cdf, axis=-1)

        q_mu = (np.minimum(1.0 / cos_t, 2.0) ** 0.6)[ev_i][:, None]  # VEM per muon (track length in the tank)
        n_mu = rng.poisson((s_mu[active][:, None] / q_mu) * binned(med_mu, cfg.mu_log_sigma))
        dep = q_mu * (n_mu + cfg.muon_amp_spread * np.sqrt(n_mu) * rng.standard_normal(n_mu.shape))
        n_em = rng.poisson((s_em[active] / cfg.em_quantum)[:, None] * binned(med_em, cfg.em_log_sigma))
        dep = np.maximum(dep, 0.0) + cfg.em_quantum * n_em  # (K, T) VEM deposited per bin
        a = math.exp(-cfg.bin_ns / cfg.tank_tau)
        tr = lfilter([1.0 - a], [1.0, -a], dep, axis=-1)  # exponential light decay, unit integral
        tr = rng.poisson(tr * cfg.pe_per_vem) / cfg.pe_per_vem  # photo-electron statistics
        tr = tr + cfg.baseline_noise * rng.standard_normal(tr.shape)
        trace = np.zeros(active.shape + (cfg.n_bins,), dtype=np.float32)
        trace[active] = np.minimum(tr, cfg.saturation)  # saturation of the per-bin signal
        signal = trace.sum(axis=-1, dtype=np.float64)

        # ---- timing, trigger
        t_front = -along / C_LIGHT + r_ax**2 / (2.0 * r_curv[:, None, None] * C_LIGHT)
        t_obs = t_front + cfg.time_jitter * rng.standard_normal(t_front.shape)
        alive = rng.random(signal.shape) >= cfg.dead_fraction
        mask = alive & (signal >= cfg.trigger_threshold)

        # ---- hottest station within the central 3×3 of the (n+2)² grid → crop the n×n patch around it
        g = cfg.grid_size
        h = g // 2 + 1
        centre = np.where(mask, signal, -np.inf)[:, h - 1 : h + 2, h - 1 : h + 2].reshape(n, 9)
        best = np.argmax(centre, axis=1)
        oq, orr = best // 3 - 1, best % 3 - 1  # offsets (-1..1)
        iq = (h + oq)[:, None] + np.arange(-(g // 2), g // 2 + 1)[None]  # (n, g) rows of the patch
        ir = (h + orr)[:, None] + np.arange(-(g // 2), g // 2 + 1)[None]
        ev = np.arange(n)[:, None, None]

        def crop(arr):
            return arr[ev, iq[:, :, None], ir[:, None, :]]

        mask_p = crop(mask)
        m = mask_p.astype(np.float64)
        hq, hr = h + oq, h + orr
        t_hot = t_obs[np.arange(n), hq, hr]
        x_hot, y_hot = sx[np.arange(n), hq, hr], sy[np.arange(n), hq, hr]
        pos = np.stack([crop(sx) - x_hot[:, None, None], crop(sy) - y_hot[:, None, None], crop(sz)], axis=-1)
        out = {
            "traces": (crop(trace) * m[..., None]).astype(np.float32),
            "times": ((crop(t_obs) - t_hot[:, None, None]) * m).astype(np.float32),
            "signals": (crop(signal) * m).astype(np.float32),
            "positions": pos.astype(np.float32),
            "mask": mask_p,
            "energy": 10.0**lge,
            "zenith": theta,
            "azimuth": phi,
            "core": np.stack([core_x - x_hot, core_y - y_hot, np.zeros(n)], axis=-1),
            "xmax": xm,
            "mass_number": MASS_NUMBER[pid],
            "primary": pid.astype(np.int64),
        }
        if return_truth:
            out["aux_r"] = crop(r_ax)
            out["aux_muon_signal"] = crop(s_mu)
            out["aux_em_signal"] = crop(s_em)
            out["aux_front_time"] = crop(t_front) - t_front[np.arange(n), hq, hr][:, None, None]
            out["aux_dx"] = dx
        return out


# ---------------------------------------------------------------------- derived observables (tests, notebooks)
def rise_time(traces: np.ndarray, bin_ns: float = 25.0) -> np.ndarray:
    """t1/2: time from 10 % to 50 % of the integrated trace (ns), linear interpolation; (..., T) → (...)."""
    cum = np.cumsum(np.maximum(traces, 0.0), axis=-1)
    tot = cum[..., -1:]
    frac = cum / np.where(tot > 0, tot, 1.0)

    def crossing(level):
        i = np.argmax(frac >= level, axis=-1)  # first bin reaching the level
        f1 = np.take_along_axis(frac, i[..., None], -1)[..., 0]
        f0 = np.where(i > 0, np.take_along_axis(frac, np.maximum(i - 1, 0)[..., None], -1)[..., 0], 0.0)
        return (i + (level - f0) / np.maximum(f1 - f0, 1e-12)) * bin_ns

    return crossing(0.5) - crossing(0.1)


# ---------------------------------------------------------------------- dataset
def _split_sizes(total: int, per_file: int) -> list[int]:
    sizes = [per_file] * (total // per_file)
    if total % per_file:
        sizes.append(total % per_file)
    return sizes


def run_generate(cfg) -> dict[str, Any]:
    """Generate ``{train,val,test}_{i:03d}.h5`` under ``cfg.gen.out_dir`` (``pipelines/generate.py gen=auger_sim``).

    ``cfg.gen`` (or ``cfg`` itself): ``out_dir``, ``n_train``/``n_val``/``n_test``, ``events_per_file``, ``chunk``
    (events per HDF5 chunk and per simulation batch), ``seed``, ``force``, ``progress``, ``trace_dtype``, ``sim``
    (→ :class:`SimConfig`). Every (split, file) gets its own seed sequence, so the output is reproducible and
    does not depend on how many files exist. ``manifest.json`` records the config under ``config``
    (:mod:`physics_tf.data.manifest`, written first as in progress, last as complete with every file's events and
    size); a matching complete manifest skips the work unless ``force``.
    """
    from omegaconf import OmegaConf
    from tqdm.auto import tqdm

    gen = cfg.gen if "gen" in cfg else cfg
    gen = OmegaConf.to_container(gen, resolve=True) if not isinstance(gen, dict) else dict(gen)
    sim_cfg = SimConfig(**(gen.get("sim") or {}))
    sim = AugerSimulator(sim_cfg)
    out = Path(gen["out_dir"])
    chunk = int(gen.get("chunk", 256))
    per_file = int(gen.get("events_per_file", 10000))
    seed = int(gen.get("seed", 0))
    trace_dtype = str(gen.get("trace_dtype", "float16"))
    splits = {s: int(gen.get(f"n_{s}", 0)) for s in ("train", "val", "test")}
    config = {"generator": "physics_tf.auger.simulate", "sim": asdict(sim_cfg), "splits": splits, "seed": seed,
              "events_per_file": per_file, "trace_dtype": trace_dtype}
    config["sim"]["primaries"] = list(sim_cfg.primaries)
    names = {split: [f"{split}_{i:03d}.h5" for i in range(len(_split_sizes(n, per_file)))]
             for split, n in splits.items()}
    old = manifest.up_to_date(out, "config", config, [f for fs in names.values() for f in fs],
                              bool(gen.get("force", False)))
    if old is not None:
        return old
    manifest.begin(out, {"config": manifest.as_json(config)})
    entries: dict[str, int] = {}  # file name -> events
    total = sum(splits.values())
    t0 = time.perf_counter()
    attrs = {"grid_size": sim_cfg.grid_size, "n_bins": sim_cfg.n_bins, "bin_ns": sim_cfg.bin_ns,
             "spacing": sim_cfg.spacing, "primaries": list(PRIMARIES), "sim_config": config["sim"]}
    with tqdm(total=total, unit="ev", desc="auger_sim", disable=not gen.get("progress", True)) as bar:
        for s_idx, (split, n_split) in enumerate(splits.items()):
            for f_idx, n_file in enumerate(_split_sizes(n_split, per_file)):
                rng = np.random.default_rng(np.random.SeedSequence([seed, s_idx, f_idx]))
                pieces = []
                for start in range(0, n_file, chunk):
                    pieces.append(sim.simulate(min(chunk, n_file - start), rng))
                    bar.update(len(pieces[-1]["xmax"]))
                events = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
                write_hdf5(out / names[split][f_idx], events, attrs, chunk=chunk, trace_dtype=trace_dtype)
                entries[names[split][f_idx]] = n_file
    dt = time.perf_counter() - t0
    result = {"config": manifest.as_json(config), "files": names, "seconds": round(dt, 2),
              "events_per_second": round(total / dt, 1) if dt > 0 else None}
    result = manifest.finish(out, result, entries)
    log.info("auger_sim: %d events in %.1f s (%.0f events/s) → %s", total, dt, total / max(dt, 1e-9), out)
    return result
