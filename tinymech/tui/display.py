"""How numbers and tokens look on screen: token labels with visible
boundaries, color ramps built from the current theme, and bars."""
from __future__ import annotations

from dataclasses import dataclass

from textual.color import Color
from textual.content import Content
from textual.style import Style

from ..text import printable

BOS_LABEL = "‹bos›"
_VISIBLE = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}
_EIGHTHS = " ▏▎▍▌▋▊▉█"


# The prompt field holds one line: a prompt's newlines and tabs show there as
# these marks, and the marks in a submitted field stand for the characters.
_FIELD_MARKS = {"\n": "↵", "\t": "⇥"}


def prompt_to_field(prompt: str) -> str:
    return "".join(_FIELD_MARKS.get(ch, ch) for ch in prompt.replace("\r\n", "\n"))


def field_to_prompt(field: str) -> str:
    for ch, mark in _FIELD_MARKS.items():
        field = field.replace(mark, ch)
    return field


def token_label(text: str, is_bos: bool = False) -> str:
    """A token as a chip shows it: spaces as ·, newlines as ↵, BOS as ‹bos›."""
    if is_bos:
        return BOS_LABEL
    return printable("".join(_VISIBLE.get(ch, ch) for ch in text)) or "∅"


def fit(label: str, width: int) -> str:
    """A label cut to width, with "…" where something was cut."""
    return label if len(label) <= width else label[: max(0, width - 1)] + "…"


def bar(fraction: float, width: int) -> str:
    """A horizontal bar in eighths of a cell, padded to width."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[part] if part else "")
    return text.ljust(width)


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
        value = min(max(float(value), 0.0), 1.0)
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
