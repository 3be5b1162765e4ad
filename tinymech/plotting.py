"""Plots as plain text, for terminals and logs: line charts and heatmaps.
Titles and labels are made printable (they may hold tokens from a model's files)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .text import printable

_SHADES = " ░▒▓█"
_NEGATIVE_SHADES = " ·-=≡"  # a diverging heatmap's values below zero: another ramp, blank at zero
_MARKS = "•+x*o#"


def _label(text) -> str:
    return printable(str(text), keep="")


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
    lines = [_label(title)] if title else []
    for r, row in enumerate(grid):
        label = f"{y1:.3g}" if r == 0 else f"{y0:.3g}" if r == height - 1 else ""
        lines.append(f"{label:>{label_w}} │{''.join(row)}")
    lines.append(" " * label_w + " └" + "─" * width)
    lines.append(" " * label_w + f"  {x0:.4g}" + f"{x1:.4g}".rjust(width - len(f"{x0:.4g}")))
    legend = "   ".join(f"{m} {_label(name)}" for m, name in zip(_MARKS, series))
    lines.append(" " * label_w + "  " + legend)
    return "\n".join(lines)


def heatmap(values: np.ndarray, row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
            title: str = "", vmin: float | None = None, vmax: float | None = None, diverging: bool = False) -> str:
    """A 2-D array as shaded cells (two characters each) with row and column labels.
    diverging: for signed values: zero is blank, the size of a value sets its
    shade, positive values in blocks (░▒▓█) and negative ones in another ramp
    (·-=≡), on a scale symmetric about zero."""
    values = np.asarray(values, float)
    lo = np.nanmin(values) if vmin is None else vmin
    hi = np.nanmax(values) if vmax is None else vmax
    if diverging:
        hi = max(abs(lo), abs(hi))
        lo = -hi if hi else 0.0
    span = hi - lo if hi > lo else 1.0
    rows = [_label(r) for r in row_labels or range(values.shape[0])]
    cols = [_label(c) for c in col_labels or range(values.shape[1])]
    rw = max(len(r) for r in rows)
    cw = max(2, max(len(c) for c in cols))
    top = len(_SHADES) - 1

    def shade(v) -> str:
        if not np.isfinite(v):
            return _SHADES[0]
        if not diverging:
            return _SHADES[min(max(int(round((v - lo) / span * top)), 0), top)]
        level = min(int(round(abs(v) / (hi or 1.0) * top)), top)
        return (_SHADES if v >= 0 else _NEGATIVE_SHADES)[level]

    lines = [_label(title)] if title else []
    lines.append(" " * (rw + 1) + "".join(c.rjust(cw + 1) for c in cols))
    for label, row in zip(rows, values):
        lines.append(label.rjust(rw) + " " + "".join((shade(v) * cw).rjust(cw + 1) for v in row))
    if diverging:
        lines.append(f"{' ' * rw}  scale: '{_NEGATIVE_SHADES[-1]}' {lo:.3g} … ' ' 0 … '{_SHADES[-1]}' {hi:.3g}")
    else:
        lines.append(f"{' ' * rw}  scale: '{_SHADES[0]}' {lo:.3g} … '{_SHADES[-1]}' {hi:.3g}")
    return "\n".join(lines)
