"""A PLAsTiCC-like multi-band light-curve simulator (12 classes, parametric models, LSST-like cadence).
Longer than 400 lines because it is one algorithm: the twelve class models share the colour, extinction,
cadence and noise code, and each formula stays next to the table row that documents it.

Every object is drawn from a documented parametric model (formulas from ``shared/PHYSICS.md``):

=====  =========  ============================================================================================
code   class      model (rest-frame time x = (t − t0)/(1 + z) for extragalactic classes)
=====  =========  ============================================================================================
90     SN Ia      Bazin (Bazin et al. 2009): f = A·e^(−x/τ_fall)/(1 + e^(−x/τ_rise)); τ_rise 2–5 d, τ_fall 20–40 d
42     SN II      Villar et al. (2019) plateau: f = A/(1 + e^(−x/τ_rise))·[1 − ν x/γ for x < γ;
                  (1 − ν)·e^(−(x−γ)/τ_fall) after], γ 60–100 d
62     SN Ibc     Bazin, τ_rise 3–8 d, τ_fall 12–25 d, redder
95     SLSN-I     Bazin, τ_rise 15–35 d, τ_fall 50–100 d, very luminous and blue
15     TDE        rise 1/(1 + e^(−x/τ_rise)) times the fallback power law (1 + max(x, 0)/τ_fall)^(−5/3), blue
64     kilonova   Bazin, τ_rise 0.1–0.4 d, τ_fall 1–2 d, red, low z
88     AGN        damped random walk (Kelly et al. 2009), exact update over a gap Δt:
                  m' = m̄ + (m − m̄)e^(−Δt/τ) + N(0, (SF∞²/2)(1 − e^(−2Δt/τ))), τ 100–1000 d, SF∞ 0.1–0.3 mag
92     RR Lyrae   asymmetric sawtooth in magnitude (fast rise over 15 % of the phase), P 0.3–0.9 d, 0.3–1.2 mag
16     EB         two Gaussian dips at phase 0 and 0.5 with unequal depths + ellipsoidal (1 − cos 4πφ)/2 term
65     M-dwarf    quiescent red star + flares: linear rise over τ_r then exponential decay e^(−Δt/τ_d); flare
                  amplitude (0.5–3)·F_r,quiescent·(λ/3685 Å)^(−3) (blue)
53     Mira       P 100–1000 d, amplitude 2.5–6 mag (g), m = m̄ − (A/2)·sin(2πφ + 0.4 sin 2πφ), very red
6      μ-lens     Paczyński: A(u) = (u² + 2)/(u·sqrt(u² + 4)), u = sqrt(u0² + ((t − t0)/tE)²), achromatic
=====  =========  ============================================================================================

Colours: each class has a rest-frame colour law (magnitude offsets at the six LSST band centres 3685, 4802, 6231,
7542, 8690, 9736 Å); an object observed at redshift z in band b takes the colour at rest wavelength λ_b/(1 + z)
(linear interpolation — a crude K-correction), plus a per-object jitter. Red bands of Bazin-type transients
decline more slowly: τ_fall,b = τ_fall·max(1 + s(λ_rest,b/6231 Å − 1), 0.5), kept ≥ 2 τ_rise.

Extragalactic objects (90, 42, 62, 95, 15, 64, 88): z uniform in a class range; time dilation (1 + z) of every
time scale; distance dimming m = M + μ(z) with μ = 5 log10(D_L / 10 pc) in flat ΛCDM (H0 = 70, Ωm = 0.3);
host photo-z = z + N(0, σ(1 + z)) with σ 0.02–0.08 and 5 % catastrophic outliers; ``distmod`` = μ(photo-z);
``hostgal_specz`` = z. Galactic objects: z = photo-z = 0, distmod NaN (as in PLAsTiCC).

Galactic extinction: E(B−V) = ``mwebv`` = 0.02/max(|sin b|, 0.1)·LogNormal(0, 0.4); A_b = R_b·E(B−V) with
R = (4.81, 3.64, 2.70, 2.06, 1.58, 1.31) for ugrizy (Schlafly & Finkbeiner 2011, R_V = 3.1).

Fluxes are difference-image fluxes in the zero point 27.5 system, flux = 10^(−0.4 (m − 27.5)), as in PLAsTiCC:
transients on an empty template (reference flux 0); for variables, AGN, flares and μ-lenses the reference image
holds the quiescent source, so the reported flux is F(t) − F_ref with F_ref the median model flux per band (or the
quiescent / baseline flux).

Cadence (LSST-like): ``n_seasons`` observing seasons of ~180 d, one per 365.25 d, phase set by the object's RA;
wide-fast-deep fields: visits separated by 0.5 d + Exp(3 d), each in one random band (with probability 0.3 a
second band the same night); deep-drilling fields (fraction ``ddf_fraction``): visits every 0.5 + Exp(1.5) d in
2–3 bands, 1 mag deeper.

Noise: per-visit 5σ depth m5 = depth_b + N(0, 0.25) (depths u 23.8, g 24.5, r 24.0, i 23.5, z 22.9, y 21.7);
sky noise σ_sky = f5/5 with f5 = 10^(−0.4 (m5 − 27.5)); source noise σ² = σ_sky² + σ_sky²·max(F_total, 0)/f5
(Poisson, in units where a 5σ source doubles the variance); flux = F + N(0, σ); ``detected`` = |flux/σ| > 5.
Objects with fewer than ``min_detections`` detections are redrawn (PLAsTiCC kept triggered objects only).

Everything is reproducible: object k of split s uses ``np.random.default_rng([seed, s, k])``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from physics_tf.data import manifest
from physics_tf.lightcurves.hdf5 import write_lightcurves_h5
from physics_tf.lightcurves.io import LightCurves, write_plasticc_csv

__all__ = ["CLASSES", "ClassSpec", "BAND_CENTRES", "DEPTHS", "R_EXT", "ZP", "distmod", "bazin", "villar",
           "paczynski", "drw", "draw_params", "model_flux", "simulate_object", "simulate", "write_dataset",
           "run_generate"]

log = logging.getLogger(__name__)

ZP = 27.5
BAND_CENTRES = np.array([3685.0, 4802.0, 6231.0, 7542.0, 8690.0, 9736.0])  # Å, u g r i z y
DEPTHS = np.array([23.8, 24.5, 24.0, 23.5, 22.9, 21.7])  # single-visit 5σ depths
R_EXT = np.array([4.81, 3.64, 2.70, 2.06, 1.58, 1.31])  # A_b / E(B−V), Schlafly & Finkbeiner 2011
MJD_START = 59580.0
H0, OMEGA_M = 70.0, 0.3
C_KM_S = 299792.458


# ------------------------------------------------------------------------------------------ physics
_ZGRID = np.linspace(0.0, 4.0, 4001)


def _dl_table() -> np.ndarray:
    ez = np.sqrt(OMEGA_M * (1 + _ZGRID) ** 3 + (1 - OMEGA_M))
    dc = np.concatenate([[0.0], np.cumsum(0.5 * (1 / ez[1:] + 1 / ez[:-1]) * np.diff(_ZGRID))]) * C_KM_S / H0
    return (1 + _ZGRID) * dc  # Mpc


_DL = _dl_table()


def distmod(z: float | np.ndarray) -> np.ndarray:
    """μ(z) = 5 log10(D_L / 10 pc), D_L = (1 + z)(c/H0)∫0^z dz'/E(z'), E = sqrt(Ωm(1+z)³ + 1 − Ωm) (flat ΛCDM)."""
    dl = np.interp(np.asarray(z, dtype=np.float64), _ZGRID, _DL)
    return 5.0 * np.log10(np.maximum(dl, 1e-12) * 1e6 / 10.0)


def bazin(x: np.ndarray, tau_rise, tau_fall) -> np.ndarray:
    """Bazin et al. (2009): e^(−x/τ_fall) / (1 + e^(−x/τ_rise)) (amplitude 1, no offset)."""
    return np.exp(-x / tau_fall - np.logaddexp(0.0, -x / tau_rise))


def villar(x: np.ndarray, tau_rise, tau_fall, gamma, nu) -> np.ndarray:
    """Villar et al. (2019): 1/(1 + e^(−x/τ_rise))·[1 − ν x/γ for x < γ; (1 − ν) e^(−(x−γ)/τ_fall) after]."""
    rise = np.exp(-np.logaddexp(0.0, -x / tau_rise))
    plateau = np.where(x < gamma, 1.0 - nu * x / gamma, (1.0 - nu) * np.exp(-np.maximum(x - gamma, 0) / tau_fall))
    return rise * plateau


def tde_shape(x: np.ndarray, tau_rise, tau_fall) -> np.ndarray:
    """Sigmoid rise times the fallback power law (1 + max(x, 0)/τ_fall)^(−5/3) (Rees 1988)."""
    return np.exp(-np.logaddexp(0.0, -x / tau_rise)) * (1.0 + np.maximum(x, 0.0) / tau_fall) ** (-5.0 / 3.0)


def paczynski(t: np.ndarray, t0, u0, t_e) -> np.ndarray:
    """Point-lens magnification A(u) = (u² + 2)/(u sqrt(u² + 4)), u = sqrt(u0² + ((t − t0)/tE)²) (Paczyński 1986)."""
    u = np.sqrt(u0**2 + ((t - t0) / t_e) ** 2)
    return (u**2 + 2) / (u * np.sqrt(u**2 + 4))


def drw(t: np.ndarray, tau: float, sf_inf: float, rng: np.random.Generator) -> np.ndarray:
    """Damped random walk (Ornstein–Uhlenbeck) with mean 0 at sorted times ``t``, exact update over Δt:
    x' = x e^(−Δt/τ) + N(0, (SF∞²/2)(1 − e^(−2Δt/τ))); x(t_0) ~ N(0, SF∞²/2) (stationary)."""
    x = np.empty(len(t))
    if len(t) == 0:
        return x
    x[0] = rng.normal(0.0, sf_inf / math.sqrt(2))
    decay = np.exp(-np.diff(t) / tau)
    noise = rng.normal(0.0, 1.0, len(t) - 1) * sf_inf / math.sqrt(2) * np.sqrt(1 - decay**2)
    for i in range(1, len(t)):
        x[i] = x[i - 1] * decay[i - 1] + noise[i - 1]
    return x


