"""One-line fields. While one has the focus its keys type (the screen's keys
are off), and the footer shows the way back to them: Esc. The prompt field is
where the app opens, so that typing edits the prompt; Enter runs it."""
from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input

from ..display import field_text


class SafeInput(Input):
    """An Input that never holds a character a terminal would act on (pasted, or
    set from a file or the command line): such characters show as field_text shows them."""

    def validate_value(self, value: str) -> str:
        return field_text(value)


class Field(SafeInput):
    BINDINGS = [Binding("escape", "screen.leave_prompt", "back to the keys", key_display="esc")]


class PromptField(Field):
    def __init__(self, value: str, **kwargs):
        super().__init__(value, placeholder="type a prompt, Enter to run (↵ for a newline)", **kwargs)
        self.border_title = "Prompt"
        self.border_subtitle = "⏎ run  esc keys"
