"""How numbers and tokens look on screen: token labels with visible
boundaries, color ramps built from the current theme, and bars."""
from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from rich.cells import cell_len, set_cell_size

from textual.color import Color
from textual.content import Content
from textual.style import Style

from ..text import printable

BOS_LABEL = "‹bos›"
_VISIBLE = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}
_EIGHTHS = " ▏▎▍▌▋▊▉█"
_BLOCKS = " ▁▂▃▄▅▆▇█"  # a column's top cell, in eighths


# A text field holds one line of printable text: newlines and tabs show there as
# these marks, other controls as printable() shows them (one character for one, so
# a cursor stays put). In an edited prompt the marks and the C0 controls' pictures
# stand for the characters again (so an edit keeps a prompt's ESC or CR); DEL, C1
# and bidirectional controls, shown as U+FFFD, cannot come back.
_FIELD_MARKS = {"\n": "↵", "\t": "⇥"}
_FROM_FIELD = {0x2400 + code: code for code in range(32)} | {ord(m): ch for ch, m in _FIELD_MARKS.items()}


def field_text(text: str) -> str:
    return printable("".join(_FIELD_MARKS.get(ch, ch) for ch in text), keep="")


def prompt_to_field(prompt: str) -> str:
    return field_text(prompt.replace("\r\n", "\n"))


def field_to_prompt(field: str) -> str:
    return field.translate(_FROM_FIELD)


def token_label(token: str | bytes, is_bos: bool = False) -> str:
    """A token as a chip shows it: spaces as ·, newlines as ↵, BOS as ‹bos›,
    bytes that are not a whole character as ‹e2 80›."""
    return BOS_LABEL if is_bos else token_labels([token])[0]


def token_labels(tokens: Sequence[str | bytes], bos: bool = False) -> list[str]:
    """Labels of consecutive tokens, each its text, or its bytes where it is not
    whole UTF-8 on its own. A character cut across tokens shows on the token that
    completes it; its bytes in the tokens before show as marks (‹f0 9f› ‹98 80›
    -> "‹f0 9f›", "😀"), as do bytes that make no character."""
    data = [t if isinstance(t, bytes) else t.encode("utf-8") for t in tokens]
    ends = list(itertools.accumulate(len(d) for d in data))
    parts: list[list[str | bytearray]] = [[] for _ in data]
    pos = 0
    for ch in b"".join(data).decode("utf-8", "surrogateescape"):  # a byte of no character: a lone surrogate
        raw = ch.encode("utf-8", "surrogateescape")
        last = bisect.bisect_right(ends, pos + len(raw) - 1)  # the token holding the character's last byte
        whole = not "\udc80" <= ch <= "\udcff"
        for t in range(bisect.bisect_right(ends, pos), last + 1):
            if t == last and whole:
                parts[t].append(printable(_VISIBLE.get(ch, ch)))
            else:
                lo, hi = max(pos, ends[t] - len(data[t])), min(pos + len(raw), ends[t])
                if not parts[t] or not isinstance(parts[t][-1], bytearray):
                    parts[t].append(bytearray())
                parts[t][-1] += raw[lo - pos : hi - pos]
        pos += len(raw)
    labels = ["".join(p if isinstance(p, str) else f"‹{p.hex(' ')}›" for p in ps) or "∅" for ps in parts]
    if bos and labels:
        labels[0] = BOS_LABEL
    return labels


def fit(label: str, width: int) -> str:
    """A label cut to `width` cells, with "…" where something was cut."""
    return label if cell_len(label) <= width else set_cell_size(label, max(0, width - 1)) + "…"


def pad(label: str, width: int) -> str:
    """A label padded with spaces to `width` cells (wide characters take two)."""
    return label + " " * max(0, width - cell_len(label))


def bar(fraction: float, width: int) -> str:
    """A horizontal bar in eighths of a cell, padded to width."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[part] if part else "")
    return text.ljust(width)


def columns(values: Sequence[float], width: int, height: int) -> list[str]:
    """Values (counts: not negative) as a column chart of block characters, `height`
    lines from the top down, in at most `width` cells: each value as wide as fits,
    neighbours added together when there are more values than cells. Any value
    above 0 shows (one eighth at least)."""
    values = np.asarray(values, dtype=np.float64)
    width = max(int(width), 1)
    if len(values) > width:
        values = np.array([part.sum() for part in np.array_split(values, width)])
    repeat = max(1, width // max(len(values), 1))
    top = values.max() if len(values) else 0.0
    eighths = np.ceil(values / top * height * 8).astype(int) if top > 0 else np.zeros(len(values), int)
    return ["".join(_BLOCKS[level] * repeat for level in np.clip(eighths - row * 8, 0, 8))
            for row in range(height - 1, -1, -1)]


def prob(p: float) -> str:
    """A probability in three cells: ".07", ".93", "1.0"."""
    return "1.0" if p >= 0.995 else f"{p:.2f}"[1:]


def readable_text(background: Color) -> Color:
    """Black or white, whichever contrasts more with the background.

    Relative luminance as WCAG defines it; black and white contrast equally
    at a luminance of 0.179."""
    channels = []
    for value in (background.r, background.g, background.b):
        x = value / 255
        channels.append(x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4)
    luminance = 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]
    return Color(0, 0, 0) if luminance > 0.179 else Color(255, 255, 255)


@dataclass(frozen=True)
class Palette:
    """Colors taken from the theme, so ramps read in dark and light themes."""

    base: Color  # what a value of 0 looks like: the panel background
    muted: Color
    loss: Color
    attention: Color
    feature: Color
    selection: Color

    @classmethod
    def from_theme(cls, variables: dict[str, str]) -> Palette:
        def get(name: str, default: str) -> Color:
            return Color.parse(variables.get(name, default))

        base = get("surface", "#1e1e1e")
        return cls(
            base=base,
            muted=base + get("foreground-muted", "#e0e0e099"),  # made opaque: over any background alike
            loss=get("error", "#ba3c5b"),
            attention=get("primary", "#0178d4"),
            feature=get("success", "#4ebf71"),
            selection=get("accent", "#ffa62b"),
        )

    def ramp(self, value: float, hot: Color) -> Style:
        """Background from the panel color (0) to `hot` (1), with readable text."""
        value = float(value)
        value = min(max(value, 0.0), 1.0) if value == value else 0.0  # NaN: the panel color
        background = self.base.blend(hot, value)
        return Style(background=background, foreground=readable_text(background))

    @property
    def selected(self) -> Style:
        return Style(background=self.selection, foreground=readable_text(self.selection), bold=True)


def wrap_chips(chips: list[Content], width: int, first_indent: int = 0) -> Content:
    """Chips joined by single spaces, wrapped to width without splitting a chip."""
    lines: list[list[Content]] = [[]]
    x = first_indent
    for c in chips:
        if lines[-1] and x + c.cell_length > width:
            lines.append([])
            x = 0
        lines[-1].append(c)
        x += c.cell_length + 1
    return Content("\n").join(Content(" ").join(line) for line in lines)
