"""Generation, streamed token by token: the clean continuation beside the one
made with the chosen intervention (a feature added or clamped, a head ablated)."""
from __future__ import annotations

from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.style import Style
from textual.widgets import Button, Input, Label, Select, Static

from ..backend import Steer
from ..display import Palette, printable
from ..messages import GenerateRequested, SteerEdited
from ..view import View
from .prompt import Field

MODE_NAMES = {"off": "no intervention", "add": "add feature", "clamp": "clamp feature", "ablate": "ablate head"}
PROMPT_TAIL = 40  # characters of the prompt shown before each continuation
DEFAULT_TOKENS = 30


class GenerateRun(Vertical):
    """One continuation: a title line and the streamed text."""

    DEFAULT_CSS = """
    GenerateRun { width: 1fr; height: auto; padding: 0 1 0 0; }
    GenerateRun > .run-title { text-style: bold; }
    """

    def __init__(self, run: str, **kwargs):
        super().__init__(**kwargs)
        self.run = run
        self.text = ""
        self.prompt = ""

    def compose(self):
        yield Label(self.run, classes="run-title")
        yield Static(classes="run-text")

    def set_title(self, title: str) -> None:
        self.query_one(".run-title", Label).update(title)

    def set_text(self, prompt: str, text: str) -> None:
        self.prompt, self.text = prompt, text
        self.redraw()
        self.query_ancestor("#runs").scroll_end(animate=False)  # the newest tokens in view

    def redraw(self) -> None:
        """The text again, in the theme's current colors."""
        tail = self.prompt[-PROMPT_TAIL:]
        palette = Palette.from_theme(self.app.theme_variables)
        self.query_one(".run-text", Static).update(Content.assemble(
            (printable("…" + tail if len(self.prompt) > PROMPT_TAIL else tail), Style(foreground=palette.muted)),
            (printable(self.text), Style(bold=True)),
        ))


class GeneratePanel(Vertical):
    TITLE = "Generate"

    DEFAULT_CSS = """
    GeneratePanel > #steer-row { height: 1; }
    GeneratePanel > #steer-row > Label { width: auto; padding: 0 1 0 0; }
    GeneratePanel > #steer-row > Select { width: 20; }
    GeneratePanel > #steer-row > Input { width: 8; margin: 0 1 0 0; }
    GeneratePanel > #steer-row > Button { min-width: 14; }
    GeneratePanel > #runs { height: auto; max-height: 1fr; }
    GeneratePanel #runs-row { height: auto; }
    """

    def __init__(self, modes: tuple[str, ...] = Steer.MODES, **kwargs):
        super().__init__(**kwargs)
        self.modes = modes
        self.border_title = self.TITLE
        has_strength = any(m in Steer.FEATURE_MODES for m in modes)
        self.border_subtitle = "g generate  s mode" + ("  +/- strength" if has_strength else "")
        self.view = View()

    def compose(self):
        with Horizontal(id="steer-row"):
            yield Label("steer")
            yield Select([(MODE_NAMES[mode], mode) for mode in self.modes], value="off", allow_blank=False,
                         compact=True, id="steer-mode")
            yield Label("strength", classes="strength")
            yield Field(str(Steer().strength), type="number", compact=True, id="strength", classes="strength")
            yield Label("tokens")
            yield Field(str(DEFAULT_TOKENS), type="integer", compact=True, id="max-tokens")
            yield Button("generate", compact=True, id="generate-button")
        with VerticalScroll(id="runs", can_focus=False):
            with Horizontal(id="runs-row"):
                yield GenerateRun("clean", id="run-clean")
                yield GenerateRun("steered", id="run-steered")

    @property
    def max_new_tokens(self) -> int:
        try:
            return max(1, int(self.query_one("#max-tokens", Input).value))
        except ValueError:
            return DEFAULT_TOKENS

    def show(self, view: View) -> None:
        self.view = view
        steer = view.steer
        self.border_title = f"Generate · steer: {steer.describe()}"
        for run in self.query(GenerateRun):
            run.redraw()  # in case the theme changed
        mode = self.query_one("#steer-mode", Select)
        if mode.value != steer.mode:
            with self.prevent(Select.Changed):
                mode.value = steer.mode
        for widget in self.query(".strength"):  # only a feature's steering has a strength
            widget.display = steer.mode in Steer.FEATURE_MODES
        strength = self.query_one("#strength", Input)
        if not strength.has_focus and _parse(strength.value) != steer.strength:
            with self.prevent(Input.Changed):
                strength.value = f"{steer.strength:g}"

    def run_widget(self, run: str) -> GenerateRun:
        return self.query_one(f"#run-{run}", GenerateRun)

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.post_message(SteerEdited(mode=str(event.value)))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.input.id == "strength" and _parse(event.value) is not None:
            self.post_message(SteerEdited(strength=_parse(event.value)))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(GenerateRequested())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(GenerateRequested())


def _parse(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
