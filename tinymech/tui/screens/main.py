"""The main screen: owns the View, starts the model work in worker threads and
hands each new View to every panel. The selected token drives all of them."""
from __future__ import annotations

from types import MappingProxyType

import numpy as np

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Tab, Tabs
from textual.worker import Worker, WorkerState, get_current_worker

from ...sae.dashboards import FeatureDashboards
from ..backend import HEAD_SCORES, Backend, Steer
from ..display import field_to_prompt, prompt_to_field
from ..messages import (
    AnalysisReady,
    AnswerPicked,
    AttributionReady,
    DashboardsReady,
    FeatureEffectsReady,
    FeatureSelected,
    FindFeature,
    GenerateRequested,
    GenerationText,
    HeadSelected,
    LabelSaved,
    SaliencyReady,
    SteeredLossReady,
    SteerEdited,
    TokenSelected,
    WorkFailed,
)
from ..view import COLOR_METRICS, View
from ..widgets.attention import AttentionPanel
from ..widgets.attribution import AttributionPanel
from ..widgets.features import FeaturesPanel
from ..widgets.generate import GeneratePanel
from ..widgets.heads import HeadsPanel
from ..widgets.logit_lens import LogitLensPanel
from ..widgets.predictions import PredictionsPanel
from ..widgets.prompt import PromptField
from ..widgets.title import TitleBar
from ..widgets.tokens import TokenBox, TokenStrip
from ..workers import notify_failure, start_job
from .dashboard import DashboardScreen
from .explorer import ExplorerScreen

# panel id -> tab label, in tab order; the digit keys 1.. pick them
PANELS = {
    "predictions": "Next token",
    "attention": "Attention",
    "features": "Features",
    "heads": "Heads",
    "lens": "Logit lens",
    "generate": "Generate",
    "attribution": "Attribution",
}
STRENGTH_STEP = 1.0


