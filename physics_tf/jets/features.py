"""The jet data config (built from ``conf/data/*.yaml``) and the transform of a file chunk into padded arrays.
Longer than 400 lines because the transform is one pipeline over one config (labels, selection, the expressions
evaluated on the flat particle content, the unpadded jets and the padded batches built from them), kept together.

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


class FlatJets(NamedTuple):
    """Jets unpadded: the particles of every jet (its first ``pad_length``) laid end to end, padded only when a batch
    is built (:func:`pad_jets`). A shuffle buffer of these holds ~P / mean multiplicity times less than padded jets."""

    x: np.ndarray  # (M, C) float32, M = counts.sum()
    v: np.ndarray  # (M, 4) float32 (px, py, pz, E)
    counts: np.ndarray  # (N,) int64 particles kept per jet (1 ... P)
    y: np.ndarray  # (N,) int64 class index (−1 when read without labels)
    entries: np.ndarray  # (N,) int64 entry of each jet (in its file; the dataset makes it the entry over the split)

    def head(self, n: int) -> "FlatJets":
        """The first ``n`` jets (views, no copy)."""
        m = int(self.counts[:n].sum())
        return FlatJets(self.x[:m], self.v[:m], self.counts[:n], self.y[:n], self.entries[:n])


class FlatBuffer:
    """The jets of several :class:`FlatJets` under one jet index ``0 … N-1``, their particles left where they are
    (no concatenation): :meth:`take` gathers any selection of them into one compact :class:`FlatJets`."""

    def __init__(self, parts: Sequence[FlatJets]):
        self.parts = [p for p in parts if len(p.y)]
        self.first = np.cumsum([0, *(len(p.y) for p in self.parts)])  # first jet of each part
        cat = (lambda f: np.concatenate([getattr(p, f) for p in self.parts]) if self.parts  # noqa: E731
               else np.zeros(0, np.int64))
        self.counts, self.y, self.entries = cat("counts"), cat("y"), cat("entries")
        # row of each jet's first particle in its own part
        self.starts = (np.concatenate([np.cumsum(p.counts) - p.counts for p in self.parts]) if self.parts
                       else np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.first[-1])

    def _sources(self, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        """``(counts, within, groups)`` of the jets ``sel``: their particle counts, each particle's place in its jet,
        and for each part holding some of them ``(part, positions among the selection's particles, rows in part)``."""
        counts = self.counts[sel]
        src, within = _ranges(self.starts[sel], counts)
        if len(self.parts) == 1:
            return counts, within, [(self.parts[0], slice(None), src)]
        part_of = np.repeat(np.searchsorted(self.first, sel, side="right") - 1, counts)
        groups = []
        for k, part in enumerate(self.parts):
            pos = np.flatnonzero(part_of == k)
            if len(pos):
                groups.append((part, pos, src[pos]))
        return counts, within, groups

    def take(self, sel: np.ndarray) -> FlatJets:
        """The jets ``sel`` (indices, increasing), in that order, their particles copied into new compact arrays:
        each part's jets are one run of the result, gathered in increasing row order."""
        counts = self.counts[sel]
        src, _ = _ranges(self.starts[sel], counts)  # rows in each jet's own part
        x = np.empty((len(src), self.parts[0].x.shape[1]), np.float32)
        v = np.empty((len(src), 4), np.float32)
        ends = np.cumsum(counts)
        cut = np.searchsorted(sel, self.first)  # the part boundaries within sel
        for k, part in enumerate(self.parts):
            lo, hi = (int(ends[j - 1]) if j else 0 for j in cut[k:k + 2])
            if hi > lo:
                np.take(part.x, src[lo:hi], axis=0, out=x[lo:hi])
                np.take(part.v, src[lo:hi], axis=0, out=v[lo:hi])
        return FlatJets(x, v, counts, self.y[sel], self.entries[sel])

    def batch(self, sel: np.ndarray, pad_length: int, out: Sequence[np.ndarray] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:func:`pad_jets` of the jets ``sel`` (each of at most ``pad_length`` particles, as :func:`chunk_to_flat`
        keeps them), each particle row copied once, from its part straight to its place; into ``out`` =
        ``(x, v, mask, y, entries)`` of those shapes (x and v zero-filled) when given."""
        P, C = int(pad_length), self.parts[0].x.shape[1]
        counts, within, groups = self._sources(sel)
        B = len(counts)
        if out is None:
            out = (np.zeros((B, P, C), np.float32), np.zeros((B, P, 4), np.float32), np.empty((B, P), bool),
                   np.empty(B, np.int64), np.empty(B, np.int64))
        dest = np.repeat(np.arange(B) * P, counts) + within  # row of the flattened (B·P) particle axis
        x, v = out[0].reshape(B * P, C), out[1].reshape(B * P, 4)
        for part, pos, rows in groups:
            d = dest[pos]
            x[d], v[d] = part.x[rows], part.v[rows]
        np.less(np.arange(P), counts[:, None], out=out[2])  # mask (B, P)
        out[3][:], out[4][:] = self.y[sel], self.entries[sel]
        return tuple(out)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The index ranges ``[starts[i], starts[i] + lengths[i])`` laid end to end, and each index's place in its range."""
    ends = np.cumsum(lengths)
    within = np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - lengths, lengths)
    return np.repeat(starts, lengths) + within, within


def pad_jets(jets: FlatJets, pad_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x (N, P, C), v (N, P, 4), mask (N, P), y (N,), entries (N,))``: ``jets`` zero-padded to P = ``pad_length``,
    each array built once (one scatter of the particle rows)."""
    P, C, N = int(pad_length), jets.x.shape[1], len(jets.counts)
    ends = np.cumsum(jets.counts)
    # row of each particle in the flattened (N·P) particle axis
    dest = np.arange(int(ends[-1]) if N else 0) + np.repeat(np.arange(N) * P - (ends - jets.counts), jets.counts)
    out = []
    for flat, width in ((jets.x, C), (jets.v, 4)):
        a = np.zeros((N * P, width), np.float32)
        a[dest] = flat
        out.append(a.reshape(N, P, width))
    mask = np.arange(P) < jets.counts[:, None]  # (N, P)
    return out[0], out[1], mask, jets.y, jets.entries


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


class _NotFlat(Exception):
    """A value that is neither one number per jet nor one per particle of the chunk's particle structure."""


class _Values(dict):
    """The branches and variables the expressions read, each resolved when first asked for (a variable before a
    branch of the same name). ``flat``: numpy over the particles of the kept jets ``idx`` laid end to end, a jet-level
    value repeated over its jet's particles; else awkward arrays of the kept jets."""

    def __init__(self, cfg: JetDataConfig, arrays: ak.Array, idx: np.ndarray, counts_all: np.ndarray, flat: bool):
        super().__init__()
        self.cfg, self.arrays, self.idx, self.counts_all, self.flat = cfg, arrays, idx, counts_all, flat
        self.counts = counts_all[idx]
        self._kept = self._pmask = None
        self._resolving: set[str] = set()

    @property
    def kept(self) -> ak.Array:
        if self._kept is None:
            self._kept = self.arrays if len(self.idx) == len(self.arrays) else self.arrays[self.idx]
        return self._kept

    def __missing__(self, name: str):
        var = self.cfg.variable_exprs.get(name)
        if var is not None and name not in self._resolving:
            self._resolving.add(name)
            try:
                value = var.evaluate(self)
            finally:
                self._resolving.discard(name)
        else:
            value = self.branch(name)
        self[name] = value
        return value

    def branch(self, name: str):
        if not self.flat:
            return self.kept[name]
        try:
            off, content = _parts(self.arrays, name)
            if off is None:  # one value per jet
                return np.repeat(content[self.idx], self.counts)
            if np.array_equal(np.diff(off), self.counts_all):
                content = content[off[0]:off[-1]]
                if len(self.idx) == len(self.arrays):
                    return content
                if self._pmask is None:
                    keep = np.zeros(len(self.arrays), bool)
                    keep[self.idx] = True
                    self._pmask = np.repeat(keep, self.counts_all)
                return content[self._pmask]
        except Exception:
            pass
        raise _NotFlat(name)


def _parts(arrays: ak.Array, name: str) -> tuple[np.ndarray | None, np.ndarray]:
    """``(offsets (n + 1,), content)`` of a jagged numeric field, ``(None, values (n,))`` of one number per jet: read
    straight from the layout when it is the plain one a reader gives, else through awkward's functions."""
    lay, n = arrays.layout, len(arrays)
    f = lay.content(name) if isinstance(lay, ak.contents.RecordArray) else None
    if isinstance(f, ak.contents.ListOffsetArray) and not f.parameters:
        f, off = f.content, np.asarray(f.offsets.data)[:n + 1]
    else:
        off = None
    if isinstance(f, ak.contents.NumpyArray) and not f.parameters and isinstance(f.data, np.ndarray) \
            and f.data.ndim == 1:
        return off, (f.data if off is not None else f.data[:n])
    a = arrays[name]
    if a.ndim == 1:
        return None, ak.to_numpy(a)
    return np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(a, axis=1)))]), ak.to_numpy(ak.flatten(a))


