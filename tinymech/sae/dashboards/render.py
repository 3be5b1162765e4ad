"""A feature's dashboard as text, for the terminal (tinymech feature).

(Stub: the labels helper writes the real module.)"""
from __future__ import annotations


def dashboard_text(d) -> str:
    lines = [f"feature {d.index}: {d.label or ''}",
             f"density {d.density:.4g}  max {d.max_activation:.3g}  mean {d.mean_activation:.3g}"]
    lines += [f"{c.value:8.3f}  {c.text()}" for c in d.top_contexts]
    return "\n".join(lines)