class MainScreen(Screen):
    # below these sizes the panels become tabs (the screen gets -narrow / -short)
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]

    BINDINGS = [
        Binding("left", "move(-1)", "token", key_display="←/→"),
        Binding("right", "move(1)", "next token", show=False),
        Binding("home", "move_to(0)", "first token", show=False),
        Binding("end", "move_to(-1)", "last token", show=False),
        Binding("left_square_bracket", "layer(-1)", "layer", key_display="[/]"),
        Binding("right_square_bracket", "layer(1)", "next layer", show=False),
        Binding("left_curly_bracket", "head(-1)", "head", key_display="{/}"),
        Binding("right_curly_bracket", "head(1)", "next head", show=False),
        Binding("c", "cycle_color", "color"),  # short: the footer must fit 80 columns
        Binding("d", "cycle_score", "head score", show=False),
        Binding("v", "cycle_sae", "next SAE", show=False),
        Binding("s", "cycle_steer", "steer"),
        Binding("plus,equals_sign", "strength(1)", "stronger", show=False, key_display="+"),
        Binding("minus", "strength(-1)", "weaker", show=False, key_display="-"),
        Binding("g", "generate", "generate"),
        Binding("x", "stop", "stop generating", show=False),
        Binding("f", "explore", "feature explorer (with dashboards)", show=False),
        Binding("o", "dashboard", "the feature's dashboard", show=False),
        Binding("slash", "edit_prompt", "prompt", key_display="/"),
        Binding("a", "attribution", "attribution patching of each head", show=False),
        Binding("A", "edit_corruption", "type the corrupted prompt (attribution)", show=False),
        Binding("escape", "leave_prompt", "back to tokens", show=False),
        *(Binding(str(n), f"panel('{panel}')", f"show {title.lower()}", show=False)
          for n, (panel, title) in enumerate(PANELS.items(), 1)),
    ]

    def __init__(self, backend: Backend, prompt: str):
        super().__init__()
        self.backend = backend
        self.prompt = prompt
        self._field_holds = (prompt_to_field(prompt), prompt)  # what the prompt field shows, and the prompt it shows
        self.view = View()
        self._seed = 0  # each generate press samples anew; clean and steered share the seed
        self._generate_when_ready = False  # generate was pressed on a prompt being analyzed

    # ---- layout -------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        info = self.backend.info
        title = " · ".join([info.title] + [s.title for s in info.saes])
        yield TitleBar(title, id="title")
        yield PromptField(self._field_holds[0], id="prompt")
        with TokenBox(id="tokens-box"):
            yield TokenStrip(id="tokens")
        yield Tabs(*(Tab(title, id=f"tab-{panel}") for panel, title in PANELS.items()), id="panel-tabs")
        with Vertical(id="panels"):
            with Horizontal(id="row-top", classes="panel-row"):
                yield PredictionsPanel(id="predictions", classes="panel")
                yield AttentionPanel(id="attention", classes="panel")
                yield FeaturesPanel(id="features", classes="panel")
            with Horizontal(id="row-middle", classes="panel-row"):
                yield HeadsPanel(id="heads", classes="panel")
                yield LogitLensPanel(id="lens", classes="panel")
                yield AttributionPanel(id="attribution", classes="panel")
            with Horizontal(id="row-bottom", classes="panel-row"):
                yield GeneratePanel(Steer.modes(bool(info.saes)), id="generate", classes="panel")
        # single spaces between the keys' hints: all of them fit in 80 columns
        # (ctrl+p, the command palette, is in the help screen)
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#tokens-box").border_subtitle = "←/→ select  c color by"
        self.query_one("#prompt").focus()  # typing edits the prompt; Esc or Enter lead on to the keys
        self._activate_panel("predictions")
        # panels bake the theme's colors into their content: redraw them once the
        # new theme's variables are in place (they are not yet when App.theme changes)
        self.app.theme_changed_signal.subscribe(self, lambda theme: self.set_view())
        self.analyze(self.prompt)
        self.load_dashboards()

    @property
    def compact(self) -> bool:
        """Whether the panels are tabs (small terminal) rather than tiled."""
        return self.has_class("-narrow") or self.has_class("-short")

    def _activate_panel(self, panel: str) -> None:
        """The panel shown under the tabs in compact mode (all show when tiled)."""
        for widget in self.query(".panel"):
            widget.set_class(widget.id == panel, "-active")
        for row in self.query(".panel-row"):
            row.set_class(any(p.id == panel for p in row.query(".panel")), "-active")
        tabs = self.query_one(Tabs)
        if tabs.active != f"tab-{panel}":
            tabs.active = f"tab-{panel}"

    @on(Tabs.TabActivated)
    def _tab_activated(self, event: Tabs.TabActivated) -> None:
        self._activate_panel(event.tab.id.removeprefix("tab-"))

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        # keys type into a focused field: the bindings are off (and out of the
        # footer) meanwhile, but Esc, which leaves the field
        return action == "leave_prompt" or not isinstance(self.focused, Input)

    # ---- the view -----------------------------------------------------------------

    def set_view(self, **changes) -> None:
        view = self.view.replace(**changes)
        steer = Steer(view.steer.mode, view.steer.strength, view.sae_index, view.feature, view.layer, view.head)
        if steer != view.steer:
            view = view.replace(steer=steer, steered_losses=None)
        old, self.view = self.view, view
        self._render_view()
        if view.analysis is None:
            return
        if view.steer != old.steer or view.analysis is not old.analysis:
            if view.steer.active:
                self.compute_steered_losses(view.analysis.prompt, view.analysis.token_ids, view.steer)
        if (view.analysis is not old.analysis or (view.selected, view.sae_index) != (old.selected, old.sae_index)
                or view.dashboard is not old.dashboard):  # dashboards rank the features anew
            self._request_effects()
        if view.color_by == "saliency" and view.selected not in view.saliency and (
                (view.analysis, view.selected, view.color_by) != (old.analysis, old.selected, old.color_by)):
            self.compute_saliency(view.analysis.prompt, view.analysis.token_ids, view.selected)

    def _render_view(self) -> None:
        view = self.view
        box = self.query_one("#tokens-box")
        metric = view.metric_text()
        box.border_title = Content(f"Tokens · color: {view.color_by}" + (f" · @{view.selected} {metric}" if metric else ""))
        self.query_one(TokenStrip).show(view)
        for panel in self.query(".panel"):
            panel.show(view)

    def _request_effects(self) -> None:
        wanted = [f for f, _, _ in self.view.ranked_features()]
        missing = [f for f in wanted if (self.view.sae_index, f) not in self.view.effects]
        if missing:
            self.compute_effects(self.view.sae_index, missing)

    # ---- workers --------------------------------------------------------------------

    def _start(self, name: str, group: str, what: str, job, deliver) -> None:
        start_job(self, name, group, what, job, deliver)

    def analyze(self, prompt: str) -> None:
        self._start("analyzing", "analysis", "analysis", lambda: self.backend.analyze(prompt), AnalysisReady)

    def load_dashboards(self) -> None:
        """Each SAE's feature dashboards, where it has them, read in the background."""
        for i, sae in enumerate(self.backend.info.saes):
            if self.backend.dashboards_folder(i) is not None:
                self._start("reading dashboards", f"dashboards-{i}", f"dashboards of {sae.hook_name}",
                            lambda i=i: self.backend.load_dashboards(i), lambda d, i=i: DashboardsReady(i, d))

    def compute_effects(self, sae_index: int, features: list[int]) -> None:
        def job():
            return tuple(self.backend.feature_effects(sae_index, f) for f in features)

        self._start("reading features", "effects", "feature effects", job, FeatureEffectsReady)

    def compute_steered_losses(self, prompt: str, token_ids, steer: Steer) -> None:
        self._start("steering", "steered-loss", "steered loss", lambda: self.backend.steered_losses(token_ids, steer),
                    lambda losses: SteeredLossReady(steer, prompt, losses))

    def compute_saliency(self, prompt: str, token_ids, position: int) -> None:
        self._start("saliency", "saliency", "saliency", lambda: self.backend.saliency(token_ids, position),
                    lambda s: SaliencyReady(prompt, s))

    def generate(self, run: str, steer: Steer | None) -> None:
        """Stream one continuation into the generate panel's `run` column."""
        a = self.view.analysis
        panel = self.query_one(GeneratePanel)
        n, seed = panel.max_new_tokens, self._seed
        panel.run_widget(run).set_text(a.prompt, "")

        def job() -> str:
            worker = get_current_worker()

            def on_text(text: str) -> bool:
                self.post_message(GenerationText(run, text))
                return worker.is_cancelled

            return self.backend.generate(a.token_ids, n, steer, on_text, seed=seed)

        self._start("generating", f"generate-{run}", f"{run} generation", job,
                    lambda text: GenerationText(run, text, done=True))

    def compute_attribution(self) -> None:
        """Attribution patching of the analysed prompt against the panel's corrupted prompt
        (or the selected token swapped), in a worker."""
        a = self.view.analysis
        if a is None:
            self.notify("no prompt analysed yet", timeout=2)
            return
        panel = self.query_one(AttributionPanel)
        selected, corrupted = self.view.selected, field_to_prompt(panel.corrupted_prompt)
        self._start("attributing", "attribution", "attribution patching",
                    lambda: self.backend.attribution(a, selected, corrupted), AttributionReady)
        self._activate_panel("attribution")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        running = sorted({w.name for w in self.workers if w.state in (WorkerState.PENDING, WorkerState.RUNNING)})
        self.query_one(TitleBar).busy = ", ".join(running)

    # ---- results ------------------------------------------------------------------

    def on_analysis_ready(self, message: AnalysisReady) -> None:
        a = message.analysis
        if self.view.analysis is not None and a.prompt != self.view.analysis.prompt:
            self.action_stop()  # continuations of the old prompt no longer belong here
            panel = self.query_one(GeneratePanel)
            for run in ("clean", "steered"):
                panel.run_widget(run).set_text("", "")
        changes = dict(analysis=a, selected=a.n_tokens - 1, steered_losses=None, saliency=MappingProxyType({}))
        if self.view.analysis is None:  # the first prompt: open on its clearest head, if one stands out
            changes.update(_standout_head(a.head_scores[self.view.score]))
        self.set_view(**changes)
        if self._generate_when_ready:
            self._generate_when_ready = False
            self.action_generate()

    def on_attribution_ready(self, message: AttributionReady) -> None:
        self.query_one(AttributionPanel).show_map(message.attribution)

    def on_work_failed(self, message: WorkFailed) -> None:
        error = message.error
        if message.what == "analysis":  # the prompt stays in its field, to be mended
            self._generate_when_ready = False
            if self.view.analysis is not None:
                error += " (the panels still show the previous prompt)"
            self.query_one("#prompt", Input).focus()
        notify_failure(self, message.what, error)

    def on_dashboards_ready(self, message: DashboardsReady) -> None:
        self.set_view(dashboards=MappingProxyType({**self.view.dashboards, message.sae_index: message.dashboards}))

    def on_feature_effects_ready(self, message: FeatureEffectsReady) -> None:
        effects = {**self.view.effects, **{(e.sae_index, e.feature): e for e in message.effects}}
        self.set_view(effects=MappingProxyType(effects))

    def on_steered_loss_ready(self, message: SteeredLossReady) -> None:
        a = self.view.analysis
        if message.steer == self.view.steer and a is not None and message.prompt == a.prompt:
            self.set_view(steered_losses=message.losses)

    def on_saliency_ready(self, message: SaliencyReady) -> None:
        a, s = self.view.analysis, message.saliency
        if a is not None and message.prompt == a.prompt:
            self.set_view(saliency=MappingProxyType({**self.view.saliency, s.position: s}))

    def on_generation_text(self, message: GenerationText) -> None:
        a = self.view.analysis
        panel = self.query_one(GeneratePanel)
        panel.run_widget(message.run).set_text(a.prompt if a else "", message.text)

    # ---- choices from the panels ----------------------------------------------------

    def on_token_selected(self, message: TokenSelected) -> None:
        self.query_one(TokenStrip).focus()
        self.set_view(selected=message.index)

    def on_head_selected(self, message: HeadSelected) -> None:
        self.query_one(TokenStrip).focus()  # back to the tokens: ←/→ move the selection again
        self.set_view(layer=message.layer, head=message.head)
        self.notify(f"attention panel shows L{message.layer} H{message.head}", timeout=2)

    def on_answer_picked(self, message: AnswerPicked) -> None:
        picked_again = self.view.answer is not None and self.view.answer[0] == message.token_id
        self.set_view(answer=None if picked_again else (message.token_id, message.label))

    def on_feature_selected(self, message: FeatureSelected) -> None:
        self.set_view(sae_index=message.sae_index, feature=message.feature, color_by="feature")

    def on_find_feature(self, message: FindFeature) -> None:
        """Color the tokens by the feature and select the token where it is strongest."""
        f = message.feature
        self.set_view(sae_index=message.sae_index, feature=f, color_by="feature")
        self.query_one(TokenStrip).focus()
        a, fa = self.view.analysis, self.view.features
        if a is None or fa is None:
            return
        acts = fa.acts[:, f]
        first = 1 if a.bos and len(acts) > 1 else 0  # BOS is an outlier many SAEs never saw
        peak = first + int(np.argmax(acts[first:]))
        if acts[peak] > 0:
            self.set_view(selected=peak)
            self.notify(f"#{f} is strongest at token {peak} ({acts[peak]:.2f})", timeout=3)
        else:
            self.notify(f"#{f} does not fire on this prompt", timeout=4)

    def on_label_saved(self, message: LabelSaved) -> None:
        self.set_view(label_edits=self.view.label_edits + 1)

    def on_steer_edited(self, message: SteerEdited) -> None:
        steer = self.view.steer
        mode = message.mode if message.mode is not None else steer.mode
        strength = message.strength if message.strength is not None else steer.strength
        self.set_view(steer=Steer(mode, strength))

    def on_generate_requested(self, message: GenerateRequested) -> None:
        self.action_generate()

    @on(Input.Submitted, "#prompt")
    def _prompt_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.analyze(self._prompt_of(event.value))
            self.query_one(TokenStrip).focus()
        else:
            self.notify("type a prompt first", severity="warning")

    @on(Input.Submitted, "#corrupted-prompt")
    def _corruption_submitted(self, event: Input.Submitted) -> None:
        self.query_one(TokenStrip).focus()
        self.compute_attribution()

    # ---- actions --------------------------------------------------------------------

    def action_move(self, step: int) -> None:
        a = self.view.analysis
        if a is not None:
            self.set_view(selected=min(max(self.view.selected + step, 0), a.n_tokens - 1))

    def action_move_to(self, index: int) -> None:
        a = self.view.analysis
        if a is not None:
            self.set_view(selected=index % a.n_tokens)

    def action_layer(self, step: int) -> None:
        self.set_view(layer=(self.view.layer + step) % self.backend.info.n_layers)

    def action_head(self, step: int) -> None:
        self.set_view(head=(self.view.head + step) % self.backend.info.n_heads)

    def action_cycle_color(self) -> None:
        metrics = list(COLOR_METRICS)
        self.set_view(color_by=metrics[(metrics.index(self.view.color_by) + 1) % len(metrics)])

    def action_cycle_score(self) -> None:
        self.set_view(score=HEAD_SCORES[(HEAD_SCORES.index(self.view.score) + 1) % len(HEAD_SCORES)])

    def action_cycle_sae(self) -> None:
        n = len(self.backend.info.saes)
        if n < 2:
            self.notify("only one SAE is loaded" if n else "no SAE is loaded", timeout=2)
            return
        self.set_view(sae_index=(self.view.sae_index + 1) % n, feature=None)

    def action_cycle_steer(self) -> None:
        modes = Steer.modes(bool(self.backend.info.saes))
        steer = self.view.steer
        self.set_view(steer=Steer(modes[(modes.index(steer.mode) + 1) % len(modes)], steer.strength))
        self.notify(f"steer: {self.view.steer.describe()}", timeout=2)

    def _prompt_of(self, field: str) -> str:
        """The prompt a field's text stands for: the one given, exactly, while the field still shows it;
        else the text typed, its marks and pictures standing for the controls (field_to_prompt)."""
        shown, prompt = self._field_holds
        return prompt if field == shown else field_to_prompt(field)

    def action_strength(self, sign: int) -> None:
        steer = self.view.steer
        self.set_view(steer=Steer(steer.mode, steer.strength + sign * STRENGTH_STEP))

    def action_generate(self) -> None:
        """Continue the prompt the field shows: one not run yet runs first."""
        prompt = self._prompt_of(self.query_one("#prompt", Input).value)
        if not prompt.strip():
            self.notify("type a prompt first", severity="warning")
            return
        a = self.view.analysis
        if a is None or prompt != a.prompt:
            self._generate_when_ready = True
            self.analyze(prompt)
            return
        self._seed += 1
        self.generate("clean", None)
        panel = self.query_one(GeneratePanel)
        steered = panel.run_widget("steered")
        if self.view.steer.active:
            steered.set_title(f"steered · {self.view.steer.describe()}")
            self.generate("steered", self.view.steer)
        else:
            self.workers.cancel_group(self, "generate-steered")
            steered.set_title("steered")
            steered.set_text("", "(no intervention: press s to choose one)")
        if self.compact:
            self._activate_panel("generate")

    def action_explore(self) -> None:
        dash = self._dashboards_or_say()
        if dash is not None:
            self.app.push_screen(ExplorerScreen(dash, self.backend.info.saes[self.view.sae_index]))

    def action_dashboard(self) -> None:
        dash = self._dashboards_or_say()
        feature = self.query_one(FeaturesPanel).feature_to_open()
        if dash is None:
            return
        if feature is None:
            self.notify("no feature is active at this token: press f to find one", timeout=3)
            return
        self.app.push_screen(DashboardScreen(dash, self.backend.info.saes[self.view.sae_index], feature))

    def _dashboards_or_say(self) -> FeatureDashboards | None:
        """The shown SAE's dashboards; a notification says why there are none."""
        dash = self.view.dashboard
        if dash is None:
            group = f"dashboards-{self.view.sae_index}"
            if not self.backend.info.saes:
                why = "no SAE is loaded: start with --sae DIR"
            elif any(w.group == group and w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in self.workers):
                why = "the feature dashboards are still loading"
            else:
                why = ("this SAE has no feature dashboards: build them with `tinymech dashboards` "
                       "(into the SAE's folder, dashboards/)")
            self.notify(why, timeout=4)
        return dash

    def action_stop(self) -> None:
        for run in ("clean", "steered"):
            self.workers.cancel_group(self, f"generate-{run}")

    def action_attribution(self) -> None:
        self.compute_attribution()

    def action_edit_corruption(self) -> None:
        self._activate_panel("attribution")
        self.query_one("#corrupted-prompt", Input).focus()

    def action_edit_prompt(self) -> None:
        self.query_one("#prompt", Input).focus()

    def action_leave_prompt(self) -> None:
        self.query_one(TokenStrip).focus()

    def action_panel(self, panel: str) -> None:
        self._activate_panel(panel)
        targets = {"predictions": "#prediction-list", "attention": "#tokens", "features": "#feature-list",
                   "heads": "#heads-table", "generate": "#generate-button", "attribution": "#attribution-table"}
        self.query_one(targets.get(panel, f"#{panel}")).focus()


STANDOUT_SCORE = 0.3  # a head score above what heads without the pattern reach (~0.05 on random weights)


def _standout_head(scores) -> dict:
    """{layer, head} of the best-scoring head when its score stands out, else nothing."""
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    return dict(layer=layer, head=head) if scores[layer, head] >= STANDOUT_SCORE else {}

