"""The SAE features most active at the selected token: activation bars, labels
from the SAE's feature list, and the tokens each one promotes. With feature
dashboards, they rank by the share of each feature's own maximum over the corpus
(shown beside the value) and their labels come from the dashboards. Enter picks a
feature: the tokens recolor by it and steering uses it; o opens its dashboard."""
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
SHARE_WIDTH = 5  # "100% " before the value, with dashboards
PROMOTES = "  promotes "
PROMOTED_SHOWN = 4


class FeaturesPanel(ListPanel):
    TITLE = "Features"
    SUBTITLE = "⏎ color by  s steer"
    DASHBOARD_SUBTITLE = "⏎ color  o dashboard  f explore"

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
        self.border_subtitle = self.SUBTITLE if view.dashboard is None else self.DASHBOARD_SUBTITLE
        active = view.ranked_features()
        key = (a.prompt, i, view.sae_index, view.feature, tuple(sorted(view.effects)), self.app.theme,
               self.options.size.width, id(view.dashboard), view.label_edits)
        if key == self._shown:
            return
        self._shown = key
        options = self.options
        highlighted = options.highlighted
        options.clear_options()
        if not active:
            options.add_option(Option(Content.styled("no feature is active at this token", "dim italic"), disabled=True))
            return
        top = max(v for _, v, _ in active)
        palette = Palette.from_theme(self.app.theme_variables)
        options.add_options([Option(self._prompt(view, f, v, share, top, palette), id=str(f))
                             for f, v, share in active])
        options.highlighted = highlighted if highlighted is not None and highlighted < len(active) else 0

    def on_resize(self) -> None:
        self.show(self.view)  # labels are cut to the width

    def _prompt(self, view: View, feature: int, value: float, share: float | None, top: float,
                palette: Palette) -> Content:
        chosen = feature == view.feature
        dashboards = view.dashboard is not None
        label, source = view.feature_label(feature)
        label = _cut(printable(label, keep=""), self.options.scrollable_content_region.width - LABEL_START
                     - (SHARE_WIDTH if dashboards else 0))
        head = Content.assemble(
            ("● " if chosen else "  ", Style(foreground=palette.feature, bold=True)),
            (f"#{feature:<5}", Style(bold=chosen)),
            (_share(share) if dashboards else "", Style(bold=True)),
            f" {value:6.2f} ",
            (bar((share or 0.0) if dashboards else value / top, BAR_WIDTH), Style(foreground=palette.feature)),
            " ",
            (label, Style(italic=True, foreground=palette.muted if source == "auto" else None)),
        )
        effects = view.effects.get((view.sae_index, feature))
        tokens = "…" if effects is None else " ".join(token_label(t) for t, _ in effects.promoted[:PROMOTED_SHOWN])
        tokens = _cut(tokens, self.options.scrollable_content_region.width - len(PROMOTES))
        promoted = Content.assemble((PROMOTES, Style(foreground=palette.muted)), tokens)
        return Content("\n").join([head, promoted])

    def feature_to_open(self) -> int | None:
        """The feature whose dashboard o opens: the one highlighted while the list
        has the focus, else the one picked, else the top one at the token."""
        options = self.options
        if options.has_focus and options.highlighted is not None:
            option = options.get_option_at_index(options.highlighted)
            if option.id is not None:
                return int(option.id)
        if self.view.feature is not None:
            return self.view.feature
        ranked = self.view.ranked_features()
        return ranked[0][0] if ranked else None

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(FeatureSelected(self.view.sae_index, int(event.option.id)))


def _share(share: float | None) -> str:
    """A feature's share of its own maximum, in SHARE_WIDTH cells ("new": the corpus never activated it)."""
    return "  new" if share is None else f"{min(share, 9.99):5.0%}"


def _cut(text: str, width: int) -> str:
    """The text in at most width cells (options stay one line each)."""
    width = max(width, 1)
    return text if len(text) <= width else text[: width - 1] + "…"
