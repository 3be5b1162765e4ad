"""Progress of long jobs (patching sweeps, batches over a corpus): a function
progress(done, total) of the caller's, or progress=True for a line on stderr."""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from .errors import InvalidInputError

ProgressFn = Callable[[int, "int | None"], None]  # (done, total); total None: not known
BAR_WIDTH = 24
MIN_INTERVAL_S = 0.2  # between redraws on a terminal
LOG_INTERVAL_S = 30.0  # between lines in a log, when the total is not known


def progress_function(progress, label: str = "patching", unit: str | None = None,
                      start_done: int = 0) -> ProgressFn | None:
    """None, False: no reports; True: a ProgressLine on stderr (see it for unit
    and start_done); a function: itself."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return ProgressLine(sys.stderr, label, unit, start_done)
    if callable(progress):
        return progress
    raise InvalidInputError(f"progress must be True, False, None or a function progress(done, total), not {progress!r}")


class ProgressLine:
    """done/total with a bar, the time so far and an estimate of the time left.
    On a terminal one line is redrawn in place (at most every MIN_INTERVAL_S);
    elsewhere (a log file) a line is written at each tenth and at the end.
    unit: also show the rate, in units per second (e.g. "tokens").
    start_done: what was done before this line started (a resumed job):
    the rate and the time left count only what is done from here."""

    def __init__(self, stream: TextIO, label: str = "patching", unit: str | None = None, start_done: int = 0):
        self.stream = stream
        self.label = label
        self.unit = unit
        self.start_done = start_done
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last_draw = float("-inf")
        self.last_tenth = -1

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if total is None:  # not known in advance (a whole corpus): the count and rate, no bar
            if self.interactive or now - self.last_draw >= LOG_INTERVAL_S:
                if now - self.last_draw >= MIN_INTERVAL_S:
                    self.stream.write(("\r" if self.interactive else "") + self.line(done, total, now)
                                      + ("" if self.interactive else "\n"))
                    self.stream.flush()
                    self.last_draw = now
            return
        finished = done >= total
        if self.interactive:
            if finished or now - self.last_draw >= MIN_INTERVAL_S:
                self.stream.write("\r" + self.line(done, total, now) + ("\n" if finished else ""))
                self.stream.flush()
                self.last_draw = now
        else:
            tenth = 10 * done // max(total, 1)
            if tenth > self.last_tenth:
                self.stream.write(self.line(done, total, now) + "\n")
                self.stream.flush()
                self.last_tenth = tenth

    def line(self, done: int, total: int | None, now: float) -> str:
        elapsed = now - self.start
        if total is None:
            new = done - self.start_done
            rate = f", {new / elapsed:.0f} {self.unit}/s" if self.unit and new > 0 and elapsed > 0 else ""
            return f"{self.label} {done}{' ' + self.unit if self.unit else ''}, {_clock(elapsed)} elapsed{rate}"
        fraction = done / total if total else 1.0
        filled = round(fraction * BAR_WIDTH)
        elapsed = now - self.start
        new = done - self.start_done
        left = elapsed * (total - done) / new if new > 0 else float("nan")
        rate = f", {new / elapsed:.0f} {self.unit}/s" if self.unit and new > 0 and elapsed > 0 else ""
        return (f"{self.label} {done}/{total} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                f"{_clock(elapsed)} elapsed, {_clock(left)} left{rate}")


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing done yet
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"
