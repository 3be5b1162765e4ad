"""The frame every panel shares: a bordered, titled, scrollable box that
renders a View."""
from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import OptionList, Static

from ..view import View


class Panel(VerticalScroll, inherit_bindings=False):
    """Up/down scroll the panel; left/right stay free for moving the selection."""

    BINDINGS = [
        Binding("up", "scroll_up", "Scroll up", show=False),
        Binding("down", "scroll_down", "Scroll down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
    ]

    TITLE = ""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.border_title = self.TITLE
        self.view = View()

    def show(self, view: View) -> None:
        self.view = view

    def on_resize(self) -> None:
        self.show(self.view)  # the layout of the text depends on the width


class ChoiceList(OptionList, inherit_bindings=False):
    """An option list without the horizontal scrolling it inherits: its
    bindings of left/right hid the screen's "←/→ token" from the footer."""

    BINDINGS = OptionList.BINDINGS


class ListPanel(Vertical):
    """A panel whose body is a list to pick from (a ChoiceList), rebuilt from the view
    only when what it shows changed, so that the cursor stays where the user left it."""

    TITLE = ""
    SUBTITLE = ""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.border_title = self.TITLE
        self.border_subtitle = self.SUBTITLE
        self.view = View()
        self._shown: tuple = ()  # what the options were built from

    @property
    def options(self) -> OptionList:
        return self.query_one(OptionList)


class TextPanel(Panel):
    """A panel whose whole body is one block of text rebuilt from the view."""

    def compose(self):
        yield Static(id=f"{self.id}-body" if self.id else None, classes="panel-body")

    def show(self, view: View) -> None:
        super().show(view)
        self.query_one(".panel-body", Static).update(self.body(view))

    def body(self, view: View) -> Content:
        raise NotImplementedError
