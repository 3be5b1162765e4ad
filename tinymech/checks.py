"""Argument checks shared by the Python layer: a whole number is a whole
number (not a bool, not 2.5 quietly made 2), a number is one a float holds."""
from __future__ import annotations

import numbers

import numpy as np

from .errors import InvalidInputError


# The largest integer the core's int64 arguments take.
CORE_INT_MAX = 2**63 - 1


def whole_number(value, what: str, minimum: int | None = None, error=InvalidInputError,
                 maximum: int | None = None) -> int:
    """value as an int; `error` naming `what` unless it is an integer (numpy's
    included, bools not) of at least `minimum` and at most `maximum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{what} must be a whole number, not {value!r}")
    if minimum is not None and value < minimum:
        raise error(f"{what} must be >= {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise error(f"{what} must be <= {maximum}, not {value}")
    return int(value)


def real_number(value, what: str, error=InvalidInputError) -> float:
    """value as a float; `error` naming `what` unless it is a number a float
    can hold (numpy's and 0-d arrays included; bools and strings not)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise error(f"{what} must be a number, not {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise error(f"{what} must be a number that a float can hold, not {value!r}") from None
