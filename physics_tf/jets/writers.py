"""Writers for the two jet file layouts physics_tf reads (used by the generators and the tests).

* :func:`write_jetclass_root` — a JetClass-layout ROOT ``TTree`` (Qu, Li, Qian 2022, Zenodo 6619768):
  per-particle jagged branches ``part_*`` (float32; ``part_is*`` int32), per-jet ``jet_*`` (float32) and
  one-hot ``label_*`` branches. The tree is made with uproot's ``file.mktree`` (a plain
  ``file[name] = {...}`` assignment writes an RNTuple since uproot 5.7, which the JetClass readers do not
  expect). All jagged branches share ONE counter branch (``counter`` argument, default ``"n"``) and keep
  their names exactly (``part_px``, not ``part_px`` inside a record).
* :func:`write_toptagging_h5` — the Kasieczka et al. top-tagging HDF5 layout, as pandas
  ``DataFrame.to_hdf(key="table", format="fixed")`` writes it, but with h5py only: group ``table`` with
  ``axis0`` (column names, bytes), ``axis1`` (row index) and one ``blockN_items`` / ``blockN_values`` pair per
  dtype. Float columns ``E_0, PX_0, PY_0, PZ_0, E_1, ..., truthE, truthPX, truthPY, truthPZ, ttv`` go to
  ``block0`` and the int64 ``is_signal_new`` to ``block1``, so a reader must map columns through the items.

Both writes are atomic (:func:`physics_tf.data.atomic.atomic_path`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import awkward as ak
import numpy as np

from physics_tf.data.atomic import atomic_path

__all__ = ["write_jetclass_root", "write_toptagging_h5", "toptagging_columns"]

#: entries per ``TTree.extend`` call (= per basket); keeps baskets a reasonable size for streaming reads.
_ROOT_BASKET_ENTRIES = 10_000


def _as_jagged(name: str, values, dtype) -> ak.Array:
    """Awkward ``var * dtype`` array from an awkward array or a list of 1-D numpy arrays."""
    if isinstance(values, ak.Array):
        arr = values
    else:
        # concatenate + unflatten: O(total) in numpy (ak.Array(list) would iterate element by element)
        parts = [np.asarray(v, dtype=dtype).ravel() for v in values]
        counts = np.fromiter((len(v) for v in parts), dtype=np.int64, count=len(parts))
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype)
        arr = ak.unflatten(flat, counts)
    if arr.ndim != 2:
        raise ValueError(f"particle branch '{name}': expected a jagged (n_jets, var) array, got {arr.type}")
    return ak.values_astype(arr, dtype)


def write_jetclass_root(
    path: str | os.PathLike,
    particles: Mapping[str, object],
    jets: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    treename: str = "tree",
    *,
    counter: str = "n",
) -> Path:
    """Write jets in the JetClass ROOT layout (atomically).

    Parameters
    ----------
    path
        Output ``.root`` file (replaced atomically).
    particles
        ``part_*`` name -> jagged per-particle values (awkward array or list of 1-D arrays, one per jet).
        Names starting with ``part_is`` are written as ``int32`` (particle-ID flags, as in JetClass), all
        others as ``float32``. All must have identical per-jet lengths (they share one counter).
    jets
        ``jet_*`` (or ``aux_*``) name -> (n_jets,) array, written as float32 (JetClass stores
        ``jet_nparticles`` as float too).
    labels
        ``label_*`` name -> (n_jets,) array; the dtype is kept (JetClass mixes float, bool and int32 labels);
        int64 is narrowed to int32 and float64 to float32 as in the real files.
    treename
        Name of the TTree (JetClass: ``"tree"``).
    counter
        Name of the single counter branch shared by all jagged branches.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import uproot  # local: keeps `import physics_tf.data` light

    jagged = {name: _as_jagged(name, vals, np.int32 if name.startswith("part_is") else np.float32)
              for name, vals in particles.items()}
    flat: dict[str, np.ndarray] = {name: np.asarray(v, dtype=np.float32) for name, v in jets.items()}
    for name, v in labels.items():
        a = np.asarray(v)
        if a.dtype == np.bool_:
            pass
        elif np.issubdtype(a.dtype, np.integer):
            a = a.astype(np.int32)
        elif np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
        else:
            raise ValueError(f"label '{name}': unsupported dtype {a.dtype} (use bool, int or float)")
        flat[name] = a

    lengths = {name: len(a) for name, a in {**jagged, **flat}.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{path}: branches have different numbers of jets: {lengths}")
    n_jets = next(iter(lengths.values()), 0)
    counts = None
    for name, arr in jagged.items():
        c = ak.to_numpy(ak.num(arr, axis=1))
        if counts is None:
            counts = c
        elif not np.array_equal(c, counts):
            raise ValueError(f"{path}: field '{name}': per-jet particle counts differ from the other part_* "
                             "branches (they must share one counter)")
    if counter in flat or counter in jagged:
        raise ValueError(f"{path}: counter name '{counter}' collides with a branch name")

    types: dict[str, object] = {}
    for name, arr in jagged.items():
        types[name] = "var * int32" if name.startswith("part_is") else "var * float32"
    for name, arr in flat.items():
        types[name] = arr.dtype

    with atomic_path(path) as tmp:
        with uproot.recreate(tmp) as f:
            tree = f.mktree(treename, types, counter_name=lambda _counted: counter)
            for start in range(0, n_jets, _ROOT_BASKET_ENTRIES):
                stop = min(start + _ROOT_BASKET_ENTRIES, n_jets)
                tree.extend({**{k: a[start:stop] for k, a in jagged.items()},
                             **{k: a[start:stop] for k, a in flat.items()}})
    return Path(path)


def toptagging_columns(n_constituents: int = 200) -> tuple[list[str], list[str]]:
    """Column names of the top-tagging file: (float block items, int block items), in file order."""
    floats = [f"{c}_{i}" for i in range(n_constituents) for c in ("E", "PX", "PY", "PZ")]
    floats += ["truthE", "truthPX", "truthPY", "truthPZ", "ttv"]
    return floats, ["is_signal_new"]


def _pad_2d(name: str, values, n_const: int, dtype) -> np.ndarray:
    """(N, n_const) array from a 2-D array or a list of 1-D arrays (zero-padded / truncated)."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        out = np.zeros((values.shape[0], n_const), dtype)
        k = min(n_const, values.shape[1])
        out[:, :k] = values[:, :k]
        return out
    if isinstance(values, ak.Array):
        values = ak.to_list(values)
    if not isinstance(values, Sequence) and not isinstance(values, np.ndarray):
        raise ValueError(f"{name}: expected a 2-D array or a list of 1-D arrays")
    out = np.zeros((len(values), n_const), dtype)
    for i, row in enumerate(values):
        row = np.asarray(row, dtype).ravel()[:n_const]
        out[i, : len(row)] = row
    return out


def _set_pytables_array_attrs(ds, **extra) -> None:
    """The attributes PyTables puts on an ``Array`` node (pandas reads files through PyTables)."""
    ds.attrs["CLASS"] = np.bytes_(b"ARRAY")
    ds.attrs["FLAVOR"] = np.bytes_(b"numpy")
    ds.attrs["TITLE"] = np.bytes_(b"")
    ds.attrs["VERSION"] = np.bytes_(b"2.4")
    for k, v in extra.items():
        ds.attrs[k] = v


def write_toptagging_h5(
    path: str | os.PathLike,
    E,
    PX,
    PY,
    PZ,
    is_signal,
    truth=None,
    *,
    ttv=None,
    n_constituents: int = 200,
    index=None,
    dtype=np.float32,
) -> Path:
    """Write jets in the Kasieczka et al. top-tagging HDF5 layout (pandas fixed format), atomically.

    Parameters
    ----------
    path
        Output ``.h5`` file.
    E, PX, PY, PZ
        Constituent four-momentum components in GeV, (N, k) arrays (zero-padded, pT-ordered) or lists of
        1-D arrays; padded / truncated to ``n_constituents`` columns (E = 0 marks padding).
    is_signal
        (N,) 0/1 labels (1 = top), stored as int64 column ``is_signal_new``.
    truth
        Optional (N, 4) truth top four-momentum (E, PX, PY, PZ) -> ``truthE..truthPZ``; zeros if None.
    ttv
        Optional (N,) train/test/validation flag column ``ttv``; zeros if None.
    n_constituents
        Number of constituent slots ``i`` in ``E_i`` etc. (200 in the published files).
    index
        Optional (N,) int64 row index (``axis1``); ``arange(N)`` if None.
    dtype
        Float dtype of the float block.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import h5py

    comps = [_pad_2d(n, v, n_constituents, dtype) for n, v in (("E", E), ("PX", PX), ("PY", PY), ("PZ", PZ))]
    n = comps[0].shape[0]
    if any(c.shape[0] != n for c in comps):
        raise ValueError(f"{path}: E, PX, PY, PZ have different numbers of jets")
    sig = np.asarray(is_signal).astype(np.int64).reshape(-1)
    if sig.shape[0] != n:
        raise ValueError(f"{path}: is_signal has {sig.shape[0]} entries, expected {n}")
    truth_arr = np.zeros((n, 4), dtype) if truth is None else np.asarray(truth, dtype).reshape(n, 4)
    ttv_arr = np.zeros(n, dtype) if ttv is None else np.asarray(ttv, dtype).reshape(n)
    idx = np.arange(n, dtype=np.int64) if index is None else np.asarray(index, np.int64).reshape(n)

    float_items, int_items = toptagging_columns(n_constituents)
    block0 = np.empty((n, len(float_items)), dtype)  # (N, 4*n_const + 5), rows = jets as pandas stores it
    for j, c in enumerate(comps):  # interleave E_i, PX_i, PY_i, PZ_i
        block0[:, j : 4 * n_constituents : 4] = c
    block0[:, 4 * n_constituents : 4 * n_constituents + 4] = truth_arr
    block0[:, 4 * n_constituents + 4] = ttv_arr
    block1 = sig[:, None]  # (N, 1)

    columns = float_items + int_items
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            g = f.create_group("table")
            for k, v in dict(CLASS=b"GROUP", TITLE=b"", VERSION=b"1.0", pandas_type=b"frame",
                             pandas_version=b"0.15.2", encoding=b"UTF-8", errors=b"strict",
                             axis0_variety=b"regular", axis1_variety=b"regular",
                             block0_items_variety=b"regular", block1_items_variety=b"regular").items():
                g.attrs[k] = np.bytes_(v)
            g.attrs["ndim"] = np.int64(2)
            g.attrs["nblocks"] = np.int64(2)
            _set_pytables_array_attrs(g.create_dataset("axis0", data=np.array(columns, dtype="S")),
                                      kind=np.bytes_(b"string"))
            _set_pytables_array_attrs(g.create_dataset("axis1", data=idx), kind=np.bytes_(b"integer"))
            _set_pytables_array_attrs(g.create_dataset("block0_items", data=np.array(float_items, dtype="S")),
                                      kind=np.bytes_(b"string"))
            _set_pytables_array_attrs(g.create_dataset("block0_values", data=block0), transposed=np.bool_(True))
            _set_pytables_array_attrs(g.create_dataset("block1_items", data=np.array(int_items, dtype="S")),
                                      kind=np.bytes_(b"string"))
            _set_pytables_array_attrs(g.create_dataset("block1_values", data=block1), transposed=np.bool_(True))
    return Path(path)
