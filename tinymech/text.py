"""Text from files (a model's vocabulary, its name and config, SAE labels) made
safe to show: every terminal and widget output goes through `printable`."""
from __future__ import annotations

import functools

# C0 controls (ESC, BEL, CR, backspace, ...) show as their Unicode pictures
# (␛, ␇, ␍, ␈); DEL, the C1 controls (U+009B is a one-character CSI) and lone
# surrogates (bytes that were not UTF-8) show as U+FFFD.
_UNSAFE = {code: 0x2400 + code for code in range(32)}
_UNSAFE.update(dict.fromkeys([0x7F, *range(0x80, 0xA0), *range(0xD800, 0xE000)], 0xFFFD))


@functools.lru_cache(maxsize=None)
def _table(keep: str) -> dict[int, int]:
    return {code: to for code, to in _UNSAFE.items() if chr(code) not in keep}


def printable(text: str, keep: str = "\n") -> str:
    """The text with its control characters visible and harmless, so that it
    cannot drive a terminal (retitle it, write the clipboard, clear or hide
    text); the characters in `keep` (by default the newline) stay, as does
    every other character: accents, CJK, emoji."""
    return text.translate(_table(keep))