def _sawtooth(phase: np.ndarray, rise: float) -> np.ndarray:
    """Brightness in [0, 1]: linear rise over phase [0, rise), slow linear decline over [rise, 1)."""
    return np.where(phase < rise, phase / rise, (1.0 - phase) / (1.0 - rise))


def _wrap(d: np.ndarray) -> np.ndarray:
    return (d + 0.5) % 1.0 - 0.5


# ------------------------------------------------------------------------------------------ classes
@dataclass(frozen=True)
class ClassSpec:
    """One simulated class: PLAsTiCC code, name, extragalactic or not, z range, rest-frame colour law
    (magnitude offsets at the band centres; positive = fainter), peak absolute magnitude (mean, sd) for
    extragalactic classes or apparent mean magnitude range for Galactic ones."""

    code: int
    name: str
    extragalactic: bool
    z_range: tuple[float, float]
    colour: tuple[float, ...]
    mag: tuple[float, float]


CLASSES: dict[int, ClassSpec] = {c.code: c for c in [
    ClassSpec(90, "SNIa", True, (0.05, 0.9), (0.9, 0.0, 0.1, 0.5, 0.6, 0.7), (-19.3, 0.15)),
    ClassSpec(42, "SNII", True, (0.02, 0.35), (0.3, 0.0, 0.0, 0.1, 0.2, 0.3), (-17.0, 0.7)),
    ClassSpec(62, "SNIbc", True, (0.02, 0.4), (1.4, 0.5, 0.0, 0.0, 0.1, 0.2), (-17.6, 0.6)),
    ClassSpec(95, "SLSN-I", True, (0.3, 2.0), (-0.3, 0.0, 0.3, 0.6, 0.8, 1.0), (-21.5, 0.5)),
    ClassSpec(15, "TDE", True, (0.02, 0.5), (-0.5, 0.0, 0.5, 0.9, 1.2, 1.5), (-19.5, 0.5)),
    ClassSpec(64, "KN", True, (0.01, 0.12), (2.5, 1.5, 0.5, 0.0, -0.2, -0.3), (-16.0, 0.5)),
    ClassSpec(88, "AGN", True, (0.2, 3.0), (0.2, 0.0, -0.1, -0.2, -0.3, -0.4), (-23.0, 1.0)),
    ClassSpec(92, "RRLyrae", False, (0.0, 0.0), (1.2, 0.2, 0.0, 0.0, 0.0, 0.0), (15.0, 20.0)),
    ClassSpec(16, "EB", False, (0.0, 0.0), (1.0, 0.3, 0.0, -0.1, -0.2, -0.2), (15.0, 20.0)),
    ClassSpec(65, "Mdwarf", False, (0.0, 0.0), (4.5, 2.5, 1.0, 0.0, -0.5, -0.8), (17.0, 21.0)),
    ClassSpec(53, "Mira", False, (0.0, 0.0), (5.0, 3.0, 1.5, 0.0, -1.0, -1.5), (14.0, 18.0)),
    ClassSpec(6, "mu-Lens-Single", False, (0.0, 0.0), (1.0, 0.3, 0.0, -0.1, -0.2, -0.3), (17.0, 21.0)),
]}
_BAZIN = {90: ((2.0, 5.0), (20.0, 40.0), 0.6), 62: ((3.0, 8.0), (12.0, 25.0), 0.6),
          95: ((15.0, 35.0), (50.0, 100.0), 0.3), 64: ((0.1, 0.4), (1.0, 2.0), 1.0)}  # τ_rise, τ_fall, red slope


