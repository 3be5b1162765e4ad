"""Feature dashboards in the TUI: found beside the SAE and read in the background,
the features panel ranked by each feature's share of its own maximum, the
explorer (search, sort) and a feature's dashboard (label editing, find in my
prompt), on synthetic dashboards (tests/support/dashboard_factory.py)."""
from __future__ import annotations

import numpy as np
import pytest
from textual.widgets import Input

import tinymech as tm
from dashboard_factory import WORDS, synthetic_dashboards, synthetic_folder
from tui_support import D_SAE, ready, settle
from tinymech.sae.dashboards import FeatureDashboards
from tinymech.sae.sae import SAE
from tinymech.tui.app import make_app
from tinymech.tui.messages import DashboardsReady
from tinymech.tui.screens.dashboard import DashboardScreen
from tinymech.tui.screens.explorer import SHOWN, ExplorerScreen
from tinymech.tui.screens.help import HelpScreen
from tinymech.tui.screens.label_editor import LabelEditor
from tinymech.tui.screens.main import MainScreen

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
SIZE = (120, 36)
ESCAPE_WORD = WORDS.index("\x1b[31mred")  # feature f of the synthetic dashboards fires on WORDS[f]


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


def main_screen(app) -> MainScreen:
    return app.screen_stack[0]


def listed(screen, selector: str) -> list[int]:
    options = screen.query_one(selector)
    return [int(options.get_option_at_index(i).id) for i in range(options.option_count)
            if options.get_option_at_index(i).id is not None]


def option_text(screen, selector: str, index: int) -> str:
    return screen.query_one(selector).get_option_at_index(index).prompt.plain


async def open_dashboard(pilot, feature: int) -> DashboardScreen:
    """The explorer, searched for the feature's id, then its dashboard."""
    await pilot.press("f", "slash", *str(feature), "enter")
    await settle(pilot)
    await pilot.press("enter")
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, DashboardScreen) and screen.feature == feature
    return screen


async def test_dashboards_beside_the_sae_load_in_the_background(dash_app, dash_sae_dir):
    async with dash_app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(dash_app)
        dash = screen.view.dashboards[0]
        assert dash.path == dash_sae_dir / "dashboards" and dash.n_features == D_SAE
        assert screen.query_one("#features").border_subtitle == "⏎ color  o dashboard  f explore"


async def test_without_dashboards_the_keys_say_how_to_build_them(app):
    notes = []
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.notify = lambda message, **kw: notes.append(message)
        await pilot.press("f", "o")
        assert isinstance(app.screen, MainScreen) and not main_screen(app).view.dashboards
        assert len(notes) == 2 and all("tinymech dashboards" in n for n in notes)


async def test_dashboards_of_another_sae_are_a_notification(model_dir, sae_dir, tmp_path):
    folder = synthetic_folder(tmp_path / "other", n_features=6)  # given with --dashboards: 6 features, not 64
    app = make_app(tm.load(model_dir), [SAE.load(sae_dir)], dashboards=[folder])
    notes = []
    app.notify = lambda message, **kw: notes.append((message, kw.get("title")))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert not main_screen(app).view.dashboards
        assert notes == [(f"the dashboards in {folder} have 6 features, the SAE 64: they belong to another SAE",
                          "dashboards of blocks.1.hook_resid_pre failed")]


async def test_dashboards_given_for_an_sae_are_read(model_dir, sae_dir, tmp_path):
    folder = synthetic_folder(tmp_path / "elsewhere", n_features=D_SAE)
    app = make_app(tm.load(model_dir), [SAE.load(sae_dir)], dashboards=[folder])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert main_screen(app).view.dashboards[0].path == folder


async def test_a_neuronpedia_export_opens_in_the_explorer(model_dir, sae_dir, tmp_path):
    dash = synthetic_dashboards(n_features=6)
    dash.meta["hook"] = SAE.load(sae_dir).cfg.hook_name  # an export of another hook's SAE is refused
    exported = tm.export_neuronpedia(dash, tmp_path / "np.json")
    app = make_app(tm.load(model_dir), [SAE.load(sae_dir)], dashboards=[exported])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        dash = main_screen(app).view.dashboards[0]
        assert dash.n_features == D_SAE and dash.meta["kind"] == "neuronpedia"  # the SAE's width, 6 of them known
        assert dash[1].top_contexts and not dash[D_SAE - 1].top_contexts
        await open_dashboard(pilot, 1)


