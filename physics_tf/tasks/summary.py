"""The end of a test stage on the console: a table of the logged test numbers and the files written where."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["print_test_summary"]


def print_test_summary(values: Mapping[str, float], count_key: str, out_dir: Path, written: Sequence[str]) -> None:
    """``values`` (metric → number) as a table, then ``<files> written to <out_dir>``; ``count_key`` is printed
    as an integer, other numbers to 4 significant digits."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Test metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in values.items():
        text = f"{value:.0f}" if key == count_key else ("inf" if math.isinf(value) else f"{value:.4g}")
        table.add_row(key, text)
    console = Console()
    console.print(table)
    console.print(f"{', '.join(written)} written to {out_dir}", soft_wrap=True)
