"""Our HDF5 layout of light curves: chunked writer, reader, and streaming PLAsTiCC CSV → HDF5 conversion.

The layout (``format = "physics_tf.lightcurves"``, version 1) stores the arrays of a
:class:`~physics_tf.lightcurves.io.LightCurves`, every dataset chunked and gzip-compressed::

    /object_id          (N,)   int64
    /offsets            (N+1,) int64
    /obs/mjd, /obs/flux, /obs/flux_err   (M,) float64
    /obs/passband, /obs/detected         (M,) int8
    /meta/<column>      (N,)   float64 (``target``: int64, −1 = unknown)
    /meta_line          (N,)   int64, converted files only: each object's line in its metadata CSV

A file converted from CSV (:func:`convert_plasticc_csv`) is a cache of its sources: its attributes record them
(``source``, ``metadata_source``, ``target_column``: the metadata column the class codes came from, "" when none)
and their size and mtime (``source_stat``, ``metadata_stat``: "<bytes>:<mtime ns>"); :func:`cache_is_fresh`
compares those with the files, and a changed source is converted again.

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
           "convert_plasticc_csv", "file_stat", "cache_is_fresh"]

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
            if lc.meta_line is not None:
                self._dataset("meta_line", np.int64)
        missing = set(f["meta"]) ^ set(lc.meta) if "meta" in f else set(lc.meta)
        if missing:
            raise ValueError(f"{self.path}: metadata columns differ between appended chunks: {sorted(missing)}")
        self._extend(f["object_id"], lc.object_id)
        self._extend(f["offsets"], lc.offsets[1:] + self._m)
        for name in OBS_FIELDS:
            self._extend(f[f"obs/{name}"], lc.obs[name].astype(OBS_DTYPES[name]))
        for col, a in lc.meta.items():
            self._extend(f[f"meta/{col}"], a)
        if "meta_line" in f:
            self._extend(f["meta_line"], lc.meta_line)
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


def read_lightcurves_h5(path, start: int = 0, stop: int | None = None) -> LightCurves:
    """Objects ``start:stop`` of a file in our HDF5 layout (``path``: a path, or an open ``h5py.File``)."""
    import h5py

    if isinstance(path, h5py.File):  # an open file (a streaming reader keeps its files open): left open
        return _read_objects(path, path.filename, start, stop)
    path = str(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise CorruptFileError(path, f"cannot open as HDF5 ({err})") from None
    with f:
        return _read_objects(f, path, start, stop)


def _read_objects(f, path: str, start: int, stop: int | None) -> LightCurves:
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
    lines = f["meta_line"][start:stop] if "meta_line" in f else None
    return LightCurves(f["object_id"][start:stop], offsets - s, obs, meta, lines)


def file_stat(path: str | os.PathLike) -> str:
    """``"<bytes>:<mtime ns>"`` of ``path``: what a cache records of its source."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def cache_is_fresh(out_path: str | os.PathLike, lc_path: str | os.PathLike, meta_path: str | os.PathLike) -> bool:
    """Whether ``out_path`` exists and was converted from these two files as they are now (size and mtime)."""
    import h5py

    try:
        with h5py.File(out_path, "r") as f:
            attrs = {k: f.attrs.get(k) for k in ("format", "source_stat", "metadata_stat")}
    except (OSError, ValueError):
        return False
    return (attrs["format"] == H5_FORMAT and attrs["source_stat"] == file_stat(lc_path)
            and attrs["metadata_stat"] == file_stat(meta_path))


def convert_plasticc_csv(lc_path: str | os.PathLike, meta_path: str | os.PathLike, out_path: str | os.PathLike,
                         chunk_rows: int = 1_000_000, partial_metadata: bool = False,
                         metadata: dict[str, np.ndarray] | None = None) -> Path:
    """Stream a PLAsTiCC light-curve CSV + metadata CSV into our HDF5 layout (written atomically).

    Memory: the metadata table plus about ``chunk_rows`` observations. Every bad-input check of
    :func:`~physics_tf.lightcurves.io.read_plasticc_csv` applies (``partial_metadata`` as there); on an error no
    output file is left behind. ``metadata``: the table of ``meta_path`` already read
    (:func:`physics_tf.lightcurves.metadata.read_metadata_csv`), for several light-curve files of one metadata file.
    """
    from physics_tf.lightcurves.metadata import metadata_columns

    stats = {"source_stat": file_stat(lc_path), "metadata_stat": file_stat(meta_path)}  # before reading them
    chunks = iter_plasticc_csv(lc_path, meta_path, chunk_rows, partial_metadata, metadata)  # reads the metadata now
    target = metadata_columns(meta_path).get("target", (0, ""))[1]
    attrs = {"source": str(lc_path), "metadata_source": str(meta_path), "target_column": target, **stats}
    with LightCurveH5Writer(out_path, attrs=attrs, level=1) as w:  # a cache: fast compression
        for lc in chunks:
            w.append(lc)
    return Path(out_path)
