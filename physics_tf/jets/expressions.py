"""The feature language of the jet data configs: an expression over branches, checked with :mod:`ast`, and the
feature built from it, ``clip((expr - subtract) * multiply, lo, hi)`` (:class:`FeatureSpec`).

Only a restricted namespace is available: numpy-like ``log, exp, hypot, arctan2, tanh, abs, sqrt, clip, minimum,
maximum, where, sign, sinh, cosh, arcsinh, pi`` (also spelled ``np.log`` ...), arithmetic, comparisons and
``& | ~``; no builtins, no other attributes, no keyword arguments. The branches an expression needs are its free
names. Values may be numpy or awkward arrays (jagged ``part_*`` per particle, ``jet_*`` per jet).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import awkward as ak
import numpy as np

from physics_tf.data.errors import ConfigError

__all__ = ["Expression", "FeatureSpec"]


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


_DEFAULT_CLIP = (-5.0, 5.0)


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
