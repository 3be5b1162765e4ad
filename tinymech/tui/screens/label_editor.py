"""A small box over the dashboard to write a feature's label and note: Enter in
the label goes on to the note, Enter in the note saves, Esc cancels. An empty
label gives the automatic one back."""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from ...text import printable
from ..widgets.prompt import SafeInput


class LabelEditor(ModalScreen[tuple[str, str] | None]):
    BINDINGS = [Binding("escape", "cancel", "cancel", key_display="esc")]

    DEFAULT_CSS = """
    LabelEditor { align: center middle; }
    LabelEditor > Vertical { width: 64; max-width: 100%; height: auto; border: round $accent;
                             background: $surface; padding: 0 1; }
    LabelEditor Input { margin: 0 0 1 0; }
    """

    def __init__(self, feature: int, label: str, auto_label: str, note: str):
        super().__init__()
        self.feature, self.label, self.auto_label, self.note = feature, label, auto_label, note

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = f"Label of #{self.feature}"
            box.border_subtitle = "⏎ next / save  esc cancel"
            yield Static("label (empty: the automatic one)")
            yield SafeInput(self.label, placeholder=printable(self.auto_label, keep="") or "a short label",
                            id="label-input")
            yield Static("note")
            yield SafeInput(self.note, placeholder="what you found", id="note-input")

    @on(Input.Submitted, "#label-input")
    def _label_done(self) -> None:
        self.query_one("#note-input").focus()

    @on(Input.Submitted, "#note-input")
    def _note_done(self) -> None:
        self.dismiss((self.query_one("#label-input", Input).value, self.query_one("#note-input", Input).value))

    def action_cancel(self) -> None:
        self.dismiss(None)
