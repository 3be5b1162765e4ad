"""Text for terminals: every string from a file made printable, tables, token labels and
terminal plots, shared by the analysis toolkit, SAEs, the CLI and the TUI."""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np


# C0 controls (ESC, BEL, CR, backspace, ...) show as their Unicode pictures
# (␛, ␇, ␍, ␈); DEL, the C1 controls (U+009B is a one-character CSI, U+0085 a
# newline) and lone surrogates (bytes that were not UTF-8) show as U+FFFD, as do:
# - the line and paragraph separators (U+2028, U+2029), which some terminals
#   and every str.splitlines break a line at;
# - the bidirectional embeddings, overrides and isolates, which reorder the
#   text around them, up to the end of the line, so that a file could make one
#   string display as another; and the deprecated U+206A-F, which switch the
#   digits' shapes and the brackets' mirroring of what follows.
# The marks (LRM, RLM, ALM) stay: a mark reorders no more than a letter of its
# direction does (RLM is as right-to-left as an Alef), and Hebrew, Arabic and
# Persian text uses them. The other format characters stay too: they neither break
# nor reorder a line. Soft hyphen, the zero-width space, (non-)joiners (emoji
# sequences, Persian), word joiner, invisible operators and BOM show as nothing (or
# a hyphen), the Arabic, Syriac and Kaithi number signs as signs, tags make emoji
# flags; the rest (Mongolian, hieroglyph, shorthand and musical format controls)
# lay out a script's own signs.
_BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x2070)]
_LINE_BREAKS = [0x2028, 0x2029]
_UNSAFE = {code: 0x2400 + code for code in range(32)}
_UNSAFE.update(dict.fromkeys([0x7F, *range(0x80, 0xA0), *range(0xD800, 0xE000), *_BIDI, *_LINE_BREAKS], 0xFFFD))


@functools.lru_cache(maxsize=None)
def _table(keep: str) -> dict[int, int]:
    return {code: to for code, to in _UNSAFE.items() if chr(code) not in keep}


def printable(text: str, keep: str = "\n") -> str:
    """The text with its control characters visible and harmless, so that it
    cannot drive a terminal (retitle it, write the clipboard, clear or hide
    text, break or reorder a line); the characters in `keep` (by default the
    newline) stay, as does every other character: accents, CJK, emoji."""
    return text.translate(_table(keep))


# ---- tables ----

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


# ---- token labels ----

def readable_token(token: str) -> str:
    """A token string for tables: a space shows as '·', a newline as '↵'."""
    return token.replace(" ", "·").replace("\n", "↵")


def token_labels(model, ids: Sequence[int]) -> list[str]:
    """Readable token strings (see readable_token); '#id' when the model has no tokenizer."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if model.tokenizer is None:
        return [f"#{i}" for i in ids]
    return [readable_token(s) for s in model.tokenizer.decode_each(ids)]


# ---- terminal plots ----

_SHADES = " ░▒▓█"
_NEGATIVE_SHADES = " ·-=≡"  # a diverging heatmap's values below zero: another ramp, blank at zero
_MARKS = "•+x*o#"


def _label(text) -> str:
    return printable(str(text), keep="")


def _cells(v: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    """Which of n cells each value falls in, lo the first and hi the last (halved first, so that a
    range as wide as the doubles, -1e308 to 1e308, does not overflow to inf and NaN)."""
    span = hi / 2 - lo / 2
    share = (v / 2 - lo / 2) / span if span > 0 else np.zeros_like(v)
    return np.round(np.clip(share, 0, 1) * (n - 1)).astype(int)


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], width: int = 72, height: int = 14,
               title: str = "") -> str:
    """Several (x, y) series on one character grid, each with its own mark,
    y labels on the left and the x range below."""
    pts = [(np.asarray(x, float), np.asarray(y, float)) for x, y in series.values()]
    pts = [(x[np.isfinite(x) & np.isfinite(y)], y[np.isfinite(x) & np.isfinite(y)]) for x, y in pts]
    if not any(len(y) for _, y in pts):
        return f"{title}\n(no data)"
    xs = np.concatenate([x for x, _ in pts])
    ys = np.concatenate([y for _, y in pts])
    x0, x1 = xs.min(), xs.max() if xs.max() > xs.min() else xs.min() + 1
    y0, y1 = ys.min(), ys.max() if ys.max() > ys.min() else ys.min() + 1
    grid = [[" "] * width for _ in range(height)]
    for mark, (x, y) in zip(_MARKS, pts):
        cols = _cells(x, x0, x1, width)
        rows = _cells(-y, -y1, -y0, height)  # from the top
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
    half_span = hi / 2 - lo / 2 if hi > lo else 0.5  # halves: a range as wide as the doubles does not overflow
    rows = [_label(r) for r in row_labels or range(values.shape[0])]
    cols = [_label(c) for c in col_labels or range(values.shape[1])]
    rw = max(len(r) for r in rows)
    cw = max(2, max(len(c) for c in cols))
    top = len(_SHADES) - 1

    def shade(v) -> str:
        if not np.isfinite(v):
            return _SHADES[0]
        with np.errstate(over="ignore"):  # a share past the doubles is clipped like any past 1
            share = (v / 2 - lo / 2) / half_span if not diverging else abs(v) / (hi or 1.0)
        level = int(round(min(max(share, 0.0), 1.0) * top))  # outside vmin..vmax: the end shades
        return (_SHADES if not diverging or v >= 0 else _NEGATIVE_SHADES)[level]

    lines = [_label(title)] if title else []
    lines.append(" " * (rw + 1) + "".join(c.rjust(cw + 1) for c in cols))
    for label, row in zip(rows, values):
        lines.append(label.rjust(rw) + " " + "".join((shade(v) * cw).rjust(cw + 1) for v in row))
    if diverging:
        lines.append(f"{' ' * rw}  scale: '{_NEGATIVE_SHADES[-1]}' {lo:.3g} … ' ' 0 … '{_SHADES[-1]}' {hi:.3g}")
    else:
        lines.append(f"{' ' * rw}  scale: '{_SHADES[0]}' {lo:.3g} … '{_SHADES[-1]}' {hi:.3g}")
    return "\n".join(lines)
