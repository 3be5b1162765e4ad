"""Argument checks shared by the Python layer: a whole number is a whole
number (not a bool, not 2.5 quietly made 2)."""
from __future__ import annotations

import numbers

from .errors import InvalidInputError


def whole_number(value, what: str, minimum: int | None = None, error=InvalidInputError) -> int:
    """value as an int; `error` naming `what` unless it is an integer (numpy's
    included, bools not) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{what} must be a whole number, not {value!r}")
    if minimum is not None and value < minimum:
        raise error(f"{what} must be >= {minimum}, not {value}")
    return int(value)
