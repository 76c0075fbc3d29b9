"""The comparison of :mod:`physics_tf.training.compare` as text: CSV, Markdown, or a table in the terminal (rich).

``labels`` are the run labels and ``rows`` the ``(section, key, [value per run])`` rows of
:func:`physics_tf.training.compare.comparison`; a run without the key (``None``) is printed as ``—``.

The terminal table (:func:`print_rich`, :func:`layout`) fits the console's width (``COLUMNS``; 80 columns when the
output is not a terminal) without ever wrapping a value character by character. The rule (:data:`LAYOUT_RULE`):

- run paths (``source``) are shown relative to their common parent directory, printed once above the table;
- a cell breaks only at spaces (an override list: one override a line); a word wider than its column (a long path,
  key or label) is shortened in the middle with ``…``, keeping its start and end;
- the first column (keys, or runs) takes at most a third of the width; the other columns get their full width if
  all fit, else the widest are narrowed to share what is left, but never below :data:`MIN_WIDTH` characters;
- when the columns do not fit at that width the table is split into parts, each with as many columns as fit and
  the first column repeated; runs become the rows (as with ``--runs-as-rows``) when that needs fewer parts.

CSV and Markdown always hold the full values.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from typing import Any

__all__ = ["to_csv", "to_markdown", "print_rich", "layout", "LAYOUT_RULE", "MIN_WIDTH"]

MISSING = "—"
MIN_WIDTH = 12  # a value column is never narrower: narrower ones end up holding fragments of words
LAYOUT_RULE = ("In the terminal table (COLUMNS wide; 80 when not a terminal) run paths are relative to their common "
               "parent (printed above it), cells break only at spaces, a word wider than its column is shortened in "
               f"the middle (…), run columns are at least {MIN_WIDTH} characters wide, and a table wider than the "
               "console is split into parts repeating the first column, or transposed (runs as rows) when that "
               "needs fewer parts. --csv and --markdown hold the full values.")


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


def _shorten(word: str, width: int) -> str:
    """``word`` in at most ``width`` characters: the middle replaced by ``…`` (the end, e.g. a job number, kept)."""
    if len(word) <= width:
        return word
    head = max(width - 1, 0) // 2
    return word[:head] + "…" + word[len(word) - (width - 1 - head):] if width > 1 else word[:width]


def _fit(text: str, width: int, hyphens: bool = False) -> str:
    """``text`` in lines of at most ``width``, broken only at spaces (and after ``-`` with ``hyphens``: run labels
    ``{experiment}-{model}-{seed}``); a piece wider than ``width`` shortened in the middle."""
    lines: list[str] = []
    for word in text.split():
        for i, piece in enumerate(re.findall(r"[^-]+-*|-+", word) if hyphens else [word]):
            piece, sep = _shorten(piece, width), "" if i else " "
            if lines and len(lines[-1]) + len(sep) + len(piece) <= width:
                lines[-1] += sep + piece
            else:
                lines.append(piece)
    return "\n".join(lines)


def _relative_sources(rows) -> tuple[str, list]:
    """``(common parent of the run paths or URLs, rows with the ``source`` values relative to it)``."""
    sources = next((values for section, key, values in rows if (section, key) == ("run", "source")), None)
    if not sources or not all(isinstance(s, str) for s in sources):
        return "", rows
    common = []
    for parts in zip(*(s.split("/")[:-1] for s in sources)):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    if not "".join(common):
        return "", rows
    cut = len("/".join(common)) + 1
    return "/".join(common) + "/", [(section, key, [v[cut:] for v in values]) if (section, key) == (
        "run", "source") else (section, key, values) for section, key, values in rows]


def _parts(grid: list[list[str]], width: int) -> list[tuple[list[int], list[int]]]:
    """The table split into parts that fit ``width``: ``(column indices, column widths)``, column 0 in each."""
    natural = [max(len(line[j]) for line in grid) for j in range(len(grid[0]))]
    first = min(natural[0], max(MIN_WIDTH, width // 3))
    room = width - 1 - (first + 3)  # a column of text width w takes w + 3 (padding, border)

    def fits(group: list[int]) -> bool:
        return sum(min(natural[k], MIN_WIDTH) + 3 for k in group) <= room

    groups: list[list[int]] = [[]]
    for j in range(1, len(natural)):  # as many columns as fit in each part, then the same number in each if they fit
        if groups[-1] and not fits([*groups[-1], j]):
            groups.append([])
        groups[-1].append(j)
    size = -(-(len(natural) - 1) // len(groups))
    even = [list(range(start, min(start + size, len(natural)))) for start in range(1, len(natural), size)]
    if len(even) == len(groups) and all(map(fits, even)):
        groups = even
    out = []
    for group in groups:
        cap = max(natural[k] for k in group) if group else 0
        while cap > 1 and sum(min(natural[k], cap) + 3 for k in group) > room:
            cap -= 1
        out.append(([0, *group], [first, *(min(natural[k], cap) for k in group)]))
    return out


def layout(labels: list[str], rows, width: int, runs_as_rows: bool = False):
    """The terminal table's layout (module docstring): ``(common parent of the sources, runs_as_rows, parts)``;
    each part is a list of lines of cell texts (header first) fitted to its column widths, and those widths."""
    prefix, rows = _relative_sources(rows)
    grid = _grid(labels, rows, precise=False, runs_as_rows=False)
    grid = [[" ".join(cell.split()) for cell in line] for line in grid]
    transposed = [list(col) for col in zip(*grid)]
    transposed[0][0] = "run"
    parts = _parts(grid, width)
    if runs_as_rows or len(_parts(transposed, width)) < len(parts):
        runs_as_rows, grid, parts = True, transposed, _parts(transposed, width)

    def label(i: int, j: int) -> bool:
        return (j == 0 and i > 0) if runs_as_rows else (i == 0 and j > 0)

    return prefix, runs_as_rows, [([[_fit(line[j], w, label(i, j)) for j, w in zip(columns, widths)]
                                    for i, line in enumerate(grid)], widths) for columns, widths in parts]


def print_rich(labels: list[str], rows, runs_as_rows: bool = False, console: Any = None) -> None:
    """The comparison as a table in the console, laid out to fit its width (module docstring)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    prefix, runs_as_rows, parts = layout(labels, rows, console.width, runs_as_rows)
    if prefix:  # one line, never wrapped by rich: a terminal may wrap it, a file keeps it whole
        console.print(f"source: relative to {prefix}", soft_wrap=True, markup=False, highlight=False)
    title = f"{len(labels)} run{'s' if len(labels) != 1 else ''}"
    sections = [None] * len(labels) if runs_as_rows else [section for section, _, _ in rows]
    for n, (lines, widths) in enumerate(parts, 1):
        table = Table(title=title + (f" ({n} of {len(parts)})" if len(parts) > 1 else ""))
        for i, (name, width) in enumerate(zip(lines[0], widths)):
            table.add_column(name, justify="left" if i == 0 else "right", width=width, overflow="ellipsis")
        for i, cells in enumerate(lines[1:]):
            if i and sections[i] != sections[i - 1]:
                table.add_section()
            table.add_row(*cells)
        console.print(table)
