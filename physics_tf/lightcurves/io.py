"""Light curves in the PLAsTiCC layout: the in-memory container, CSV readers and writer, padding to windows.

PLAsTiCC files (The PLAsTiCC team 2018, arXiv 1810.00001; see ``shared/PHYSICS.md``)
---------------------------------------------------------------------------------
* light curves ``*_set.csv``: ``object_id, mjd, passband, flux, flux_err, detected`` — one row per
  observation, rows of an object contiguous and in time order; passband 0–5 = u g r i z y; flux in the
  zero point 27.5 system, flux = 10^(−0.4 (m − 27.5)).
* metadata ``*_metadata.csv``: ``object_id, ra, decl, gal_l, gal_b, ddf, hostgal_specz, hostgal_photoz,
  hostgal_photoz_err, distmod, mwebv, target`` (``target`` absent in the blinded test set; ``distmod`` empty
  / NaN for Galactic objects). The unblinded release (Zenodo 2539456) has ``detected_bool`` in its light curves
  and its own metadata layout, read by header (:mod:`physics_tf.lightcurves.metadata`: ``true_target`` over
  ``target``, ``ddf_bool``, ``gal_l`` / ``gal_b`` computed when absent, ``hostgal_specz < 0`` → NaN). Files
  ending in ``.gz`` are read through gzip.

In memory a set of light curves is a :class:`LightCurves`: the observations of all objects flattened into
1-d arrays plus per-object ``offsets`` (object k owns rows ``offsets[k]:offsets[k+1]``) — awkward's
``ListOffsetArray`` layout; :meth:`LightCurves.to_awkward` gives the grouped ``ak.Array`` view without a copy
of the data. Our HDF5 layout of the same arrays, and the CSV → HDF5 conversion, are in
:mod:`physics_tf.lightcurves.hdf5`.

Bad input raises a one-line :class:`~physics_tf.data.errors.DataError` naming file, column, line, object id, value:
missing columns, unknown passband values, NaN flux (and NaN/negative flux_err, NaN mjd), objects with no
observations, metadata and light curves disagreeing on object ids, mjd not sorted within an object,
rows of one object not contiguous.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from physics_tf.data.errors import CorruptFileError, DataError, InvalidValueError, MissingFieldError
from physics_tf.data.atomic import atomic_path

__all__ = [
    "BANDS", "LC_COLUMNS", "META_COLUMNS", "OBS_FIELDS", "OBS_DTYPES", "LightCurves",
    "iter_lightcurve_csv", "read_metadata_csv", "iter_plasticc_csv", "read_plasticc_csv", "write_plasticc_csv",
    "pad_lightcurves", "window",
]

BANDS = ("u", "g", "r", "i", "z", "y")
LC_COLUMNS = ("object_id", "mjd", "passband", "flux", "flux_err", "detected")
META_COLUMNS = ("object_id", "ra", "decl", "gal_l", "gal_b", "ddf", "hostgal_specz", "hostgal_photoz",
                "hostgal_photoz_err", "distmod", "mwebv", "target")
OBS_FIELDS = ("mjd", "passband", "flux", "flux_err", "detected")
_ALIASES = {"detected": ("detected_bool",)}  # light-curve columns; metadata: physics_tf.lightcurves.metadata
OBS_DTYPES = {"mjd": np.float64, "passband": np.int8, "flux": np.float64, "flux_err": np.float64,
              "detected": np.int8}


@dataclass
class LightCurves:
    """Flattened observations + per-object offsets (awkward's layout) and per-object metadata columns."""

    object_id: np.ndarray  # (N,) int64
    offsets: np.ndarray  # (N+1,) int64
    obs: dict[str, np.ndarray]  # OBS_FIELDS → (M,)
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # column → (N,)
    meta_line: np.ndarray | None = None  # (N,) int64: each object's line in its metadata CSV (for error messages)

    def __len__(self) -> int:
        return len(self.object_id)

    @property
    def counts(self) -> np.ndarray:
        """Observations per object (N,)."""
        return np.diff(self.offsets)

    @property
    def target(self) -> np.ndarray | None:
        return self.meta.get("target")

    def object(self, k: int) -> dict[str, np.ndarray]:
        """The observations of object ``k`` (views)."""
        s, e = int(self.offsets[k]), int(self.offsets[k + 1])
        return {f: a[s:e] for f, a in self.obs.items()}

    def select(self, index: Sequence[int] | np.ndarray) -> "LightCurves":
        """Objects ``index`` (in that order) as a new :class:`LightCurves`."""
        index = np.asarray(index, dtype=np.int64)
        counts = self.counts[index]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        rows = np.concatenate([np.arange(self.offsets[k], self.offsets[k + 1]) for k in index]) if len(index) \
            else np.zeros(0, np.int64)
        return LightCurves(self.object_id[index], offsets, {f: a[rows] for f, a in self.obs.items()},
                           {c: a[index] for c, a in self.meta.items()},
                           None if self.meta_line is None else self.meta_line[index])

    @staticmethod
    def concatenate(parts: Sequence["LightCurves"]) -> "LightCurves":
        parts = list(parts)
        if not parts:
            return LightCurves(np.zeros(0, np.int64), np.zeros(1, np.int64),
                               {f: np.zeros(0, OBS_DTYPES[f]) for f in OBS_FIELDS})
        counts = np.concatenate([p.counts for p in parts])
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        meta_cols = set.intersection(*(set(p.meta) for p in parts))
        lines = None if any(p.meta_line is None for p in parts) else np.concatenate([p.meta_line for p in parts])
        return LightCurves(np.concatenate([p.object_id for p in parts]), offsets,
                           {f: np.concatenate([p.obs[f] for p in parts]) for f in OBS_FIELDS},
                           {c: np.concatenate([p.meta[c] for p in parts]) for c in sorted(meta_cols)}, lines)

    def to_awkward(self):
        """``ak.Array`` of records ``{object_id, mjd[var], passband[var], flux[var], flux_err[var], detected[var],
        <metadata columns>}`` sharing the flat buffers (no per-object copies)."""
        import awkward as ak

        offsets = ak.index.Index64(self.offsets)
        fields = {"object_id": ak.contents.NumpyArray(self.object_id)}
        for f, a in self.obs.items():
            fields[f] = ak.contents.ListOffsetArray(offsets, ak.contents.NumpyArray(a))
        for c, a in self.meta.items():
            fields[c] = ak.contents.NumpyArray(a)
        return ak.Array(ak.contents.RecordArray(list(fields.values()), list(fields)))


# ----------------------------------------------------------------------------------------------- CSV
def _header(path: str | os.PathLike, line: str, required: Sequence[str], optional: Sequence[str] = ()) -> dict:
    names = [c.strip() for c in line.strip().split(",")]
    index: dict[str, int] = {}
    for col in list(required) + list(optional):
        for name in (col, *_ALIASES.get(col, ())):
            if name in names:
                index[col] = names.index(name)
                break
        else:
            if col in required:
                raise MissingFieldError(path, f"missing column (the header has {names})", col)
    return index


def _open_text(path: str):
    if str(path).endswith(".gz"):
        import gzip

        return gzip.open(path, "rt")
    return open(path)


def _parse(path, lines: list[str], first_line: int) -> np.ndarray:
    """The numbers of CSV ``lines``: numpy's C reader, or (empty fields, words, short rows) ``np.genfromtxt``,
    which reads empty fields and words as NaN for the checks to report with their line and value."""
    try:
        return np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError:
        pass
    try:
        arr = np.genfromtxt(lines, delimiter=",", dtype=np.float64, ndmin=2, invalid_raise=True)
    except ValueError as err:
        raise CorruptFileError(path, f"lines {first_line}-{first_line + len(lines) - 1}: cannot parse ({err})") from None
    return arr


def _found(path, line: int, column: int) -> str:
    """Field ``column`` (0-based) of line ``line`` as written: for errors, as ``abc`` and ``""`` both parse to NaN."""
    with _open_text(path) as fh:
        text = next(itertools.islice(fh, line - 1, None), "")
    fields = text.rstrip("\r\n").split(",")
    return fields[column].strip() if column < len(fields) else "<missing>"


def _validate_chunk(path, oid: np.ndarray, obs: dict[str, np.ndarray], lines: np.ndarray,
                    columns: dict[str, int]) -> None:
    """One-line errors for the checks that need only the rows themselves (vectorised): file, column, line,
    object id and the value as written. ``lines``: each row's line number; ``columns``: the file's column indices."""
    def fail(bad: np.ndarray, col: str, what: str):
        k = int(np.flatnonzero(bad)[0])
        who = f"object_id {int(oid[k])}: " if np.isfinite(oid[k]) else ""
        raise InvalidValueError(path, f"line {int(lines[k])}: {who}{what} (found "
                                f"{_found(path, int(lines[k]), columns[col])!r})", col)

    bad = ~np.isfinite(oid)
    if bad.any():
        fail(bad, "object_id", "object_id is empty / not a number")
    pb = obs["passband"]
    bad = ~np.isfinite(pb) | (pb != np.round(pb)) | (pb < 0) | (pb >= len(BANDS))
    if bad.any():
        fail(bad, "passband", f"unknown passband value (expected integers 0-{len(BANDS) - 1} = {' '.join(BANDS)})")
    for col in ("mjd", "flux"):
        bad = ~np.isfinite(obs[col])
        if bad.any():
            fail(bad, col, "not a number / infinite")
    bad = ~np.isfinite(obs["flux_err"]) | (obs["flux_err"] < 0)
    if bad.any():
        fail(bad, "flux_err", "not a number / infinite / negative")
    same = oid[1:] == oid[:-1]
    bad = np.concatenate([[False], same & (np.diff(obs["mjd"]) < 0)])
    if bad.any():
        fail(bad, "mjd", "mjd not sorted in time within the object")


def iter_lightcurve_csv(path: str | os.PathLike, chunk_rows: int = 1_000_000) -> Iterator[LightCurves]:
    """Stream a PLAsTiCC light-curve CSV as :class:`LightCurves` chunks of whole objects (no metadata).

    At most about ``chunk_rows`` rows (plus one object carried over to the next chunk) are in memory.
    Rows of an object must be contiguous and sorted in mjd.
    """
    path = str(path)
    seen: set[int] = set()
    with _open_text(path) as fh:
        head = fh.readline()
        if not head.strip():
            raise CorruptFileError(path, "empty file (no header line)")
        idx = _header(path, head, LC_COLUMNS)
        carry: np.ndarray | None = None
        carry_lines: np.ndarray | None = None
        line_no = 2
        while True:
            raw = list(itertools.islice(fh, int(chunk_rows)))
            first, line_no = line_no, line_no + len(raw)
            row_lines = np.array([first + k for k, ln in enumerate(raw) if ln.strip()], np.int64)  # (rows,)
            lines = [ln for ln in raw if ln.strip()]
            last = not raw
            if lines:
                arr = _parse(path, lines, first)
                if arr.shape[1] <= max(idx.values()):
                    raise CorruptFileError(path, f"rows near line {first} have {arr.shape[1]} fields, "
                                           f"expected {max(idx.values()) + 1}")
                arr = arr[:, [idx[c] for c in LC_COLUMNS]]  # (rows, 6) in LC_COLUMNS order
                if carry is not None:
                    arr, row_lines = np.concatenate([carry, arr]), np.concatenate([carry_lines, row_lines])
            elif not last:  # a chunk of blank lines only
                continue
            elif carry is None:
                return
            else:
                arr, row_lines = carry, carry_lines
            oid = arr[:, 0]
            if not last:  # hold back the (possibly incomplete) last object
                cut = int(np.flatnonzero(oid != oid[-1])[-1]) + 1 if np.any(oid != oid[-1]) else 0
                carry, arr, oid = arr[cut:], arr[:cut], oid[:cut]
                carry_lines, row_lines = row_lines[cut:], row_lines[:cut]
            else:
                carry = carry_lines = None
            if len(arr) == 0:
                continue
            obs = {c: arr[:, j + 1] for j, c in enumerate(OBS_FIELDS)}
            _validate_chunk(path, oid, obs, row_lines, idx)
            starts = np.concatenate([[0], np.flatnonzero(oid[1:] != oid[:-1]) + 1])
            ids = oid[starts].astype(np.int64)
            dup = [int(i) for i in ids if int(i) in seen]
            if dup or len(set(ids.tolist())) != len(ids):
                bad = dup[0] if dup else int(ids[np.flatnonzero(np.bincount(np.unique(ids, return_inverse=True)[1]) > 1)[0]])
                raise InvalidValueError(path, f"object_id {bad}: rows of the object are not contiguous", "object_id")
            seen.update(ids.tolist())
            offsets = np.concatenate([starts, [len(oid)]]).astype(np.int64)
            yield LightCurves(ids, offsets, {c: obs[c].astype(OBS_DTYPES[c]) for c in OBS_FIELDS})
            if last:
                return


def read_metadata_csv(path: str | os.PathLike, require_target: bool = False) -> dict[str, np.ndarray]:
    """A metadata CSV of either PLAsTiCC layout: :func:`physics_tf.lightcurves.metadata.read_metadata_csv`."""
    from physics_tf.lightcurves.metadata import read_metadata_csv as read

    return read(path, require_target)


def iter_plasticc_csv(lc_path: str | os.PathLike, meta_path: str | os.PathLike, chunk_rows: int = 1_000_000,
                      partial_metadata: bool = False, metadata: dict[str, np.ndarray] | None = None
                      ) -> Iterator[LightCurves]:
    """Stream a light-curve CSV joined with its metadata CSV as :class:`LightCurves` chunks, objects in file order.

    The metadata CSV is read and checked here, before the light-curve file is opened (so a writer fed by this
    iterator creates nothing on a metadata error). Once the last chunk is out, a metadata row without
    observations is an error unless ``partial_metadata`` (PLAsTiCC's test metadata covers all 11 test
    light-curve files). ``metadata``: the table of ``meta_path`` already read (one metadata file for several
    light-curve files is read once)."""
    from physics_tf.lightcurves.metadata import LINE_COLUMN, MetaIndex

    index = MetaIndex(read_metadata_csv(meta_path) if metadata is None else metadata, str(meta_path))
    return _join_metadata(iter_lightcurve_csv(lc_path, chunk_rows), index, str(lc_path), partial_metadata,
                          LINE_COLUMN)


def _join_metadata(chunks: Iterator[LightCurves], index, lc_path: str, partial_metadata: bool,
                   line_column: str) -> Iterator[LightCurves]:
    for lc in chunks:
        rows = index.rows(lc.object_id, lc_path)
        lc.meta = {c: a[rows] for c, a in index.meta.items() if c not in ("object_id", line_column)}
        lc.meta_line = index.meta[line_column][rows]
        yield lc
    if not partial_metadata:
        index.check_all_used(lc_path)


def read_plasticc_csv(lc_path: str | os.PathLike, meta_path: str | os.PathLike | None = None,
                      chunk_rows: int = 1_000_000, partial_metadata: bool = False) -> LightCurves:
    """Read a light-curve CSV (and its metadata CSV) into one :class:`LightCurves`, objects in file order.

    ``partial_metadata=True`` accepts metadata rows without observations in this file (PLAsTiCC's test
    metadata covers all 11 test light-curve files); otherwise such a row is an error."""
    chunks = iter_lightcurve_csv(lc_path, chunk_rows) if meta_path is None else \
        iter_plasticc_csv(lc_path, meta_path, chunk_rows, partial_metadata)
    parts = list(chunks)
    if not parts:
        raise DataError(lc_path, "the file holds no observations")
    return LightCurves.concatenate(parts)


_LC_FMT = ["%d", "%.4f", "%d", "%.6f", "%.6f", "%d"]


def write_plasticc_csv(lc: LightCurves, lc_path: str | os.PathLike, meta_path: str | os.PathLike | None = None) -> None:
    """Write the PLAsTiCC light-curve CSV (mjd to 1e-4 d, flux to 1e-6) and metadata CSV, each atomically."""
    with atomic_path(lc_path) as tmp, open(tmp, "w") as fh:
        fh.write(",".join(LC_COLUMNS) + "\n")
        oid = np.repeat(lc.object_id, lc.counts)
        step = 500_000
        for s in range(0, len(oid), step):
            cols = [oid[s:s + step]] + [lc.obs[f][s:s + step] for f in OBS_FIELDS]
            np.savetxt(fh, np.column_stack(cols), fmt=_LC_FMT, delimiter=",")
    if meta_path is None:
        return
    cols = [c for c in META_COLUMNS[1:] if c in lc.meta]
    with atomic_path(meta_path) as tmp, open(tmp, "w") as fh:
        fh.write(",".join(["object_id", *cols]) + "\n")
        fmt = ["%d"] + ["%d" if c in ("ddf", "target") else "%.6f" for c in cols]
        np.savetxt(fh, np.column_stack([lc.object_id] + [lc.meta[c] for c in cols]), fmt=fmt, delimiter=",")


# ------------------------------------------------------------------------------------------- padding
def pad_lightcurves(lc: LightCurves, max_length: int, fields: Sequence[str] = OBS_FIELDS, keep: str = "first"
                    ) -> dict[str, np.ndarray]:
    """Pad / truncate every object to ``max_length`` observations: ``{field: (N, L), "mask": (N, L) bool}``.

    ``keep`` chooses the window of objects with more than ``max_length`` observations: ``"first"``, ``"last"``
    or ``"peak"`` (the window centred on the observation of highest flux/flux_err). Padding is zero;
    ``mask`` is True at real observations (the physics_tf convention).
    """
    if keep not in ("first", "last", "peak"):
        raise ValueError(f"keep: expected 'first', 'last' or 'peak', got {keep!r}")
    n, L = len(lc), int(max_length)
    out = {f: np.zeros((n, L), dtype=lc.obs[f].dtype) for f in fields}
    mask = np.zeros((n, L), dtype=bool)
    for k in range(n):
        s, e = int(lc.offsets[k]), int(lc.offsets[k + 1])
        a, b = window(lc.obs["flux"][s:e], lc.obs["flux_err"][s:e], L, keep)
        for f in fields:
            out[f][k, : b - a] = lc.obs[f][s + a:s + b]
        mask[k, : b - a] = True
    out["mask"] = mask
    return out


def window(flux: np.ndarray, flux_err: np.ndarray, length: int, keep: str = "first") -> tuple[int, int]:
    """``(a, b)``: the index range of at most ``length`` observations kept by :func:`pad_lightcurves`."""
    n = len(flux)
    if n <= length:
        return 0, n
    if keep == "first":
        return 0, length
    if keep == "last":
        return n - length, n
    peak = int(np.argmax(flux / np.maximum(flux_err, 1e-12)))
    a = min(max(peak - length // 2, 0), n - length)
    return a, a + length
