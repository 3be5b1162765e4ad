"""Snapshots (pytest-textual-snapshot) of the TUI's main views on a seeded
random model. After an intended change of the look, review the new pictures
and accept them with `pytest tests/tui/test_tui_snapshots.py --snapshot-update`."""
from __future__ import annotations

import pytest
from textual.widgets import Input

from tui_support import settle

pytestmark = pytest.mark.slow


def after(*keys: str):
    """A run_before that presses the keys, waits for the model work to finish,
    and removes what moves or fades (cursor blink, notifications)."""

    async def run_before(pilot) -> None:
        for input in pilot.app.query(Input):
            input.cursor_blink = False
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)
        pilot.app.clear_notifications()
        await pilot.pause()

    return run_before


def test_tiled_at_120x36(snap_compare, app):  # as it opens: in the prompt field
    assert snap_compare(app, terminal_size=(120, 36), run_before=after())


def test_tabs_at_80x24(snap_compare, app):
    assert snap_compare(app, terminal_size=(80, 24), run_before=after())


def test_attention_tab_on_an_earlier_token(snap_compare, app):
    keys = ["escape", "2", "left", "left", "right_square_bracket", "right_curly_bracket"]
    assert snap_compare(app, terminal_size=(80, 24), run_before=after(*keys))


def test_feature_coloring_and_steered_generation_at_160x48(snap_compare, app):
    keys = ["escape", "3", "down", "enter", "s", "s", "g"]
    assert snap_compare(app, terminal_size=(160, 48), run_before=after(*keys))


def test_heads_grid_by_previous_token_score(snap_compare, app):
    assert snap_compare(app, terminal_size=(80, 24), run_before=after("escape", "4", "d", "d"))


def test_help_screen(snap_compare, app):
    assert snap_compare(app, terminal_size=(100, 40), run_before=after("escape", "question_mark"))


def test_light_theme(snap_compare, app):
    assert snap_compare(app, terminal_size=(120, 36), run_before=after("escape", "t", "c", "c", "c"))


def test_feature_explorer_sorted_by_max_activation(snap_compare, dash_app):
    assert snap_compare(dash_app, terminal_size=(100, 30), run_before=after("escape", "f", "s"))


def test_feature_dashboard(snap_compare, dash_app):  # feature 14 fires on a token that is an escape sequence
    keys = ["escape", "f", "slash", "1", "4", "enter", "enter"]
    assert snap_compare(dash_app, terminal_size=(100, 30), run_before=after(*keys))


def test_saliency_coloring_on_an_earlier_token(snap_compare, app):
    keys = ["escape", "c", "c", "c", "c", "left", "left"]
    assert snap_compare(app, terminal_size=(120, 36), run_before=after(*keys))
