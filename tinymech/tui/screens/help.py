"""The `?` screen: every key, read from the bindings themselves so the list
cannot drift from what the keys do."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.style import Style
from textual.widgets import Static

# keys that belong to Textual's own widgets, described once here
WIDGET_KEYS = [
    ("↑/↓", "move in lists, tables and panels"),
    ("⏎", "heads grid: show that head · features: color tokens by that feature"),
    ("tab / shift+tab", "next / previous area"),
    ("ctrl+p", "command palette (themes, screenshot, all keys)"),
    ("mouse", "click a token to select it, a head cell or a feature to pick it"),
]


class HelpScreen(ModalScreen):
    BINDINGS = [
        Binding("escape,question_mark,q", "dismiss", "close help", key_display="esc"),
    ]

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 72; max-width: 100%; height: auto; max-height: 90%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    """

    def __init__(self, groups: list[tuple[str, list[Binding]]]):
        super().__init__()
        self.groups = groups

    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = "Keys"
            box.border_subtitle = "esc close"
            yield Static(self.text(), id="help-text")

    def text(self) -> Content:
        lines: list[Content] = []
        for title, bindings in self.groups:
            lines.append(Content.styled(title, Style(bold=True, underline=True)))
            for binding in bindings:
                lines.append(self._line(self.app.get_key_display(binding), binding.description))
            lines.append(Content(""))
        lines.append(Content.styled("In panels", Style(bold=True, underline=True)))
        lines += [self._line(keys, what) for keys, what in WIDGET_KEYS]
        return Content("\n").join(lines)

    @staticmethod
    def _line(keys: str, what: str) -> Content:
        return Content.assemble((f"  {keys:<16}", Style(bold=True)), what)
