"""The prompt's tokens as chips, wrapped to the width, colored by the chosen
metric; the selected chip is highlighted and can be moved with the mouse."""
from __future__ import annotations

import math

from rich.cells import cell_len
from textual import events
from textual.containers import VerticalScroll
from textual.content import Content
from textual.geometry import Region, Size
from textual.style import Style
from textual.widget import Widget

from ..display import Palette
from ..messages import TokenSelected
from ..view import SIGNED_METRICS, View


class TokenBox(VerticalScroll, can_focus=False, inherit_bindings=False):
    """The strip's scrolling frame. It binds no keys, so that arrows, Home and
    End reach the screen (and move the selection) instead of scrolling."""


class TokenStrip(Widget, can_focus=True):
    """Chips separated by one blank cell, so every token boundary shows."""

    DEFAULT_CSS = """
    TokenStrip { height: auto; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.view = View()
        self._chips: list[tuple[int, int, int]] = []  # (line, x, width) per token, for the last width

    def show(self, view: View) -> None:
        self.view = view
        self.refresh(layout=True)
        self.call_after_refresh(self._reveal_selection)

    def labels(self) -> list[str]:
        a = self.view.analysis
        if a is None:
            return []
        return list(a.labels)

    def _layout(self, width: int) -> list[tuple[int, int, int]]:
        chips, line, x = [], 0, 0
        for label in self.labels():
            w = cell_len(label)  # emoji and CJK characters take two cells
            if x > 0 and x + w > width:
                line, x = line + 1, 0
            chips.append((line, x, w))
            x += w + 1
        return chips

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        chips = self._layout(max(width, 1))
        return (chips[-1][0] + 1) if chips else 1

    def render(self) -> Content:
        view = self.view
        if view.analysis is None:
            return Content.styled("(no prompt yet)", "dim italic")
        palette = Palette.from_theme(self.app.theme_variables)
        hot = {"loss": palette.loss, "steered loss": palette.loss, "feature": palette.feature,
               "attention": palette.attention, "saliency": palette.feature}[view.color_by]
        cold = palette.loss if view.color_by in SIGNED_METRICS else hot  # below 0: pushed against
        scaled = view.token_values()
        self._chips = self._layout(max(self.size.width, 1))
        bos = view.analysis.bos
        parts: list[Content | str] = []
        prev_line = 0
        for i, (label, (line, x, w)) in enumerate(zip(self.labels(), self._chips)):
            if i:
                parts.append("\n" if line != prev_line else " ")
            prev_line = line
            style = Style()
            if i == view.selected:
                style = palette.selected
            elif scaled is not None and not math.isnan(scaled[i]):
                style = palette.ramp(abs(scaled[i]), hot if scaled[i] >= 0 else cold)
            elif scaled is not None:
                style = Style(foreground=palette.muted)  # no value here (BOS loss, later tokens' attention)
            if i == 0 and bos:
                style = style + Style(italic=True)
            parts.append(Content.styled(label, style))
        return Content.assemble(*parts)

    def chip_at(self, x: int, y: int) -> int | None:
        for i, (line, cx, w) in enumerate(self._chips):
            if line == y and cx <= x < cx + w:
                return i
        return None

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        index = self.chip_at(offset.x, offset.y)
        if index is not None:
            self.post_message(TokenSelected(index))

    def _reveal_selection(self) -> None:
        """Scroll the enclosing container so the selected chip is in view."""
        if not self._chips or self.view.selected >= len(self._chips) or self.parent is None:
            return
        line, x, w = self._chips[self.view.selected]
        self.parent.scroll_to_region(Region(x, line, w, 1), animate=False, immediate=True)