def draw_params(code: int, rng: np.random.Generator, survey: tuple[float, float] = (MJD_START, MJD_START + 1000.0)
                ) -> dict[str, Any]:
    """Random model parameters of one object of class ``code`` (rest-frame time scales; ``t0`` in MJD)."""
    spec = CLASSES[code]
    u = rng.uniform
    p: dict[str, Any] = {"code": code, "colour_jitter": rng.normal(0.0, 0.08, 6)}
    if spec.extragalactic:
        p["z"] = u(*spec.z_range)
        p["M"] = rng.normal(*spec.mag)
    else:
        p["z"] = 0.0
        p["m0"] = u(*spec.mag)
    p["t0"] = u(survey[0] - 30.0, survey[1])
    if code in _BAZIN:
        (r0, r1), (f0, f1), slope = _BAZIN[code]
        p.update(tau_rise=u(r0, r1), tau_fall=u(f0, f1), red_slope=slope)
    elif code == 42:
        p.update(tau_rise=u(2.0, 6.0), tau_fall=u(10.0, 30.0), gamma=u(60.0, 100.0), nu=u(0.0, 0.3))
    elif code == 15:
        p.update(tau_rise=u(10.0, 30.0), tau_fall=u(20.0, 60.0))
    elif code == 88:
        p.update(tau=u(100.0, 1000.0), sf_inf=u(0.1, 0.3))
    elif code == 92:
        p.update(period=u(0.3, 0.9), amp=u(0.3, 1.2), phase0=u(0, 1), rise=0.15)
    elif code == 16:
        d1 = u(0.1, 0.6)
        p.update(period=u(0.3, 10.0), depth1=d1, depth2=d1 * u(0.1, 0.9), width=u(0.02, 0.06),
                 ellip=u(0.0, 0.1), phase0=u(0, 1))
    elif code == 53:
        p.update(period=u(100.0, 1000.0), amp=u(2.5, 6.0), phase0=u(0, 1))
    elif code == 65:
        p.update(n_flares=int(rng.integers(1, 4)), flare_amp=u(0.5, 3.0), tau_r=u(0.005, 0.03),
                 tau_d=u(0.05, 0.3))
    elif code == 6:
        p.update(u0=u(0.05, 1.0), t_e=u(10.0, 100.0))
    return p


