"""The attribution panel driven through Textual's Pilot: `a` computes each head's attribution
for the prompt with the selected token swapped, or against a typed corrupted prompt; the grid
equals analysis.attribution_patch's on the same runs; Enter on a cell shows that head."""
from __future__ import annotations

import numpy as np
import pytest
from textual.widgets import Input

from tinymech import analysis
from tui_support import ready, settle
from tinymech.tui.screens.main import MainScreen
from tinymech.tui.widgets.attribution import AttributionPanel, share_text

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
SIZE = (120, 36)


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


def main_screen(app) -> MainScreen:
    return app.screen_stack[0]


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


async def test_a_swaps_the_selected_token_and_fills_the_grid(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        panel = screen.query_one(AttributionPanel)
        assert panel.map is None and "a: each head's attribution" in panel.query_one("#attribution-info").render().plain
        await pilot.press("left", "left", "a")  # token 7 of 10: " Mr" → the model's likeliest other
        await settle(pilot)
        m, a = panel.map, screen.view.analysis
        assert m is not None, notifications(app)
        assert m.prompt == a.prompt and m.corrupted.startswith(f"@7 {a.labels[7]} → ")
        model = screen.backend.model
        corrupted = a.token_ids[None].astype(np.int64).copy()
        corrupted[0, 7] = next(int(t) for t in a.top_ids[6] if int(t) != int(a.token_ids[7]))
        correct = int(a.top_ids[-1, 0])
        last = model.forward(corrupted, logits="last")[0]
        wrong = next(int(t) for t in np.argsort(-last)[:2] if int(t) != correct)
        expected = analysis.attribution_patch(model, a.token_ids[None], corrupted, answers=[(correct, wrong)],
                                              prepend_bos=False)
        np.testing.assert_allclose(m.values, expected.values - expected.corrupted, atol=1e-6)
        assert (m.clean, m.corrupted_score) == pytest.approx((expected.clean, expected.corrupted))
        table = panel.table
        assert (table.row_count, len(table.columns)) == m.values.shape
        assert table.get_cell_at((1, 2)).plain == share_text(m.shares[1, 2])
        assert panel.border_title.startswith("Attribution · ")

        # Enter on a cell shows that head in the attention panel
        await pilot.press("7")
        assert table.has_focus
        await pilot.press("enter")
        await settle(pilot)
        cell = table.cursor_coordinate
        assert (screen.view.layer, screen.view.head) == (cell.row, cell.column)
        info = panel.query_one("#attribution-info").render().plain
        assert info.startswith("prompt vs @7 ") and f"L{cell.row} H{cell.column}: " in info


async def test_a_typed_corrupted_prompt_and_its_errors(app):
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = main_screen(app)
        panel = screen.query_one(AttributionPanel)
        await pilot.press("A")
        field = screen.query_one("#corrupted-prompt", Input)
        assert field.has_focus
        field.value = "Mr Darcy bowed to Elizabeth. Mr Darcy bowed low"  # one token more: refused
        await pilot.press("enter")
        await settle(pilot)
        assert panel.map is None
        assert any("tokens and the prompt" in n for n in notifications(app))
        field.value = "Mr Darcy bowed to Elizabeth. Mr Darcy walked"
        await pilot.press("A", "enter")
        await settle(pilot)
        assert panel.map is not None and panel.map.corrupted == field.value
        # the first token cannot be swapped: said so
        field.value = ""
        await pilot.press("home", "a")
        await settle(pilot)
        assert any("select a token after the first" in n for n in notifications(app))


def test_share_text_fits_four_cells():
    assert [share_text(v) for v in (0.0, 0.123, -0.03, 1.42, -2.0, 12.5)] == [
        "  0", "+.12", "-.03", "+1.4", "-2.0", "+12."]
