"""The logit lens at the selected position: the residual stream after each
layer read through the final LayerNorm and unembedding, top tokens per row."""
from __future__ import annotations

import re

from rich.cells import cell_len
from textual.content import Content
from textual.style import Style

from ..display import Palette, fit, prob, token_label
from ..view import View
from .panel import TextPanel

MAX_SHOWN = 8
LABEL_WIDTH = 9
CELL = LABEL_WIDTH + 5  # label, a space, the probability (".12"), a space


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
        self.border_subtitle = "highlighted: actual next  underlined: model's top token"

    def body(self, view: View) -> Content:
        a = view.analysis
        if a is None:
            return Content("")
        i = view.selected
        self.border_title = f"Logit lens @ {i}"
        palette = Palette.from_theme(self.app.theme_variables)
        actual = int(a.token_ids[i + 1]) if i + 1 < a.n_tokens else None
        final = int(a.top_ids[i, 0])
        lens = a.lens_at(i)
        names = [row_name(label) for label in a.lens_labels]
        width = max(len(n) for n in names) + 2
        shown = max(1, min(MAX_SHOWN, (self.scrollable_content_region.width - width) // CELL))
        lines = []
        for row, name in enumerate(names):
            parts: list[Content | str] = [Content.styled(name.ljust(width), Style(foreground=palette.muted))]
            for tid, text, p in list(zip(lens.ids[row], lens.tokens[row], lens.probs[row]))[:shown]:
                tid = int(tid)
                style = palette.selected if tid == actual else Style(bold=True, underline=True) if tid == final else Style()
                label = fit(token_label(text), LABEL_WIDTH)
                parts += [Content.styled(label, style), " " * (LABEL_WIDTH - cell_len(label)), f" {prob(p)} "]
            lines.append(Content.assemble(*parts))
        return Content("\n").join(lines)