def _colour(spec: ClassSpec, z: float, jitter: np.ndarray) -> np.ndarray:
    """Per-band colour (mag offsets, (6,)) at the rest wavelengths λ_b/(1 + z)."""
    rest = BAND_CENTRES / (1.0 + z)
    return np.interp(rest, BAND_CENTRES, np.asarray(spec.colour)) + jitter


def _peak_normalised(shape: Callable[[np.ndarray, int], np.ndarray], lo: float, hi: float) -> np.ndarray:
    """Per-band maxima (6,) of shape(x, band) on a grid of rest times [lo, hi]."""
    grid = np.linspace(lo, hi, 4000)
    return np.array([max(shape(grid, b).max(), 1e-30) for b in range(6)])


def model_flux(p: Mapping[str, Any], mjd: np.ndarray, band: np.ndarray, mwebv: float = 0.0,
               rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless ``(difference flux, total source flux)`` of object ``p`` at ``mjd`` in bands ``band``.

    Difference flux = F(t) − F_ref (what PLAsTiCC reports); the total flux sets the Poisson noise. The AGN's
    random walk needs ``rng`` and sorted ``mjd``.
    """
    code = int(p["code"])
    spec = CLASSES[code]
    z = float(p["z"])
    band = np.asarray(band, dtype=np.int64)
    mjd = np.asarray(mjd, dtype=np.float64)
    ext = R_EXT * mwebv
    colour = _colour(spec, z, p["colour_jitter"])
    if spec.extragalactic:
        m_ref = p["M"] + float(distmod(z)) + colour + ext  # (6,) peak (or mean, AGN) apparent magnitude
    else:
        m_ref = p["m0"] + colour + ext
    f_ref = 10.0 ** (-0.4 * (m_ref - ZP))  # (6,)
    x = (mjd - p["t0"]) / (1.0 + z)  # rest-frame time (z = 0 for Galactic)
    rest_lam = BAND_CENTRES / (1.0 + z)

    if code in _BAZIN or code in (42, 15):
        if code in _BAZIN:
            stretch = np.maximum(1.0 + p["red_slope"] * (rest_lam / BAND_CENTRES[2] - 1.0), 0.5)  # (6,) redder: slower
            tau_fall = np.maximum(p["tau_fall"] * stretch, 2.0 * p["tau_rise"])  # (6,) τ_fall > τ_rise keeps f → 0 early
            shape = lambda xx, b: bazin(xx, p["tau_rise"], tau_fall[b])  # noqa: E731
            lo, hi = -10 * p["tau_rise"], 5 * tau_fall.max()
        elif code == 42:
            shape = lambda xx, b: villar(xx, p["tau_rise"], p["tau_fall"], p["gamma"], p["nu"])  # noqa: E731
            lo, hi = -10 * p["tau_rise"], p["gamma"] + 1
        else:
            shape = lambda xx, b: tde_shape(xx, p["tau_rise"], p["tau_fall"])  # noqa: E731
            lo, hi = -10 * p["tau_rise"], 10 * p["tau_rise"] + p["tau_fall"]
        peak = _peak_normalised(shape, lo, hi)
        out = np.empty(len(x))
        for b in np.unique(band):
            sel = band == b
            out[sel] = shape(x[sel], b) / peak[b]
        flux = f_ref[band] * out
        return flux, flux

    if code == 88:  # DRW in magnitude, one latent walk, bluer bands more variable
        if rng is None:
            raise ValueError("model_flux: the AGN needs rng")
        t_unique, inverse = np.unique(mjd, return_inverse=True)
        walk = drw(t_unique, p["tau"] * (1.0 + z), p["sf_inf"], rng)[inverse]
        amp = (rest_lam / BAND_CENTRES[1]) ** -0.5
        total = f_ref[band] * 10.0 ** (-0.4 * amp[band] * walk)
        return total - f_ref[band], total

    if code in (92, 16, 53):
        phase = ((mjd - p["t0"]) / p["period"] + p["phase0"]) % 1.0
        if code == 92:
            amp = p["amp"] * (BAND_CENTRES[1] / BAND_CENTRES) ** 0.8
            mag = -amp[band] * (_sawtooth(phase, p["rise"]) - 0.5)
            ref_grid = np.linspace(0, 1, 512, endpoint=False)
            med = np.median(-(_sawtooth(ref_grid, p["rise"]) - 0.5))
            total = f_ref[band] * 10.0 ** (-0.4 * mag)
            ref = f_ref[band] * 10.0 ** (-0.4 * amp[band] * med)
        elif code == 16:
            dip = lambda ph, c: np.exp(-0.5 * (_wrap(ph - c) / p["width"]) ** 2)  # noqa: E731
            depth = 1.0 + 0.1 * (BAND_CENTRES / BAND_CENTRES[2] - 1.0)  # slightly chromatic eclipses
            shape = 1.0 - depth[band] * (p["depth1"] * dip(phase, 0.0) + p["depth2"] * dip(phase, 0.5)) \
                - p["ellip"] * (1.0 - np.cos(4 * np.pi * phase)) / 2
            total = f_ref[band] * shape
            ref = f_ref[band] * (1.0 - p["ellip"] / 2)
        else:
            amp = p["amp"] * (BAND_CENTRES[1] / BAND_CENTRES)
            ang = 2 * np.pi * phase
            mag = -(amp[band] / 2) * np.sin(ang + 0.4 * np.sin(ang))
            total = f_ref[band] * 10.0 ** (-0.4 * mag)
            ref = f_ref[band]
        return total - ref, total

    if code == 65:
        quiet = f_ref[band]
        flare = np.zeros(len(mjd))
        amp = p["flare_amp"] * (BAND_CENTRES / BAND_CENTRES[0]) ** -3.0  # (6,) in units of the r-band quiescent flux
        for tf in np.atleast_1d(p["flare_times"]):
            dt = mjd - tf
            prof = np.where(dt < 0, 0.0, np.where(dt < p["tau_r"], dt / p["tau_r"],
                                                   np.exp(-np.maximum(dt - p["tau_r"], 0.0) / p["tau_d"])))
            flare += prof
        extra = f_ref[2] * amp[band] * flare
        return extra, quiet + extra

    if code == 6:
        mag_factor = paczynski(mjd, p["t0"], p["u0"], p["t_e"])
        total = f_ref[band] * mag_factor
        return total - f_ref[band], total
    raise ValueError(f"unknown class code {code}")


# ------------------------------------------------------------------------------------------ cadence
def cadence(rng: np.random.Generator, ra: float, ddf: bool, n_seasons: int = 3, season_days: float = 180.0
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mjd, band, m5)`` of an LSST-like observing sequence, sorted in time (see module docstring)."""
    start = MJD_START + (ra / 360.0) * 365.25 * 0.5
    times, bands = [], []
    for s in range(n_seasons):
        t = start + s * 365.25 + rng.uniform(0, 3)
        end = start + s * 365.25 + season_days * rng.uniform(0.85, 1.0)
        while t < end:
            if ddf:
                nb = int(rng.integers(2, 4))
                for j, b in enumerate(rng.choice(6, nb, replace=False)):
                    times.append(t + 0.01 * j)
                    bands.append(b)
                t += 0.5 + rng.exponential(1.5)
            else:
                times.append(t)
                bands.append(int(rng.integers(6)))
                if rng.random() < 0.3:
                    times.append(t + rng.uniform(0.02, 0.05))
                    bands.append(int(rng.integers(6)))
                t += 0.5 + rng.exponential(3.0)
    mjd = np.asarray(times)
    band = np.asarray(bands, dtype=np.int64)
    order = np.argsort(mjd, kind="stable")
    mjd, band = mjd[order], band[order]
    m5 = DEPTHS[band] + rng.normal(0.0, 0.25, len(mjd)) + (1.0 if ddf else 0.0)
    return mjd, band, m5


def _galactic(ra: float, dec: float) -> tuple[float, float]:
    """(l, b) in degrees from J2000 (ra, dec), via the standard equatorial → galactic rotation matrix."""
    r = np.array([[-0.0548755604, -0.8734370902, -0.4838350155],
                  [0.4941094279, -0.4448296300, 0.7469822445],
                  [-0.8676661490, -0.1980763734, 0.4559837762]])
    a, d = np.radians(ra), np.radians(dec)
    v = r @ np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])
    return float(np.degrees(np.arctan2(v[1], v[0])) % 360.0), float(np.degrees(np.arcsin(np.clip(v[2], -1, 1))))


