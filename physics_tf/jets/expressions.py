"""The language of the jet data configs: an expression over branches, checked with :mod:`ast`; the feature built
from it, ``clip((expr - subtract) * multiply, lo, hi)`` (:class:`FeatureSpec`); and the class of a jet
(:class:`LabelSpec`: one-hot branches, an integer class branch, or one boolean expression per class).

Only a restricted namespace is available: numpy-like ``log, exp, hypot, arctan2, tanh, abs, sqrt, clip, minimum,
maximum, where, sign, sinh, cosh, arcsinh, pi`` (also spelled ``np.log`` ...), ``sum`` (over each jet's particles:
``hypot(sum(pf_px), sum(pf_py))`` is the jet pT of a tree without ``jet_*`` branches), arithmetic, comparisons (also
chained, ``0 < x < 1``), ``& | ~`` and the logical ``and``, ``or``, ``not`` (element-wise: ``and`` / ``or`` /
``not`` are rewritten to ``logical_and`` / ``logical_or`` / ``logical_not``, so they work on arrays); no builtins,
no other attributes, no keyword arguments. The branches an expression needs are its free names. Values may be numpy
or awkward arrays (jagged ``part_*`` per particle, ``jet_*`` per jet).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import awkward as ak
import numpy as np

from physics_tf.data.errors import ConfigError, InvalidValueError

__all__ = ["Expression", "FeatureSpec", "LabelSpec"]


def _clip(x, lo, hi):
    """``clip`` that works on awkward arrays (np.clip is not an awkward ufunc)."""
    return np.minimum(np.maximum(x, lo), hi)


def _where(cond, a, b):
    if isinstance(cond, ak.Array) or isinstance(a, ak.Array) or isinstance(b, ak.Array):
        return ak.where(cond, a, b)
    return np.where(cond, a, b)


def _jet_sum(x):
    """The sum over each jet's particles of a per-particle (jagged) value: one value per jet."""
    if not isinstance(x, ak.Array) or x.ndim < 2:
        raise ConfigError("<config>", "sum() adds up the particles of each jet; its argument must be per particle",
                          "sum")
    return ak.sum(x, axis=-1)


_FUNCTIONS: dict[str, Any] = {
    "log": np.log, "exp": np.exp, "hypot": np.hypot, "arctan2": np.arctan2, "tanh": np.tanh,
    "abs": np.abs, "sqrt": np.sqrt, "clip": _clip, "minimum": np.minimum, "maximum": np.maximum,
    "where": _where, "sign": np.sign, "sinh": np.sinh, "cosh": np.cosh, "arcsinh": np.arcsinh, "sum": _jet_sum,
}
_CONSTANTS = {"pi": float(np.pi)}
# what the element-wise rewrite of ``and`` / ``or`` / ``not`` / chained comparisons calls (not user-callable names)
_LOGICAL = {"__and": np.logical_and, "__or": np.logical_or, "__not": np.logical_not}
_ALLOWED_NODES = (
    ast.Expression, ast.Name, ast.Load, ast.Constant, ast.Call, ast.Attribute, ast.BinOp, ast.UnaryOp,
    ast.Compare, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.Mod, ast.USub, ast.UAdd, ast.Invert,
    ast.BitAnd, ast.BitOr, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.FloorDiv,
    ast.BoolOp, ast.And, ast.Or, ast.Not,
)


class _ElementWise(ast.NodeTransformer):
    """``a and b`` -> ``__and(a, b)``, ``a or b`` -> ``__or(a, b)``, ``not a`` -> ``__not(a)``, ``a < b < c`` ->
    ``__and(a < b, b < c)``: Python's own forms ask an array for one truth value."""

    @staticmethod
    def _call(name: str, args: list) -> ast.Call:
        return ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=args, keywords=[])

    def _chain(self, name: str, values: list) -> ast.expr:
        out = values[0]
        for v in values[1:]:
            out = self._call(name, [out, v])
        return out

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.expr:
        self.generic_visit(node)
        return self._chain("__and" if isinstance(node.op, ast.And) else "__or", node.values)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        self.generic_visit(node)
        return self._call("__not", [node.operand]) if isinstance(node.op, ast.Not) else node

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        if len(node.ops) == 1:
            return node
        lefts = [node.left, *node.comparators[:-1]]
        pairs = [ast.Compare(left=lhs, ops=[op], comparators=[rhs])
                 for lhs, op, rhs in zip(lefts, node.ops, node.comparators)]
        return self._chain("__and", pairs)


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
    calls : frozenset[str]
        The functions it calls (``"sum"`` needs the jagged per-jet structure; the others work on flat arrays).
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
        self.calls = frozenset(n.func.id if isinstance(n.func, ast.Name) else n.func.attr
                               for n in ast.walk(tree) if isinstance(n, ast.Call))
        tree = ast.fix_missing_locations(_ElementWise().visit(tree))
        self._code = compile(tree, f"<{where}>", "eval")

    def evaluate(self, values: Mapping[str, Any]):
        """Evaluate with ``values`` (name -> array) in the restricted namespace."""
        ns: dict[str, Any] = {"__builtins__": {}, "np": SimpleNamespace(**_FUNCTIONS, **_CONSTANTS),
                              "numpy": SimpleNamespace(**_FUNCTIONS, **_CONSTANTS), **_FUNCTIONS, **_CONSTANTS,
                              **_LOGICAL}
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


