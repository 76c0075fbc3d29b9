"""Streaming readers for jet files: JetClass ROOT and top-tagging HDF5, chunk by chunk.

Two on-disk layouts are read chunk by chunk (never a whole file at once):

* **JetClass ROOT** (``format: jetclass_root``): a ``TTree`` with jagged ``part_*`` and flat ``jet_*`` /
  ``label_*`` branches, read with uproot's ``TTree.iterate(step_size=...)`` over an entry range.
* **Top-tagging HDF5** (``format: toptagging_h5``; Kasieczka et al., pandas fixed format): rows
  ``[start, stop)`` of ``table/blockN_values`` are read with h5py and the columns located through
  ``table/blockN_items`` (the file has one block per dtype). The constituents ``E_i, PX_i, PY_i, PZ_i`` are
  converted to the JetClass branch names (``part_px, part_py, part_pz, part_energy, part_deta, part_dphi``,
  ``jet_pt, jet_eta, jet_phi, jet_energy, jet_mass, jet_nparticles``) with the jet axis from the
  constituent sum; zero-padded slots (E = 0) are dropped; ``label_QCD`` / ``label_Top`` come from
  ``is_signal_new``.

Both readers yield :class:`awkward.Array` records whose fields are branch names;
:func:`physics_tf.jets.features.chunk_to_arrays` then applies the label choice, the selection and the feature
expressions of a :class:`~physics_tf.jets.features.JetDataConfig` and pads to ``pad_length``. Every failure
becomes a one-line :class:`~physics_tf.data.errors.DataError` naming the file and the field.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping

import awkward as ak
import numpy as np

from physics_tf.data.errors import (
    ConfigError,
    CorruptFileError,
    DataError,
    InvalidValueError,
    MissingFieldError,
)
from physics_tf.jets.features import JetDataConfig
from physics_tf.jets.schema import TOPTAGGING_BRANCHES, wrap_phi

__all__ = [
    "JetClassRootReader",
    "TopTaggingH5Reader",
    "make_reader",
    "TOPTAGGING_BRANCHES",
]


@contextlib.contextmanager
def _wrap_errors(path, field: str | None = None, what: str = "cannot read"):
    """Turn any non-DataError exception into a one-line CorruptFileError naming ``path``."""
    try:
        yield
    except DataError:
        raise
    except (GeneratorExit, KeyboardInterrupt):
        raise
    except Exception as exc:  # uproot / h5py / numpy decoding errors of a broken file
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CorruptFileError(path, f"{what}: {type(exc).__name__}: {msg}"[:500], field) from exc


def _fast_inflate() -> None:
    """Have uproot inflate ZLIB baskets with ISA-L (the ``isal`` package: the same bytes, ~2× faster than the
    standard library's zlib) where it is installed and the process still uses the default ``"zlib"``. uproot reads
    the choice from its ZLIB decompressor class (``uproot.ZLIB.library`` itself only affects writing)."""
    from importlib.util import find_spec

    from uproot import compression

    decompressor = getattr(compression, "_DecompressZLIB", None)
    if decompressor is not None and getattr(decompressor, "library", None) == "zlib" and find_spec("isal"):
        decompressor.library = "isal"


class _HeldOpen:
    """``with reader:`` keeps its file open until the block ends, so consecutive reads of one file (a worker's next
    entry range) open it once; outside such a block every call opens and closes the file."""

    _held = None

    def _open(self):  # a context manager yielding the open handle
        raise NotImplementedError

    @contextlib.contextmanager
    def _handle(self):
        if self._held is not None:
            yield self._held
        else:
            with self._open() as handle:
                yield handle

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self._held = self._stack.enter_context(self._open())
        return self

    def __exit__(self, *exc) -> None:
        self._held = None
        self._stack.close()


# ----------------------------------------------------------------------------------------------- JetClass
class JetClassRootReader(_HeldOpen):
    """Chunked reader of one JetClass-layout ROOT file.

    Parameters
    ----------
    path
        ROOT file.
    branches
        Branch names to read (checked to exist before any data is read).
    treename
        Tree name (``"tree"`` in JetClass).
    """

    def __init__(self, path: str | os.PathLike, branches, treename: str = "tree"):
        self.path = str(path)
        self.branches = sorted(set(branches))
        self.treename = treename
        _fast_inflate()

    @contextlib.contextmanager
    def _open(self):
        import uproot

        with _wrap_errors(self.path, what="cannot open as ROOT file"):
            f = uproot.open(self.path)
        try:
            with _wrap_errors(self.path, self.treename, "cannot read the tree"):
                if self.treename not in f:
                    raise MissingFieldError(self.path, f"no tree of that name (keys: {list(f.keys())[:10]})",
                                            self.treename)
                tree = f[self.treename]
                if not hasattr(tree, "num_entries") or not hasattr(tree, "iterate"):
                    raise CorruptFileError(self.path, f"object is a {type(tree).__name__}, not a TTree",
                                           self.treename)
            yield tree
        finally:
            f.close()

    def num_entries(self) -> int:
        """Number of jets, from the tree metadata only (no data read)."""
        with self._handle() as tree:
            return int(tree.num_entries)

    def per_jet_branches(self) -> list[str]:
        """The tree's branches of one number per jet (not jagged), in tree order (metadata only)."""
        from uproot.interpretation.numerical import AsDtype

        with self._handle() as tree:
            with _wrap_errors(self.path, self.treename, "cannot read the branch types"):
                types = {name: tree[name].interpretation for name in tree.keys(recursive=False)}
                return [name for name, t in types.items() if isinstance(t, AsDtype) and t.inner_shape == ()]

    def iterate(self, entry_start: int = 0, entry_stop: int | None = None,
                step_size: int = 10_000) -> Iterator[ak.Array]:
        """Yield chunks (awkward records with the requested branches) covering ``[entry_start, entry_stop)``."""
        with self._handle() as tree:
            keys = set(tree.keys())
            for b in self.branches:
                if b not in keys:
                    raise MissingFieldError(self.path, "branch not found in tree "
                                            f"'{self.treename}'", b)
            n = int(tree.num_entries)
            stop = n if entry_stop is None else min(int(entry_stop), n)
            if entry_start >= stop:
                return
            it = tree.iterate(self.branches, entry_start=int(entry_start), entry_stop=stop,
                              step_size=int(step_size), library="ak")
            while True:
                with _wrap_errors(self.path, what=f"cannot decode entries {entry_start}-{stop}"):
                    try:
                        chunk = next(it)
                    except StopIteration:
                        return
                yield chunk


# ------------------------------------------------------------------------------------------- top tagging
_CONST_RE = re.compile(r"^(E|PX|PY|PZ)_(\d+)$")


def _decode(items) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in items]


