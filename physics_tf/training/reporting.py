"""Light helpers (no torch import) for run reports: flattening configs and ``metrics.json``, tables of metrics.

Used by the W&B report callback (:mod:`physics_tf.training.callbacks`) and by ``pipelines/compare.py``; a task's
report hook (:meth:`physics_tf.tasks.base.Task.report_tables`) hands its own tables over as :data:`Table`\\ s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Table", "flatten", "scalar_metrics", "metrics_tables"]

Table = tuple[list[str], list[list[Any]]]  # (columns, rows)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]} → {"a.b": 1, "c": [1, 2]}`` (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars of a (possibly nested) metrics dict under dotted keys: ``{"xmax": {"bias": 1}} → {"xmax.bias": 1}``.

    Lists (binned curves, confusion matrices) are left out: :func:`metrics_tables` turns them into tables.
    """
    return {k: v for k, v in flatten(metrics).items() if _is_scalar(v)}


def _rows_of_dicts(items: list[Mapping[str, Any]], first: str | None = None, names: list[str] | None = None) -> Table:
    columns: list[str] = [first] if first else []
    for item in items:
        columns += [k for k, v in item.items() if _is_scalar(v) and k not in columns]
    keys = columns[1:] if first else columns
    rows = [([names[i]] if first else []) + [item.get(k) for k in keys] for i, item in enumerate(items)]
    return columns, rows


def metrics_tables(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Table]:
    """The tabular parts of a metrics dict, by dotted name.

    * a list of dicts (e.g. ``xmax.vs_lg_energy``: one row per energy bin) → one row per item;
    * a dict of dicts of scalars (e.g. ``xmax.per_primary``: ``{"p": {"n", "bias", "resolution"}, …}``) → one
      row per key, the key in the first column;
    * a dict with ``classes`` and a square ``confusion`` matrix → ``<name>.confusion`` with a row per true class.
    """
    tables: dict[str, Table] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            tables[name] = _rows_of_dicts(value)
        elif isinstance(value, Mapping):
            subs = list(value.values())
            if subs and all(isinstance(v, Mapping) and all(_is_scalar(x) for x in v.values()) for v in subs):
                tables[name] = _rows_of_dicts(subs, first="name", names=[str(k) for k in value])
            else:
                tables.update(metrics_tables(value, name + "."))
            classes, confusion = value.get("classes"), value.get("confusion")
            if isinstance(classes, list) and isinstance(confusion, list) and len(confusion) == len(classes):
                tables[f"{name}.confusion"] = (["true \\ predicted", *map(str, classes)],
                                               [[str(c), *row] for c, row in zip(classes, confusion)])
    return tables
