"""Plots as plain text, for terminals and logs: line charts and heatmaps."""
from __future__ import annotations

from typing import Sequence

import numpy as np

_SHADES = " ░▒▓█"
_MARKS = "•+x*o#"


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], width: int = 72, height: int = 14,
               title: str = "") -> str:
    """Several (x, y) series on one character grid, each with its own mark,
    y labels on the left and the x range below."""
    pts = [(np.asarray(x, float), np.asarray(y, float)) for x, y in series.values()]
    pts = [(x[np.isfinite(y)], y[np.isfinite(y)]) for x, y in pts]
    if not any(len(y) for _, y in pts):
        return f"{title}\n(no data)"
    xs = np.concatenate([x for x, _ in pts])
    ys = np.concatenate([y for _, y in pts])
    x0, x1 = xs.min(), xs.max() if xs.max() > xs.min() else xs.min() + 1
    y0, y1 = ys.min(), ys.max() if ys.max() > ys.min() else ys.min() + 1
    grid = [[" "] * width for _ in range(height)]
    for mark, (x, y) in zip(_MARKS, pts):
        cols = np.round((x - x0) / (x1 - x0) * (width - 1)).astype(int)
        rows = np.round((y1 - y) / (y1 - y0) * (height - 1)).astype(int)
        for r, c in zip(rows, cols):
            grid[r][c] = mark
    label_w = max(len(f"{v:.3g}") for v in (y0, y1))
    lines = [title] if title else []
    for r, row in enumerate(grid):
        label = f"{y1:.3g}" if r == 0 else f"{y0:.3g}" if r == height - 1 else ""
        lines.append(f"{label:>{label_w}} │{''.join(row)}")
    lines.append(" " * label_w + " └" + "─" * width)
    lines.append(" " * label_w + f"  {x0:.4g}" + f"{x1:.4g}".rjust(width - len(f"{x0:.4g}")))
    legend = "   ".join(f"{m} {name}" for m, name in zip(_MARKS, series))
    lines.append(" " * label_w + "  " + legend)
    return "\n".join(lines)


def heatmap(values: np.ndarray, row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
            title: str = "", vmin: float | None = None, vmax: float | None = None) -> str:
    """A 2-D array as shaded cells (two characters each) with row and column labels."""
    values = np.asarray(values, float)
    lo = np.nanmin(values) if vmin is None else vmin
    hi = np.nanmax(values) if vmax is None else vmax
    span = hi - lo if hi > lo else 1.0
    rows = row_labels or [str(i) for i in range(values.shape[0])]
    cols = col_labels or [str(j) for j in range(values.shape[1])]
    rw = max(len(r) for r in rows)
    cw = max(2, max(len(c) for c in cols))
    lines = [title] if title else []
    lines.append(" " * (rw + 1) + "".join(c.rjust(cw + 1) for c in cols))
    for label, row in zip(rows, values):
        cells = []
        for v in row:
            level = 0 if not np.isfinite(v) else int(round((v - lo) / span * (len(_SHADES) - 1)))
            cells.append((_SHADES[min(max(level, 0), len(_SHADES) - 1)] * cw).rjust(cw + 1))
        lines.append(label.rjust(rw) + " " + "".join(cells))
    lines.append(f"{' ' * rw}  scale: '{_SHADES[0]}' {lo:.3g} … '{_SHADES[-1]}' {hi:.3g}")
    return "\n".join(lines)
