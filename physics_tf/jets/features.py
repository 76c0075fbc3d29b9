"""Configuration of the jet data layer (built from ``conf/data/*.yaml``) and the feature-expression engine.

A feature is defined weaver-core style (Qu et al., weaver-core ``data/config.py``)::

    value = clip((expr - subtract) * multiply, lo, hi)

where ``expr`` is a Python expression over file branches (``part_*`` jagged per particle, ``jet_*`` per jet;
jet-level values broadcast against the particles) and over earlier ``variables``. Only a restricted namespace
is available: numpy-like ``log, exp, hypot, arctan2, tanh, abs, sqrt, clip, minimum, maximum, where, sign,
sinh, cosh, arcsinh, pi`` (also spelled ``np.log`` ...), arithmetic, comparisons and ``& | ~``. Expressions are
parsed with :mod:`ast` and checked before use; the branches they need are the free names.

The published Particle Transformer feature sets (Qu, Li, Qian 2022, arXiv:2202.03772; standardisation in
``/work/shared/PHYSICS.md``) are available as :data:`FEATURE_SETS` (``kin`` 7, ``kinpid`` 13, ``full`` 17)
and written out in ``conf/data/jetclass.yaml``.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import awkward as ak
import numpy as np

from physics_tf.data.errors import ConfigError, UnknownLabelError

__all__ = [
    "JETCLASS_LABELS",
    "TOPTAGGING_LABELS",
    "FORMATS",
    "FEATURE_SETS",
    "DEFAULT_VARIABLES",
    "FeatureSpec",
    "JetDataConfig",
    "Expression",
]

#: the 10 one-hot label branches of JetClass, in the published class order.
JETCLASS_LABELS = (
    "label_QCD", "label_Hbb", "label_Hcc", "label_Hgg", "label_H4q",
    "label_Hqql", "label_Zqq", "label_Wqq", "label_Tbqq", "label_Tbl",
)
#: label branches the top-tagging reader derives from ``is_signal_new`` (0 -> QCD, 1 -> top).
TOPTAGGING_LABELS = ("label_QCD", "label_Top")
FORMATS = {"jetclass_root": JETCLASS_LABELS, "toptagging_h5": TOPTAGGING_LABELS}

_DEFAULT_CLIP = (-5.0, 5.0)


def _clip(x, lo, hi):
    """``clip`` that works on awkward arrays (np.clip is not an awkward ufunc)."""
    return np.minimum(np.maximum(x, lo), hi)


def _where(cond, a, b):
    if isinstance(cond, ak.Array) or isinstance(a, ak.Array) or isinstance(b, ak.Array):
        return ak.where(cond, a, b)
    return np.where(cond, a, b)


_FUNCTIONS: dict[str, Any] = {
    "log": np.log, "exp": np.exp, "hypot": np.hypot, "arctan2": np.arctan2, "tanh": np.tanh,
    "abs": np.abs, "sqrt": np.sqrt, "clip": _clip, "minimum": np.minimum, "maximum": np.maximum,
    "where": _where, "sign": np.sign, "sinh": np.sinh, "cosh": np.cosh, "arcsinh": np.arcsinh,
}
_CONSTANTS = {"pi": float(np.pi)}
_ALLOWED_NODES = (
    ast.Expression, ast.Name, ast.Load, ast.Constant, ast.Call, ast.Attribute, ast.BinOp, ast.UnaryOp,
    ast.Compare, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.Mod, ast.USub, ast.UAdd, ast.Invert,
    ast.BitAnd, ast.BitOr, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.FloorDiv,
)


class Expression:
    """A checked, compiled expression over branches.

    Parameters
    ----------
    source
        Python expression text, e.g. ``"log(hypot(part_px, part_py) / jet_pt)"``.
    where
        Name of the feature / variable (or ``"selection"``), used as the field in error messages.

    Attributes
    ----------
    names : frozenset[str]
        Free names of the expression (branches / variables it reads).
    """

    def __init__(self, source: str, where: str):
        self.source = str(source)
        try:
            tree = ast.parse(self.source, mode="eval")
        except SyntaxError as exc:
            raise ConfigError("<config>", f"cannot parse expression {self.source!r}: {exc.msg}", where) from None
        names: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED_NODES):
                raise ConfigError("<config>", f"{type(node).__name__} not allowed in expression {self.source!r}",
                                  where)
            if isinstance(node, ast.Attribute):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("np", "numpy")
                        and node.attr in _FUNCTIONS | _CONSTANTS):
                    raise ConfigError("<config>", f"attribute '{ast.unparse(node)}' not allowed in "
                                      f"expression {self.source!r}", where)
            elif isinstance(node, ast.Call):
                if not isinstance(node.func, (ast.Name, ast.Attribute)) or (
                        isinstance(node.func, ast.Name) and node.func.id not in _FUNCTIONS):
                    raise ConfigError("<config>", f"call '{ast.unparse(node.func)}' not allowed in expression "
                                      f"{self.source!r} (allowed: {', '.join(sorted(_FUNCTIONS))})", where)
                if node.keywords:
                    raise ConfigError("<config>", f"keyword arguments not allowed in {self.source!r}", where)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id not in _FUNCTIONS and node.id not in _CONSTANTS:
                # 'np' only appears as the base of an allowed attribute (checked above)
                parent_is_attr = any(isinstance(p, ast.Attribute) and p.value is node for p in ast.walk(tree))
                if not parent_is_attr:
                    names.add(node.id)
        self.names = frozenset(names)
        self._code = compile(tree, f"<{where}>", "eval")

    def evaluate(self, values: Mapping[str, Any]):
        """Evaluate with ``values`` (name -> array) in the restricted namespace."""
        ns: dict[str, Any] = {"__builtins__": {}, "np": SimpleNamespace(**_FUNCTIONS, **_CONSTANTS),
                              "numpy": SimpleNamespace(**_FUNCTIONS, **_CONSTANTS), **_FUNCTIONS, **_CONSTANTS}
        ns.update({k: values[k] for k in self.names})
        with np.errstate(all="ignore"):  # non-finite results are reported by the caller, naming the field
            return eval(self._code, ns)  # noqa: S307 - AST-checked, no builtins

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One input feature: ``clip((expr - subtract) * multiply, *clip)`` (``clip=None``: no clipping)."""

    name: str
    expr: str
    subtract: float = 0.0
    multiply: float = 1.0
    clip: tuple[float, float] | None = _DEFAULT_CLIP

    @staticmethod
    def from_any(name: str, spec: Any) -> "FeatureSpec":
        """From a YAML entry: a mapping ``{expr, subtract, multiply, clip}``, a bare expression string or None
        (expression = the name itself)."""
        if spec is None:
            return FeatureSpec(name, name)
        if isinstance(spec, str):
            return FeatureSpec(name, spec)
        if not isinstance(spec, Mapping):
            raise ConfigError("<config>", f"feature spec must be a mapping, string or null, got {spec!r}", name)
        unknown = set(spec) - {"expr", "subtract", "multiply", "clip"}
        if unknown:
            raise ConfigError("<config>", f"unknown keys {sorted(unknown)} (allowed: expr, subtract, multiply, "
                              "clip)", name)
        clip = spec.get("clip", _DEFAULT_CLIP)
        if clip is not None:
            clip = tuple(float(c) for c in clip)
            if len(clip) != 2 or not clip[0] < clip[1]:
                raise ConfigError("<config>", f"clip must be [lo, hi] with lo < hi, got {list(clip)}", name)
        return FeatureSpec(name, str(spec.get("expr", name)), float(spec.get("subtract", 0.0)),
                           float(spec.get("multiply", 1.0)), clip)


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
        the format's labels is allowed: jets whose label is none of them are skipped.
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
        needed: set[str] = set(self.vectors) | set(self.labels)
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