def _needs_jagged(expr: Expression, cfg: JetDataConfig, seen: frozenset = frozenset()) -> bool:
    """Whether ``expr`` (or a variable it reads) calls ``sum``, which needs the per-jet structure."""
    return "sum" in expr.calls or any(_needs_jagged(cfg.variable_exprs[n], cfg, seen | {n}) for n in expr.names
                                      if n in cfg.variable_exprs and n not in seen)


def chunk_to_arrays(arrays: ak.Array, cfg: JetDataConfig, *, source: str = "<chunk>", entry_start: int = 0,
                    stats: dict | None = None, return_entries: bool = False, labels: bool = True
                    ) -> ChunkArrays | tuple[ChunkArrays, np.ndarray]:
    """Apply labels, selection and features of ``cfg`` to one chunk and pad to ``cfg.pad_length``: :func:`pad_jets` of
    :func:`chunk_to_flat` (same arguments). Returns ``ChunkArrays(x (N, P, C) float32, v (N, P, 4) float32, mask (N, P)
    bool, y (N,) int64)``, with ``return_entries`` also the file entry numbers ``(N,)`` int64 of the surviving jets."""
    x, v, mask, y, entries = pad_jets(chunk_to_flat(arrays, cfg, source=source, entry_start=entry_start,
                                                    stats=stats, labels=labels), cfg.pad_length)
    return (ChunkArrays(x, v, mask, y), entries) if return_entries else ChunkArrays(x, v, mask, y)


