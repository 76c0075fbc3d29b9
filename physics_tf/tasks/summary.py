"""The end of a run on the console, the same for every analysis: a table of the logged test numbers with the files
the test stage wrote and where, then the run directory and what it holds.

Both are written through tqdm's external write mode: a progress bar still on screen (the test stage prints its
table before Lightning closes the bar) is cleared first and redrawn below, so the table starts on a line of its own.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["describe_run_directory", "print_run_directory", "print_summary_table", "print_test_summary"]


def print_test_summary(values: Mapping[str, float], count_key: str, out_dir: Path, written: Sequence[str]) -> None:
    """``values`` (metric → number) as a table, then ``<files> written to <out_dir>``; ``count_key`` is printed
    as an integer, other numbers to 4 significant digits."""
    rows = {key: f"{value:.0f}" if key == count_key else _number(value) for key, value in values.items()}
    print_summary_table("Test metrics", ("metric", "value"), rows, out_dir, written)


def _number(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.4g}"


def print_summary_table(title: str, columns: tuple[str, str], rows: Mapping[str, object], out_dir: Path,
                        written: Sequence[str], where: str = "written to") -> None:
    """A two-column table (``rows``: first column → second; floats to 4 significant digits), then
    ``<written> <where> <out_dir>``: the test stage's summary, and the jet generator's."""
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    table = Table(title=title)
    table.add_column(columns[0])
    table.add_column(columns[1], justify="right")
    for key, value in rows.items():
        table.add_row(str(key), _number(value) if isinstance(value, float) else str(value))
    with tqdm.external_write_mode(file=sys.stdout):
        console = Console()
        console.print(table)
        console.print(f"{', '.join(written)} {where} {out_dir}", soft_wrap=True)


def describe_run_directory(run_dir: Path, max_listed: int = 6) -> str:
    """``run directory <dir>: checkpoints/ (best.ckpt, epoch001-auc0.9755.ckpt, last.ckpt), config.yaml, …``.

    Entries sorted by name, hidden ones (Hydra's ``.hydra/``) left out; a sub-directory shows its files when it
    holds at most ``max_listed``, else their number.
    """
    run_dir = Path(run_dir)
    entries = []
    for path in sorted(p for p in run_dir.iterdir() if not p.name.startswith(".")) if run_dir.is_dir() else []:
        if not path.is_dir():
            entries.append(path.name)
            continue
        inner = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if not p.name.startswith("."))
        shown = ", ".join(inner) if len(inner) <= max_listed else f"{len(inner)} files"
        entries.append(f"{path.name}/ ({shown})" if inner else f"{path.name}/")
    return f"run directory {run_dir}: {', '.join(entries) or 'empty'}"


def print_run_directory(run_dir: Path) -> None:
    """The last line of every run: :func:`describe_run_directory` on stdout."""
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stdout):
        print(describe_run_directory(run_dir), flush=True)