def simulate_object(code: int, rng: np.random.Generator, n_seasons: int = 3, ddf_fraction: float = 0.1,
                    min_detections: int = 2, max_tries: int = 30) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One object: ``(obs {mjd, passband, flux, flux_err, detected}, metadata row)`` (see module docstring)."""
    spec = CLASSES[code]
    ra = rng.uniform(0.0, 360.0)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 0.2)))  # southern sky, like LSST
    gal_l, gal_b = _galactic(ra, dec)
    ddf = bool(rng.random() < ddf_fraction)
    mwebv = 0.02 / max(abs(math.sin(math.radians(gal_b))), 0.1) * rng.lognormal(0.0, 0.4)
    mjd, band, m5 = cadence(rng, ra, ddf, n_seasons)
    survey = (float(mjd[0]), float(mjd[-1]))
    for _ in range(max_tries):
        p = draw_params(code, rng, survey)
        if code == 65:  # flares placed where they are observed (PLAsTiCC kept variable M-dwarfs only)
            p["flare_times"] = mjd[rng.integers(len(mjd), size=p["n_flares"])] - rng.uniform(0, p["tau_d"], p["n_flares"])
        diff, total = model_flux(p, mjd, band, mwebv, rng)
        if not (np.all(np.isfinite(diff)) and np.all(np.isfinite(total))):
            raise FloatingPointError(f"class {code}: non-finite model flux for parameters {p}")
        f5 = 10.0 ** (-0.4 * (m5 - ZP))
        sky = f5 / 5.0
        err = np.sqrt(sky**2 + sky**2 * np.maximum(total, 0.0) / f5)
        flux = diff + rng.normal(0.0, 1.0, len(diff)) * err
        detected = np.abs(flux / err) > 5.0
        if detected.sum() >= min_detections:
            break
    z = float(p["z"])
    if spec.extragalactic:
        sigma = rng.uniform(0.02, 0.08)
        photoz = rng.uniform(0.05, 3.0) if rng.random() < 0.05 else max(z + rng.normal(0, sigma * (1 + z)), 0.001)
        photoz_err = sigma * (1 + photoz) * rng.lognormal(0.0, 0.2)
        dm = float(distmod(photoz))
    else:
        photoz = photoz_err = 0.0
        dm = float("nan")
    meta = {"ra": ra, "decl": dec, "gal_l": gal_l, "gal_b": gal_b, "ddf": float(ddf), "hostgal_specz": z,
            "hostgal_photoz": photoz, "hostgal_photoz_err": photoz_err, "distmod": dm, "mwebv": mwebv,
            "target": code}
    obs = {"mjd": mjd, "passband": band.astype(np.int8), "flux": flux, "flux_err": err,
           "detected": detected.astype(np.int8)}
    return obs, meta


def class_counts(n: int, classes: Sequence[int], fractions: Mapping[int, float] | None = None) -> dict[int, int]:
    """Objects per class: ``n`` split by ``fractions`` (default equal), largest-remainder rounding."""
    w = np.array([float((fractions or {}).get(c, 1.0)) for c in classes])
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"class fractions must be >= 0 and not all 0, got {fractions}")
    exact = n * w / w.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return {c: int(k) for c, k in zip(classes, counts)}


def simulate(n: int, seed: int = 0, split: int = 0, classes: Sequence[int] | None = None,
             fractions: Mapping[int, float] | None = None, n_seasons: int = 3, ddf_fraction: float = 0.1,
             min_detections: int = 2, id_offset: int = 0, progress: bool = False) -> LightCurves:
    """``n`` objects (classes interleaved) as :class:`LightCurves` with metadata; reproducible by ``seed``."""
    classes = list(classes) if classes is not None else list(CLASSES)
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise ValueError(f"unknown class codes {unknown}; known: {sorted(CLASSES)}")
    counts = class_counts(n, classes, fractions)
    codes = np.concatenate([np.full(k, c) for c, k in counts.items()]) if n else np.zeros(0, int)
    codes = np.random.default_rng([seed, split, 2**31]).permutation(codes)
    it = range(len(codes))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, unit="obj", desc=f"simulating light curves (split {split})", dynamic_ncols=True)
    obs_parts: list[dict] = []
    metas: list[dict] = []
    for k in it:
        obs, meta = simulate_object(int(codes[k]), np.random.default_rng([seed, split, k]), n_seasons,
                                    ddf_fraction, min_detections)
        obs_parts.append(obs)
        metas.append(meta)
    counts_arr = np.array([len(o["mjd"]) for o in obs_parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts_arr)]).astype(np.int64)
    obs = {f: np.concatenate([o[f] for o in obs_parts]) if obs_parts else np.zeros(0)
           for f in ("mjd", "passband", "flux", "flux_err", "detected")}
    meta = {c: np.array([m[c] for m in metas], dtype=np.int64 if c == "target" else np.float64)
            for c in (metas[0] if metas else {"target": 0})}
    return LightCurves(np.arange(id_offset, id_offset + len(codes), dtype=np.int64), offsets, obs, meta)


SPLITS = ("train", "val", "test")


def write_dataset(out_dir: str | Path, n: Mapping[str, int], seed: int = 42, classes: Sequence[int] | None = None,
                  fractions: Mapping[int, float] | None = None, n_seasons: int = 3, ddf_fraction: float = 0.1,
                  min_detections: int = 2, csv: bool = True, progress: bool = False,
                  request: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Simulate the splits ``n = {"train": ..., "val": ..., "test": ...}`` and write, atomically,
    ``{split}.h5`` (our layout) and with ``csv`` the PLAsTiCC files ``{split}_set.csv`` + ``{split}_metadata.csv``,
    with ``manifest.json`` (with ``request``, what :func:`run_generate` compares, when given) first as in progress
    and last as complete, listing every file's entries and size. Returns the manifest."""
    import time

    content: dict[str, Any] = {"generator": "physics_tf.lightcurves.simulate", "seed": seed,
                               "classes": list(classes or CLASSES), "fractions": dict(fractions or {}),
                               "n_seasons": n_seasons, "ddf_fraction": ddf_fraction,
                               "min_detections": min_detections, "splits": {}}
    if request is not None:
        content["request"] = dict(request)
    out = manifest.begin(out_dir, content)
    entries: dict[str, int] = {}  # file name -> objects (the light-curve CSV: observations)
    for i, split in enumerate(SPLITS):
        if not n.get(split):
            continue
        t = time.perf_counter()
        lc = simulate(int(n[split]), seed, i, classes, fractions, n_seasons, ddf_fraction, min_detections,
                      id_offset=(i + 1) * 10_000_000, progress=progress)
        dt = time.perf_counter() - t
        write_lightcurves_h5(lc, out / f"{split}.h5")
        entries[f"{split}.h5"] = len(lc)
        if csv:
            write_plasticc_csv(lc, out / f"{split}_set.csv", out / f"{split}_metadata.csv")
            entries.update({f"{split}_set.csv": int(lc.offsets[-1]), f"{split}_metadata.csv": len(lc)})
        content["splits"][split] = {"objects": len(lc), "observations": int(lc.offsets[-1]),
                                    "objects_per_s": round(len(lc) / dt, 1)}
        log.info("%s: %d objects, %d observations, %.0f objects/s", split, len(lc), lc.offsets[-1], len(lc) / dt)
    return manifest.finish(out, content, entries)


