"""A feature's dashboard as text, for the terminal (tinymech feature SAE 781).

Every line goes through printable(): tokens, labels and notes come from files."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ...text import printable
from .labels import quoted

_BARS = " ▁▂▃▄▅▆▇█"


def sparkline(counts: np.ndarray) -> str:
    """One character per bin, its height the bin's count on a square-root scale (so that
    the long tail of a histogram stays visible next to its first bins)."""
    counts = np.sqrt(np.maximum(np.asarray(counts, float), 0.0))
    top = counts.max() if len(counts) else 0.0
    if not top:
        return " " * len(counts)
    levels = np.ceil(counts / top * (len(_BARS) - 1)).astype(int)
    return "".join(_BARS[level] for level in levels)


def _fit(text: str, width: int, keep_around: int | None = None) -> str:
    """text cut to width characters; around index keep_around (the peak) when given."""
    if len(text) <= width:
        return text
    if keep_around is None:
        return text[:width - 1] + "…"
    start = max(0, min(keep_around - width // 2, len(text) - width + 1))
    cut = text[start:start + width - 2]
    return ("…" if start else "") + cut + ("…" if start + width - 2 < len(text) else "")


def _context_line(c, width: int) -> str:
    peak = sum(len(printable(t)) for t in c.tokens[:c.peak])  # where the peak's mark sits in c.text()
    return f"{c.value:9.3f}  " + _fit(c.text(), width - 11, keep_around=peak)


def _wrapped(title: str, items: list[str], width: int) -> list[str]:
    """title and the items, as many per line as fit."""
    lines, line = [], title
    for item in items:
        if len(line) + len(item) + 2 > width and line.strip():
            lines.append(line)
            line = " " * len(title)
        line += item + "  "
    return lines + [line.rstrip()] if items else []


def _histogram(d, width: int) -> list[str]:
    counts = d.hist_counts
    group = -(-len(counts) // max(width - 4, 1))  # bins per character, so that the line fits
    if group > 1:
        counts = np.pad(counts, (0, -len(counts) % group)).reshape(-1, group).sum(axis=1)
    left, right = f"  {d.hist_edges[0]:.3g}", f"{d.hist_edges[-1]:.3g}"
    return ["activations (height: √count):", "  " + sparkline(counts),
            left + right.rjust(len(counts) + 2 - len(left))]


def dashboard_text(d, width: int = 100, labels: Mapping[int, str] | None = None, samples: int = 2) -> str:
    """The dashboard of one feature: its label, statistics, histogram, top contexts (the peak
    between «», with its activation), samples by activation interval, logit effects and the
    features active with it (with their labels when `labels` holds them)."""
    source = {"user": " (yours)", "auto": " (auto)"}.get(d.label_source, "")
    lines = [f"feature #{d.index}" + (f": {d.label}{source}" if d.label else ""),
             f"density {d.density:.4g} ({d.count} of {d.n_tokens} tokens)   max {d.max_activation:.4g}   "
             f"mean {d.mean_activation:.4g}"]
    if d.note:
        lines.append(f"note: {d.note}")
    if not d.count:
        lines.append("never active on this corpus (a dead feature)")
    if len(d.hist_counts) and d.hist_counts.sum():
        lines += [""] + _histogram(d, width)
    if d.top_contexts:
        lines += ["", "top contexts:"] + [_context_line(c, width) for c in d.top_contexts]
    for interval in reversed(d.intervals):
        lines += ["", f"{interval.low:.3g} to {interval.high:.3g}: {interval.count} tokens"]
        lines += [_context_line(c, width) for c in interval.contexts[:samples]]
    if d.promoted or d.suppressed:
        lines.append("")
    for title, pairs in (("promotes:   ", d.promoted), ("suppresses: ", d.suppressed)):
        lines += _wrapped(title, [f"{quoted(printable(t, keep=''))} {v:+.3f}" for t, v in pairs], width)
    if d.cooccurring:
        labels = labels or {}
        named = [f"#{g}" + (f" {labels[g]}" if labels.get(g) else "") + f" ({n} tokens)" for g, n in d.cooccurring]
        lines += [""] + _wrapped("active with: ", [printable(n, keep="") for n in named], width)
    return "\n".join(_fit(printable(line, keep=""), width) for line in lines)
