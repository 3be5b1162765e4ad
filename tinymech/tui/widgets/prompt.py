"""The prompt field: one line, where the app opens so that typing edits the
prompt; Enter runs it and Esc goes back to the keys."""
from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input


class PromptField(Input):
    # shown in the footer while the field has the focus (the screen's keys are off then)
    BINDINGS = [Binding("escape", "screen.leave_prompt", "back to the keys", key_display="esc")]

    def __init__(self, value: str, **kwargs):
        super().__init__(value, placeholder="type a prompt, Enter to run (↵ for a newline)", **kwargs)
        self.border_title = "Prompt"
        self.border_subtitle = "⏎ run  esc keys"
