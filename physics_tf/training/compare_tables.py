"""The comparison of :mod:`physics_tf.training.compare` as text: CSV, Markdown, or a table in the terminal (rich).

``labels`` are the run labels and ``rows`` the ``(section, key, [value per run])`` rows of
:func:`physics_tf.training.compare.comparison`; a run without the key (``None``) is printed as ``—``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

__all__ = ["to_csv", "to_markdown", "print_rich"]

MISSING = "—"


def _text(value: Any, precise: bool = False) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value) if precise else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _grid(labels: list[str], rows, precise: bool, runs_as_rows: bool) -> list[list[str]]:
    """Header + body as text; keys down the side (default) or runs down the side."""
    header = ["key", *labels]
    body = [[key, *(_text(v, precise) for v in values)] for _, key, values in rows]
    grid = [header, *body]
    return [list(col) for col in zip(*grid)] if runs_as_rows else grid


def to_csv(labels: list[str], rows, runs_as_rows: bool = False) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    grid = _grid(labels, rows, precise=True, runs_as_rows=runs_as_rows)
    if not runs_as_rows:
        writer.writerow(["section", *grid[0]])
        writer.writerows([section, *line] for (section, _, _), line in zip(rows, grid[1:]))
    else:
        writer.writerows(grid)
    return buf.getvalue()


def to_markdown(labels: list[str], rows, runs_as_rows: bool = False) -> str:
    grid = _grid(labels, rows, precise=False, runs_as_rows=runs_as_rows)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    out = [line(grid[0]), "|" + "|".join("---" for _ in grid[0]) + "|"]
    out += [line(r) for r in grid[1:]]
    return "\n".join(out) + "\n"


def print_rich(labels: list[str], rows, runs_as_rows: bool = False, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{len(labels)} runs", show_lines=False)
    grid = _grid(labels, rows, precise=False, runs_as_rows=runs_as_rows)
    for i, name in enumerate(grid[0]):
        table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    sections = [section for section, _, _ in rows] if not runs_as_rows else [None] * (len(grid) - 1)
    for i, cells in enumerate(grid[1:]):
        if i and sections[i] != sections[i - 1]:
            table.add_section()
        table.add_row(*cells)
    console.print(table)
