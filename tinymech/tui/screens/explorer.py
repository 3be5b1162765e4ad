"""The feature explorer: every feature of an SAE with dashboards, searched by
id, label text or a token it fires on or promotes (FeatureDashboards.search, in
a worker), sorted by density, maximum activation or specificity (s cycles;
a search's results come best match first); Enter opens a feature's dashboard."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.style import Style
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from ...sae.dashboards import FeatureDashboards
from ...text import printable
from ..backend import SaeInfo
from ..display import Palette, fit
from ..messages import WorkFailed
from ..widgets.panel import ChoiceList
from ..widgets.prompt import SafeInput
from ..widgets.title import TitleBar
from ..workers import notify_failure, start_job
from .dashboard import DashboardScreen

# name -> FeatureDashboards' array (the largest first), in the order s cycles through them;
# "best match" (the search's own order) only while searching
SORTS = {"best match": None, "density": "density", "max activation": "max_activation",
         "specificity": "specificity"}
SHOWN = 500  # rows listed at most: a search narrows the rest
NUMBERS = "{density:>9} {max:>8} {spec:>5}  "
AUTO_MARK = "~"


@dataclass
class SearchDone(Message):
    query: str
    features: tuple[int, ...]


class ExplorerScreen(Screen):
    HELP_TITLE = "Feature explorer"
    BINDINGS = [
        Binding("escape", "back", "back", key_display="esc"),
        Binding("slash", "search", "search", key_display="/"),
        Binding("s", "cycle_sort", "sort"),
    ]

    DEFAULT_CSS = """
    ExplorerScreen #explorer-search { border: round $foreground 25%; padding: 0 1; }
    ExplorerScreen #explorer-search:focus { border: round $border; }
    ExplorerScreen #explorer-box { height: 1fr; border: round $foreground 25%; padding: 0 1;
                                   border-title-color: $foreground; border-subtitle-color: $foreground-muted; }
    ExplorerScreen #explorer-box:focus-within { border: round $border; }
    ExplorerScreen #explorer-header { height: 1; text-style: bold; }
    ExplorerScreen #explorer-list { height: 1fr; padding: 0; border: none; }
    """

    def __init__(self, dash: FeatureDashboards, sae: SaeInfo):
        super().__init__()
        self.dash, self.sae = dash, sae
        self.sort = "density"  # a key of SORTS
        self.matches: np.ndarray | None = None  # the features the search found; None: no search, all
        self.id_width = len(str(dash.n_features - 1)) + 1

    def compose(self) -> ComposeResult:
        yield TitleBar(f"explorer · {self.sae.title} · {self.dash.n_tokens:,} tokens", id="title")
        yield SafeInput(placeholder="search: #id, label text, or a token it fires on or promotes", id="explorer-search")
        with Vertical(id="explorer-box"):
            header = f"{'id':<{self.id_width}} " + NUMBERS.format(density="density", max="max", spec="spec")
            yield Static(header + f"label ({AUTO_MARK}: automatic)", id="explorer-header")
            yield ChoiceList(id="explorer-list")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#explorer-list").focus()

    def on_screen_resume(self) -> None:
        self.fill()  # on opening, and on coming back: a label may have changed in a dashboard opened from here

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        # keys type into the search field: only Esc, which leaves it, works meanwhile
        return action == "back" or not isinstance(self.focused, Input)

    # ---- the list -----------------------------------------------------------------------

    def sorts(self) -> list[str]:
        return [name for name, array in SORTS.items() if array is not None or self.matches is not None]

    def shown_features(self) -> np.ndarray:
        """The features listed, in order: the matches (or all) by the sort, at most SHOWN."""
        ids = np.arange(self.dash.n_features) if self.matches is None else self.matches
        if SORTS[self.sort] is not None:
            key = np.asarray(getattr(self.dash, SORTS[self.sort]), dtype=np.float64)[ids]
            ids = ids[np.argsort(-key, kind="stable")]
        return ids[:SHOWN]

    def fill(self) -> None:
        options = self.query_one("#explorer-list", OptionList)
        highlighted = options.highlighted
        features = self.shown_features()
        palette = Palette.from_theme(self.app.theme_variables)
        width = max(options.scrollable_content_region.width, 40)
        options.clear_options()
        columns = {name: np.asarray(getattr(self.dash, name)) for name in SORTS.values() if name}  # each once
        options.add_options([Option(self._row(int(f), columns, width, palette), id=str(f)) for f in features])
        if not len(features):
            options.add_option(Option(Content.styled("no feature matches", "dim italic"), disabled=True))
        options.highlighted = min(highlighted or 0, max(len(features) - 1, 0)) if len(features) else None
        n = len(self.matches) if self.matches is not None else self.dash.n_features
        box = self.query_one("#explorer-box")
        box.border_title = f"Features · sorted by {self.sort}"
        more = f" · the first {SHOWN} listed" if n > SHOWN else ""
        box.border_subtitle = f"{n:,} of {self.dash.n_features:,}{more} · ⏎ dashboard  s sort  / search"

    def _row(self, f: int, columns: dict[str, np.ndarray], width: int, palette: Palette) -> Content:
        numbers = NUMBERS.format(density=f"{float(columns['density'][f]):.3g}",
                                 max=f"{float(columns['max_activation'][f]):.3g}",
                                 spec=f"{float(columns['specificity'][f]):.2f}")
        label, source = self.dash.label(f)
        start = self.id_width + 1 + len(numbers)
        label = fit((AUTO_MARK if source == "auto" else "") + printable(label or "", keep=""), max(width - start, 1))
        style = Style(italic=True, foreground=palette.muted) if source == "auto" else Style()
        return Content.assemble((f"#{f:<{self.id_width - 1}} ", Style(bold=True)), numbers, (label, style))

    def on_resize(self) -> None:
        self.fill()  # labels are cut to the width

    # ---- search -------------------------------------------------------------------------

    @on(Input.Changed, "#explorer-search")
    def _search_changed(self, event: Input.Changed) -> None:
        query = event.value
        if not query.strip():
            self.workers.cancel_group(self, "search")
            self.matches = None
            self.sort = self.sort if self.sort in self.sorts() else "density"
            self.fill()
            return
        start_job(self, "searching", "search", "search", lambda: tuple(self.dash.search(query)),
                  lambda found: SearchDone(query, found))

    def on_search_done(self, message: SearchDone) -> None:
        if message.query == self.query_one("#explorer-search", Input).value:  # else a newer search is on its way
            if self.matches is None:
                self.sort = "best match"  # a new search: its own order first
            self.matches = np.array(message.features, dtype=np.int64)
            self.fill()

    @on(Input.Submitted, "#explorer-search")
    def _search_submitted(self) -> None:
        self.query_one("#explorer-list").focus()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # the first search reads every feature's tokens: seconds for thousands of features
        busy = any(w.group == "search" and w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in self.workers)
        self.query_one(TitleBar).busy = "searching" if busy else ""

    def on_work_failed(self, message: WorkFailed) -> None:
        notify_failure(self, message.what, message.error)

    # ---- keys ---------------------------------------------------------------------------

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.app.push_screen(DashboardScreen(self.dash, self.sae, int(event.option.id)))

    def action_back(self) -> None:
        if isinstance(self.focused, Input):
            self.query_one("#explorer-list").focus()
        else:
            self.dismiss()

    def action_search(self) -> None:
        self.query_one("#explorer-search").focus()

    def action_cycle_sort(self) -> None:
        sorts = self.sorts()
        self.sort = sorts[(sorts.index(self.sort) + 1) % len(sorts)]
        self.fill()
