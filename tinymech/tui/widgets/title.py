"""The top line: which model and SAE are loaded, a spinner while the model
works, and the help hint."""
from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.style import Style
from textual.widget import Widget

from ...text import printable

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class TitleBar(Widget):
    DEFAULT_CSS = """
    TitleBar { height: 1; background: $panel; color: $foreground; }
    """

    busy: reactive[str] = reactive("")  # what the model is doing; "" when idle
    _frame: reactive[int] = reactive(0)

    def __init__(self, title: str, **kwargs):
        super().__init__(**kwargs)
        self.title = printable(title, keep="")  # model and SAE names come from files
        self._timer = None

    def watch_busy(self, busy: str) -> None:
        if busy and self._timer is None:
            self._timer = self.set_interval(0.1, self._advance)
        elif not busy and self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _advance(self) -> None:
        self._frame = (self._frame + 1) % len(SPINNER)

    def render(self) -> Content:
        right = Content.assemble(
            (f"{SPINNER[self._frame]} {self.busy}   ", Style(bold=True)) if self.busy else "",
            ("?", Style(bold=True)),
            " help ",
        )
        left = Content.assemble(" ", ("tinymech", Style(bold=True)), f" · {self.title}")
        gap = max(1, self.size.width - left.cell_length - right.cell_length)
        return Content.assemble(left, " " * gap, right)
