"""The `?` screen: every key, read from the bindings themselves so the list
cannot drift from what the keys do."""
from __future__ import annotations

import textwrap

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
    ("⏎", "heads grid: show that head · features: color tokens by that feature · "
          "next token: follow it in the logit lens (on a followed one: stop)"),
    ("tab / shift+tab", "next / previous area"),
    ("ctrl+p", "command palette (themes, screenshot, all keys)"),
    ("mouse", "click a token to select it, a head cell, a feature or a prediction to pick it"),
]
BOX_WIDTH = 72
TEXT_WIDTH = BOX_WIDTH - 2 - 2 - 1  # less the border, the padding and a scrollbar


class HelpScreen(ModalScreen):
    BINDINGS = [
        Binding("escape,question_mark,q", "dismiss", "close help", key_display="esc"),
    ]

    DEFAULT_CSS = f"""
    HelpScreen {{ align: center middle; }}
    HelpScreen > VerticalScroll {{
        width: {BOX_WIDTH}; max-width: 100%; height: auto; max-height: 90%;
        border: round $accent; background: $surface; padding: 0 1;
    }}
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
        groups = [(title, [(self.app.get_key_display(b), b.description) for b in bindings])
                  for title, bindings in self.groups]
        groups.append(("In panels", WIDGET_KEYS))
        key_width = max(len(keys) for _, entries in groups for keys, _ in entries) + 2
        lines: list[Content] = []
        for title, entries in groups:
            lines.append(Content.styled(title, Style(bold=True, underline=True)))
            lines += [self._line(keys, what, key_width) for keys, what in entries]
            lines.append(Content(""))
        return Content("\n").join(lines[:-1])

    @staticmethod
    def _line(keys: str, what: str, key_width: int) -> Content:
        """Keys in a column of their own; a long description wraps beside it."""
        indent = 2 + key_width
        wrapped = textwrap.wrap(what, max(20, TEXT_WIDTH - indent)) or [""]
        rest = "".join("\n" + " " * indent + line for line in wrapped[1:])
        return Content.assemble((f"  {keys:<{key_width}}", Style(bold=True)), wrapped[0] + rest)
