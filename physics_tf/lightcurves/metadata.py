"""PLAsTiCC metadata CSVs in both layouts, read by their headers (no configuration), and the object-id lookup.

Layouts (the columns are found by name, in any order; extra columns are ignored):

* Kaggle 2018 training / blinded test: ``object_id,ra,decl,gal_l,gal_b,ddf,hostgal_specz,hostgal_photoz,
  hostgal_photoz_err,distmod,mwebv,target`` (no ``target`` in the blinded test set);
* the unblinded release (Zenodo 2539456, ``plasticc_test_metadata.csv`` / ``plasticc_train_metadata.csv``):
  ``object_id,ra,decl,ddf_bool,hostgal_specz,hostgal_photoz,hostgal_photoz_err,distmod,mwebv,target,true_target,
  true_submodel,true_z,true_distmod,true_lensdmu,true_vpec,true_rv,true_av,true_peakmjd,libid_cadence,tflux_u,
  ...,tflux_y``.

Rules: ``true_target`` wins over ``target`` when both are there (the release's ``target`` is a placeholder);
``ddf_bool`` is read as ``ddf``; ``gal_l`` / ``gal_b``, when absent, are computed from ``ra`` / ``decl``
(:func:`physics_tf.lightcurves.coords.galactic_from_equatorial`: J2000 → IAU 1958 Galactic, as astropy);
``hostgal_specz < 0`` (the release writes −9 for "no spectroscopic redshift") becomes NaN. Class codes are kept
as written (the data module maps 991–995 to 99). Each object's CSV line is kept as ``metadata_line``, so a
later error (an unknown class) names the CSV, its line, the object and the column.

The file is parsed in chunks of ``chunk_rows`` lines with numpy's C reader (``np.loadtxt``), falling back to
``np.genfromtxt`` for a chunk with empty fields (Galactic objects' ``distmod``); only the columns above are kept:
memory is the table itself, 13 numbers per object (the 3.5 M objects of the unblinded test set: ~360 MB).
"""

from __future__ import annotations

import itertools
import os

import numpy as np

from physics_tf.data.errors import CorruptFileError, DataError, InvalidValueError, MissingFieldError
from physics_tf.lightcurves.coords import galactic_from_equatorial
from physics_tf.lightcurves.io import META_COLUMNS, _found, _open_text, _parse

__all__ = ["COLUMN_NAMES", "LINE_COLUMN", "metadata_columns", "read_metadata_csv", "MetaIndex"]

#: the names each metadata column may have in a header, the preferred first
COLUMN_NAMES = {"ddf": ("ddf", "ddf_bool"), "target": ("true_target", "target")}
#: the per-object CSV line number kept with the metadata
LINE_COLUMN = "metadata_line"
_OPTIONAL = ("gal_l", "gal_b", "target")


def metadata_columns(path: str | os.PathLike, head: str | None = None, require_target: bool = False
                     ) -> dict[str, tuple[int, str]]:
    """``{column: (index in the file, name in the header)}`` of the metadata columns a file has (header read)."""
    path = str(path)
    if head is None:
        with _open_text(path) as fh:
            head = fh.readline()
    if not head.strip():
        raise CorruptFileError(path, "empty file (no header line)")
    names = [c.strip() for c in head.strip().split(",")]
    found: dict[str, tuple[int, str]] = {}
    for col in META_COLUMNS:
        for name in COLUMN_NAMES.get(col, (col,)):
            if name in names:
                found[col] = (names.index(name), name)
                break
        else:
            if col not in _OPTIONAL or (col == "target" and require_target):
                alias = " or ".join(repr(n) for n in COLUMN_NAMES.get(col, (col,)))
                raise MissingFieldError(path, f"missing column {alias} (the header has {names})", col)
    return found


def _read_table(path: str, fh, usecols: list[int], chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, len(usecols)) float64 and each row's line number, parsed in chunks."""
    parts, line_parts, line_no = [], [], 2
    while True:
        raw = list(itertools.islice(fh, int(chunk_rows)))
        if not raw:
            break
        first, line_no = line_no, line_no + len(raw)
        keep = [k for k, ln in enumerate(raw) if ln.strip()]
        lines = [raw[k] for k in keep]
        if not lines:
            continue
        try:
            arr = np.loadtxt(lines, delimiter=",", usecols=usecols, dtype=np.float64, ndmin=2)
        except ValueError:  # empty fields (NaN), words, short rows: the careful reader, with line numbers
            arr = _parse(path, lines, first)
            if arr.shape[1] <= max(usecols):
                raise CorruptFileError(path, f"rows near line {first} have {arr.shape[1]} fields, "
                                       f"expected {max(usecols) + 1}") from None
            arr = arr[:, usecols]
        parts.append(arr)
        line_parts.append(first + np.asarray(keep, np.int64))
    if not parts:
        return np.zeros((0, len(usecols))), np.zeros(0, np.int64)
    return np.concatenate(parts), np.concatenate(line_parts)


