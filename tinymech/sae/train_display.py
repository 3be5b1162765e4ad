"""What a training run shows while it runs: on a terminal a live panel (rich, which
textual brings) redrawn a few times a second; elsewhere (a log, a pipe) a line at
each tenth of the run. progress may also be a function progress(tokens_done, total,
stats) of the caller's, or False for silence."""
from __future__ import annotations

import sys
import time

from ..errors import InvalidInputError
from ..progress import _clock
from ..text import printable  # one clock format for every progress line

REDRAW_S = 0.25


class TrainingDisplay:
    def __init__(self, total: int, progress=True, stream=None):
        if progress not in (True, False, None) and not callable(progress):
            raise InvalidInputError(f"progress must be True, False or a function progress(done, total, stats), "
                                    f"not {progress!r}")
        self.total = total
        self.callback = progress if callable(progress) else None
        self.on = progress is True
        self.stream = stream or sys.stderr
        self.live = None
        self.last_draw = float("-inf")
        self.last_tenth = -1
        if self.on and getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.live import Live
            self.live = Live(console=Console(file=self.stream), refresh_per_second=4, transient=False)
            self.live.start()

    def update(self, done: int, seconds: float, stats: dict, d_sae: int) -> None:
        if self.callback is not None:
            self.callback(done, self.total, stats)
        if not self.on:
            return
        fields = _fields(done, self.total, seconds, stats, d_sae)
        if self.live is not None:
            now = time.monotonic()
            if now - self.last_draw >= REDRAW_S or done >= self.total:
                self.live.update(_panel(fields))
                self.last_draw = now
            return
        tenth = 10 * done // max(self.total, 1)
        if tenth > self.last_tenth:
            self.last_tenth = tenth
            self.message("  ".join(f"{k} {v}" for k, v in fields.items()))

    def message(self, text: str) -> None:
        if not self.on:
            return
        text = printable(text)  # paths and names from files and callers
        if self.live is not None:
            self.live.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def summary(self, metrics: dict) -> None:
        keys = ("explained_variance", "l0", "dead_features", "dense_features", "ce_loss_score", "delta_lm_loss")
        shown = [f"{k} {metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float))]
        self.message("trained: " + "  ".join(shown))

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def _fields(done: int, total: int, seconds: float, stats: dict, d_sae: int) -> dict:
    rate = done / seconds if seconds > 0 else float("nan")
    left = (total - done) / rate if rate > 0 else float("nan")
    n_dead = stats.get("n_dead", 0)
    return {
        "tokens": f"{done:,}/{total:,}",
        "loss": f"{stats.get('loss', float('nan')):.4g}",
        "L0": f"{stats.get('l0', float('nan')):.1f}",
        "EV": f"{stats.get('explained_variance', float('nan')):.3f}",
        "dead": f"{100 * n_dead / max(d_sae, 1):.1f}%",
        "lr": f"{stats.get('lr', float('nan')):.2e}",
        "tok/s": f"{rate:,.0f}",
        "ETA": _clock(left) if left != float("inf") else "?",
    }


def _panel(fields: dict):
    from rich.table import Table
    table = Table(title="training", show_header=True, header_style="bold")
    for key in fields:
        table.add_column(key, justify="right")
    table.add_row(*fields.values())
    return table

