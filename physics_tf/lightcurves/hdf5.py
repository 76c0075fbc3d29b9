"""Our HDF5 layout of light curves: chunked writer, reader, and streaming PLAsTiCC CSV → HDF5 conversion.

The layout (``format = "physics_tf.lightcurves"``, version 1) stores the arrays of a
:class:`~physics_tf.lightcurves.io.LightCurves`, every dataset chunked and gzip-compressed::

    /object_id          (N,)   int64
    /offsets            (N+1,) int64
    /obs/mjd, /obs/flux, /obs/flux_err   (M,) float64
    /obs/passband, /obs/detected         (M,) int8
    /meta/<column>      (N,)   float64 (``target``: int64, −1 = unknown)

A file that is not HDF5, lacks the ``format`` attribute or a dataset raises a one-line
:class:`~physics_tf.data.errors.DataError`; the checks of the CSV input are those of :mod:`physics_tf.lightcurves.io`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from physics_tf.data.atomic import atomic_path
from physics_tf.data.errors import CorruptFileError, MissingFieldError
from physics_tf.lightcurves.io import BANDS, OBS_DTYPES, OBS_FIELDS, LightCurves, iter_plasticc_csv

__all__ = ["H5_FORMAT", "H5_VERSION", "LightCurveH5Writer", "write_lightcurves_h5", "read_lightcurves_h5",
           "convert_plasticc_csv"]

H5_FORMAT = "physics_tf.lightcurves"
H5_VERSION = 1


class LightCurveH5Writer:
    """Append :class:`LightCurves` chunks to our HDF5 layout; the file appears atomically on close.

    >>> with LightCurveH5Writer("train.h5") as w:  # doctest: +SKIP
    ...     for chunk in iter_lightcurve_csv("training_set.csv"):
    ...         w.append(chunk)
    """

    def __init__(self, path: str | os.PathLike, chunk: int = 65_536, compression: str = "gzip", level: int = 4,
                 attrs: dict | None = None):
        self.path = Path(path)
        self.chunk, self.compression, self.level = int(chunk), compression, level
        self.attrs = dict(attrs or {})
        self._ctx = None
        self._f = None
        self._n = 0
        self._m = 0
        self._buffer: list[LightCurves] = []
        self._buffered = 0

    def __enter__(self) -> "LightCurveH5Writer":
        import h5py

        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._f = h5py.File(tmp, "w")
        self._f.attrs["format"] = H5_FORMAT
        self._f.attrs["version"] = H5_VERSION
        self._f.attrs["bands"] = ",".join(BANDS)
        for k, v in self.attrs.items():
            self._f.attrs[k] = v
        self._dataset("offsets", np.int64)
        self._f["offsets"].resize((1,))
        self._f["offsets"][0] = 0
        return self

    def _dataset(self, name: str, dtype) -> None:
        opts = {"compression_opts": self.level} if self.compression == "gzip" else {}
        self._f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(self.chunk,),
                               compression=self.compression, shuffle=True, **opts)

    @staticmethod
    def _extend(ds, values: np.ndarray) -> None:
        n = ds.shape[0]
        ds.resize((n + len(values),))
        ds[n:] = values

    def append(self, lc: LightCurves) -> None:
        """Queue ``lc``; written in blocks of at least ``chunk`` observations (one compression per HDF5 chunk)."""
        self._buffer.append(lc)
        self._buffered += int(lc.offsets[-1])
        if self._buffered >= 4 * self.chunk:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        lc = LightCurves.concatenate(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        self._buffer, self._buffered = [], 0
        f = self._f
        if "object_id" not in f:
            self._dataset("object_id", np.int64)
            for name in OBS_FIELDS:
                self._dataset(f"obs/{name}", OBS_DTYPES[name])
            for col, a in lc.meta.items():
                self._dataset(f"meta/{col}", np.int64 if col == "target" else np.float64)
        missing = set(f["meta"]) ^ set(lc.meta) if "meta" in f else set(lc.meta)
        if missing:
            raise ValueError(f"{self.path}: metadata columns differ between appended chunks: {sorted(missing)}")
        self._extend(f["object_id"], lc.object_id)
        self._extend(f["offsets"], lc.offsets[1:] + self._m)
        for name in OBS_FIELDS:
            self._extend(f[f"obs/{name}"], lc.obs[name].astype(OBS_DTYPES[name]))
        for col, a in lc.meta.items():
            self._extend(f[f"meta/{col}"], a)
        self._n += len(lc)
        self._m += int(lc.offsets[-1])

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._flush()
        self._f.attrs["num_objects"] = self._n
        self._f.attrs["num_observations"] = self._m
        self._f.close()
        self._ctx.__exit__(exc_type, exc, tb)


def write_lightcurves_h5(lc: LightCurves, path: str | os.PathLike, **kw) -> None:
    """Write one :class:`LightCurves` to our HDF5 layout (atomically)."""
    with LightCurveH5Writer(path, **kw) as w:
        w.append(lc)


def read_lightcurves_h5(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> LightCurves:
    """Objects ``start:stop`` of a file in our HDF5 layout."""
    import h5py

    path = str(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise CorruptFileError(path, f"cannot open as HDF5 ({err})") from None
    with f:
        if f.attrs.get("format") != H5_FORMAT:
            raise CorruptFileError(path, f"not a physics_tf light-curve file (attribute format = "
                                   f"{f.attrs.get('format')!r}, expected {H5_FORMAT!r})")
        for name in ["object_id", "offsets", *(f"obs/{o}" for o in OBS_FIELDS)]:
            if name not in f:
                raise MissingFieldError(path, "dataset missing", name)
        n = f["object_id"].shape[0]
        stop = n if stop is None else min(int(stop), n)
        offsets = f["offsets"][start:stop + 1].astype(np.int64)
        s, e = int(offsets[0]), int(offsets[-1])
        obs = {o: f[f"obs/{o}"][s:e] for o in OBS_FIELDS}
        meta = {c: f[f"meta/{c}"][start:stop] for c in f["meta"]} if "meta" in f else {}
        return LightCurves(f["object_id"][start:stop], offsets - s, obs, meta)


def convert_plasticc_csv(lc_path: str | os.PathLike, meta_path: str | os.PathLike, out_path: str | os.PathLike,
                         chunk_rows: int = 1_000_000, partial_metadata: bool = False) -> Path:
    """Stream a PLAsTiCC light-curve CSV + metadata CSV into our HDF5 layout (written atomically).

    Memory: the metadata table plus about ``chunk_rows`` observations. Every bad-input check of
    :func:`~physics_tf.lightcurves.io.read_plasticc_csv` applies (``partial_metadata`` as there); on an error no
    output file is left behind.
    """
    chunks = iter_plasticc_csv(lc_path, meta_path, chunk_rows, partial_metadata)  # reads the metadata now
    with LightCurveH5Writer(out_path, attrs={"source": f"{lc_path} + {meta_path}"}) as w:
        for lc in chunks:
            w.append(lc)
    return Path(out_path)
