"""Galactic coordinates (l, b) from equatorial (ra, decl), for metadata files without ``gal_l`` / ``gal_b``.

PLAsTiCC's ``ra`` / ``decl`` are J2000 (ICRS) degrees. The Galactic frame is the IAU 1958 definition, carried to
J2000 the way astropy does it (``SkyCoord(ra, dec, frame="icrs").galactic``): the ICRS → FK5 (J2000) frame bias of
USNO circular 179 (η0 = −19.9 mas, ξ0 = 9.1 mas, dα0 = −22.9 mas), then the rotation that puts the north Galactic
pole at FK5 (α, δ) = (192.8594812065348°, 27.12825118085622°) with the Galactic centre at l = 0 (the pole's
longitude 122.9319185680026°). The product of the rotations is one 3×3 matrix applied to unit vectors; the
result agrees with astropy to ~1e-10 degrees (tests/test_plasticc_layouts.py), without needing astropy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ICRS_TO_GALACTIC", "galactic_from_equatorial"]

_MAS = 1.0 / 3_600_000.0  # degrees


def _rotation(angle_deg: float, axis: str) -> np.ndarray:
    """The matrix rotating the *coordinate frame* by ``angle_deg`` about ``axis`` (astropy's convention)."""
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    m = np.eye(3)
    m[i, i] = m[j, j] = c
    m[i, j], m[j, i] = s, -s
    return m


_ICRS_TO_FK5 = _rotation(19.9 * _MAS, "x") @ _rotation(9.1 * _MAS, "y") @ _rotation(-22.9 * _MAS, "z")
_FK5_TO_GALACTIC = (_rotation(180.0 - 122.9319185680026, "z") @ _rotation(90.0 - 27.12825118085622, "y")
                    @ _rotation(192.8594812065348, "z"))
#: unit vector in ICRS → unit vector in the Galactic frame
ICRS_TO_GALACTIC = _FK5_TO_GALACTIC @ _ICRS_TO_FK5


def galactic_from_equatorial(ra, decl) -> tuple[np.ndarray, np.ndarray]:
    """``(gal_l, gal_b)`` in degrees (l in [0, 360)) of J2000 ``ra``, ``decl`` in degrees (arrays; NaN stays NaN)."""
    a, d = np.radians(np.asarray(ra, np.float64)), np.radians(np.asarray(decl, np.float64))
    v = np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=0)  # (3, N)
    x, y, z = np.tensordot(ICRS_TO_GALACTIC, v, axes=1)
    lon = np.degrees(np.arctan2(y, x)) % 360.0
    lat = np.degrees(np.arctan2(z, np.hypot(x, y)))
    return lon, lat
