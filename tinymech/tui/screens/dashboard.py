"""One feature's dashboard: its label and numbers, the histogram of its
activations drawn, its top contexts and samples by activation with every token
shaded by its share of the feature's maximum, the tokens it promotes and
suppresses, and the features active with it (Enter opens one). l edits the
label and note; p goes back to the prompt, colored by the feature."""
from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.color import Color
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.style import Style
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from ...sae.dashboards import Context, FeatureDashboard, FeatureDashboards
from ...text import printable
from ..backend import SaeInfo
from ..display import Palette, columns, fit, pad, token_label
from ..messages import FindFeature, LabelSaved, WorkFailed
from ..widgets.panel import ChoiceList
from ..widgets.title import TitleBar
from ..workers import notify_failure, start_job
from .label_editor import LabelEditor

HISTOGRAM_HEIGHT = 4
LOGIT_WIDTH = 12  # a promoted or suppressed token's column


@dataclass
class FeatureLoaded(Message):
    dashboard: FeatureDashboard
    saved: bool = False  # after the user saved its label or note


class DashboardScreen(Screen):
    HELP_TITLE = "Feature dashboard"
    BINDINGS = [
        Binding("escape", "back", "back", key_display="esc"),
        Binding("p", "find", "find in my prompt"),
        Binding("l", "edit_label", "label/note"),
    ]

    DEFAULT_CSS = """
    DashboardScreen #dash-header { height: auto; padding: 0 1; }
    DashboardScreen #dash-main { height: 1fr; }
    DashboardScreen #dash-body { width: 1fr; }
    DashboardScreen #dash-side { width: 34; max-width: 45%; }
    DashboardScreen #dash-logits { height: auto; max-height: 60%; }
    DashboardScreen #dash-cooc { height: 1fr; padding: 0; }
    DashboardScreen .dash-box { border: round $foreground 25%; border-title-color: $foreground;
                                border-subtitle-color: $foreground-muted; padding: 0 1; }
    DashboardScreen .dash-box:focus-within, DashboardScreen .dash-box:focus { border: round $border; }
    """

    def __init__(self, dash: FeatureDashboards, sae: SaeInfo, feature: int):
        super().__init__()
        self.dash, self.sae, self.feature = dash, sae, feature
        self.shown: FeatureDashboard | None = None

    def compose(self) -> ComposeResult:
        yield TitleBar(f"feature dashboard · {self.sae.title}", id="title")
        yield Static(Content.styled(f"#{self.feature} …", "bold"), id="dash-header")
        with Horizontal(id="dash-main"):
            with VerticalScroll(id="dash-body", classes="dash-box") as body:
                body.border_title = "Activations"
                yield Static(id="dash-text")
            with Vertical(id="dash-side"):
                logits = Static(id="dash-logits", classes="dash-box")
                logits.border_title = "Logit effects (direct)"
                yield logits
                cooc = ChoiceList(id="dash-cooc", classes="dash-box")
                cooc.border_title = "Active with it (tokens)"
                cooc.border_subtitle = "⏎ open"
                yield cooc
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#dash-body").focus()
        self.load()

    def load(self, saved: bool = False) -> None:
        """The feature's dashboard, read from the arrays in a worker."""
        start_job(self, "reading the dashboard", "dashboard", f"dashboard of #{self.feature}",
                  lambda: self.dash[self.feature], lambda d: FeatureLoaded(d, saved))

    def on_feature_loaded(self, message: FeatureLoaded) -> None:
        self.shown = message.dashboard
        self.render_dashboard()
        if message.saved:
            self.app.screen_stack[0].post_message(LabelSaved(self.sae.index, self.feature))
            self.notify(f"saved the label of #{self.feature}", timeout=2)

    def on_work_failed(self, message: WorkFailed) -> None:
        notify_failure(self, message.what, message.error)

    def on_resize(self) -> None:
        self.render_dashboard()

    # ---- drawing ------------------------------------------------------------------------

    def render_dashboard(self) -> None:
        d = self.shown
        if d is None or not self.is_mounted:
            return
        palette = Palette.from_theme(self.app.theme_variables)
        self.query_one("#dash-header", Static).update(self._header(d, palette))
        width = max(self.query_one("#dash-text").size.width, 20)
        self.query_one("#dash-text", Static).update(self._body(d, width, palette))
        self.query_one("#dash-logits", Static).update(self._logits(d, palette))
        options = self.query_one("#dash-cooc", OptionList)
        highlighted = options.highlighted
        options.clear_options()
        labels = self.dash.labels
        if not d.cooccurring:
            options.add_option(Option(Content.styled("none", "dim italic"), disabled=True))
        options.add_options([Option(Content.assemble((f"#{g:<6}", Style(bold=True)), f"{n:>7,} ",
                                                     (printable(labels.get(g, ""), keep=""), Style(italic=True))),
                                    id=str(g)) for g, n in d.cooccurring])
        if d.cooccurring:
            options.highlighted = highlighted if highlighted is not None and highlighted < len(d.cooccurring) else 0

    def _header(self, d: FeatureDashboard, palette: Palette) -> Content:
        muted = Style(foreground=palette.muted)
        source = {"user": "your label", "auto": "automatic label"}.get(d.label_source or "", "no label yet")
        lines = [
            Content.assemble((f"#{d.index}", Style(bold=True)), (f"  {printable(d.label, keep='')}" if d.label else "",
                                                                 Style(italic=True)), (f"  ({source}: l to edit)", muted)),
            Content(f"density {d.density:.3g} ({d.count:,} of {d.n_tokens:,} tokens) · max {d.max_activation:.3g} · "
                    f"mean {d.mean_activation:.3g} · specificity {float(self.dash.specificity[d.index]):.2f}"),
        ]
        if d.note:
            lines.append(Content.assemble(("note: ", muted), printable(d.note, keep="")))
        if self.dash.unverified:  # dashboards nothing shows are this SAE's: said on every one of them
            warning = Style(foreground=Color.parse(self.app.theme_variables.get("warning", "#ffa62b")))
            lines.append(Content.styled(f"⚠ unverified: {printable(self.dash.unverified, keep='')}", warning))
        return Content("\n").join(lines)

    def _body(self, d: FeatureDashboard, width: int, palette: Palette) -> Content:
        bold = Style(bold=True)
        lines = [Content.styled("Histogram (the tokens where it is active)", bold)]
        chart = columns(d.hist_counts, width, HISTOGRAM_HEIGHT)
        feature_color = Style(foreground=palette.feature)
        lines += [Content.styled(row, feature_color) for row in chart]
        top = f"{float(d.hist_edges[-1]):.3g}" if len(d.hist_edges) else ""
        lines.append(Content.styled(pad("0", len(chart[0]) - len(top)) + top, Style(foreground=palette.muted)))
        lines += [Content(""), Content.styled("Top activations", bold)]
        lines += [self._context_line(c, d.max_activation, palette) for c in d.top_contexts] or \
            [Content.styled("never active on the corpus", "dim italic")]
        if d.intervals:
            lines += [Content(""), Content.styled("Samples by activation", bold)]
        for interval in reversed(d.intervals):  # the highest first, as the top activations above
            lines.append(Content.styled(f"[{interval.low:.3g}, {interval.high:.3g}) · {interval.count:,} tokens",
                                        Style(foreground=palette.muted, italic=True)))
            lines += [self._context_line(c, d.max_activation, palette) for c in interval.contexts]
        return Content("\n").join(lines)

    @staticmethod
    def _context_line(c: Context, top: float, palette: Palette) -> Content:
        """A context's value, then its tokens, each shaded by its share of the feature's maximum."""
        parts: list[Content | str] = [f"{c.value:7.2f}  "]
        for i, (token, act) in enumerate(zip(c.tokens, c.activations)):
            style = palette.ramp(act / top, palette.feature) if top > 0 and act > 0 else Style()
            if i == c.peak:
                style += Style(bold=True, underline=True)
            parts.append(Content.styled(_piece(token), style))
        return Content.assemble(*parts)

    def _logits(self, d: FeatureDashboard, palette: Palette) -> Content:
        lines: list[Content] = []
        for title, pairs, color in (("promotes", d.promoted, palette.feature), ("suppresses", d.suppressed,
                                                                               palette.loss)):
            lines.append(Content.styled(title, Style(bold=True)))
            lines += [Content.assemble(pad(fit(token_label(t), LOGIT_WIDTH), LOGIT_WIDTH),
                                       (f"{v:+8.3f}", Style(foreground=color))) for t, v in pairs]
            if not pairs:
                lines.append(Content.styled("none", "dim italic"))
        return Content("\n").join(lines)

    # ---- keys ---------------------------------------------------------------------------

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.app.push_screen(DashboardScreen(self.dash, self.sae, int(event.option.id)))

    def action_back(self) -> None:
        self.dismiss()

    def action_find(self) -> None:
        """Back to the main screen, the tokens colored by this feature."""
        while len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        self.app.screen.post_message(FindFeature(self.sae.index, self.feature))

    def action_edit_label(self) -> None:
        d = self.shown
        if d is None:
            return
        user = d.label if d.label_source == "user" else ""
        auto = d.label if d.label_source == "auto" else ""
        self.app.push_screen(LabelEditor(d.index, user or "", auto or "", d.note or ""), callback=self._save_label)

    def _save_label(self, result: tuple[str, str] | None) -> None:
        if result is None:
            return
        label, note = result

        def save() -> FeatureDashboard:
            self.dash.set_label(self.feature, label=label.strip(), note=note.strip())  # "": removed
            return self.dash[self.feature]

        start_job(self, "saving the label", "save-label", f"saving the label of #{self.feature}", save,
                  lambda d: FeatureLoaded(d, saved=True))


def _piece(token: str) -> str:
    """A context's token as it reads in running text: newlines and tabs as marks."""
    return printable(token.replace("\n", "↵").replace("\t", "⇥"), keep="") or "∅"
