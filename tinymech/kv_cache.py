"""KVCache: the handle on a core KV cache that model.new_cache() gives, with
its arguments checked and the core's refusals raised as tinymech's errors."""
from __future__ import annotations

import numpy as np

from . import _core
from .errors import whole_number
from .errors import ContextLengthError, InvalidInputError


class KVCache:
    """Keys and values of the positions a model has run, for decoding:
    model.forward(tokens, cache=cache) appends to it. reset() empties it,
    truncate(n) keeps its first n positions, reserve(positions) makes room up
    front, fork() copies it. Safe to share between threads (they take turns)."""

    def __init__(self, core: _core.KVCache):
        self._core = core

    @property
    def batch(self) -> int:
        return self._core.batch

    @property
    def n_past(self) -> int:
        """Positions held."""
        return self._core.n_past

    @property
    def capacity(self) -> int:
        """Positions there is room for without growing."""
        return self._core.capacity

    @property
    def n_ctx(self) -> int:
        return self._core.n_ctx

    @property
    def left_padding(self) -> np.ndarray:
        """[batch] int64: each row's padding before its first real token, which later
        calls keep masking (a padded first call sets it; truncate shortens it)."""
        rows = self._core.left_padding
        if rows:
            return np.asarray(rows, dtype=np.int64)
        try:  # none padded: a zero per row, of a batch that may have been declared far beyond memory
            return np.zeros(self.batch, dtype=np.int64)
        except MemoryError:
            raise InvalidInputError(f"the left padding of a cache of batch {self.batch} is more than memory can "
                                    "hold (none of its rows is padded)") from None

    def reset(self) -> None:
        self._core.reset()

    def truncate(self, n: int) -> None:
        """Keep the first n positions (0 <= n <= n_past)."""
        n = whole_number(n, "n", 0)
        if n > self.n_past:  # checked here for numbers past int64; the core checks again, holding the cache
            raise InvalidInputError(f"cannot truncate a cache of {self.n_past} positions to {n}")
        try:
            self._core.truncate(n)
        except IndexError as e:  # another thread shortened it meanwhile
            raise InvalidInputError(str(e)) from None

    def reserve(self, positions: int) -> None:
        """Make room for this many positions now (no regrowth while decoding up to them)."""
        positions = whole_number(positions, "positions", 0)
        if positions > self.n_ctx:
            raise ContextLengthError(f"a cache of {positions} positions exceeds the context length {self.n_ctx}")
        try:
            self._core.reserve(positions)
        except MemoryError as e:  # the sizes overflow (SizeOverflow) or the allocation failed
            detail = f" ({e})" if isinstance(e, _core.SizeOverflow) else ""
            raise ContextLengthError(f"a KV cache of {positions} positions for a batch of {self.batch} is more "
                                     f"than memory can hold{detail}") from None

    def fork(self) -> KVCache:
        """A copy that continues on its own."""
        return KVCache(self._core.fork())