def read_metadata_csv(path: str | os.PathLike, require_target: bool = False, chunk_rows: int = 1_000_000
                      ) -> dict[str, np.ndarray]:
    """The metadata columns of either layout (module docstring): ``object_id`` and ``target`` int64 (−1 when the
    file has no class column), ``metadata_line`` int64, the others float64."""
    path = str(path)
    with _open_text(path) as fh:
        head = fh.readline()
        cols = metadata_columns(path, head, require_target)
        names = list(cols)
        arr, row_lines = _read_table(path, fh, [cols[c][0] for c in names], chunk_rows)
    meta = {c: arr[:, j].copy() for j, c in enumerate(names)}
    del arr
    meta[LINE_COLUMN] = row_lines

    def bad_value(col: str, k: int, what: str) -> InvalidValueError:
        who = f"object_id {int(meta['object_id'][k])}: " if col != "object_id" else ""
        found = _found(path, int(row_lines[k]), cols[col][0])
        return InvalidValueError(path, f"line {row_lines[k]}: {who}{what} (found {found!r})", cols[col][1])

    oid = meta["object_id"]
    if not np.all(np.isfinite(oid)):
        raise bad_value("object_id", int(np.flatnonzero(~np.isfinite(oid))[0]), "object_id is empty / not a number")
    meta["object_id"] = oid.astype(np.int64)
    order = np.argsort(meta["object_id"], kind="stable")
    dup = np.flatnonzero(np.diff(meta["object_id"][order]) == 0)
    if len(dup):
        k = int(order[dup[0] + 1])
        raise InvalidValueError(path, f"line {row_lines[k]}: object_id {int(meta['object_id'][k])}: appears in more "
                                f"than one row (first at line {row_lines[order[dup[0]]]})", cols["object_id"][1])
    if "target" in meta:
        t = meta["target"]
        bad = ~np.isfinite(t) | (t != np.round(t))
        if bad.any():
            raise bad_value("target", int(np.flatnonzero(bad)[0]), "class code is empty / not an integer")
        meta["target"] = t.astype(np.int64)
    else:
        meta["target"] = np.full(len(oid), -1, np.int64)
    if "gal_l" not in meta or "gal_b" not in meta:
        gal_l, gal_b = galactic_from_equatorial(meta["ra"], meta["decl"])
        meta.setdefault("gal_l", gal_l)
        meta.setdefault("gal_b", gal_b)
    specz = meta["hostgal_specz"]
    specz[specz < 0] = np.nan  # −9: no spectroscopic redshift
    return meta


class MetaIndex:
    """Look up metadata rows by object id; remembers which were used (for the 'no observations' check)."""

    def __init__(self, meta: dict[str, np.ndarray], path: str):
        self.meta, self.path = meta, path
        self.order = np.argsort(meta["object_id"], kind="stable")
        self.sorted_ids = meta["object_id"][self.order]
        self.used = np.zeros(len(self.sorted_ids), bool)

    def rows(self, ids: np.ndarray, lc_path: str) -> np.ndarray:
        pos = np.searchsorted(self.sorted_ids, ids)
        pos_c = np.minimum(pos, max(len(self.sorted_ids) - 1, 0))
        ok = (pos < len(self.sorted_ids)) & (self.sorted_ids[pos_c] == ids) if len(self.sorted_ids) else \
            np.zeros(len(ids), bool)
        if not ok.all():
            bad = int(ids[~ok][0])
            raise DataError(self.path, f"object_id {bad} of {lc_path} has no metadata row "
                            "(metadata and light curves disagree on object ids)", "object_id")
        self.used[pos] = True
        return self.order[pos]

    def check_all_used(self, lc_path: str) -> None:
        if not self.used.all():
            bad = int(self.sorted_ids[~self.used][0])
            raise DataError(lc_path, f"object_id {bad} of {self.path} has no observations", "object_id")
