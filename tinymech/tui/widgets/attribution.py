"""Attribution patching in a layers × heads grid: how much patching each head's
output from the prompt into a corrupted variant would restore the prompt's top
prediction against the corrupted one's, as a share of the gap between the two
runs. `a` computes it (the field's corrupted prompt, or the selected token
swapped); Enter (or a click) on a cell shows that head in the attention panel."""
from __future__ import annotations

from rich.style import Style as RichStyle
from rich.text import Text
from textual import events
from textual.content import Content
from textual.containers import Vertical
from textual.widgets import DataTable, Input, Static

from ...text import printable
from ..backend import AttributionMap
from ..display import Palette
from ..messages import HeadSelected
from ..view import View
from .prompt import SafeInput

HINT = "a: each head's attribution, the selected token swapped (or the corrupted prompt typed above: A)"


def share_text(share: float) -> str:
    """A share of the gap in four cells: "+.12", "-.03", "+1.4", "  0"."""
    if abs(share) < 0.005:
        return "  0"
    if abs(share) >= 0.995:
        return f"{share:+.1f}"[:4]
    return f"{share:+.2f}".replace("0.", ".")


class AttributionPanel(Vertical):
    TITLE = "Attribution"

    DEFAULT_CSS = """
    AttributionPanel > Input { height: 1; border: none; padding: 0; }
    AttributionPanel > DataTable { height: auto; max-height: 1fr; width: auto; }
    AttributionPanel > #attribution-info { height: auto; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.border_title = self.TITLE
        self.border_subtitle = "a run  A corrupt  ⏎ head"
        self.view = View()
        self.map: AttributionMap | None = None

    def compose(self):
        yield SafeInput(placeholder="corrupted prompt (empty: swap the selected token)", id="corrupted-prompt")
        table = DataTable(id="attribution-table", cursor_type="cell", zebra_stripes=False, cell_padding=1)
        table.show_row_labels = True
        yield table
        yield Static(HINT, id="attribution-info")

    @property
    def table(self) -> DataTable:
        return self.query_one(DataTable)

    @property
    def corrupted_prompt(self) -> str:
        return self.query_one("#corrupted-prompt", Input).value

    def show(self, view: View) -> None:
        self.view = view
        self._describe()

    def show_map(self, attribution: AttributionMap) -> None:
        self.map = attribution
        shares = attribution.shares
        n_layers, n_heads = shares.shape
        table = self.table
        table.clear(columns=True)
        table.add_columns(*(f"H{h}".rjust(4) for h in range(n_heads)))
        for layer in range(n_layers):
            table.add_row(*self._cells(shares, layer), label=f"L{layer}")
        self.border_title = Content(f"Attribution · {attribution.correct} vs {attribution.wrong}")  # tokens: no markup
        self._describe()

    def _cells(self, shares, layer: int) -> list[Text]:
        palette = Palette.from_theme(self.app.theme_variables)
        top = max(float(abs(shares).max()), 1e-9)
        cells = []
        for share in shares[layer]:
            hot = palette.feature if share >= 0 else palette.loss
            style = palette.ramp(abs(share) / top, hot).rich_style
            cells.append(Text(share_text(share), style=style))
        return cells

    def _describe(self) -> None:
        """The lines under the grid: what was compared, and the cell under the cursor."""
        info = self.query_one("#attribution-info", Static)
        m, a = self.map, self.view.analysis
        if m is None:
            info.update(HINT)
            return
        lines = [f"prompt vs {printable(m.corrupted)}",  # typed or pasted: may hold escapes
                 f"logit diff {m.correct} − {m.wrong}: clean {m.clean:+.2f}, corrupted {m.corrupted_score:+.2f}"]
        cell = self.table.cursor_coordinate
        if 0 <= cell.row < m.values.shape[0] and 0 <= cell.column < m.values.shape[1]:
            lines.append(f"L{cell.row} H{cell.column}: {m.values[cell.row, cell.column]:+.3f} "
                         f"({m.shares[cell.row, cell.column]:+.0%} of the gap)")
        if a is not None and a.prompt != m.prompt:
            lines.append("for an earlier prompt: press a")
        info.update(Text("\n".join(lines), style=RichStyle()))

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        self._describe()

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        event.stop()
        self.post_message(HeadSelected(event.coordinate.row, event.coordinate.column))

    def on_mouse_up(self, event: events.MouseUp) -> None:
        row, column = event.style.meta.get("row", -1), event.style.meta.get("column", -1)
        if row >= 0 and column >= 0:
            self.post_message(HeadSelected(row, column))

