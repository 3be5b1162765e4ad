"""The TUI driven through Textual's Pilot: keys and clicks in, what the
widgets show out. A seeded random model keeps every number reproducible."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from rich.cells import cell_len
from textual.app import App
from textual.widgets import Input, Tabs

import tinymech as tm
from tinymech import analysis
from model_factory import make_hf_gpt2
from tui_support import PROMPT, ROOT, build_sae_dir, make_test_app, ready, settle
from tinymech.tui.app import TinymechApp, make_app, run_tui
from tinymech.tui.backend import Steer
from tinymech.tui.display import Palette, fit, pad, printable, prob, token_label, token_labels
from tinymech.tui.screens import help as help_screen
from tinymech.tui.screens.help import HelpScreen
from tinymech.tui.screens.main import MainScreen
from tinymech.tui.widgets.attention import PatternHeatmap
from tinymech.tui.widgets.generate import GeneratePanel
from tinymech.tui.widgets.tokens import TokenStrip

# the app is driven key by key: seconds a test
pytestmark = [pytest.mark.anyio, pytest.mark.slow]
SIZE = (120, 36)
PROMPT_LABELS = ["‹bos›", "Mr", "·Darcy", "·bowed", "·to", "·Elizabeth", ".", "·Mr", "·Darcy", "·bowed"]


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


def main_screen(app) -> MainScreen:
    return app.screen_stack[0]


def offset_of(app, selector: str, **meta) -> tuple[int, int]:
    """Where, inside the widget, the screen shows a cell with this metadata
    (a table cell's row and column, an option list's option)."""
    widget = app.screen.query_one(selector)
    region = widget.region
    for y in range(region.height):
        for x in range(region.width):
            found = app.screen.get_style_at(region.x + x, region.y + y).meta
            if all(found.get(k) == v for k, v in meta.items()):
                return x, y
    raise AssertionError(f"nothing with {meta} in {selector}")


def text_of(screen, selector: str) -> str:
    """The plain text a Static shows."""
    return screen.query_one(selector).render().plain


async def test_opens_on_the_prompt_with_the_last_token_selected(app):
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = main_screen(app)
        strip = screen.query_one(TokenStrip)
        assert strip.labels() == PROMPT_LABELS
        assert strip.render().plain == " ".join(PROMPT_LABELS)
        assert screen.view.selected == len(PROMPT_LABELS) - 1
        assert screen.query_one("#prompt", Input).has_focus
        assert screen.query_one("#tokens-box").border_title.startswith("Tokens · color: loss · @9 loss ")
        assert "actual: (end of prompt)" in text_of(screen, "#predictions-body")
        for panel, title in [("#predictions", "Next token @ 9"), ("#attention", "Attention · L0 H0"),
                             ("#features", "Features @ 9"), ("#heads", "Heads · score: induction"),
                             ("#lens", "Logit lens @ 9"), ("#generate", "Generate · steer: off")]:
            assert screen.query_one(panel).border_title.startswith(title)


async def test_typing_at_the_start_edits_the_prompt(app):
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = main_screen(app)
        first = screen.view.analysis

        def footer_keys():
            return {b.binding.key for b in screen.active_bindings.values() if b.binding.show and b.enabled}

        assert footer_keys() == {"escape"}  # the letter keys type: their bindings are off meanwhile
        await pilot.press(*"Elizabeth sat. Elizabeth sat")  # replaces the example, selected on opening
        await settle(pilot)
        assert screen.query_one("#prompt", Input).value == "Elizabeth sat. Elizabeth sat"
        assert screen.view.analysis is first and screen.view.steer.mode == "off" and not app.workers
        await pilot.press("enter")
        await settle(pilot)
        assert screen.view.analysis.prompt == "Elizabeth sat. Elizabeth sat"
        assert screen.query_one(TokenStrip).has_focus
        assert {"g", "s", "q", "left"} <= footer_keys() and "escape" not in footer_keys()
        await pilot.press("slash", "escape")  # Esc leaves the field, the keys work again
        assert screen.query_one(TokenStrip).has_focus
        await pilot.press("s")
        assert screen.view.steer.mode == "add"
        screen.query_one("#max-tokens").focus()  # the generate panel's fields type too
        await pilot.pause()
        assert footer_keys() == {"escape"}


async def test_typing_a_prompt_shows_its_tokens(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        await pilot.press("slash")
        assert screen.query_one("#prompt", Input).has_focus
        await pilot.press("ctrl+a", "ctrl+k", *"Elizabeth sat down. Elizabeth sat", "enter")
        await settle(pilot)
        strip = screen.query_one(TokenStrip)
        assert strip.render().plain == "‹bos› Elizabeth ·sat ·down . ·Elizabeth ·sat"
        assert strip.has_focus
        assert screen.view.selected == 6
        assert screen.query_one("#predictions").border_title == "Next token @ 6"

        # the same prompt again is analyzed again, without trouble
        first = screen.view.analysis
        await pilot.press("slash", "enter")
        await settle(pilot)
        assert screen.view.analysis is not first and screen.view.analysis.prompt == first.prompt


async def test_arrow_keys_and_clicks_move_the_selection(app, model_dir):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        await pilot.press("left", "left", "left")
        await settle(pilot)
        assert screen.view.selected == 6
        assert screen.query_one("#predictions").border_title == "Next token @ 6"
        # the token that really follows position 6 is "·Mr", with its rank and loss
        a = screen.view.analysis
        assert f"actual ·Mr\nrank {a.next_rank[6] + 1}  p {a.next_prob[6]:.3f}  loss {a.losses[7]:.2f}" \
            in text_of(screen, "#predictions-body")
        # the next-token list is the model's own top 10 at that position
        logits = tm.load(model_dir)(PROMPT)[0, 6]
        assert list(a.top_ids[6]) == list(np.argsort(-logits, kind="stable")[:10])

        await pilot.press("home")
        assert screen.view.selected == 0
        await pilot.press("end")
        assert screen.view.selected == 9

        strip = screen.query_one(TokenStrip)
        line, x, width = strip._layout(strip.size.width)[5]  # "·Elizabeth"
        await pilot.click(TokenStrip, offset=(x + width // 2, line))
        await settle(pilot)
        assert screen.view.selected == 5
        assert screen.query_one("#lens").border_title == "Logit lens @ 5 · following . (actual next)"
        assert "·Elizabeth attends to:" in text_of(screen, "#attends")
        # the lens panel reads the lens at the new position: the library's, row for row
        lens = analysis.logit_lens(tm.load(model_dir), PROMPT, k=10)
        rows = [lens.labels.index(label) for label in a.lens_labels]
        at5 = a.lens_at(5, int(a.token_ids[6]))
        np.testing.assert_array_equal(at5.ids, lens.top_ids[rows, 5])
        np.testing.assert_allclose(at5.probs, lens.top_probs[rows, 5], rtol=1e-5)
        shown = text_of(screen, "#lens-body").splitlines()  # a header, then a row per lens row
        assert shown[2].split()[4].startswith(token_label(at5.tokens[1][0])[:9])


async def test_the_logit_lens_follows_a_picked_prediction_at_the_last_position(app, model_dir):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        a = screen.view.analysis
        lens_panel = screen.query_one("#lens")
        top = token_label(a.top_tokens[9][0])
        assert lens_panel.border_title == f"Logit lens @ 9 · following {top} (top prediction)"

        await pilot.press("1")  # the next-token list
        assert app.focused.id == "prediction-list"
        await pilot.press("down", "enter")  # the second prediction
        await settle(pilot)
        answer, label = int(a.top_ids[9, 1]), token_label(a.top_tokens[9][1])
        assert screen.view.answer == (answer, label)
        assert lens_panel.border_title == f"Logit lens @ 9 · following {label} (picked)"
        picked = screen.query_one("#prediction-list").get_option_at_index(1).prompt.plain
        assert picked.startswith("●  2 ")
        # each row's rank and probability of the picked token: the library's logit lens with it as the answer
        lens = analysis.logit_lens(tm.load(model_dir), PROMPT, answers=[answer], k=10)
        rows = [lens.labels.index(row) for row in a.lens_labels]
        shown = text_of(screen, "#lens-body").splitlines()
        assert shown[0].split()[0] == fit(label, 10)
        for line, row in zip(shown[1:], rows):
            rank, p = line[9:].split()[:2]
            assert rank == f"#{lens.answer_ranks[row, 9, 0]}" and p == prob(lens.answer_probs[row, 9, 0])

        await pilot.press("left")  # it stays followed at other positions
        await settle(pilot)
        assert lens_panel.border_title == f"Logit lens @ 8 · following {label} (picked)"
        await pilot.press("right", "1", "enter")  # Enter on it again: back to the token followed by default
        await settle(pilot)
        assert screen.view.answer is None
        assert lens_panel.border_title == f"Logit lens @ 9 · following {top} (top prediction)"
        await pilot.press("left")
        assert lens_panel.border_title == f"Logit lens @ 8 · following {a.labels[9]} (actual next)"


async def test_layer_and_head_keys_and_the_heads_grid(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        await pilot.press("right_square_bracket", "right_curly_bracket", "right_curly_bracket")
        a = screen.view.analysis
        attention = screen.query_one("#attention")
        assert attention.border_title == f"Attention · L1 H2 · induction {a.head_scores['induction'][1, 2]:.2f}"
        heatmap = screen.query_one(PatternHeatmap)
        assert np.array_equal(heatmap.pattern, a.patterns[1, 2])
        # a line of key labels, then two query rows per line: 10 tokens make 5 lines;
        # the selected query (9) is on the last, scrolled into view under the labels
        assert heatmap.virtual_size.height == 1 + 5
        lines = [heatmap.render_line(y).text for y in range(heatmap.size.height)]
        assert lines[0].rstrip() == " q\\k 0 1 2 3 4 5 6 7 8 9"
        shown = [line for line in lines if line.strip()]
        assert shown[-1].startswith("  8▸ ") and set(shown[-1][5:25]) == {"▀"}
        selected = [s for s in heatmap.render_line(0) if s.text == "9"]
        accent = Palette.from_theme(app.theme_variables).selection
        assert selected and selected[0].style.color.triplet == accent.rich_color.triplet

        # in the grid: Enter on a cell shows that head
        await pilot.press("4")
        assert screen.query_one("#heads-table").has_focus
        await pilot.press("up", "left", "enter")
        await settle(pilot)
        assert (screen.view.layer, screen.view.head) == (0, 1)
        assert attention.border_title.startswith("Attention · L0 H1 · induction")
        info = text_of(screen, "#head-info")
        assert info.startswith("L0 H1 shown in Attention\nprev ") and " ind " in info and " dup " in info

        await pilot.press("d")
        assert screen.query_one("#heads").border_title == "Heads · score: duplicate-token"
        assert attention.border_title.startswith("Attention · L0 H1 · duplicate-token")

        # one click on a cell selects its head too
        await pilot.click("#heads-table", offset=offset_of(app, "#heads-table", row=1, column=3))
        await settle(pilot)
        assert (screen.view.layer, screen.view.head) == (1, 3)
        assert attention.border_title.startswith("Attention · L1 H3")


async def test_a_prompt_with_emoji_and_accents_shows_bytes_then_characters(model_dir):
    app = make_test_app(model_dir, None, prompt="😀 Mr said “café”")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        a = screen.view.analysis
        assert a.tokens[1:5] == (b"\xf0", b"\x9f", b"\x98", b"\x80")  # the byte-level tokens' own bytes
        strip = screen.query_one(TokenStrip)
        assert strip.labels() == ["‹bos›", "‹f0›", "‹9f›", "‹98›", "😀", "·Mr", "·said", "·", "‹e2›", "‹80›", "“",
                                  "c", "af", "‹c3›", "é", "‹e2›", "‹80›", "”"]
        # the emoji takes two cells: a click on the last cell of the chip after it selects that chip
        line = strip.render().plain.splitlines()[0]
        x = cell_len(line[: line.index("·Mr")]) + 2
        await pilot.click(TokenStrip, offset=(x, 0))
        await settle(pilot)
        assert screen.view.selected == 5
        await pilot.press("home", "right", "right")
        await settle(pilot)
        assert "‹9f› attends to:" in text_of(screen, "#attends")
        assert "actual ‹98›" in text_of(screen, "#predictions-body")
        for panel in ("#tokens", "#attends", "#predictions-body", "#lens-body"):
            assert "\ufffd" not in text_of(screen, panel)


async def test_the_heatmap_labels_its_key_columns(model_dir):
    import re
    from tinymech.tui.widgets.attention import MARGIN

    app = make_test_app(model_dir, None, prompt=" ".join(["Mr Darcy bowed to Elizabeth."] * 8))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        heatmap = screen.query_one(PatternHeatmap)
        n, cell = heatmap.pattern.shape[0], heatmap.cell
        assert n > 40 and cell == 1  # one cell per key: not every key has room for a label
        await pilot.press("home")  # scrolled to the left edge
        await settle(pilot)
        assert heatmap.scroll_offset.x == 0
        header = heatmap.render_line(0).text
        labels = {int(m.group()): m.start() for m in re.finditer(r"\d+", header)}
        assert all(x == MARGIN + cell * k for k, x in labels.items())  # each over its own column
        assert {0, 5, 10} <= set(labels) and len(labels) < n
        await pilot.press("end")  # scrolled right: the labels move with their columns
        await settle(pilot)
        scroll_x = heatmap.scroll_offset.x
        assert scroll_x > 0
        labels = {int(m.group()): m.start() + scroll_x for m in re.finditer(r"\d+", heatmap.render_line(0).text)
                  if m.start() > 0}
        assert all(x == MARGIN + cell * k for k, x in labels.items()) and n - 1 in labels


async def test_after_enter_in_the_heads_grid_arrows_move_the_token_again(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        table = screen.query_one("#heads-table")
        await pilot.press("4", "down", "right", "enter")
        await settle(pilot)
        assert (screen.view.layer, screen.view.head) == (1, 1)
        assert screen.query_one(TokenStrip).has_focus
        await pilot.press("left")
        await settle(pilot)
        assert screen.view.selected == len(PROMPT_LABELS) - 2
        assert table.cursor_coordinate == (1, 1) and (screen.view.layer, screen.view.head) == (1, 1)


async def test_the_line_under_the_heads_grid_names_the_head_it_describes(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        table = screen.query_one("#heads-table")
        await pilot.press("4")
        assert text_of(screen, "#head-info").startswith("L0 H0 shown in Attention\nprev ")
        await pilot.press("down")  # browsing: the line describes the cursor's cell
        assert text_of(screen, "#head-info").startswith("L1 H0 ⏎ show in Attention\nprev ")
        assert (screen.view.layer, screen.view.head) == (0, 0)
        await pilot.press("escape")  # leaving the grid: cursor and line go back to the head shown
        await settle(pilot)
        assert screen.query_one(TokenStrip).has_focus
        assert table.cursor_coordinate == (0, 0)
        assert text_of(screen, "#head-info").startswith("L0 H0 shown in Attention\nprev ")


async def test_picking_a_feature_recolors_the_tokens(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        options = screen.query_one("#feature-list")
        fa = screen.view.features
        assert options.option_count == int((fa.top_values[9] > 0).sum())
        first = options.get_option_at_index(0).prompt.plain
        assert first.startswith(f"  #{fa.top_ids[9, 0]}")
        assert "promotes ·" in first or "promotes " in first and "…" not in first

        # a promoted token that is part of a character shows its bytes (one of them here: ‹..›)
        promoted = [options.get_option_at_index(k).prompt.plain.splitlines()[1] for k in range(options.option_count)]
        assert any("‹" in line for line in promoted) and not any("\ufffd" in line for line in promoted)

        await pilot.press("3")
        assert options.has_focus
        await pilot.press("down", "enter")
        await settle(pilot)
        feature = int(fa.top_ids[9, 1])
        assert (screen.view.feature, screen.view.color_by) == (feature, "feature")
        assert options.get_option_at_index(1).prompt.plain.startswith(f"● #{feature}")
        title = screen.query_one("#tokens-box").border_title
        assert title == f"Tokens · color: feature · @9 #{feature} {fa.acts[9, feature]:.2f}"

        # a click picks another
        await pilot.click("#feature-list", offset=offset_of(app, "#feature-list", option=2))
        await settle(pilot)
        assert screen.view.feature == int(fa.top_ids[9, 2])
        feature = screen.view.feature

        # the token where the feature is strongest gets the full feature color
        strip = screen.query_one(TokenStrip)
        await pilot.press("home")
        acts = fa.acts[1:, feature]
        strongest = 1 + int(np.argmax(acts))
        palette = Palette.from_theme(app.theme_variables)
        start = len(" ".join(strip.labels()[:strongest])) + 1
        spans = [s for s in strip.render().spans if s.start == start]
        assert spans and spans[0].style.background == palette.ramp(1.0, palette.feature).background


async def test_saliency_colors_the_tokens_that_pushed_the_prediction(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        await pilot.press("c", "c", "c", "c")
        await settle(pilot)
        view = screen.view
        assert view.color_by == "saliency"
        s = view.saliency[9]
        ref = analysis.saliency(screen.backend.model, view.analysis.token_ids, position=9, prepend_bos=False)
        np.testing.assert_allclose(s.scores, ref.scores[0], rtol=1e-5, atol=1e-6)
        assert s.target == ref.target[0] == view.analysis.top_ids[9, 0]
        title = screen.query_one("#tokens-box").border_title
        assert title == f"Tokens · color: saliency · @9 pushing {s.target_label}: this token {s.scores[9]:+.2f}"

        # pushing for it: the feature color; against: the loss color; the largest in full
        strip = screen.query_one(TokenStrip)
        palette = Palette.from_theme(app.theme_variables)
        labels = strip.labels()
        scaled = s.scores / np.abs(s.scores).max()
        assert (scaled[:9] > 0).any() and (scaled[:9] < 0).any()
        for i in range(9):
            spans = [sp for sp in strip.render().spans if sp.start == len(" ".join(labels[:i])) + (1 if i else 0)]
            hue = palette.feature if scaled[i] >= 0 else palette.loss
            assert spans[0].style.background == palette.ramp(abs(scaled[i]), hue).background, i

        # an earlier token: its own prediction, computed off the UI thread; later tokens muted
        await pilot.press("left", "left")
        await settle(pilot)
        assert {7, 9} <= set(screen.view.saliency) and np.isnan(screen.view.saliency[7].scores[8:]).all()
        spans = [sp for sp in strip.render().spans if sp.start == len(" ".join(labels[:8])) + 1]
        assert spans[0].style.foreground == palette.muted
        # cached per prompt and position
        assert screen.backend.saliency(view.analysis.token_ids, 9) is s


async def test_generate_with_a_clamped_feature_streams_both_runs(app, model_dir, sae_dir):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        await pilot.press("3", "enter")  # the top feature at the last token
        await settle(pilot)
        feature = screen.view.feature
        await pilot.press("s", "s")
        assert screen.view.steer.mode == "clamp"
        panel = screen.query_one(GeneratePanel)
        strength = panel.query_one("#strength", Input)
        strength.value = "20"
        await settle(pilot)
        assert panel.border_title == f"Generate · steer: clamp #{feature} to 20"
        await pilot.press("escape", "g")
        await settle(pilot)

        clean, steered = panel.run_widget("clean"), panel.run_widget("steered")
        backend = app.backend
        ids = screen.view.analysis.token_ids
        expect_clean = backend.generate(ids, 30, None, lambda text: False, seed=1)
        expect_steered = backend.generate(ids, 30, Steer("clamp", 20.0, 0, feature), lambda text: False, seed=1)
        assert clean.text == expect_clean and steered.text == expect_steered
        assert clean.text != steered.text
        assert steered.query_one(".run-title").render().plain == f"steered · clamp #{feature} to 20"
        # control characters a random model emits are shown as pictures, never sent to the terminal
        assert clean.query_one(".run-text").render().plain.endswith("Mr Darcy bowed" + printable(expect_clean))


async def test_a_long_generation_scrolls_inside_the_generate_panel(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        panel = screen.query_one(GeneratePanel)
        top = screen.query_one("#row-top")
        top_height, panel_height = top.region.height, panel.region.height
        panel.query_one("#max-tokens", Input).value = "118"  # up to the model's context of 128
        await pilot.press("escape", "g")
        await settle(pilot)
        await pilot.pause()
        assert len(panel.run_widget("clean").text) > 400
        # the panel grows by three lines at most, then scrolls: the panels above keep their room
        assert panel.region.height <= panel_height + 3 and top.region.height >= top_height - 3
        runs = panel.query_one("#runs")
        assert runs.max_scroll_y > 0 and runs.scroll_y == runs.max_scroll_y  # the newest text in view


async def test_generate_continues_the_prompt_in_the_field(app, monkeypatch):
    notes = []
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        monkeypatch.setattr(app, "notify", lambda message, **kw: notes.append((message, kw.get("severity"))))
        screen = main_screen(app)
        clean = screen.query_one(GeneratePanel).run_widget("clean")
        await pilot.press("backspace", "enter", "escape", "g")  # an emptied field
        await settle(pilot)
        assert notes == [("type a prompt first", "warning")] * 2
        assert clean.text == "" and screen.view.analysis.prompt == PROMPT  # the old prompt is not continued

        # a prompt typed but not run: g runs it, then continues it
        await pilot.press("slash", *"Elizabeth sat", "escape", "g")
        await settle(pilot)
        assert screen.view.analysis.prompt == "Elizabeth sat"
        ids = screen.view.analysis.token_ids
        assert clean.text and clean.text == app.backend.generate(ids, 30, None, lambda text: False, seed=1)


async def test_ablating_a_head_shows_the_steered_loss(app, model_dir):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        await pilot.press("right_square_bracket", "right_curly_bracket", "s", "s", "s", "c")
        await settle(pilot)
        view = screen.view
        assert view.steer == Steer("ablate", 8.0, 0, None, 1, 1)
        assert screen.query_one("#generate").border_title == "Generate · steer: ablate L1H1"
        model = tm.load(model_dir)
        expected = model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.1.attn.hook_z", tm.zero_ablate(heads=[1]))],
                                        return_type="loss", loss_per_token=True)[0]
        np.testing.assert_allclose(view.steered_losses[1:], expected, rtol=1e-5)
        assert screen.query_one("#tokens-box").border_title == (
            f"Tokens · color: steered loss · @9 {expected[-1]:.2f} (clean {view.analysis.losses[9]:.2f})"
        )


async def test_help_lists_every_key(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = app.screen.query_one("#help-text").render().plain
        lines = text.splitlines()
        # every key on a line of its own, its description in one column
        columns = set()
        for binding in [*TinymechApp.BINDINGS, *MainScreen.BINDINGS]:
            key = app.get_key_display(binding)
            line = next(line for line in lines if line.startswith(f"  {key} ") and line.endswith(binding.description))
            columns.add(len(line) - len(binding.description))
        assert len(columns) == 1
        column = columns.pop()
        assert column > max(len(app.get_key_display(b)) for b in MainScreen.BINDINGS) + 2
        # a long description wraps within the box, indented to its column
        mouse = lines.index(next(line for line in lines if line.startswith("  mouse ")))
        assert lines[mouse + 1].startswith(" " * column) and lines[mouse + 1].strip()
        assert all(len(line) <= help_screen.TEXT_WIDTH for line in lines)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_small_terminals_show_one_panel_under_tabs(app):
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        assert screen.compact and screen.query_one(Tabs).display

        def shown():
            return [p.id for p in screen.query(".panel") if p.display and p.parent.display]

        assert shown() == ["predictions"]
        await pilot.press("2")
        assert shown() == ["attention"]
        await pilot.press("5")
        assert shown() == ["lens"]
        rows = text_of(screen, "#lens-body").splitlines()
        assert [row[:9].rstrip() for row in rows[1:6]] == ["embed", "L0 attn", "L0 mlp", "L1 attn", "L1 mlp"]
        a = screen.view.analysis
        top = token_label(a.top_tokens[9][0])[:9]
        assert rows[5][9:].startswith("#1 ") and top in rows[5]  # the last row is the model's output
        await pilot.press("g")  # generating brings its tab forward
        await settle(pilot)
        assert shown() == ["generate"]


async def test_too_long_a_prompt_is_a_notification(app, monkeypatch):
    notes = []
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        monkeypatch.setattr(app, "notify", lambda message, **kw: notes.append((message, kw)))
        screen = main_screen(app)
        screen.query_one("#prompt", Input).value = "word " * 300
        await pilot.press("slash", "enter")
        await settle(pilot)
        assert len(notes) == 1
        message, kw = notes[0]
        assert kw["severity"] == "error" and kw["title"] == "analysis failed"
        assert "context of 128" in message and "\n" not in message
        assert message.endswith("(the panels still show the previous prompt)")
        assert screen.query_one(TokenStrip).labels() == PROMPT_LABELS  # the last good prompt stays
        # the rejected text stays in the prompt field, which has the focus to mend it
        field = screen.query_one("#prompt", Input)
        assert field.value == "word " * 300 and field.has_focus


async def test_without_an_sae_the_features_panel_says_so(model_dir):
    app = make_test_app(model_dir, None)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        assert "No SAE loaded" in text_of(screen, "#no-sae")
        await pilot.press("c", "c")
        assert screen.query_one("#tokens-box").border_title == "Tokens · color: feature · @9 no SAE loaded"


async def test_without_an_sae_steering_offers_head_ablation_only(model_dir):
    app = make_test_app(model_dir, None)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        panel = screen.query_one(GeneratePanel)
        assert panel.modes == ("off", "ablate")  # the mode list offers these
        assert panel.border_subtitle == "g generate  s mode"
        await pilot.press("s")
        assert screen.view.steer.mode == "ablate"
        assert not any(w.display for w in panel.query(".strength"))  # an ablation has no strength
        await pilot.press("s")
        assert screen.view.steer.mode == "off"


async def test_with_an_sae_the_strength_shows_for_feature_modes_only(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        panel = screen.query_one(GeneratePanel)
        shown = []
        for _ in Steer.MODES:
            await pilot.press("s")
            await pilot.pause()
            shown.append((screen.view.steer.mode, all(w.display for w in panel.query(".strength"))))
        assert shown == [("add", True), ("clamp", True), ("ablate", False), ("off", False)]


async def test_a_deep_model_keeps_the_tiled_panels_in_their_slots(tmp_path):
    """30 layers: the logit lens (61 rows) scrolls inside its row instead of
    growing past it under the generate panel."""
    path = tmp_path / "deep"
    make_hf_gpt2(path, seed=0, n_layer=30, n_embd=32, n_head=2, n_positions=64, vocab_size=8192)
    shutil.copy(ROOT / "models" / "demo-gpt2" / "tokenizer.json", path / "tokenizer.json")
    app = make_test_app(path, None)
    async with app.run_test(size=(160, 50)) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        row, lens, heads, generate = (screen.query_one(f"#{i}") for i in ("row-middle", "lens", "heads", "generate"))
        for panel in (lens, heads):
            assert row.region.contains_region(panel.region)
            assert panel.region.bottom <= generate.region.y
        assert lens.max_scroll_y > 0
        await pilot.press("5", *["pagedown"] * 5)
        await pilot.pause()
        assert lens.scroll_y == lens.max_scroll_y
        last_row = text_of(screen, "#lens-body").splitlines()[-1]
        assert last_row.startswith("L29 mlp") and lens.scroll_offset.y + lens.scrollable_content_region.height \
            >= len(text_of(screen, "#lens-body").splitlines())


async def test_a_prompt_with_newlines_shows_them_as_marks_in_the_field(model_dir):
    app = make_test_app(model_dir, None, prompt="Mr Darcy\nbowed")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        field = screen.query_one("#prompt", Input)
        assert field.value == "Mr Darcy↵bowed"
        assert screen.view.analysis.prompt == "Mr Darcy\nbowed"
        field.value = "Mr⇥Darcy↵"
        await pilot.press("slash", "enter")
        await settle(pilot)
        assert screen.view.analysis.prompt == "Mr\tDarcy\n"


async def test_in_the_feature_list_left_right_still_move_the_token(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        await pilot.press("3")
        assert app.focused.id == "feature-list"
        shown = {b.binding.key for b in screen.active_bindings.values() if b.binding.show}
        assert "left" in shown  # the footer's "←/→ token" hint
        await pilot.press("left")
        await settle(pilot)
        assert screen.view.selected == len(PROMPT_LABELS) - 2


async def test_the_example_prompt_opens_on_the_induction_head():
    """Story 1: `tinymech tui` on the demo model shows the induction head's
    pattern at once (a random model's heads stand out nowhere: it opens on L0 H0)."""
    app = make_app(tm.load(), [])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        assert (screen.view.layer, screen.view.head) == (3, 0)
        assert screen.query_one("#attention").border_title.startswith("Attention · L3 H0 · induction 0.7")
        # another prompt keeps the head the user is looking at
        await pilot.press("right_curly_bracket")
        screen.query_one("#prompt", Input).value = "Mr Darcy bowed. Mr Darcy bowed."
        await pilot.press("slash", "enter")
        await settle(pilot)
        assert (screen.view.layer, screen.view.head) == (3, 1)


async def test_light_theme_redraws_with_its_colors(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("t")
        await settle(pilot)
        assert not app.current_theme.dark
        strip = main_screen(app).query_one(TokenStrip)
        light = Palette.from_theme(app.theme_variables)
        selected = [s for s in strip.render().spans if s.start == len(" ".join(PROMPT_LABELS[:-1])) + 1]
        assert selected[0].style.background == light.selection


async def test_light_theme_reaches_every_panel(app):
    """The heatmap, the heads grid, the predictions and the generated text bake
    colors into their content: they are redrawn with the new theme's."""
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        await pilot.press("escape", "g", "t")
        await settle(pilot)
        light, dark = Palette.from_theme(app.get_css_variables()), Palette.from_theme(App().get_css_variables())
        assert (light.base, light.attention, light.muted) != (dark.base, dark.attention, dark.muted)
        assert screen.query_one(PatternHeatmap).palette == light
        score = screen.view.analysis.head_scores["induction"][0, 1]
        cell = screen.query_one("#heads-table").get_cell_at((0, 1))
        assert cell.style.bgcolor.triplet == light.ramp(score, light.attention).rich_style.bgcolor.triplet
        bars = [s.style.foreground for s in screen.query_one("#prediction-list").get_option_at_index(0).prompt.spans]
        assert light.attention in bars
        tail = screen.query_one(GeneratePanel).run_widget("clean").query_one(".run-text").render()
        assert tail.spans[0].style.foreground == light.muted


def test_fit_marks_a_cut_label():
    assert fit("·Elizabeth", 10) == "·Elizabeth"
    assert fit("·Elizabeth", 9) == "·Elizabe…"
    assert fit("<|endoftext|>", 1) == "…"


def test_token_labels_make_boundaries_visible():
    assert token_label(" walked") == "·walked"
    assert token_label("\n\n") == "↵↵"
    assert token_label("\tx\r") == "⇥x␍"
    assert token_label("<|endoftext|>", is_bos=True) == "‹bos›"
    assert token_label("a\x1b[2Jb\x9b") == "a␛[2Jb\ufffd"
    assert token_label("") == "∅"
    assert printable("line one\nline\x07 two") == "line one\nline␇ two"


def test_characters_cut_across_tokens_are_joined_on_the_last():
    pieces = [b"\xf0\x9f", b"\x98\x80", " caf", b"\xc3", b"\xa9!"]
    assert token_labels(pieces) == ["‹f0 9f›", "😀", "·caf", "‹c3›", "é!"]
    pieces = ["<|endoftext|>", b"\xe2", b"\x80", b"\x9c\n"]
    assert token_labels(pieces, bos=True) == ["‹bos›", "‹e2›", "‹80›", "“↵"]
    # bytes that complete nothing stay marks; a token alone shows its bytes
    assert token_labels([b"\xa9 \xe2", "x", b"\xff"]) == ["‹a9›·‹e2›", "x", "‹ff›"]
    assert token_label(b"\xe2\x80") == "‹e2 80›" and token_label(b" \xf0") == "·‹f0›"
    assert fit("日本語", 4) == "日 …" and pad("日本", 6) == "日本  "


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
def test_color_ramps_stay_legible(theme):
    app = App()  # only the theme's variables are needed
    app.theme = theme
    palette = Palette.from_theme(app.get_css_variables())
    for hot in (palette.loss, palette.attention, palette.feature, palette.selection):
        for value in np.linspace(0, 1, 11):
            style = palette.ramp(value, hot)
            assert _contrast(style.foreground, style.background) >= 4.5
    # NaN (an infinite activation over an infinite maximum) crashed the dashboard's screen
    assert palette.ramp(float("nan"), palette.feature).background == palette.ramp(0.0, palette.feature).background


def _contrast(a, b) -> float:
    """WCAG contrast ratio of two colors."""
    def luminance(c):
        channels = [x / 255 for x in (c.r, c.g, c.b)]
        lin = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in channels]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_run_tui_reports_a_bad_model_path_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        run_tui(model_path=tmp_path / "nowhere")
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("tinymech tui: ") and err.count("\n") == 1


def test_run_tui_rejects_an_sae_that_does_not_fit(model_dir, tmp_path, capsys):
    wrong = build_sae_dir(tmp_path / "wide-sae", d_in=32)
    with pytest.raises(SystemExit) as exit:
        run_tui(model_path=model_dir, sae_paths=[wrong])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "d_in is 32" in err and err.count("\n") == 1