def chunk_to_flat(arrays: ak.Array, cfg: JetDataConfig, *, source: str = "<chunk>", entry_start: int = 0,
                  stats: dict | None = None, labels: bool = True) -> FlatJets:
    """Apply labels, selection and features of ``cfg`` to one chunk: the surviving jets, unpadded.

    Parameters
    ----------
    arrays
        Chunk from a reader (fields = branch names, ``len`` = jets).
    cfg
        Data configuration.
    source
        File name used in error messages.
    entry_start
        File entry number of the first jet of the chunk (for error messages and ``entries``).
    stats
        Optional dict incremented with ``jets_read``, ``jets_kept``, ``dropped_unlabelled`` (no selected label
        set: other classes and jets with no label flag), ``skipped_no_label`` (no label flag set at all, with
        ``cfg.skip_unlabelled``), ``dropped_no_particles``, ``dropped_selection``.
    labels
        False: the label branches are neither needed nor read, no jet is dropped for its label and ``y`` is −1
        (prediction over files without labels).

    Returns
    -------
    FlatJets
        The N surviving jets in file order, the first P = ``cfg.pad_length`` particles of each in file order
        (pT-ordered).

    Notes
    -----
    Jets are skipped (and counted) when none of the selected classes matches (label subsets), when they
    hold zero particles, or when ``cfg.selection`` is False. An unlabelled jet (no label of the format, no
    expression matching, an integer class out of range), unless ``cfg.skip_unlabelled``, a jet of several classes,
    a non-finite label, or a NaN/inf feature / vector value (of any particle, also one past P) raise
    :class:`DataError` naming the field. Expressions are evaluated with numpy on the flat particle content (a
    jet-level value repeated over its particles); one that calls ``sum`` or reads a branch of another structure is
    evaluated on the awkward arrays instead, with the same result.
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

    off = _parts(arrays, cfg.vectors[0])[0] if arrays[cfg.vectors[0]].ndim == 2 else None
    counts_all = (np.diff(off) if off is not None else ak.to_numpy(ak.num(arrays[cfg.vectors[0]], axis=1))
                  ).astype(np.int64)
    empty = keep & (counts_all == 0)
    _count(stats, "dropped_no_particles", empty.sum())
    keep &= counts_all > 0
    idx = np.flatnonzero(keep)

    # ---- selection (per jet, on the awkward arrays)
    if cfg.selection_expr is not None:
        sel = cfg.selection_expr.evaluate(_Values(cfg, arrays, idx, counts_all, flat=False))
        try:
            sel = np.asarray(ak.to_numpy(sel) if isinstance(sel, ak.Array) else sel, dtype=bool)
        except Exception:
            raise ConfigError(source, "selection must give one boolean per jet", "selection") from None
        sel = np.broadcast_to(sel, (len(idx),))
        _count(stats, "dropped_selection", (~sel).sum())
        idx = idx[sel]
    N = len(idx)
    _count(stats, "jets_kept", N)
    y, entries = y_all[idx], entries[idx]
    flat_values = _Values(cfg, arrays, idx, counts_all, flat=True)
    awk_values = _Values(cfg, arrays, idx, counts_all, flat=False)
    counts = flat_values.counts
    total = int(counts.sum())
    take = np.minimum(counts, P)
    # the first P particles of every jet (None: every particle, no jet is longer than P)
    src = _ranges(np.cumsum(counts) - counts, take)[0] if N and counts.max() > P else None

    def check_finite(flat, name, inputs=()):
        if flat.size and not np.isfinite(flat).all():
            # blame an input branch that is itself non-finite, else the derived quantity
            kept = awk_values.kept
            for b in sorted(inputs):
                if b in fields:
                    bf = _flat_float(ak.broadcast_arrays(kept[b], kept[cfg.vectors[0]])[0], total, source, b)
                    if not np.isfinite(bf).all():
                        name, flat = b, bf
                        break
            bad = ~np.isfinite(flat)
            first = int(entries[np.repeat(np.arange(N), counts)[np.argmax(bad)]])
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

    def evaluate(expr, name) -> np.ndarray:  # (total,) float64, one value per particle of the kept jets
        if not _needs_jagged(expr, cfg):
            try:
                res = np.asarray(expr.evaluate(flat_values), dtype=np.float64)
                if res.ndim == 0:  # a constant
                    return np.full(total, float(res))
                if res.shape == (total,):
                    return res
            except _NotFlat:
                pass
            except (TypeError, ValueError) as exc:
                raise ConfigError(source, f"result is not numeric per particle ({type(exc).__name__}: {exc})",
                                  name) from None
        res = expr.evaluate(awk_values)
        if not isinstance(res, ak.Array) or res.ndim < 2:
            res = ak.broadcast_arrays(res, awk_values.kept[cfg.vectors[0]])[0]  # jet-level / constant -> per particle
        return _flat_float(res, total, source, name)

    # features: computed column by column on the flat particle content into a (C, kept particles) matrix (each
    # row written contiguously), transposed once into the (kept particles, C) rows a batch gathers
    M = int(take.sum())
    vals = np.empty((C, M), np.float32)
    for c, (spec, expr) in enumerate(zip(cfg.feature_specs, cfg.feature_exprs)):
        val = evaluate(expr, spec.name)
        check_finite(val, spec.name, inputs_of(expr))
        val = val - spec.subtract
        val *= spec.multiply
        if spec.clip is not None:
            np.clip(val, spec.clip[0], spec.clip[1], out=val)
        vals[c] = val if src is None else val[src]

    vecs = np.empty((4, M), np.float32)
    for c, name in enumerate(cfg.vectors):
        try:
            flat = flat_values.branch(name)
        except _NotFlat:
            flat = _flat_float(awk_values.kept[name], total, source, name)
        check_finite(flat, name)
        vecs[c] = flat if src is None else flat[src]
    return FlatJets(np.ascontiguousarray(vals.T), np.ascontiguousarray(vecs.T), take, y, entries)
