"""The real command in a pseudo-terminal: `tinymech tui` (as `python -m tinymech tui`) started
with pexpect, its output replayed onto a small screen model, and the screen
read back for the prompt's tokens and the panel titles."""
from __future__ import annotations

import os
import re
import sys
import time

import pexpect
import pytest

from tui_support import PROMPT, build_model_dir, build_sae_dir

pytestmark = pytest.mark.slow

ROWS, COLS = 36, 120
# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), other two-byte escapes, or a run of text
_TOKEN = re.compile(r"\x1b\[([0-9;?<=>]*)([ -/]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[P^_][^\x1b]*\x1b\\"
                    r"|\x1b[()][0-9A-Za-z]|\x1b.|([^\x1b]+)")


class Screen:
    """Just enough of a terminal to replay Textual's output: cursor moves,
    erases and text; colors and modes are ignored."""

    def __init__(self, rows: int, cols: int):
        self.rows, self.cols = rows, cols
        self.cells = [[" "] * cols for _ in range(rows)]
        self.y = self.x = 0

    def feed(self, data: str) -> None:
        for m in _TOKEN.finditer(data):
            params, _, final, text = m.group(1), m.group(2), m.group(3), m.group(4)
            if text is not None:
                self._text(text)
            elif final is not None and not params.startswith("?"):
                self._csi([int(p) if p.isdigit() else 0 for p in params.split(";")], final)

    def _csi(self, args: list[int], final: str) -> None:
        first = args[0] if args and args[0] else 1
        if final in "Hf":
            row, col = (args + [1, 1])[:2]
            self.y, self.x = max(row, 1) - 1, max(col, 1) - 1
        elif final == "A":
            self.y = max(self.y - first, 0)
        elif final == "B":
            self.y = min(self.y + first, self.rows - 1)
        elif final == "C":
            self.x = min(self.x + first, self.cols - 1)
        elif final == "D":
            self.x = max(self.x - first, 0)
        elif final == "G":
            self.x = first - 1
        elif final == "d":
            self.y = first - 1
        elif final == "J" and args[0] == 2:
            self.cells = [[" "] * self.cols for _ in range(self.rows)]
        elif final == "K":
            self.cells[self.y][self.x:] = [" "] * (self.cols - self.x)

    def _text(self, text: str) -> None:
        for ch in text:
            if ch == "\r":
                self.x = 0
            elif ch == "\n":
                self.y = min(self.y + 1, self.rows - 1)
            elif ch == "\b":
                self.x = max(self.x - 1, 0)
            elif ch >= " ":
                if self.x < self.cols:
                    self.cells[self.y][self.x] = ch
                self.x += 1

    def text(self) -> str:
        return "\n".join("".join(row) for row in self.cells)


def test_the_command_shows_tokens_and_panels(tmp_path):
    model_dir = build_model_dir(tmp_path)
    sae_dir = build_sae_dir(tmp_path / "sae")
    # the same tinymech as this test process (installed or source tree), wherever the child starts
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), TERM="xterm-256color", COLUMNS=str(COLS), LINES=str(ROWS))
    child = pexpect.spawn(
        sys.executable, ["-m", "tinymech", "tui", "--model", str(model_dir), "--sae", str(sae_dir), PROMPT],
        env=env, cwd=str(tmp_path), dimensions=(ROWS, COLS), encoding="utf-8", codec_errors="replace",
    )
    output = ""
    wanted = [
        "‹bos› Mr ·Darcy ·bowed ·to ·Elizabeth . ·Mr ·Darcy ·bowed",
        "Tokens · color: loss", "Next token @ 9", "Attention · L0 H0", "Features @ 9",
        "Heads · score: induction", "Logit lens @ 9", "Generate · steer: off",
    ]
    try:
        deadline = time.monotonic() + 120
        shown = ""
        while time.monotonic() < deadline and not all(w in shown for w in wanted):
            try:
                output += child.read_nonblocking(65536, timeout=1)
            except pexpect.TIMEOUT:
                continue
            screen = Screen(ROWS, COLS)  # replayed from the start: a read may end inside an escape sequence
            screen.feed(output)
            shown = screen.text()
        assert all(w in shown for w in wanted), shown
        child.send("\x1b")  # Esc: out of the prompt field the app opens in, to the keys
        time.sleep(0.5)  # a lone ESC is a key only once no escape sequence follows it
        child.send("q")
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, shown
