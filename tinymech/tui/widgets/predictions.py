"""Next-token predictions at the selected position, and where the token that
really comes next ranks among them."""
from __future__ import annotations

from textual.content import Content
from textual.style import Style

from ..display import Palette, bar, fit, pad, token_label
from ..view import View
from .panel import TextPanel

LABEL_WIDTH = (8, 20)  # a token's column, fit between these in the panel's width
BAR_WIDTH = 10  # at most; what is left of a narrow panel
NUMBERS_WIDTH = 3 + 7  # the rank before the token, the probability after it


class PredictionsPanel(TextPanel):
    TITLE = "Next token"

    def body(self, view: View) -> Content:
        a = view.analysis
        if a is None:
            return Content("")
        i = view.selected
        self.border_title = f"Next token @ {i}"
        palette = Palette.from_theme(self.app.theme_variables)
        actual = int(a.token_ids[i + 1]) if i + 1 < a.n_tokens else None
        room = self.scrollable_content_region.width - NUMBERS_WIDTH
        width = min(max(room - BAR_WIDTH, LABEL_WIDTH[0]), LABEL_WIDTH[1])
        bar_width = min(max(room - width, 0), BAR_WIDTH)
        lines = []
        for rank, (tid, text, p) in enumerate(zip(a.top_ids[i], a.top_tokens[i], a.top_probs[i])):
            label = pad(fit(token_label(text), width), width)
            is_actual = int(tid) == actual
            lines.append(Content.assemble(
                (f"{rank + 1:>2} ", Style(foreground=palette.muted)),
                (label, palette.selected if is_actual else Style(bold=rank == 0)),
                (f" {p:5.3f} ", Style()),
                (bar(p, bar_width), Style(foreground=palette.attention)),
            ))
        lines.append(Content(""))
        if actual is None:
            lines.append(Content.styled("actual: (end of prompt)", Style(foreground=palette.muted)))
        else:
            rank = int(a.next_rank[i])
            lines.append(Content.assemble(
                ("actual ", Style(foreground=palette.muted)),
                (a.labels[i + 1], palette.selected),
            ))
            lines.append(Content(f"rank {rank + 1}  p {a.next_prob[i]:.3f}  loss {a.losses[i + 1]:.2f}"))
        return Content("\n").join(lines)
