"""A feature's dashboard as terminal text (tinymech feature SAE 781): what it shows, and that
nothing from a file reaches the terminal raw."""
from __future__ import annotations

import dataclasses

import numpy as np

from dashboard_factory import synthetic_dashboards
from tinymech.sae.dashboards.render import dashboard_text, sparkline


def test_the_dashboard_shows_everything():
    dash = synthetic_dashboards(n_features=8, n_rows=12, context=16)
    d = dataclasses.replace(dash[0], label="' the'", label_source="auto")
    text = dashboard_text(d, labels={1: "cats"})
    assert text.splitlines()[0] == "feature #0: ' the' (auto)"
    assert f"density {d.density:.4g} ({d.count} of {d.n_tokens} tokens)" in text
    assert f"max {d.max_activation:.4g}" in text and f"mean {d.mean_activation:.4g}" in text
    assert sparkline(d.hist_counts) in text
    for c in d.top_contexts:
        assert f"{c.value:9.3f}  " in text
    assert "« the»" in text
    for i in d.intervals:
        assert f"{i.low:.3g} to {i.high:.3g}: {i.count} tokens" in text
    assert "promotes:   ' the' +3.000  ' cat' +2.000" in text and "suppresses: ' sat' -3.000" in text
    assert "active with: #1 cats (1 tokens)" in text
    assert str(dash[0]).startswith("feature #0\n")  # FeatureDashboard's str is this text


def test_user_labels_and_notes_are_marked():
    d = dataclasses.replace(synthetic_dashboards()[1], label="cats", label_source="user", note="see row 3")
    lines = dashboard_text(d).splitlines()
    assert lines[0] == "feature #1: cats (yours)" and "note: see row 3" in lines


def test_a_dead_feature():
    text = dashboard_text(synthetic_dashboards(dead=(2,))[2])
    assert "dead feature" in text and "top contexts" not in text


def test_nothing_from_a_file_reaches_the_terminal_raw():
    # the factory's vocabulary has a token with an ESC sequence, feature 14 fires on it
    dash = synthetic_dashboards(n_features=16, n_rows=12, context=16)
    d = dataclasses.replace(dash[14], label="\x1b]0;title\x07 evil\nlabel\x9b", label_source="user",
                            note="\x1b[2Jclear\rme")
    text = dashboard_text(d, labels={15: "\x1b[31mred\x00"})
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text and "\r" not in text
    assert "\x00" not in text
    assert "␛[31mred" in text and "evil␊label" in text  # shown, as pictures of the controls
    assert all(ord(ch) >= 32 for ch in text.replace("\n", ""))


def test_lines_fit_the_width():
    dash = synthetic_dashboards(n_features=8, n_rows=12, context=64, before=40, after=20, n_bins=200)
    d = dataclasses.replace(dash[0], label="x" * 300, label_source="auto")
    for width in (40, 100):
        text = dashboard_text(d, width=width)
        assert max(len(line) for line in text.splitlines()) <= width
        assert "«" in text  # the peak stays in view when a context is cut


def test_sparkline():
    assert sparkline(np.array([0, 1, 4, 16])) == " ▂▄█"
    assert sparkline(np.zeros(3)) == "   " and sparkline(np.zeros(0)) == ""
