"""One head's attention: where the selected token looks, and the head's whole
query × key pattern as a half-block heatmap (two query rows per line)."""
from __future__ import annotations

import numpy as np
from rich.segment import Segment
from rich.style import Style as RichStyle
from textual.color import Color
from textual.containers import Vertical
from textual.content import Content
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

from ..display import Palette, prob, wrap_chips
from ..view import View

TOP_KEYS = 8  # attended tokens listed above the heatmap
MARGIN = 5  # cells left of the heatmap: query index and selection marker


class PatternHeatmap(ScrollView, can_focus=False):
    """Rows are query positions, columns key positions; scrolls to keep the
    selected query in view. The selected query's row uses the accent color.
    The first line stays put and labels the key columns."""

    DEFAULT_CSS = """
    PatternHeatmap { height: 1fr; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pattern = np.zeros((0, 0), dtype=np.float32)
        self.selected = 0
        self.palette: Palette | None = None
        self.cell = 2

    def set_pattern(self, pattern: np.ndarray, selected: int, palette: Palette) -> None:
        self.pattern, self.selected, self.palette = pattern, selected, palette
        n = pattern.shape[0]
        self.cell = 2 if MARGIN + 2 * n <= max(self.scrollable_content_region.width, 1) else 1
        overhang = max(0, len(str(n - 1)) - self.cell)  # of the last key's label
        self.virtual_size = Size(MARGIN + self.cell * n + overhang, 1 + (n + 1) // 2)
        self.refresh()
        self.call_after_refresh(self._reveal_selected)

    def _reveal_selected(self) -> None:
        # the column and its label, with MARGIN cells of room on the left (the row
        # labels at the first key); two lines, as the key labels cover the first one
        width = MARGIN + max(self.cell, len(str(self.selected)))
        self.scroll_to_region(Region(self.cell * self.selected, self.selected // 2, width, 2),
                              animate=False, immediate=True)

    def _color(self, q: int, k: int) -> Color:
        p = self.palette
        if q >= self.pattern.shape[0] or k > q:
            return p.base
        hot = p.selection if q == self.selected else p.attention
        return p.base.blend(hot, float(self.pattern[q, k]))

    def _key_labels(self) -> Strip:
        """Key positions over their columns: every `step`-th one, spaced so that
        labels never touch, and the selected token's in the accent color."""
        n, p, base = self.pattern.shape[0], self.palette, self.rich_style
        step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, n) if s * self.cell > len(str(n - 1)))
        sel, sel_label = MARGIN + self.cell * self.selected, str(self.selected)
        cells = list(" q\\k".ljust(MARGIN) + " " * (self.cell * n + len(str(n - 1))))
        for k in range(0, n, step):
            x, label = MARGIN + self.cell * k, str(k)
            if x + len(label) < sel or x > sel + len(sel_label):  # a cell apart from the selected label
                cells[x : x + len(label)] = label
        end = sel + len(sel_label)
        cells[sel:end] = sel_label
        muted = base + RichStyle(color=p.muted.rich_color)
        return Strip([Segment("".join(cells[:sel]), muted),
                      Segment(sel_label, base + RichStyle(color=p.selection.rich_color, bold=True)),
                      Segment("".join(cells[end:]), muted)])

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        n = self.pattern.shape[0]
        base = self.rich_style
        if self.palette is None or n == 0:
            return Strip.blank(width, base)
        if y == 0:
            return self._key_labels().crop_extend(scroll_x, scroll_x + width, base)
        line = scroll_y + y - 1
        if line >= (n + 1) // 2:
            return Strip.blank(width, base)
        top, bottom = 2 * line, 2 * line + 1
        marker = "▸" if self.selected in (top, bottom) else " "
        segments = [
            Segment(f"{top:>3}", base + RichStyle(color=self.palette.muted.rich_color)),
            Segment(f"{marker} ", base + RichStyle(color=self.palette.selection.rich_color, bold=True)),
        ]
        for k in range(n):
            style = RichStyle(color=self._color(top, k).rich_color, bgcolor=self._color(bottom, k).rich_color)
            segments.append(Segment("▀" * self.cell, style))
        return Strip(segments).crop_extend(scroll_x, scroll_x + width, base)


class AttentionPanel(Vertical):
    TITLE = "Attention"

    DEFAULT_CSS = """
    AttentionPanel > #attends { height: auto; max-height: 4; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.border_title = self.TITLE
        self.border_subtitle = "[ ] layer  { } head"
        self.view = View()

    def compose(self):
        yield Static(id="attends")
        yield PatternHeatmap(id="heatmap")

    def show(self, view: View) -> None:
        self.view = view
        a = view.analysis
        if a is None:
            return
        palette = Palette.from_theme(self.app.theme_variables)
        score = a.head_scores[view.score][view.layer, view.head]
        self.border_title = f"Attention · L{view.layer} H{view.head} · {view.score.replace('_', '-')} {score:.2f}"
        pattern = a.patterns[view.layer, view.head]
        self.query_one("#attends", Static).update(self._attends(view, pattern[view.selected], palette))
        self.query_one(PatternHeatmap).set_pattern(pattern, view.selected, palette)

    def on_resize(self) -> None:
        self.show(self.view)  # chips and heatmap cells depend on the width

    def _attends(self, view: View, weights: np.ndarray, palette: Palette) -> Content:
        a = view.analysis
        i = view.selected
        keys = np.argsort(-weights[: i + 1], kind="stable")[:TOP_KEYS]
        head = Content.assemble((a.labels[i], palette.selected), " attends to:")
        chips = [
            Content.styled(
                f"{a.labels[k]} {prob(weights[k])}",
                palette.ramp(float(weights[k]), palette.attention),
            )
            for k in keys
        ]
        width = max(self.scrollable_content_region.width, 20)
        return Content.assemble(head, " ", wrap_chips(chips, width, first_indent=head.cell_length + 1))
