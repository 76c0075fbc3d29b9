"""The jet data config (built from ``conf/data/*.yaml``) and the transform of a file chunk into padded arrays.

A feature is defined weaver-core style (Qu et al., weaver-core ``data/config.py``)::

    value = clip((expr - subtract) * multiply, lo, hi)

where ``expr`` is an expression (:mod:`physics_tf.jets.expressions`) over file branches (``part_*`` jagged per
particle, ``jet_*`` per jet; jet-level values broadcast against the particles) and over earlier ``variables``.

The published Particle Transformer feature sets (Qu, Li, Qian 2022, arXiv:2202.03772; standardisation in
``/work/shared/PHYSICS.md``) are available as :data:`FEATURE_SETS` (``kin`` 7, ``kinpid`` 13, ``full`` 17)
and written out in ``conf/data/jetclass.yaml``.

:func:`chunk_to_arrays` applies a :class:`JetDataConfig` (label choice, selection, features) to one chunk a
reader (:mod:`physics_tf.jets.readers`) yielded and pads it to ``pad_length``. Every failure is a one-line
:class:`~physics_tf.data.errors.DataError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import awkward as ak
import numpy as np

from physics_tf.data.errors import ConfigError, InvalidValueError, MissingFieldError, UnknownLabelError
from physics_tf.jets.expressions import Expression, FeatureSpec
from physics_tf.jets.schema import JETCLASS_LABELS, TOPTAGGING_LABELS

__all__ = [
    "FORMATS",
    "FEATURE_SETS",
    "DEFAULT_VARIABLES",
    "JetDataConfig",
    "ChunkArrays",
    "chunk_to_arrays",
]

FORMATS = {"jetclass_root": JETCLASS_LABELS, "toptagging_h5": TOPTAGGING_LABELS}

#: intermediate per-particle variables available to every feature expression (weaver's ``new_variables``).
DEFAULT_VARIABLES: dict[str, str] = {"part_pt": "hypot(part_px, part_py)"}

_KIN: dict[str, dict] = {
    "part_pt_log": {"expr": "log(part_pt)", "subtract": 1.7, "multiply": 0.7},
    "part_e_log": {"expr": "log(part_energy)", "subtract": 2.0, "multiply": 0.7},
    "part_logptrel": {"expr": "log(part_pt / jet_pt)", "subtract": -4.7, "multiply": 0.7},
    "part_logerel": {"expr": "log(part_energy / jet_energy)", "subtract": -4.7, "multiply": 0.7},
    "part_deltaR": {"expr": "hypot(part_deta, part_dphi)", "subtract": 0.2, "multiply": 4.0},
    "part_deta": {"expr": "part_deta"},
    "part_dphi": {"expr": "part_dphi"},
}
_PID: dict[str, dict] = {name: {"expr": name} for name in (
    "part_charge", "part_isChargedHadron", "part_isNeutralHadron", "part_isPhoton", "part_isElectron",
    "part_isMuon")}
_TRACK: dict[str, dict] = {
    "part_d0": {"expr": "tanh(part_d0val)"},
    "part_d0err": {"expr": "part_d0err", "clip": [0.0, 1.0]},
    "part_dz": {"expr": "tanh(part_dzval)"},
    "part_dzerr": {"expr": "part_dzerr", "clip": [0.0, 1.0]},
}
#: published ParT input feature sets (Qu, Li, Qian 2022): name -> YAML-style feature mapping.
FEATURE_SETS: dict[str, dict[str, dict]] = {
    "kin": dict(_KIN),
    "kinpid": {**_KIN, **_PID},
    "full": {**_KIN, **_PID, **_TRACK},
}


def _as_list(x) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    return [str(s) for s in x]


@dataclasses.dataclass
class JetDataConfig:
    """Everything the readers need to turn file chunks into batches (see ``conf/data/jetclass.yaml``).

    Parameters
    ----------
    files
        split (``train``/``val``/``test``) -> list of glob patterns (a single string is accepted).
    format
        ``"jetclass_root"`` or ``"toptagging_h5"``.
    labels
        Ordered one-hot label branch names; the class index ``y`` is the position in this list. A subset of
        the format's labels is allowed: jets whose label is none of them are skipped. Every label of the format
        is read, so a jet with no label flag set at all is told apart from a jet of another class.
    features
        Ordered feature name -> spec (``{expr, subtract, multiply, clip}``), or the name of a published set
        (``"kin"``, ``"kinpid"``, ``"full"``).
    vectors
        Branches for the particle 4-vectors, in the order (px, py, pz, E).
    variables
        Extra named intermediate expressions (evaluated in order, usable in features/selection);
        :data:`DEFAULT_VARIABLES` are always available.
    selection
        Optional per-jet boolean expression; jets where it is False are skipped.
    treename, pad_length, chunk_size
        ROOT tree name; particles per jet after padding/truncation; entries per read chunk (= per piece).
    skip_unlabelled
        A jet with no label flag set is a :class:`DataError` naming file and entry (False, the default), or is
        skipped and counted (True).
    """

    files: dict[str, list[str]]
    format: str = "jetclass_root"
    labels: list[str] = dataclasses.field(default_factory=lambda: list(JETCLASS_LABELS))
    features: Any = "kin"
    vectors: list[str] = dataclasses.field(default_factory=lambda: ["part_px", "part_py", "part_pz",
                                                                    "part_energy"])
    variables: dict[str, str] = dataclasses.field(default_factory=dict)
    selection: str | None = None
    treename: str = "tree"
    pad_length: int = 128
    chunk_size: int = 10_000
    skip_unlabelled: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError("<config>", f"unknown format {self.format!r} (choose from {sorted(FORMATS)})",
                              "format")
        if isinstance(self.files, Mapping):
            self.files = {str(k): _as_list(v) for k, v in self.files.items()}
        else:
            raise ConfigError("<config>", "files must map split -> list of globs", "files")
        self.labels = _as_list(self.labels)
        if not self.labels:
            raise ConfigError("<config>", "at least one label is needed", "labels")
        known = FORMATS[self.format]
        for lab in self.labels:
            if lab not in known:
                raise UnknownLabelError("<config>", f"unknown label for format {self.format!r} (known: "
                                        f"{', '.join(known)})", lab)
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError("<config>", f"duplicate labels in {self.labels}", "labels")
        feats = self.features
        if isinstance(feats, str):
            if feats not in FEATURE_SETS:
                raise ConfigError("<config>", f"unknown feature set {feats!r} (choose from {sorted(FEATURE_SETS)})",
                                  "features")
            feats = FEATURE_SETS[feats]
        if not isinstance(feats, Mapping) or not feats:
            raise ConfigError("<config>", "features must be a non-empty mapping or a feature-set name",
                              "features")
        self.feature_specs: list[FeatureSpec] = [FeatureSpec.from_any(str(k), v) for k, v in feats.items()]
        self.vectors = _as_list(self.vectors)
        if len(self.vectors) != 4:
            raise ConfigError("<config>", f"vectors needs 4 branches (px, py, pz, E), got {self.vectors}",
                              "vectors")
        self.variables = {**DEFAULT_VARIABLES, **{str(k): str(v) for k, v in (self.variables or {}).items()}}
        self.pad_length = int(self.pad_length)
        self.chunk_size = int(self.chunk_size)
        if self.pad_length < 1 or self.chunk_size < 1:
            raise ConfigError("<config>", "pad_length and chunk_size must be >= 1", "pad_length")
        # compile everything once (also validates the expressions)
        self.variable_exprs = {k: Expression(v, k) for k, v in self.variables.items()}
        self.feature_exprs = [Expression(f.expr, f.name) for f in self.feature_specs]
        self.selection_expr = (Expression(self.selection, "selection") if self.selection not in (None, "")
                               else None)

    # ------------------------------------------------------------------ derived, no I/O
    @property
    def num_features(self) -> int:
        """C, the number of per-particle input features."""
        return len(self.feature_specs)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        """Label names without the ``label_`` prefix, in class-index order."""
        return [lab[len("label_"):] if lab.startswith("label_") else lab for lab in self.labels]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.feature_specs]

    def needed_branches(self) -> set[str]:
        """File branches read by features, vectors, labels and selection (variables resolved)."""
        exprs: list[Expression] = list(self.feature_exprs)
        if self.selection_expr is not None:
            exprs.append(self.selection_expr)
        needed: set[str] = set(self.vectors) | set(self.labels) | set(FORMATS[self.format])
        pending = [n for e in exprs for n in e.names]
        seen: set[str] = set()
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in self.variable_exprs:
                pending.extend(self.variable_exprs[name].names)
            else:
                needed.add(name)
        return needed

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "JetDataConfig":
        """Build from a plain mapping (e.g. ``OmegaConf.to_container(cfg.data)``); extra keys are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