class TopTaggingH5Reader(_HeldOpen):
    """Chunked reader of one top-tagging HDF5 file (pandas fixed format, key ``table``).

    Parameters
    ----------
    path
        HDF5 file.
    branches
        JetClass-style branch names to produce (subset of :data:`TOPTAGGING_BRANCHES`).
    key
        HDF5 group written by pandas (``"table"``).
    """

    def __init__(self, path: str | os.PathLike, branches, key: str = "table"):
        self.path = str(path)
        self.branches = sorted(set(branches))
        self.key = key
        for b in self.branches:
            if b not in TOPTAGGING_BRANCHES:
                raise MissingFieldError(self.path, "not provided by the top-tagging reader (available: "
                                        f"{', '.join(TOPTAGGING_BRANCHES)})", b)

    @contextlib.contextmanager
    def _open(self):
        import h5py

        with _wrap_errors(self.path, what="cannot open as HDF5 file"):
            f = h5py.File(self.path, "r")
        try:
            with _wrap_errors(self.path, self.key, "cannot read the table"):
                if self.key not in f:
                    raise MissingFieldError(self.path, f"no group of that name (keys: {list(f.keys())[:10]})",
                                            self.key)
                g = f[self.key]
                nblocks = int(g.attrs.get("nblocks", sum(1 for k in g if re.fullmatch(r"block\d+_items", k))))
                if nblocks < 1:
                    raise CorruptFileError(self.path, "no blockN_items/blockN_values pairs", self.key)
                columns: dict[str, tuple[int, int]] = {}  # name -> (block, column)
                n_rows = None
                for b in range(nblocks):
                    for part in ("items", "values"):
                        if f"block{b}_{part}" not in g:
                            raise CorruptFileError(self.path, "dataset missing", f"{self.key}/block{b}_{part}")
                    items = _decode(g[f"block{b}_items"][()])
                    shape = g[f"block{b}_values"].shape
                    if len(shape) != 2 or shape[1] != len(items):
                        raise CorruptFileError(self.path, f"values shape {shape} does not match "
                                               f"{len(items)} items", f"{self.key}/block{b}_values")
                    if n_rows is not None and shape[0] != n_rows:
                        raise CorruptFileError(self.path, f"{shape[0]} rows, block0 has {n_rows}",
                                               f"{self.key}/block{b}_values")
                    n_rows = shape[0]
                    for j, name in enumerate(items):
                        columns[name] = (b, j)
            yield g, columns, int(n_rows)
        finally:
            f.close()

    def num_entries(self) -> int:
        """Number of jets (rows), from the dataset shapes only."""
        with self._handle() as (_, _, n):
            return n

    def per_jet_branches(self) -> list[str]:
        """The per-jet branches this file gives: the derived ``jet_*`` and, where the file has ``is_signal_new``,
        it and ``label_QCD`` / ``label_Top``."""
        with self._handle() as (_, columns, _):
            labels = ["is_signal_new", "label_QCD", "label_Top"] if "is_signal_new" in columns else []
        return [b for b in TOPTAGGING_BRANCHES if b.startswith("jet_") or b in labels]

    def iterate(self, entry_start: int = 0, entry_stop: int | None = None,
                step_size: int = 10_000) -> Iterator[ak.Array]:
        """Yield converted chunks covering rows ``[entry_start, entry_stop)``."""
        with self._handle() as (g, columns, n):
            n_const = 0
            while f"E_{n_const}" in columns:
                n_const += 1
            for c in ("E", "PX", "PY", "PZ"):
                for i in range(max(n_const, 1)):
                    if f"{c}_{i}" not in columns:
                        raise MissingFieldError(self.path, "column not found in any blockN_items",
                                                f"{c}_{i}")
            need_label = any(b in ("label_QCD", "label_Top", "is_signal_new") for b in self.branches)
            if need_label and "is_signal_new" not in columns:
                raise MissingFieldError(self.path, "column not found in any blockN_items", "is_signal_new")
            stop = n if entry_stop is None else min(int(entry_stop), n)
            for s in range(int(entry_start), stop, int(step_size)):
                e = min(s + int(step_size), stop)
                with _wrap_errors(self.path, f"{self.key}", f"cannot read rows {s}-{e}"):
                    blocks = {}
                    for b in {blk for blk, _ in columns.values()}:
                        blocks[b] = g[f"block{b}_values"][s:e]  # (n, items) row slice of one dtype block

                    def col(name):
                        b, j = columns[name]
                        return blocks[b][:, j]

                    comp = {c: np.stack([col(f"{c}_{i}") for i in range(n_const)], axis=1).astype(np.float64)
                            for c in ("E", "PX", "PY", "PZ")}  # each (n, n_const)
                    sig = col("is_signal_new") if need_label else None
                self._check_finite(comp, s)
                yield self._convert(comp, sig)

    def _check_finite(self, comp: Mapping[str, np.ndarray], row0: int) -> None:
        """A NaN / inf in a constituent column is blamed on that column of the file (``E_3``) and its entry, not
        on the jet quantities derived from it (``jet_energy`` = the sum of the ``E_i``)."""
        for c in ("E", "PX", "PY", "PZ"):
            bad = ~np.isfinite(comp[c])  # (n, n_const)
            if bad.any():
                row, i = (int(k) for k in np.argwhere(bad)[0])
                raise InvalidValueError(self.path, f"{int(bad.sum())} non-finite value(s) (NaN/inf), first at "
                                        f"entry {row0 + row}: {comp[c][row, i]}", f"{c}_{i}")

    def _convert(self, comp: Mapping[str, np.ndarray], sig) -> ak.Array:
        """Constituent columns -> JetClass-style branches (see module docstring)."""
        E, px, py, pz = comp["E"], comp["PX"], comp["PY"], comp["PZ"]  # (n, n_const)
        real = E > 0  # zero-padded slots have E = 0
        counts = real.sum(axis=1)
        # jet axis from the constituent sum (padding contributes zero)
        jpx, jpy, jpz, jE = px.sum(1), py.sum(1), pz.sum(1), E.sum(1)
        jpt = np.hypot(jpx, jpy)
        with np.errstate(all="ignore"):
            jeta = np.arcsinh(np.where(jpt > 0, jpz / jpt, 0.0))
            jphi = np.arctan2(jpy, jpx)
            jmass = np.sqrt(np.maximum(jE**2 - jpx**2 - jpy**2 - jpz**2, 0.0))
            pt = np.hypot(px, py)
            eta = np.arcsinh(pz / pt)
            phi = np.arctan2(py, px)
        # JetClass convention: part_deta = sign(jet_eta) * (eta - jet_eta)
        deta = np.sign(jeta)[:, None] * (eta - jeta[:, None])
        dphi = wrap_phi(phi - jphi[:, None])

        def jag(a):  # keep only real constituents, in file (pT) order
            return ak.unflatten(a[real].astype(np.float32), counts)

        out = {}
        per_particle = {"part_px": px, "part_py": py, "part_pz": pz, "part_energy": E, "part_eta": eta,
                        "part_phi": phi, "part_deta": deta, "part_dphi": dphi}
        per_jet = {"jet_pt": jpt, "jet_eta": jeta, "jet_phi": jphi, "jet_energy": jE, "jet_mass": jmass,
                   "jet_nparticles": counts}
        for b in self.branches:
            if b in per_particle:
                out[b] = jag(per_particle[b])
            elif b in per_jet:
                out[b] = per_jet[b].astype(np.float32)
            elif b == "label_QCD":
                out[b] = (sig == 0).astype(np.float32)
            elif b == "label_Top":
                out[b] = (sig == 1).astype(np.float32)
            elif b == "is_signal_new":
                out[b] = np.asarray(sig).astype(np.int64)
        return ak.zip(out, depth_limit=1) if out else ak.Array([{}] * len(E))


def make_reader(path: str | os.PathLike, cfg: JetDataConfig, branches=None):
    """Reader for ``path`` according to ``cfg.format`` (``branches`` defaults to ``cfg.needed_branches()``)."""
    branches = cfg.needed_branches() if branches is None else branches
    if cfg.format == "jetclass_root":
        return JetClassRootReader(path, branches, cfg.treename)
    if cfg.format == "toptagging_h5":
        return TopTaggingH5Reader(path, branches)
    raise ConfigError("<config>", f"unknown format {cfg.format!r}", "format")
