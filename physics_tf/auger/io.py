"""Auger event files: the reader (HDF5 or ROOT, layout of :mod:`physics_tf.auger.schema`) and the two writers.

HDF5: one dataset per field, events along axis 0 (:func:`write_hdf5`: chunked, gzip). ROOT: a TTree (default
``events``) with one fixed-size-array branch per field (``uproot`` writes and reads them as (N, n, n, T) arrays;
:func:`write_root`). Both writes are atomic (:func:`physics_tf.data.atomic.atomic_path`).

Training needs every field; prediction (``require_truth=False``) needs only the station fields, and reads the
event fields a file has as observers (:data:`OBSERVERS`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physics_tf.auger.schema import EVENT_FIELDS, PRIMARIES, STATION_FIELDS
from physics_tf.data.atomic import atomic_path
from physics_tf.data.errors import CorruptFileError, DataError, InvalidValueError, MissingFieldError

__all__ = ["AugerEventFile", "OBSERVERS", "observer_values", "write_hdf5", "write_root"]

# Per-event columns a prediction can copy (``observers=[...]``), each with the file field it is made of:
# the event fields, the shower core split into x, y, z, and lg(E/eV) and ln A derived from energy and mass number.
OBSERVERS: dict[str, str] = {"energy": "energy", "lg_energy": "energy", "zenith": "zenith", "azimuth": "azimuth",
                             "core_x": "core", "core_y": "core", "core_z": "core", "xmax": "xmax",
                             "mass_number": "mass_number", "lna": "mass_number", "primary": "primary"}


def observer_values(name: str, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    """The (B,) column of observer ``name`` from the raw fields of :meth:`AugerEventFile.read`."""
    value = np.asarray(raw[OBSERVERS[name]])
    if name.startswith("core_"):
        return value[:, "xyz".index(name[-1])]
    if name == "lg_energy":
        return np.log10(value.astype(np.float64))
    if name == "lna":
        return np.log(value.astype(np.float64))
    return value


class AugerEventFile:
    """One HDF5 (``.h5``/``.hdf5``) or ROOT (``.root``) file of events; checks the layout on opening.

    ``read(start, stop)`` returns the raw fields (numpy, file units) of events [start, stop), with the traces
    cut to the first ``n_bins`` bins; bad values raise a one-line :class:`DataError` naming file and field.
    With ``require_truth=False`` (prediction) only the station fields must exist; ``fields`` lists the event
    fields the file has. ``cache_bytes`` sets the HDF5 chunk cache (prediction reads one batch at a time: a cache
    that holds a whole compressed chunk decompresses it once).
    """

    def __init__(self, path: str | os.PathLike, grid_size: int, n_bins: int, treename: str = "events",
                 require_truth: bool = True, cache_bytes: int | None = None) -> None:
        self.path = str(path)
        self.grid_size, self.n_bins, self.treename = int(grid_size), int(n_bins), treename
        self.kind = "root" if self.path.endswith(".root") else "hdf5"
        self.cache_bytes = cache_bytes
        self._handle = None
        shapes = self._shapes()
        for name in STATION_FIELDS + (EVENT_FIELDS if require_truth else ()):
            if name not in shapes:
                raise MissingFieldError(self.path, f"missing (have {sorted(shapes)})", name)
        self.fields = tuple(STATION_FIELDS) + tuple(f for f in EVENT_FIELDS if f in shapes)
        self.n_events = int(shapes["mask"][0])
        n = self.grid_size
        expect = {"traces": (n, n), "times": (n, n), "signals": (n, n), "positions": (n, n, 3), "mask": (n, n),
                  "core": (3,)}
        for name, tail in expect.items():
            if name not in shapes:
                continue
            got = tuple(shapes[name][1 : 1 + len(tail)])
            if got != tail or (name != "traces" and len(shapes[name]) != 1 + len(tail)):
                raise DataError(self.path, f"shape {tuple(shapes[name][1:])} per event, expected {tail} "
                                f"(grid_size={n} in the config)", name)
        if len(shapes["traces"]) != 4:
            raise DataError(self.path, f"shape {tuple(shapes['traces'][1:])} per event, expected ({n}, {n}, T)",
                            "traces")
        if shapes["traces"][3] < self.n_bins:
            raise DataError(self.path, f"traces have {shapes['traces'][3]} bins, the config expects "
                            f"n_bins={self.n_bins}", "traces")
        for name in self.fields:
            if shapes[name][0] != self.n_events:
                raise DataError(self.path, f"{shapes[name][0]} entries but mask has {self.n_events}", name)

    def _open(self):
        if self._handle is None:
            try:
                if self.kind == "root":
                    import uproot

                    self._handle = uproot.open(self.path)[self.treename]
                else:
                    import h5py

                    extra = {} if self.cache_bytes is None else {"rdcc_nbytes": int(self.cache_bytes)}
                    self._handle = h5py.File(self.path, "r", **extra)
            except (OSError, ValueError, KeyError) as err:
                raise CorruptFileError(self.path, f"cannot open as {self.kind}: {err}") from None
        return self._handle

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        h = self._open()
        if self.kind == "hdf5":
            return {k: tuple(v.shape) for k, v in h.items() if hasattr(v, "shape")}
        n = int(h.num_entries)
        first = h.arrays(library="np", entry_stop=1) if n else {}  # TTree or RNTuple: shapes from one entry
        return {name: (n, *np.asarray(first[name]).shape[1:]) for name in first}

    def close(self) -> None:
        if self._handle is not None and self.kind == "hdf5":
            self._handle.close()
        self._handle = None

    def __getstate__(self):  # picklable for DataLoader workers: reopen lazily
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def read(self, start: int, stop: int, fields: Sequence[str] | None = None, allow_empty: bool = False
             ) -> dict[str, np.ndarray]:
        """Events [start, stop): ``fields`` (default: the station fields and every event field); an event with every
        station masked is an error unless ``allow_empty`` (prediction marks it as not scored)."""
        h = self._open()
        names = tuple(self.fields if fields is None else fields)
        if self.kind == "hdf5":
            out = {k: h[k][start:stop] for k in names}
        else:
            out = h.arrays(list(names), library="np", entry_start=start, entry_stop=stop)
            out = {k: np.asarray(out[k]) for k in names}
        out["traces"] = out["traces"][..., : self.n_bins]
        for name in ("traces", "times", "signals", "positions", "xmax", "energy", "zenith"):
            if name not in out:
                continue
            bad = ~np.isfinite(out[name].reshape(len(out[name]), -1)).all(axis=1)
            if bad.any():
                raise InvalidValueError(self.path, f"non-finite values in event {start + int(np.argmax(bad))}", name)
        empty = ~out["mask"].reshape(len(out["mask"]), -1).any(axis=1)
        if empty.any() and not allow_empty:
            raise InvalidValueError(self.path, f"event {start + int(np.argmax(empty))} has every station masked",
                                    "mask")
        prim = out.get("primary")
        if prim is not None and ((prim < 0) | (prim >= len(PRIMARIES))).any():
            raise InvalidValueError(self.path, f"primary index outside 0..{len(PRIMARIES) - 1}", "primary")
        return out


def write_root(path: str | os.PathLike, events: Mapping[str, np.ndarray], treename: str = "events") -> Path:
    """Write events (the fields of the module docstring; event fields may be left out, e.g. the truth of
    measured events) to a ROOT file atomically (fixed-size-array branches)."""
    import uproot

    arrays = {k: np.ascontiguousarray(events[k]) for k in _fields(events)}
    arrays = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in arrays.items()}  # no half in ROOT
    with atomic_path(path) as tmp:
        with uproot.recreate(tmp) as f:
            # a TTree (mktree; ``f[name] = {...}`` writes an RNTuple since uproot 5.7)
            f.mktree(treename, {k: np.dtype((v.dtype, v.shape[1:])) for k, v in arrays.items()}).extend(arrays)
    return Path(path)


def write_hdf5(path: str | Path, events: Mapping[str, np.ndarray], attrs: Mapping[str, Any], chunk: int = 256,
               trace_dtype: str = "float16") -> Path:
    """Write one file atomically: station fields and event truth (event fields may be left out), chunked (≈ one
    batch per chunk), gzip."""
    import h5py

    path = Path(path)
    n = len(events["mask"])
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for key in _fields(events):
                arr = np.asarray(events[key])
                if key == "traces":
                    arr = arr.astype(trace_dtype)
                ch = (max(1, min(chunk, n)),) + arr.shape[1:]
                f.create_dataset(key, data=arr, chunks=ch, compression="gzip", compression_opts=4, shuffle=True)
            for k, v in attrs.items():
                f.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v)
    return path


def _fields(events: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """The fields to write: every station field (a missing one is a KeyError) and the event fields given."""
    missing = [k for k in STATION_FIELDS if k not in events]
    if missing:
        raise KeyError(f"events: missing station fields {missing}")
    return tuple(STATION_FIELDS) + tuple(k for k in EVENT_FIELDS if k in events)
