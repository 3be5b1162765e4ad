"""Reading logits row by row in the C++ core: the k largest entries and the
log-sum-exp (numpy's argpartition over a 50257-token vocabulary was as slow
as the unembedding that produced the logits)."""
from __future__ import annotations

import numpy as np

from . import _core
from .checks import whole_number
from .errors import InvalidInputError


def top_k(x, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices int64 [..., k], values float32 [..., k]) of the k largest
    entries of each row of x [..., n], largest first; equal values in index
    order (a stable descending sort's order); NaN counts as -inf."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    k = whole_number(k, "k")
    if x.ndim == 0:
        raise InvalidInputError("top_k needs an array with a last axis")
    if not 0 <= k <= x.shape[-1]:
        raise InvalidInputError(f"top_k needs 0 <= k <= {x.shape[-1]}, not {k}")
    return _core.top_k(x, k)


def log_sum_exp(x) -> np.ndarray:
    """log(sum(exp(x))) along the last axis, [...] float32; NaN where a row holds NaN or +inf."""
    return _core.log_sum_exp(np.ascontiguousarray(x, dtype=np.float32))
