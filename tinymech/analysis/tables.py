"""Plain-text tables for the analysis results' __str__."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..text import printable


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None,
                 align: str | None = None) -> str:
    """A monospaced table; align holds one 'l' or 'r' per column
    (default: the first column left, the others right). Cells and title are
    made printable: they hold tokens and names from a model's files."""
    n = len(headers)
    align = align or "l" + "r" * (n - 1)
    cells = [[printable(str(c), keep="") for c in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(n)]

    def line(row):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)).rstrip()

    out = [printable(title, keep="")] if title else []
    out.append(line(cells[0]))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


def format_grid(values: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                title: str | None = None, fmt: str = "{:+.3f}") -> str:
    """A 2-D array [rows, cols] as a table (for [layer, head] and [layer, pos] results)."""
    rows = [[label] + [fmt.format(v) for v in row] for label, row in zip(row_labels, np.asarray(values))]
    return format_table([""] + list(col_labels), rows, title=title)
