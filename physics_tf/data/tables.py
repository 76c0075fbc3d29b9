"""Tables of per-entry rows written in chunks — prediction outputs — to ROOT, Parquet or HDF5, atomically.

:class:`TableWriter` takes rows as dicts of equal-length 1-d numpy arrays (numbers, booleans or strings), buffers
them up to ``chunk_rows`` and writes each full buffer, so memory stays flat however many rows come. The format
follows the output's extension (:data:`FORMATS`):

* ``.root``: a TTree (``uproot`` ``mktree`` + ``extend``; ROOT and uproot read it) with one branch per column,
  strings as ``char*`` branches. The input files are a second small tree ``files`` (``index``, ``path``); the
  row's file is its ``file_index`` branch.
* ``.parquet``: one ``pyarrow`` ``ParquetWriter`` row group per chunk; ``file`` is a string column (dictionary
  encoded) next to ``file_index``.
* ``.h5`` / ``.hdf5``: one resizable, chunked, gzip-compressed 1-d dataset per column (strings as UTF-8 variable-length strings),
  ``file`` as in Parquet; the attributes ``files`` and ``columns`` (JSON) hold the file list and the column order.

The file is written under a temporary name next to the output and renamed onto it when the writer closes without
an error (:func:`physics_tf.data.atomic.atomic_path`). :func:`iter_table` reads a table back in chunks and
:func:`merge_tables` merges tables written by several processes (each sorted by ``file_index``, no file in two of
them) into one in ``file_index`` order, chunk by chunk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physics_tf.data.atomic import atomic_path
from physics_tf.data.errors import ConfigError

__all__ = ["FORMATS", "TableWriter", "iter_table", "merge_tables", "table_format"]

FORMATS = {".root": "root", ".parquet": "parquet", ".h5": "hdf5", ".hdf5": "hdf5"}
TREE, FILES_TREE, FILE_INDEX = "predictions", "files", "file_index"


def table_format(path: str | os.PathLike, key: str = "output") -> str:
    """``root`` | ``parquet`` | ``hdf5`` from the extension of ``path``; another one is a one-line ConfigError."""
    suffix = Path(str(path)).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(str(path), f"unknown output extension {suffix or '(none)'!r}; expected one of "
                          f"{sorted(FORMATS)}", key)
    return FORMATS[suffix]


def _is_text(a: np.ndarray) -> bool:
    return a.dtype.kind in "USO"


def _as_text(a: np.ndarray) -> np.ndarray:
    """Strings (str, bytes or objects) as an object array of str."""
    return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in a.tolist()], dtype=object)


class TableWriter:
    """Context manager writing rows to ``path`` (module docstring); ``files`` are the input files the rows'
    ``file_index`` column points into. ``rows`` counts the rows written. A table that received no row is not
    written (``path`` is left untouched)."""

    def __init__(self, path: str | os.PathLike, files: Sequence[str], chunk_rows: int = 65536) -> None:
        self.path, self.files = Path(path), [str(f) for f in files]
        self.format = table_format(self.path)
        self.chunk_rows = max(1, int(chunk_rows))
        self.rows, self._buffer, self._buffered = 0, [], 0
        self._columns: list[str] | None = None
        self._atomic = self._tmp = self._handle = None
        self._store: Any = None

    # ------------------------------------------------------------------ public
    def __enter__(self) -> TableWriter:
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        return self

    def write(self, columns: Mapping[str, np.ndarray]) -> None:
        """Append rows: ``columns`` maps every column name (the same names each time) to a 1-d array."""
        arrays = {k: np.asarray(v) for k, v in columns.items()}
        lengths = {len(v) for v in arrays.values()}
        if len(lengths) != 1 or any(v.ndim != 1 for v in arrays.values()):
            raise ValueError(f"columns: expected 1-d arrays of one length, got "
                             f"{ {k: v.shape for k, v in arrays.items()} }")
        if self._columns is None:
            if FILE_INDEX not in arrays:
                raise ValueError(f"columns: the column {FILE_INDEX!r} is required")
            self._columns = list(arrays)
        elif list(arrays) != self._columns:
            raise ValueError(f"columns: got {list(arrays)}, the table has {self._columns}")
        self._buffer.append(arrays)
        self._buffered += lengths.pop()
        if self._buffered >= self.chunk_rows:
            self._flush()

    def __exit__(self, exc_type, exc, tb) -> bool:
        failed = None
        if exc_type is None:
            try:
                self._flush()
                if self.rows and self.format == "root":
                    self._handle.mktree(FILES_TREE, {"index": np.int32, "path": "string"}).extend(
                        {"index": np.arange(len(self.files), dtype=np.int32), "path": np.asarray(self.files)})
            except BaseException as err:  # noqa: BLE001 - raised below, once the temporary file is gone
                failed = err
        self._close()
        if failed is not None:
            exc_type, exc, tb = type(failed), failed, failed.__traceback__
        elif exc_type is None and not self.rows:  # nothing written: abandon the write, leave no file
            exc_type, exc, tb = _NoRows, _NoRows(), None
        self._atomic.__exit__(exc_type, exc, tb)  # renames on success, else removes the temporary file
        if failed is not None:
            raise failed
        return False

    # ------------------------------------------------------------------ backends
    def _flush(self) -> None:
        if not self._buffered:
            return
        chunk = {k: np.concatenate([b[k] for b in self._buffer]) for k in self._columns}
        self._buffer, self._buffered = [], 0
        if self.format != "root":
            chunk = _with_file_column(chunk, self.files)
        chunk = {k: (_as_text(v) if _is_text(v) else v) for k, v in chunk.items()}
        getattr(self, f"_write_{self.format}")(chunk)
        self.rows += len(chunk[FILE_INDEX])

    def _write_root(self, chunk: dict[str, np.ndarray]) -> None:
        import uproot

        if self._handle is None:
            self._handle = uproot.recreate(self._tmp)
            types = {k: ("string" if _is_text(v) else v.dtype) for k, v in chunk.items()}
            self._store = self._handle.mktree(TREE, types)
        self._store.extend({k: (v.astype(str) if _is_text(v) else v) for k, v in chunk.items()})

    def _write_parquet(self, chunk: dict[str, np.ndarray]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({k: pa.array(v.tolist() if _is_text(v) else v) for k, v in chunk.items()})
        if self._handle is None:
            self._handle = pq.ParquetWriter(str(self._tmp), table.schema)
            self._store = table.schema
        self._handle.write_table(table.cast(self._store))

    def _write_hdf5(self, chunk: dict[str, np.ndarray]) -> None:
        import h5py

        if self._handle is None:
            self._handle = h5py.File(self._tmp, "w")
            self._handle.attrs["files"] = json.dumps(self.files)
            self._handle.attrs["columns"] = json.dumps(list(chunk))  # the column order (h5py lists names sorted)
            rows = max(1, min(len(chunk[FILE_INDEX]), 16384))  # a small table stays small
            for k, v in chunk.items():
                dtype = h5py.string_dtype("utf-8") if _is_text(v) else v.dtype
                self._handle.create_dataset(k, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(rows,),
                                            compression="gzip", compression_opts=4)
        n = len(chunk[FILE_INDEX])
        for k, v in chunk.items():
            ds = self._handle[k]
            ds.resize((ds.shape[0] + n,))
            ds[-n:] = v

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None


class _NoRows(Exception):
    """A table without rows: the atomic write is abandoned (no file)."""


def _with_file_column(chunk: dict[str, np.ndarray], files: Sequence[str]) -> dict[str, np.ndarray]:
    """``file`` (the path) inserted after ``file_index``."""
    out: dict[str, np.ndarray] = {}
    paths = np.asarray(files, dtype=object)
    for k, v in chunk.items():
        if k == "file":
            continue
        out[k] = v
        if k == FILE_INDEX:
            out["file"] = paths[v.astype(np.int64)]
    return out


# ---------------------------------------------------------------------------------------------- reading, merging
def iter_table(path: str | os.PathLike, chunk_rows: int = 65536) -> Iterator[dict[str, np.ndarray]]:
    """The rows of a table written by :class:`TableWriter`, in chunks (dicts of numpy arrays; strings as object
    arrays of str; the ``file`` column of Parquet and HDF5 left out: ``file_index`` says it)."""
    fmt = table_format(path, "path")
    if fmt == "root":
        import uproot

        with uproot.open(path) as f:
            for chunk in f[TREE].iterate(step_size=chunk_rows, library="np"):
                yield {k: chunk[k] for k in f[TREE].keys()}  # the branch order
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=chunk_rows):
            yield {name: _arrow_numpy(col) for name, col in zip(batch.schema.names, batch.columns) if name != "file"}
    else:
        import h5py

        with h5py.File(path, "r") as f:
            names = [k for k in json.loads(f.attrs["columns"]) if k != "file"]
            for a in range(0, f[FILE_INDEX].shape[0], chunk_rows):
                yield {k: (f[k].asstr()[a : a + chunk_rows] if f[k].dtype.kind == "O" else f[k][a : a + chunk_rows])
                       for k in names}


def _arrow_numpy(col) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_dictionary(col.type):
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy(zero_copy_only=False)


def merge_tables(parts: Sequence[str | os.PathLike], output: str | os.PathLike, files: Sequence[str],
                 chunk_rows: int = 65536) -> int:
    """Merge tables (each sorted by ``file_index``, every file in one of them only; missing ones are empty) into
    ``output`` in ``file_index`` order, chunk by chunk; returns the number of rows (0: nothing written)."""
    cursors = [_Cursor(iter_table(p, chunk_rows)) for p in parts if Path(p).is_file()]
    with TableWriter(output, files, chunk_rows) as writer:
        while True:
            live = [c for c in cursors if c.head is not None]
            if not live:
                break
            first = min(live, key=lambda c: c.key)
            writer.write(first.take_run())
    return writer.rows


class _Cursor:
    """The rows of one part, a chunk at a time: ``take_run`` returns the rows of its current file."""

    def __init__(self, chunks: Iterator[dict[str, np.ndarray]]) -> None:
        self.chunks, self.head = chunks, None
        self._next()

    def _next(self) -> None:
        self.head = next(self.chunks, None)
        while self.head is not None and not len(self.head[FILE_INDEX]):
            self.head = next(self.chunks, None)

    @property
    def key(self) -> int:
        return int(self.head[FILE_INDEX][0])

    def take_run(self) -> dict[str, np.ndarray]:
        index = self.head[FILE_INDEX]
        stop = int(np.searchsorted(index, index[0], side="right"))
        run = {k: v[:stop] for k, v in self.head.items()}
        rest = {k: v[stop:] for k, v in self.head.items()}
        if len(rest[FILE_INDEX]):
            self.head = rest
        else:
            self._next()
        return run