def _per_jet(value, n: int, source: str, field: str) -> np.ndarray:
    """``value`` (a branch or an expression result) as one (n,) numpy value per jet; a jagged value is one line."""
    if isinstance(value, ak.Array):
        if value.ndim != 1:
            raise ConfigError(source, "a label needs one value per jet (a jet-level branch or expression), got "
                              f"{value.type}", field)
        value = ak.to_numpy(value)
    return np.broadcast_to(np.asarray(value), (n,))


class LabelSpec:
    """How a jet's class is read (``data.labels``), in any of these forms:

    * ``[is_qcd, is_top]``: one-hot branches of any names and numeric or bool type; the class is the one branch that
      is non-zero; class names are the branch names without a ``label_`` prefix (``label_QCD`` -> ``QCD``);
    * ``{branch: label, classes: [QCD, top]}``: one integer class branch, value k -> class k;
    * ``{top: "is_top == 1", qcd: "is_top == 0"}``: one boolean expression per class over the jet-level branches,
      class names = the keys; a list of one-entry mappings ``[{top: ...}, {qcd: ...}]`` is the same (a command-line
      override replaces a list in one go) and may mix in one-hot branch names;
    * weaver-core's ``{type: simple, value: [...]}`` and ``{type: custom, value: {...}}``.

    A jet matching no class is *unlabelled*: a one-line error naming file, entry and field, or skipped and counted
    with ``skip_unlabelled``; so is an integer outside ``0 .. K-1``. A jet matching several classes is always an
    error. With one-hot branches that are all labels of the file format (``known``, e.g. JetClass's ten), the
    format's other labels are read too: a jet of another class is then dropped silently (a subset of classes), not
    unlabelled.
    """

    def __init__(self, labels: Any, known: tuple[str, ...] = ()):
        self.branch: str | None = None  # the integer class branch (index form)
        self.entries: list[tuple[str, str | None, Expression | None]] = []  # (class name, one-hot branch, expr)
        if isinstance(labels, Mapping) and "type" in labels:
            labels = self._weaver(labels)
        if isinstance(labels, Mapping) and "branch" in labels:
            unknown = set(labels) - {"branch", "classes"}
            if unknown or not isinstance(labels.get("classes"), (list, tuple)) or not labels["classes"]:
                raise ConfigError("<config>", "the integer form is {branch: <name>, classes: [<class 0>, <class 1>, "
                                  f"...]}}, got {dict(labels)}", "labels")
            self.branch = str(labels["branch"])
            names = [str(c) for c in labels["classes"]]
        else:
            items = list(labels.items()) if isinstance(labels, Mapping) else [
                *((x, None) for x in ([labels] if isinstance(labels, str) else list(labels or [])))]
            for key, value in items:
                if isinstance(key, Mapping):  # a one-entry mapping inside a list
                    if len(key) != 1:
                        raise ConfigError("<config>", f"a list item of data.labels is a branch name or one "
                                          f"{{class: expression}}, got {dict(key)}", "labels")
                    key, value = next(iter(key.items()))
                if value is None:  # a one-hot branch
                    branch = str(key)
                    name = branch[len("label_"):] if branch.startswith("label_") else branch
                    self.entries.append((name, branch, None))
                else:
                    self.entries.append((str(key), None, Expression(str(value), f"labels.{key}")))
            names = [e[0] for e in self.entries]
        if not names:
            raise ConfigError("<config>", "at least one label is needed", "labels")
        if len(set(names)) != len(names):
            raise ConfigError("<config>", f"duplicate class names in {names}", "labels")
        self.class_names = names
        onehot = [b for _, b, e in self.entries if e is None]
        subset = self.branch is None and len(onehot) == len(self.entries) and set(onehot) <= set(known)
        self.others = [k for k in known if k not in onehot] if subset else []

    @staticmethod
    def _weaver(labels: Mapping) -> Any:
        kind, value = labels.get("type"), labels.get("value")
        if set(labels) != {"type", "value"} or kind not in ("simple", "custom"):
            raise ConfigError("<config>", "weaver-style labels are {type: simple, value: [branches]} or "
                              f"{{type: custom, value: {{class: expression}}}}, got {dict(labels)}", "labels")
        return value

    # ------------------------------------------------------------------ derived, no I/O
    @property
    def branches(self) -> list[str]:
        """The file branches that define the classes (in config order): one-hot branches, the integer branch, the
        branches the expressions read."""
        out = [self.branch] if self.branch else []
        for _, branch, expr in self.entries:
            out.extend([branch] if expr is None else sorted(expr.names))
        return list(dict.fromkeys(out))

    @property
    def read_branches(self) -> list[str]:
        """:attr:`branches` plus the format's other labels read to tell another class from no label."""
        return list(dict.fromkeys([*self.branches, *self.others]))

    # ------------------------------------------------------------------ per chunk
    def classify(self, arrays, source: str, entries: np.ndarray, skip_unlabelled: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
        """``(y, unlabelled)`` of the jets of a chunk: ``y (n,)`` int64 class index, −1 for a jet of no class
        listed; ``unlabelled (n,)`` bool, the jets with no label at all. Unless ``skip_unlabelled`` an unlabelled
        jet is a one-line :class:`InvalidValueError` naming ``source``, the entry and the field; so is a jet of
        several classes, a non-finite one-hot value or a non-integer class value, always."""
        n = len(arrays)
        if self.branch is not None:
            raw = _per_jet(arrays[self.branch], n, source, self.branch)
            val = raw.astype(np.float64)
            bad = ~np.isfinite(val) | (val != np.round(val))
            if bad.any():
                i = int(np.argmax(bad))
                raise InvalidValueError(source, f"entry {entries[i]} has class value {raw[i]!r}, not an integer "
                                        "class index", self.branch)
            y = val.astype(np.int64)
            unlabelled = (y < 0) | (y >= len(self.class_names))
            if unlabelled.any() and not skip_unlabelled:
                i = int(np.argmax(unlabelled))
                raise InvalidValueError(source, f"entry {entries[i]} has class value {y[i]}, outside 0..."
                                        f"{len(self.class_names) - 1} (classes {self.class_names}); "
                                        "data.skip_unlabelled=true skips such jets", self.branch)
            return np.where(unlabelled, -1, y), unlabelled
        flags = np.zeros((n, len(self.entries)), bool)  # (n, K)
        for k, (name, branch, expr) in enumerate(self.entries):
            if expr is None:
                col = _per_jet(arrays[branch], n, source, branch).astype(np.float64)
                if not np.isfinite(col).all():
                    raise InvalidValueError(source, f"non-finite label value at entry {entries[~np.isfinite(col)][0]}",
                                            branch)
                flags[:, k] = col != 0
            else:
                flags[:, k] = _per_jet(expr.evaluate({b: arrays[b] for b in expr.names}), n, source,
                                       f"labels.{name}").astype(bool)
        n_on = flags.sum(axis=1)
        if (n_on > 1).any():
            i = int(np.argmax(n_on > 1))
            hit = [self.entries[k] for k in np.nonzero(flags[i])[0]]
            if all(e is None for _, _, e in hit):
                raise InvalidValueError(source, f"entry {entries[i]} has several labels set: {[b for _, b, _ in hit]}",
                                        hit[0][1])
            raise InvalidValueError(source, f"entry {entries[i]} matches several classes: " + ", ".join(
                f"{nm} ({b if e is None else repr(e.source)})" for nm, b, e in hit), "labels")
        y = np.where(n_on == 1, np.argmax(flags, axis=1), -1).astype(np.int64)
        unlabelled = n_on == 0
        for other in self.others:
            unlabelled &= _per_jet(arrays[other], n, source, other) == 0
        if unlabelled.any() and not skip_unlabelled:
            bad = entries[unlabelled]
            what = ("has no label flag set" if all(e is None for _, _, e in self.entries)
                    else "matches none of the classes' label expressions")
            raise InvalidValueError(source, f"entry {bad[0]} {what} ({len(bad)} such jet(s) in entries {entries[0]}-"
                                    f"{entries[-1]}; data.skip_unlabelled=true skips them)", "labels")
        return y, unlabelled
