"""The logit lens at the selected position: the residual stream after each
layer read through the final LayerNorm and unembedding, top tokens per row."""
from __future__ import annotations

import re

from rich.cells import cell_len
from textual.content import Content
from textual.style import Style

from ..display import Palette, fit, pad, prob, token_label
from ..view import View
from .panel import TextPanel

MAX_SHOWN = 8
LABEL_WIDTH = 9
CELL = LABEL_WIDTH + 5  # label, a space, the probability (".12"), a space
ANSWER_WIDTH = 6 + 1 + 3 + 2  # the followed token's rank ("#12345"), a space, its probability, a gap


def row_name(label: str) -> str:
    """'0_pre' -> 'embed', '1_mid' -> 'L1 attn' (after its attention), '1_post' -> 'L1 mlp' (after the whole layer)."""
    m = re.fullmatch(r"(\d+)_(pre|mid|post)", label)
    if m is None:
        return label
    layer, where = int(m.group(1)), m.group(2)
    return {"pre": f"L{layer} in" if layer else "embed", "mid": f"L{layer} attn", "post": f"L{layer} mlp"}[where]


class LogitLensPanel(TextPanel):
    TITLE = "Logit lens"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.border_subtitle = "highlighted: followed  underlined: model's top token"

    def body(self, view: View) -> Content:
        a = view.analysis
        if a is None:
            return Content("")
        i = view.selected
        followed, followed_label, why = view.followed()
        self.border_title = Content(f"Logit lens @ {i} · following {followed_label} ({why})")  # a token: no markup
        palette = Palette.from_theme(self.app.theme_variables)
        muted = Style(foreground=palette.muted)
        final = int(a.top_ids[i, 0])
        lens = a.lens_at(i, followed)
        names = [row_name(label) for label in a.lens_labels]
        width = max(len(n) for n in names) + 2
        shown = max(1, min(MAX_SHOWN, (self.scrollable_content_region.width - width - ANSWER_WIDTH) // CELL))
        # a column for the followed token (its rank and probability per row), then the top tokens
        head = fit(followed_label, ANSWER_WIDTH - 2)
        lines = [Content.assemble(" " * width, (head, palette.selected), " " * (ANSWER_WIDTH - cell_len(head)),
                                  ("top tokens", muted))]
        for row, name in enumerate(names):
            rank = int(lens.answer_ranks[row])
            parts: list[Content | str] = [
                Content.styled(name.ljust(width), muted),
                Content.styled(pad(f"#{rank:<5} {prob(lens.answer_probs[row])}", ANSWER_WIDTH), Style(bold=rank == 1)),
            ]
            for tid, text, p in list(zip(lens.ids[row], lens.tokens[row], lens.probs[row]))[:shown]:
                tid = int(tid)
                style = palette.selected if tid == followed else Style(bold=True, underline=True) if tid == final else Style()
                label = fit(token_label(text), LABEL_WIDTH)
                parts += [Content.styled(label, style), " " * (LABEL_WIDTH - cell_len(label)), f" {prob(p)} "]
            lines.append(Content.assemble(*parts))
        return Content("\n").join(lines)