def run_generate(cfg) -> dict[str, Any]:
    """Hydra entry (``gen._target_`` of ``conf/gen/lightcurves_sim.yaml``): simulate the dataset described by
    ``cfg.gen``; a ``manifest.json`` whose ``request`` matches (:mod:`physics_tf.data.manifest`) skips the work
    unless ``gen.force``."""
    from omegaconf import OmegaConf

    g = OmegaConf.to_container(cfg.gen, resolve=True)
    out = Path(g["out_dir"])
    n = {s: int(g.get(f"n_{s}", 0)) for s in SPLITS}
    fractions = {int(k): float(v) for k, v in (g.get("fractions") or {}).items()}
    key = {"seed": g["seed"], "classes": g.get("classes"), "fractions": fractions, "n": n,
           "n_seasons": g.get("n_seasons", 3), "ddf_fraction": g.get("ddf_fraction", 0.1),
           "min_detections": g.get("min_detections", 2)}
    old = manifest.up_to_date(out, "request", key, [f"{s}.h5" for s in SPLITS if n[s]], bool(g.get("force", False)))
    if old is not None:
        return old
    return write_dataset(out, n, int(g["seed"]), g.get("classes"), fractions, key["n_seasons"], key["ddf_fraction"],
                         key["min_detections"], bool(g.get("csv", True)), bool(g.get("progress", True)), request=key)
