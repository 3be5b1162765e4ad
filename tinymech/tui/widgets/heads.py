"""A layers × heads grid of one detector score, to spot the heads worth a look;
Enter (or a click) on a cell selects that head for the attention panel."""
from __future__ import annotations

from rich.style import Style as RichStyle
from rich.text import Text
from textual import events
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Static

from ..backend import HEAD_SCORES
from ..display import Palette, prob
from ..messages import HeadSelected
from ..view import View


SHORT = {"previous_token": "prev", "induction": "ind", "duplicate_token": "dup"}


def score_name(score: str) -> str:
    return score.replace("_", "-")


class HeadsPanel(Vertical):
    TITLE = "Heads"

    DEFAULT_CSS = """
    HeadsPanel > DataTable { height: auto; max-height: 1fr; width: auto; }
    HeadsPanel > #head-info { height: auto; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.border_title = self.TITLE
        self.border_subtitle = "d score  ⏎ select"
        self.view = View()

    def compose(self):
        table = DataTable(id="heads-table", cursor_type="cell", zebra_stripes=False, cell_padding=1)
        table.show_row_labels = True
        yield table
        yield Static(id="head-info")

    @property
    def table(self) -> DataTable:
        return self.query_one(DataTable)

    def show(self, view: View) -> None:
        old, self.view = self.view, view
        a = view.analysis
        if a is None:
            return
        self.border_title = f"Heads · score: {score_name(view.score)}"
        scores = a.head_scores[view.score]
        n_layers, n_heads = scores.shape
        table = self.table
        if table.row_count != n_layers or len(table.columns) != n_heads:
            table.clear(columns=True)
            table.add_columns(*(f"H{h}".rjust(3) for h in range(n_heads)))
            for layer in range(n_layers):
                table.add_row(*self._cells(view, layer), label=f"L{layer}")
            table.move_cursor(row=view.layer, column=view.head, animate=False)
        else:
            for layer in range(n_layers):
                for head, cell in enumerate(self._cells(view, layer)):
                    table.update_cell_at(Coordinate(layer, head), cell)
            if (old.layer, old.head) != (view.layer, view.head):
                table.move_cursor(row=view.layer, column=view.head, animate=False)
        self._describe()

    def _cells(self, view: View, layer: int) -> list[Text]:
        palette = Palette.from_theme(self.app.theme_variables)
        scores = view.analysis.head_scores[view.score]
        cells = []
        for head, s in enumerate(scores[layer]):
            style = palette.ramp(s, palette.attention).rich_style
            if (layer, head) == (view.layer, view.head):
                style += RichStyle(bold=True, underline=True)
            cells.append(Text(prob(s), style=style))
        return cells

    def _describe(self) -> None:
        """The line under the grid: the cell under the cursor while the grid has
        the focus, else the head the attention panel shows."""
        a, view, table = self.view.analysis, self.view, self.table
        cell = table.cursor_coordinate if table.has_focus else Coordinate(view.layer, view.head)
        if a is None or not (0 <= cell.row < a.patterns.shape[0] and 0 <= cell.column < a.patterns.shape[1]):
            return
        values = "  ".join(f"{SHORT[s]} {prob(a.head_scores[s][cell.row, cell.column])}" for s in HEAD_SCORES)
        shown = (cell.row, cell.column) == (view.layer, view.head)
        where = "shown in Attention" if shown else "⏎ show in Attention"
        note = "\nshares of attention not on ‹bos›" if a.bos else ""
        self.query_one("#head-info", Static).update(f"L{cell.row} H{cell.column} {where}\n{values}{note}")

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        self._describe()

    def on_descendant_blur(self) -> None:
        """Leaving the grid puts its cursor back on the head the attention panel shows."""
        view = self.view
        self.table.move_cursor(row=view.layer, column=view.head, animate=False)
        self._describe()

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        event.stop()
        self.post_message(HeadSelected(event.coordinate.row, event.coordinate.column))

    def on_mouse_up(self, event: events.MouseUp) -> None:
        """One click on a cell selects its head (the table itself selects on a
        second click, and keeps the click event to itself)."""
        row, column = event.style.meta.get("row", -1), event.style.meta.get("column", -1)
        if row >= 0 and column >= 0:
            self.post_message(HeadSelected(row, column))