async def test_features_rank_by_the_share_of_their_own_maximum(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        fa, i = screen.view.features, screen.view.selected
        acts = fa.acts[i]
        dense, sparse = int(fa.top_ids[i, 0]), int(fa.top_ids[i, 2])  # by raw value, the first and the third
        assert acts[dense] > acts[sparse] > 0
        assert listed(screen, "#feature-list")[0] == dense  # without dashboards: by value

        # the dense feature is at a tenth of its maximum here, the sparse one at 90% of its own
        dash = synthetic_dashboards(n_features=D_SAE)
        dash.max_activation = np.full(D_SAE, 100 * acts.max(), np.float32)
        dash.max_activation[dense] = 10 * acts[dense]
        dash.max_activation[sparse] = acts[sparse] / 0.9
        dash.count[dense] = dash.n_tokens  # active everywhere
        screen.post_message(DashboardsReady(0, dash))
        await settle(pilot)
        order = listed(screen, "#feature-list")
        assert order[:2] == [sparse, dense]
        assert option_text(screen, "#feature-list", 0).startswith(f"  #{sparse:<5}  90% {acts[sparse]:6.2f} ")
        assert option_text(screen, "#feature-list", 1).startswith(f"  #{dense:<5}  10% {acts[dense]:6.2f} ")
        assert len(order) == min(12, int((acts > 0).sum()))
        # their promoted tokens were asked for too
        assert "…" not in option_text(screen, "#feature-list", 0).splitlines()[1]

        # o opens the top feature's dashboard
        await pilot.press("o")
        await settle(pilot)
        assert isinstance(app.screen, DashboardScreen) and app.screen.feature == sparse


async def test_the_explorer_searches_and_sorts(dash_app):
    async with dash_app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        dash = main_screen(dash_app).view.dashboards[0]
        await pilot.press("f")
        await settle(pilot)
        screen = dash_app.screen
        assert isinstance(screen, ExplorerScreen)
        assert D_SAE <= SHOWN
        box = screen.query_one("#explorer-box")
        for name, key in [("density", dash.density), ("max activation", dash.max_activation),
                          ("specificity", dash.specificity), ("density", dash.density)]:
            assert box.border_title == f"Features · sorted by {name}"
            assert listed(screen, "#explorer-list") == list(np.argsort(-np.asarray(key), kind="stable"))
            await pilot.press("s")
        assert box.border_title == "Features · sorted by max activation"

        row = option_text(screen, "#explorer-list", 0)
        top = int(np.argmax(dash.max_activation))
        assert row.split()[:3] == [f"#{top}", f"{dash.density[top]:.3g}", f"{dash.max_activation[top]:.3g}"]

        # a search narrows the list; the letters type into the field meanwhile (s does not sort)
        await pilot.press("slash", "#", "5")
        await settle(pilot)
        assert listed(screen, "#explorer-list") == [5] and box.border_title.endswith("best match")
        assert box.border_subtitle.startswith("1 of 64 ")
        await pilot.press("backspace", "backspace", "x", "y", "z")
        await settle(pilot)
        assert listed(screen, "#explorer-list") == [] and "no feature matches" in option_text(
            screen, "#explorer-list", 0)
        screen.query_one("#explorer-search", Input).value = ""
        await settle(pilot)
        assert len(listed(screen, "#explorer-list")) == D_SAE and box.border_title.endswith("density")

        # a search's results come in its own order (best match first) until s sorts them
        dash.search = lambda query: [7, 3, 5]
        await pilot.press(*"cat", "enter")
        await settle(pilot)
        assert listed(screen, "#explorer-list") == [7, 3, 5] and box.border_title.endswith("best match")
        await pilot.press("s")
        assert box.border_title.endswith("density")
        assert listed(screen, "#explorer-list") == sorted([7, 3, 5], key=lambda f: (-dash.density[f], [7, 3, 5].index(f)))
        screen.query_one("#explorer-search", Input).value = ""
        await settle(pilot)

        await pilot.press("slash", "escape")  # out of the field, then out of the explorer
        assert isinstance(dash_app.screen, ExplorerScreen)
        await pilot.press("question_mark")  # the help lists the explorer's keys
        assert isinstance(dash_app.screen, HelpScreen)
        help_text = dash_app.screen.query_one("#help-text").render().plain
        assert "Feature explorer" in help_text and "sort" in help_text
        await pilot.press("escape", "escape")
        assert isinstance(dash_app.screen, MainScreen)


async def test_a_feature_dashboard_shows_its_contexts_harmlessly(dash_app):
    async with dash_app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        dash = main_screen(dash_app).view.dashboards[0]
        screen = await open_dashboard(pilot, ESCAPE_WORD)
        d = dash[ESCAPE_WORD]
        header = screen.query_one("#dash-header").render().plain
        assert header.startswith(f"#{ESCAPE_WORD}  (no label yet: l to edit)\n")
        assert f"density {d.density:.3g} ({d.count:,} of {d.n_tokens:,} tokens) · max {d.max_activation:.3g}" \
            in header
        body = screen.query_one("#dash-text").render().plain
        assert "Top activations" in body and "Samples by activation" in body
        assert "█" in body  # the histogram's highest bin
        assert f"{d.top_contexts[0].value:7.2f}  " in body
        # the token that is an escape sequence shows as text; nothing reaches the terminal raw
        assert "␛[31mred" in body and "\x1b" not in body
        # the peak token of each context is bold: shaded by activation, the highest at full strength
        text = screen.query_one("#dash-text").render()
        peak = body.index("␛[31mred", body.index("Top activations"))
        assert any(s.start == peak and s.style.bold for s in text.spans)
        logits = screen.query_one("#dash-logits").render().plain
        assert logits.splitlines()[:2] == ["promotes", f"{'␛[31mred':<12}{3.0:+8.3f}"]  # it promotes its own token

        # Enter on a co-occurring feature opens its dashboard; Esc comes back
        cooc = d.cooccurring[0][0]
        screen.query_one("#dash-cooc").focus()
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(dash_app.screen, DashboardScreen) and dash_app.screen.feature == cooc
        await pilot.press("escape")
        assert dash_app.screen is screen


async def test_a_label_and_note_are_saved_beside_the_sae(dash_app, dash_sae_dir):
    async with dash_app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        main = main_screen(dash_app)
        screen = await open_dashboard(pilot, 5)
        await pilot.press("l")
        assert isinstance(dash_app.screen, LabelEditor)
        await pilot.press(*"cats", "enter", *"seen twice", "enter")
        await settle(pilot)
        assert dash_app.screen is screen and main.view.label_edits == 1
        assert screen.query_one("#dash-header").render().plain.startswith("#5  cats  (your label: l to edit)")
        reread = FeatureDashboards.load(dash_sae_dir / "dashboards")[5]
        assert (reread.label, reread.label_source, reread.note) == ("cats", "user", "seen twice")

        # the explorer below lists it; an empty label removes it, Esc cancels
        await pilot.press("l", "escape")
        assert dash_app.screen is screen
        await pilot.press("escape")
        await settle(pilot)
        assert "cats" in option_text(dash_app.screen, "#explorer-list", 0)
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("l")
        editor = dash_app.screen
        editor.query_one("#label-input", Input).value = ""
        await pilot.press("enter", "enter")
        await settle(pilot)
        assert FeatureDashboards.load(dash_sae_dir / "dashboards")[5].label is None


async def test_find_in_my_prompt_colors_the_tokens_by_the_feature(dash_app):
    async with dash_app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        main = main_screen(dash_app)
        fa = main.view.features
        acts = fa.acts[1:].max(axis=0)
        feature = int(np.argsort(-acts)[1])  # strongest somewhere in the prompt, not at the last token
        screen = await open_dashboard(pilot, feature)
        await pilot.press("p")
        await settle(pilot)
        assert dash_app.screen is main
        strongest = 1 + int(np.argmax(fa.acts[1:, feature]))
        assert (main.view.feature, main.view.color_by, main.view.selected) == (feature, "feature", strongest)
        assert main.query_one("#tokens-box").border_title.endswith(
            f"@{strongest} #{feature} {fa.acts[strongest, feature]:.2f}")
        assert screen is not dash_app.screen


async def test_hostile_labels_and_notes_show_harmlessly(dash_app, dash_sae_dir):
    FeatureDashboards.load(dash_sae_dir / "dashboards").set_label(3, "\x1b[2Jevil\nlabel", note="\x07\x9bnote")
    async with dash_app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = await open_dashboard(pilot, 3)
        header = screen.query_one("#dash-header").render().plain
        assert "#3  ␛[2Jevil␊label  (your label" in header and "note: ␇\ufffdnote" in header
        await pilot.press("escape")
        row = option_text(pilot.app.screen, "#explorer-list", 0)
        assert row.startswith("#3 ") and row.endswith("␛[2Jevil␊label")
