"""The jet data config (built from ``conf/data/*.yaml``) and the transform of a file chunk into padded arrays.

A feature is defined weaver-core style (Qu et al., weaver-core ``data/config.py``)::

    value = clip((expr - subtract) * multiply, lo, hi)

where ``expr`` is an expression (:mod:`physics_tf.jets.expressions`) over file branches (``part_*`` jagged per
particle, ``jet_*`` per jet; jet-level values broadcast against the particles) and over earlier ``variables``.

The published Particle Transformer feature sets (Qu, Li, Qian 2022, arXiv:2202.03772; standardisation in
``/work/shared/PHYSICS.md``) are available as :data:`FEATURE_SETS` (``kin`` 7, ``kinpid`` 13, ``full`` 17;
defined in :mod:`physics_tf.jets.schema`) and written out in ``conf/data/jetclass.yaml``.

:func:`chunk_to_arrays` applies a :class:`JetDataConfig` (label choice, selection, features) to one chunk a
reader (:mod:`physics_tf.jets.readers`) yielded and pads it to ``pad_length``. Every failure is a one-line
:class:`~physics_tf.data.errors.DataError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import awkward as ak
import numpy as np

from physics_tf.data.errors import ConfigError, InvalidValueError, MissingFieldError, UnknownLabelError
from physics_tf.jets.expressions import Expression, FeatureSpec, LabelSpec
from physics_tf.jets.schema import FEATURE_SETS, JETCLASS_LABELS, TOPTAGGING_BRANCHES, TOPTAGGING_LABELS

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

def _feature_mapping(feats: Any) -> Mapping[str, Any]:
    """``data.features`` as an ordered name -> spec mapping: a published set's name, a mapping, or a list whose items
    are a name (a feature of the published sets, with its standardisation, else a branch / variable used as is) or a
    one-entry mapping ``{name: spec}`` (a command-line override replaces a list in one go; a mapping it merges)."""
    if isinstance(feats, str):
        if feats not in FEATURE_SETS:
            raise ConfigError("<config>", f"unknown feature set {feats!r} (choose from {sorted(FEATURE_SETS)})",
                              "features")
        return FEATURE_SETS[feats]
    if isinstance(feats, Sequence):  # list, tuple, OmegaConf ListConfig
        out: dict[str, Any] = {}
        for item in feats:
            if isinstance(item, Mapping) and len(item) == 1:
                name, spec = next(iter(item.items()))
            elif isinstance(item, str):
                name, spec = item, FEATURE_SETS["full"].get(item)
            else:
                raise ConfigError("<config>", f"a list item is a feature name or one {{name: spec}}, got {item!r}",
                                  "features")
            if str(name) in out:
                raise ConfigError("<config>", f"feature {name!r} given twice", "features")
            out[str(name)] = spec
        feats = out
    if not isinstance(feats, Mapping) or not feats:
        raise ConfigError("<config>", "features must be a feature-set name, a non-empty mapping or a list",
                          "features")
    return feats


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
        How the class is read (:class:`~physics_tf.jets.expressions.LabelSpec`): ordered one-hot branches of any
        names (the class index ``y`` is the position in this list), ``{branch, classes}`` for an integer class
        branch, or ``{class: boolean expression}``. A subset of the format's labels (JetClass's ten) is allowed:
        jets whose label is none of them are skipped; every label of the format is read then, so a jet with no
        label flag set at all is told apart from a jet of another class.
    features
        Ordered feature name -> spec (``{expr, subtract, multiply, clip}``), the name of a published set
        (``"kin"``, ``"kinpid"``, ``"full"``), or a list of names / one-entry mappings (:func:`_feature_mapping`).
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
    labels: Any = dataclasses.field(default_factory=lambda: list(JETCLASS_LABELS))
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
        if isinstance(self.labels, (list, tuple)) and len(set(map(str, self.labels))) != len(self.labels):
            raise ConfigError("<config>", f"duplicate labels in {list(self.labels)}", "labels")
        self.label_spec = LabelSpec(self.labels, FORMATS[self.format])
        if self.format == "toptagging_h5":  # the reader provides a fixed set of branches
            for lab in self.label_spec.branches:
                if lab not in TOPTAGGING_BRANCHES:
                    raise UnknownLabelError("<config>", f"unknown label for format {self.format!r} (known: "
                                            f"{', '.join([*TOPTAGGING_LABELS, 'is_signal_new'])})", lab)
        feats = _feature_mapping(self.features)
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
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        """Class names in class-index order (one-hot branch names without the ``label_`` prefix)."""
        return list(self.label_spec.class_names)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.feature_specs]

    def needed_branches(self, labels: bool = True) -> set[str]:
        """File branches read by features, vectors, selection (variables resolved) and, with ``labels``, the
        label branches."""
        exprs: list[Expression] = list(self.feature_exprs)
        if self.selection_expr is not None:
            exprs.append(self.selection_expr)
        needed: set[str] = set(self.vectors) | (set(self.label_spec.read_branches) if labels else set())
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
    y: np.ndarray  # (N,) int64 class index (−1 when read without labels)


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
                    stats: dict | None = None, return_entries: bool = False, labels: bool = True
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
    labels
        False: the label branches are neither needed nor read, no jet is dropped for its label and ``y`` is −1
        (prediction over files without labels).

    Returns
    -------
    ChunkArrays
        ``(x (N, P, C) float32, v (N, P, 4) float32, mask (N, P) bool, y (N,) int64)``; the N surviving
        jets in file order, particles in file order (pT-ordered), truncated / zero-padded to P.

    Notes
    -----
    Jets are skipped (and counted) when none of the selected classes matches (label subsets), when they
    hold zero particles, or when ``cfg.selection`` is False. An unlabelled jet (no label of the format, no
    expression matching, an integer class out of range), unless ``cfg.skip_unlabelled``, a jet of several classes,
    a non-finite label, or a NaN/inf feature / vector value raise :class:`DataError` naming the field.
    """
    n = len(arrays)
    fields = set(arrays.fields)
    for b in sorted(cfg.needed_branches(labels)):
        if b not in fields:
            raise MissingFieldError(source, "branch not found", b)
    _count(stats, "jets_read", n)
    P, C = cfg.pad_length, cfg.num_features
    entries = np.arange(entry_start, entry_start + n)

    # ---- labels (LabelSpec): y = class index, −1 for a jet of no listed class
    if labels:
        y_all, unlabelled = cfg.label_spec.classify(arrays, source, entries, cfg.skip_unlabelled)
        _count(stats, "skipped_no_label", unlabelled.sum())
    else:
        y_all = np.full(n, -1, np.int64)
    keep = y_all >= 0 if labels else np.ones(n, bool)
    _count(stats, "dropped_unlabelled", (~keep).sum())

    counts_all = ak.to_numpy(ak.num(arrays[cfg.vectors[0]], axis=1))
    empty = keep & (counts_all == 0)
    _count(stats, "dropped_no_particles", empty.sum())
    keep &= counts_all > 0

    arr = arrays[keep]
    y = y_all[keep]
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
