"""Auger surface-detector events: the file fields, the primaries and the units, defined once for the simulator, the
reader/writers, the data module and the models.

File layout (written by :mod:`physics_tf.auger.simulate`; users can write the same from their own simulations):
one entry per event with the station fields ``traces`` (n, n, T) VEM per bin, ``times`` (n, n) ns relative to
the hottest station, ``signals`` (n, n) VEM, ``positions`` (n, n, 3) m, ``mask`` (n, n) bool (True = triggered,
working station), and the event fields ``energy`` (eV), ``zenith``, ``azimuth`` (rad), ``core`` (3,) m,
``xmax`` (g/cm²), ``mass_number``, ``primary`` (index into :data:`PRIMARIES`). The n×n patch is in hexagonal
axial coordinates (q, r): x = d·(q + r/2), y = d·r·√3/2 with d = :data:`SPACING`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PRIMARIES",
    "MASS_NUMBER",
    "LN_A",
    "STATION_FIELDS",
    "EVENT_FIELDS",
    "SPACING",
    "ALTITUDE",
    "HEIGHT_UNIT",
    "C_LIGHT",
]

PRIMARIES = ("p", "He", "N", "Fe")
MASS_NUMBER = np.array([1.0, 4.0, 14.0, 56.0])  # per primary
LN_A = np.log(MASS_NUMBER)  # 0, 1.386, 2.639, 4.025

STATION_FIELDS = ("traces", "times", "signals", "positions", "mask")
EVENT_FIELDS = ("energy", "zenith", "azimuth", "core", "xmax", "mass_number", "primary")

# The array (files: metres) and the batch units (physics_tf.auger.data.to_batch): x, y in grid spacings,
# z − ALTITUDE in HEIGHT_UNIT, times in µs (files: ns).
SPACING = 1500.0  # m, distance between neighbouring stations
ALTITUDE = 1400.0  # m a.s.l. of the array
HEIGHT_UNIT = 100.0  # m
C_LIGHT = 0.299792458  # m / ns
