"""Text plots and the `tinymech dynamics` command."""
import json

import numpy as np

from tinymech.cli import main
from tinymech.text import heatmap, line_chart


def test_line_chart_places_extremes():
    text = line_chart({"a": ([0, 1, 2], [1.0, 5.0, 3.0])}, width=20, height=5, title="T")
    lines = text.splitlines()
    assert lines[0] == "T"
    top, bottom = lines[1], lines[5]
    assert top.startswith("5 │") and bottom.startswith("1 │")
    assert top.index("•") - top.index("│") - 1 in (9, 10)  # the maximum sits at x=1, mid-width
    assert bottom.index("•") == bottom.index("│") + 1  # the minimum at x=0
    assert "• a" in lines[-1]


def test_heatmap_shades_by_value():
    text = heatmap(np.array([[0.0, 1.0], [0.5, np.nan]]), ["L0", "L1"], ["H0", "H1"], vmin=0, vmax=1)
    rows = text.splitlines()
    assert rows[0].split() == ["H0", "H1"]
    assert "██" in rows[1] and rows[1].startswith("L0")
    assert "▒▒" in rows[2]


def test_heatmap_diverging_is_blank_at_zero_and_shades_each_sign():
    text = heatmap(np.array([[-2.0, -1.0, 0.0, 1.0, 2.0, 0.1]]), ["L0"], list("abcdef"), diverging=True)
    row, scale = text.splitlines()[1:]
    assert [row[4 + 3 * c : 6 + 3 * c] for c in range(6)] == ["≡≡", "--", "  ", "▒▒", "██", "  "]
    assert scale.split() == ["scale:", "'≡'", "-2", "…", "'", "'", "0", "…", "'█'", "2"]
    # the scale is symmetric: the largest size of either sign is the full shade
    row = heatmap(np.array([[0.5, -1.0]]), ["L0"], ["a", "b"], diverging=True).splitlines()[1]
    assert row[4:6] == "▒▒" and row[7:9] == "≡≡"


def test_dynamics_command(tmp_path, capsys):
    records = [{"step": s, "train_loss": 5 - s / 100, "val_loss": 5.2 - s / 100, "rep_loss_first_half": 9.0,
                "rep_loss_second_half": 9.0 - s / 50, "induction_score": [[0.0, s / 200]],
                "prev_token_score": [[s / 300, 0.1]]} for s in (0, 100, 200)]
    (tmp_path / "training_dynamics.json").write_text(json.dumps({"records": records}))
    (tmp_path / "config.json").write_text("{}")
    assert main(["dynamics", "--model", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Loss" in out and "Induction scores at step 200" in out and "L0" in out