class ChunkArrays(NamedTuple):
    """Padded numpy arrays of one chunk (the batch contract, before conversion to torch)."""

    x: np.ndarray  # (N, P, C) float32, padded = 0
    v: np.ndarray  # (N, P, 4) float32 (px, py, pz, E), padded = 0
    mask: np.ndarray  # (N, P) bool, True = real particle
    y: np.ndarray  # (N,) int64 class index


def _count(stats, key, n):
    if stats is not None:
        stats[key] = stats.get(key, 0) + int(n)


def _flat_float(a, n_expected: int, source: str, name: str) -> np.ndarray:
    """Flatten a per-particle awkward result to a numpy float64 vector of length ``n_expected``."""
    try:
        flat = ak.to_numpy(ak.flatten(a, axis=None)).astype(np.float64)
    except Exception as exc:
        raise ConfigError(source, f"result is not numeric per particle ({type(exc).__name__}: {exc})",
                          name) from None
    if flat.shape[0] != n_expected:
        raise ConfigError(source, f"expression gives {flat.shape[0]} values, expected one per particle "
                          f"({n_expected})", name)
    return flat


def chunk_to_arrays(arrays: ak.Array, cfg: JetDataConfig, *, source: str = "<chunk>", entry_start: int = 0,
                    stats: dict | None = None, return_entries: bool = False
                    ) -> ChunkArrays | tuple[ChunkArrays, np.ndarray]:
    """Apply labels, selection and features of ``cfg`` to one chunk and pad to ``cfg.pad_length``.

    Parameters
    ----------
    arrays
        Chunk from a reader (fields = branch names, ``len`` = jets).
    cfg
        Data configuration.
    source
        File name used in error messages.
    entry_start
        File entry number of the first jet of the chunk (for error messages).
    stats
        Optional dict incremented with ``jets_read``, ``jets_kept``, ``dropped_unlabelled`` (no selected label
        set: other classes and jets with no label flag), ``skipped_no_label`` (no label flag set at all, with
        ``cfg.skip_unlabelled``), ``dropped_no_particles``, ``dropped_selection``.
    return_entries
        Also return the file entry numbers of the surviving jets, ``(N,)`` int64.

    Returns
    -------
    ChunkArrays
        ``(x (N, P, C) float32, v (N, P, 4) float32, mask (N, P) bool, y (N,) int64)``; the N surviving
        jets in file order, particles in file order (pT-ordered), truncated / zero-padded to P.

    Notes
    -----
    Jets are skipped (and counted) when none of the selected labels is set (label subsets), when they
    hold zero particles, or when ``cfg.selection`` is False. A jet with no label flag of the format set at all,
    unless ``cfg.skip_unlabelled``, more than one selected label set, a non-finite label, or a NaN/inf feature /
    vector value raise :class:`DataError` naming the field.
    """
    n = len(arrays)
    fields = set(arrays.fields)
    for b in sorted(cfg.needed_branches()):
        if b not in fields:
            raise MissingFieldError(source, "branch not found", b)
    _count(stats, "jets_read", n)
    P, C = cfg.pad_length, cfg.num_features
    entries = np.arange(entry_start, entry_start + n)

    # ---- labels: one-hot over the selected label branches
    lab = np.empty((n, cfg.num_classes), np.float64)
    for k, name in enumerate(cfg.labels):
        col = ak.to_numpy(arrays[name]).astype(np.float64)
        if not np.isfinite(col).all():
            bad = entries[~np.isfinite(col)]
            raise InvalidValueError(source, f"non-finite label value at entry {bad[0]}", name)
        lab[:, k] = col
    on = lab != 0
    n_on = on.sum(axis=1)
    if (n_on > 1).any():
        i = int(np.argmax(n_on > 1))
        names = [cfg.labels[k] for k in np.nonzero(on[i])[0]]
        raise InvalidValueError(source, f"entry {entries[i]} has several labels set: {names}", names[0])
    keep = n_on == 1
    others = [name for name in FORMATS[cfg.format] if name not in cfg.labels and name in fields]
    flagged = keep | np.any([ak.to_numpy(arrays[name]) != 0 for name in others], axis=0) if others else keep
    if not flagged.all():
        if not cfg.skip_unlabelled:
            bad = entries[~flagged]
            raise InvalidValueError(source, f"entry {bad[0]} has no label flag set ({len(bad)} such jet(s) in "
                                    f"entries {entries[0]}-{entries[-1]}; data.skip_unlabelled=true skips them)",
                                    "labels")
        _count(stats, "skipped_no_label", (~flagged).sum())
    _count(stats, "dropped_unlabelled", (~keep).sum())

    counts_all = ak.to_numpy(ak.num(arrays[cfg.vectors[0]], axis=1))
    empty = keep & (counts_all == 0)
    _count(stats, "dropped_no_particles", empty.sum())
    keep &= counts_all > 0

    arr = arrays[keep]
    y = np.argmax(on[keep], axis=1).astype(np.int64)
    entries = entries[keep]

    # ---- variables (only those needed), then selection
    values: dict[str, object] = {f: arr[f] for f in arr.fields}
    for name, expr in cfg.variable_exprs.items():
        if expr.names <= values.keys():
            values[name] = expr.evaluate(values)
    if cfg.selection_expr is not None:
        sel = cfg.selection_expr.evaluate(values)
        try:
            sel = np.asarray(ak.to_numpy(sel) if isinstance(sel, ak.Array) else sel, dtype=bool)
        except Exception:
            raise ConfigError(source, "selection must give one boolean per jet", "selection") from None
        sel = np.broadcast_to(sel, (len(arr),))
        _count(stats, "dropped_selection", (~sel).sum())
        arr, y, entries = arr[sel], y[sel], entries[sel]
        values = {k: (v[sel] if isinstance(v, (ak.Array, np.ndarray)) and len(v) == len(sel) else v)
                  for k, v in values.items()}
    N = len(arr)
    _count(stats, "jets_kept", N)

    # ---- padding indices (shared by every per-particle quantity)
    template = arr[cfg.vectors[0]]
    counts = ak.to_numpy(ak.num(template, axis=1)).astype(np.int64)
    total = int(counts.sum())
    take = np.minimum(counts, P)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if N else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(N), take)
    cols = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    src = np.repeat(starts, take) + cols
    particle_jet = np.repeat(np.arange(N), counts)

    def check_finite(flat, name, inputs=()):
        if flat.size and not np.isfinite(flat).all():
            # blame an input branch that is itself non-finite, else the derived quantity
            for b in sorted(inputs):
                if b in arr.fields:
                    bf = _flat_float(ak.broadcast_arrays(arr[b], template)[0], total, source, b)
                    if not np.isfinite(bf).all():
                        name, flat = b, bf
                        break
            bad = ~np.isfinite(flat)
            first = int(entries[particle_jet[np.argmax(bad)]])
            raise InvalidValueError(source, f"{int(bad.sum())} non-finite value(s) (NaN/inf), first at entry "
                                    f"{first}", name)

    def inputs_of(expr):
        out, pending = set(), list(expr.names)
        while pending:
            nm = pending.pop()
            if nm in cfg.variable_exprs and nm not in out:
                pending.extend(cfg.variable_exprs[nm].names)
            out.add(nm)
        return out

    # features are gathered column by column into one (kept particles, C) matrix, then scattered into the
    # padded (N, P, C) array in one row-wise pass (C contiguous values per particle, not C strided passes)
    dest = rows * P + cols  # (kept particles,) row of the flattened (N·P) particle axis
    vals = np.empty((len(src), C), np.float32)  # (kept particles, C)
    for c, (spec, expr) in enumerate(zip(cfg.feature_specs, cfg.feature_exprs)):
        res = expr.evaluate(values)
        if not isinstance(res, ak.Array) or res.ndim < 2:
            res = ak.broadcast_arrays(res, template)[0]  # jet-level / constant -> per particle
        flat = _flat_float(res, total, source, spec.name)
        check_finite(flat, spec.name, inputs_of(expr))
        val = (flat - spec.subtract) * spec.multiply
        if spec.clip is not None:
            val = np.clip(val, spec.clip[0], spec.clip[1])
        vals[:, c] = val[src]
    x = np.zeros((N * P, C), np.float32)
    x[dest] = vals
    x = x.reshape(N, P, C)  # (N, P, C)

    vecs = np.empty((len(src), 4), np.float32)
    for c, name in enumerate(cfg.vectors):
        flat = _flat_float(arr[name], total, source, name)
        check_finite(flat, name)
        vecs[:, c] = flat[src]
    v = np.zeros((N * P, 4), np.float32)
    v[dest] = vecs
    v = v.reshape(N, P, 4)  # (N, P, 4) = (px, py, pz, E)

    mask = np.zeros((N, P), bool)  # (N, P)
    mask[rows, cols] = True
    return (ChunkArrays(x, v, mask, y), entries) if return_entries else ChunkArrays(x, v, mask, y)
