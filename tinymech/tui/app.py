"""The Textual app: `make_app` builds it (for the CLI and for tests) and
`run_tui` loads a model and its SAEs, then runs it."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from textual.app import App
from textual.binding import Binding
from textual.widgets import Input

import tinymech as tm
from tinymech.errors import InvalidInputError
from tinymech.io.sources import bundled_sae_dirs
from tinymech.sae.sae import SAE
from tinymech.sae.splice import check_hooks
from tinymech.text import printable

from .backend import Backend
from .screens.help import HelpScreen
from .screens.main import MainScreen

# a repeated sentence: the loss drops on the second copy and the induction head lights up
DEFAULT_PROMPT = "Mr Darcy bowed to Elizabeth and left the room. Mr Darcy bowed to Elizabeth and left the room."


class TinymechApp(App):
    CSS_PATH = "tinymech.tcss"
    TITLE = "tinymech"

    BINDINGS = [
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("t", "toggle_theme", "light/dark", show=False),
        Binding("q", "quit_key", "quit"),  # not "quit", which ctrl+q needs while typing too
    ]
    TYPED_KEYS = ("help", "toggle_theme", "quit_key")  # actions of keys that type into a focused field

    def __init__(self, backend: Backend, prompt: str):
        super().__init__()
        self.backend = backend
        self.prompt = prompt

    def get_default_screen(self) -> MainScreen:
        return MainScreen(self.backend, self.prompt)

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        screen = self.screen
        title = getattr(screen, "HELP_TITLE", "Tokens and panels")  # the main screen's keys act on those
        groups = [("Everywhere", list(self.BINDINGS)), (title, list(type(screen).BINDINGS))]
        self.push_screen(HelpScreen(groups))

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        # off (and out of the footer) while their keys type into a field
        return action not in self.TYPED_KEYS or not isinstance(self.focused, Input)

    async def action_quit_key(self) -> None:
        await self.action_quit()

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"


def make_app(model: tm.Model, saes: Sequence[SAE] = (), prompt: str | None = None,
             dashboards: Sequence = ()) -> TinymechApp:
    """The app on a loaded model and SAEs; a HookError if an SAE does not fit the model.
    dashboards: a feature dashboards folder per SAE, in order (by default each SAE's
    own dashboards/ folder, where it has one)."""
    for sae in saes:
        check_hooks(model, sae.cfg)
    if len(dashboards) > len(saes):  # the extra ones were dropped without a word
        raise InvalidInputError(f"{len(dashboards)} dashboards given for {len(saes)} SAE(s): one per SAE, in order")
    for folder in dashboards:
        if folder is not None and not Path(folder).exists():
            raise InvalidInputError(f"no feature dashboards at {printable(str(folder))}")
    return TinymechApp(Backend(model, saes, dashboards), prompt or DEFAULT_PROMPT)


def bundled_saes(model_dir: str | None) -> list[Path]:
    """SAEs shipped for a model (beside it, or in the package for SmolLM2)."""
    return bundled_sae_dirs(model_dir)


def run_tui(model_path=None, sae_paths: Sequence = (), prompt: str | None = None, dtype: str = "float32",
            dashboards: Sequence = ()) -> None:
    """Load the model (None: the bundled demo model) and SAEs (none given: those
    shipped in the model's saes/ folder), then run the app; dashboards: a feature
    dashboards folder per SAE, in order (else each SAE's own, read in the background).
    A model or SAE that cannot be used prints one line and exits with status 2."""
    try:
        model = tm.load(model_path, dtype=dtype)
        paths = list(sae_paths) or bundled_saes(model.path)
        app = make_app(model, [SAE.load(p) for p in paths], prompt, dashboards)
    except (tm.TinymechError, OSError) as e:
        print(printable(f"tinymech tui: {e}", keep=""), file=sys.stderr)
        raise SystemExit(2) from None
    app.run()
