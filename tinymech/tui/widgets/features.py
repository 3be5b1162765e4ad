"""The SAE features most active at the selected token: activation bars, labels
from the SAE's feature list, and the tokens each one promotes. Enter picks a
feature: the tokens recolor by it and steering uses it."""
from __future__ import annotations

from textual.content import Content
from textual.style import Style
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from ..display import Palette, bar, printable, token_label
from ..messages import FeatureSelected
from ..view import View
from .panel import ChoiceList, ListPanel

BAR_WIDTH = 8
LABEL_START = 2 + 6 + 8 + BAR_WIDTH + 1  # marker, "#id", value, bar, space
PROMOTES = "  promotes "
PROMOTED_SHOWN = 4


class FeaturesPanel(ListPanel):
    TITLE = "Features"
    SUBTITLE = "⏎ color by  s steer"

    DEFAULT_CSS = """
    FeaturesPanel > OptionList { height: 1fr; padding: 0; scrollbar-gutter: stable; }
    FeaturesPanel > OptionList, FeaturesPanel > OptionList:focus { border: none; }
    FeaturesPanel > #no-sae { height: auto; }
    """

    def compose(self):
        yield Static(id="no-sae")
        yield ChoiceList(id="feature-list")

    def show(self, view: View) -> None:
        self.view = view
        a, fa = view.analysis, view.features
        note = self.query_one("#no-sae", Static)
        if a is None:
            return
        if fa is None:
            self.border_title = "Features"
            note.update("No SAE loaded: start with --sae DIR (SAELens format) to see features here.")
            note.display = True
            self.options.display = False
            return
        note.display = False
        self.options.display = True
        i = view.selected
        self.border_title = Content(printable(f"Features @ {i} · {fa.sae.hook_name}"))  # from a file: no markup
        active = [(int(f), float(v)) for f, v in zip(fa.top_ids[i], fa.top_values[i]) if v > 0]
        key = (a.prompt, i, view.sae_index, view.feature, tuple(sorted(view.effects)), self.app.theme,
               self.options.size.width)
        if key == self._shown:
            return
        self._shown = key
        options = self.options
        highlighted = options.highlighted
        options.clear_options()
        if not active:
            options.add_option(Option(Content.styled("no feature is active at this token", "dim italic"), disabled=True))
            return
        top = active[0][1]
        palette = Palette.from_theme(self.app.theme_variables)
        options.add_options([Option(self._prompt(view, f, v, top, palette), id=str(f)) for f, v in active])
        options.highlighted = highlighted if highlighted is not None and highlighted < len(active) else 0

    def on_resize(self) -> None:
        self.show(self.view)  # labels are cut to the width

    def _prompt(self, view: View, feature: int, value: float, top: float, palette: Palette) -> Content:
        fa = view.features
        chosen = feature == view.feature
        label = printable(fa.sae.labels.get(feature, ""))
        label = _cut(label, self.options.scrollable_content_region.width - LABEL_START)
        head = Content.assemble(
            ("● " if chosen else "  ", Style(foreground=palette.feature, bold=True)),
            (f"#{feature:<5}", Style(bold=chosen)),
            f" {value:6.2f} ",
            (bar(value / top, BAR_WIDTH), Style(foreground=palette.feature)),
            " ",
            (label, Style(italic=True)),
        )
        effects = view.effects.get((view.sae_index, feature))
        tokens = "…" if effects is None else " ".join(token_label(t) for t, _ in effects.promoted[:PROMOTED_SHOWN])
        tokens = _cut(tokens, self.options.scrollable_content_region.width - len(PROMOTES))
        promoted = Content.assemble((PROMOTES, Style(foreground=palette.muted)), tokens)
        return Content("\n").join([head, promoted])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(FeatureSelected(self.view.sae_index, int(event.option.id)))


def _cut(text: str, width: int) -> str:
    """The text in at most width cells (options stay one line each)."""
    width = max(width, 1)
    return text if len(text) <= width else text[: width - 1] + "…"
