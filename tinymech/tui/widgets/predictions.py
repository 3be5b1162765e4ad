"""Next-token predictions at the selected position, and where the token that
really comes next ranks among them. Enter on a prediction has the logit lens
follow it (again: back to the actual next token)."""
from __future__ import annotations

from textual.content import Content
from textual.style import Style
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from ..display import Palette, bar, fit, pad, token_label
from ..messages import AnswerPicked
from ..view import View
from .panel import ChoiceList, ListPanel

LABEL_WIDTH = (8, 20)  # a token's column, fit between these in the panel's width
BAR_WIDTH = 10  # at most; what is left of a narrow panel
NUMBERS_WIDTH = 3 + 7 + 2  # the rank before the token, the probability after it, the pick mark


class PredictionsPanel(ListPanel):
    TITLE = "Next token"
    SUBTITLE = "⏎ follow in lens"

    DEFAULT_CSS = """
    PredictionsPanel > OptionList { height: 1fr; padding: 0; }
    PredictionsPanel > OptionList, PredictionsPanel > OptionList:focus { border: none; }
    PredictionsPanel > #predictions-body { height: auto; }
    """

    def compose(self):
        yield ChoiceList(id="prediction-list")
        yield Static(id="predictions-body")

    def show(self, view: View) -> None:
        self.view = view
        a = view.analysis
        if a is None:
            return
        i = view.selected
        self.border_title = f"Next token @ {i}"
        palette = Palette.from_theme(self.app.theme_variables)
        self.query_one("#predictions-body", Static).update(self._actual(view, palette))
        key = (a.prompt, i, view.answer, self.app.theme, self.options.size.width)
        if key == self._shown:
            return
        self._shown = key
        options = self.options
        highlighted = options.highlighted
        options.clear_options()
        options.add_options([Option(line, id=str(rank)) for rank, line in enumerate(self._lines(view, palette))])
        options.highlighted = highlighted if highlighted is not None else 0

    def on_resize(self) -> None:
        self.show(self.view)  # labels are cut to the width

    def _lines(self, view: View, palette: Palette) -> list[Content]:
        a, i = view.analysis, view.selected
        actual = int(a.token_ids[i + 1]) if i + 1 < a.n_tokens else None
        picked = view.answer[0] if view.answer else None
        room = self.options.scrollable_content_region.width - NUMBERS_WIDTH
        width = min(max(room - BAR_WIDTH, LABEL_WIDTH[0]), LABEL_WIDTH[1])
        bar_width = min(max(room - width, 0), BAR_WIDTH)
        lines = []
        for rank, (tid, text, p) in enumerate(zip(a.top_ids[i], a.top_tokens[i], a.top_probs[i])):
            lines.append(Content.assemble(
                ("● " if int(tid) == picked else "  ", Style(foreground=palette.selection, bold=True)),
                (f"{rank + 1:>2} ", Style(foreground=palette.muted)),
                (pad(fit(token_label(text), width), width),
                 palette.selected if int(tid) == actual else Style(bold=rank == 0)),
                (f" {p:5.3f} ", Style()),
                (bar(p, bar_width), Style(foreground=palette.attention)),
            ))
        return lines

    @staticmethod
    def _actual(view: View, palette: Palette) -> Content:
        a, i = view.analysis, view.selected
        if i + 1 >= a.n_tokens:
            return Content.styled("actual: (end of prompt)", Style(foreground=palette.muted))
        return Content("\n").join([
            Content.assemble(("actual ", Style(foreground=palette.muted)), (a.labels[i + 1], palette.selected)),
            Content(f"rank {int(a.next_rank[i]) + 1}  p {a.next_prob[i]:.3f}  loss {a.losses[i + 1]:.2f}"),
        ])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        a, i, rank = self.view.analysis, self.view.selected, int(event.option.id)
        self.post_message(AnswerPicked(int(a.top_ids[i, rank]), token_label(a.top_tokens[i][rank])))
