"""What train_sae reads: an ActivationStore (or its folder) or plain arrays, behind one
small interface (n_tokens, d_in, d_out, meta, batches, rows, holdout_tokens), and
which tokens are held out for evaluation."""
from __future__ import annotations

import hashlib
import os

import numpy as np

from ..errors import SAEInputError, array_of, whole_number
from .activations import ActivationStore, cut_into

MAX_HOLDOUT_TOKENS = 32768


def as_activations(acts):
    """An ActivationStore, a store's folder, an array [n, d_in] or a pair (x [n, d_in], y [n, d_out])
    (a tuple, or a list of two 2-d arrays)."""
    if isinstance(acts, PlannedActivations):
        return acts
    if isinstance(acts, ActivationStore):
        return StoreActivations(acts)
    if isinstance(acts, (str, os.PathLike)):
        if os.fspath(acts) in ("", b""):  # Path("") is the current folder
            raise SAEInputError('acts="" names no activation store: give its folder, or the activations')
        return StoreActivations(ActivationStore.open(acts))
    if isinstance(acts, tuple) and len(acts) == 2 or _is_pair(acts):
        return ArrayActivations(*acts)
    return ArrayActivations(acts)


def _is_pair(acts) -> bool:
    """A list [x, y] of two 2-d arrays (a transcoder's), not a list of two rows."""
    if not (isinstance(acts, list) and len(acts) == 2):
        return False
    return all(array_of(a, "activations", SAEInputError).ndim == 2 for a in acts)


def holdout_split(data, holdout: int | None) -> tuple[int, int]:
    """(training tokens, held-out tokens): the held-out ones are the last, whole token rows for a store."""
    if holdout is None:
        holdout = min(data.n_tokens // 10, MAX_HOLDOUT_TOKENS)
    holdout = data.round_holdout(whole_number(holdout, "holdout", 0))
    if holdout >= data.n_tokens:
        raise SAEInputError(f"holding out {holdout} of {data.n_tokens} tokens leaves none to train on")
    return data.n_tokens - holdout, holdout


class PlannedActivations:
    """Activations yet to be collected, n_tokens rows at hook (and hook_out): what train_sae can
    check of a run before the collection, which takes long (tinymech.sae.train.check_training)."""

    def __init__(self, n_tokens: int, d_in: int, d_out: int | None = None, hook: str | None = None,
                 hook_out: str | None = None):
        self.n_tokens, self.d_in, self.d_out = n_tokens, d_in, d_out
        self.meta = {"hook": hook, "hook_out": hook_out}

    def round_holdout(self, tokens: int) -> int:
        # a store rounds up to whole rows, which only the collection knows: what is refused here is
        # refused whatever the rows, and the store is checked again when it is trained on
        return tokens

    def identity(self) -> str:
        return f"activations to collect ({self.n_tokens} tokens)"


class ArrayActivations:
    """Activations given as arrays (float32 rows); shuffled batches by a seeded permutation."""

    def __init__(self, x, y=None):
        self.x = _rows_of(x, "activations")
        self.y = None if y is None else _rows_of(y, "output activations")
        if self.y is not None and len(self.y) != len(self.x):
            raise SAEInputError(f"{len(self.x)} input rows but {len(self.y)} output rows")
        self.n_tokens, self.d_in = self.x.shape
        self.d_out = None if self.y is None else self.y.shape[1]
        self.meta = {}

    def round_holdout(self, tokens: int) -> int:
        return tokens

    def rows(self, start: int, stop: int):
        return self.x[start:stop], None if self.y is None else self.y[start:stop]

    def batches(self, batch_size: int, seed: int = 0, start_token: int = 0, holdout: int = 0):
        """Pass after pass over rows [0, n_tokens - holdout), each a permutation of its own (seed, pass),
        from position start_token of that endless stream (as ActivationStore.batches)."""
        n = self.n_tokens - holdout

        def passes():
            epoch, offset = divmod(start_token, n)
            while True:
                yield np.random.default_rng([seed, epoch]).permutation(n)[offset:]
                epoch, offset = epoch + 1, 0

        for rows in cut_into(passes(), batch_size):
            rows = np.sort(rows)
            yield self.x[rows], None if self.y is None else self.y[rows]

    def identity(self) -> str:
        """The arrays' shapes and a hash of their first and last rows (a resumed run checks it)."""
        digest = hashlib.sha256()
        for a in (self.x, self.y):
            if a is not None:
                digest.update(str(a.shape).encode())
                digest.update(a[:64].tobytes())
                digest.update(a[-64:].tobytes())
        return f"arrays {list(self.x.shape)}, sha256 {digest.hexdigest()[:16]}"

    def holdout_tokens(self, n_train: int):
        return None

    def describe_token(self, i: int) -> str:
        return f"row {i}"


class StoreActivations:
    """An ActivationStore: batches and rows come from it; the held-out tokens are its last token rows."""

    def __init__(self, store: ActivationStore):
        self.store = store
        self.n_tokens, self.d_in, self.d_out = store.n_tokens, store.d_in, store.d_out
        self.meta = store.meta

    def _kept(self) -> np.ndarray:
        """[rows, context] bool: the token positions that gave an activation (not excluded), in order."""
        tokens = np.asarray(self.store.tokens)
        return ~np.isin(tokens, np.asarray(self.meta.get("excluded_token_ids", []), dtype=np.int64))

    def _last_rows(self, tokens: int) -> tuple[int, int]:
        """(rows, their activations): the fewest last token rows holding at least `tokens` activations."""
        tail = np.cumsum(self._kept().sum(1)[::-1])
        rows = min(int(np.searchsorted(tail, tokens)) + 1, len(tail))
        return rows, int(tail[rows - 1])

    def round_holdout(self, tokens: int) -> int:
        """Up to whole rows: the activations of the fewest last rows holding at least `tokens`."""
        return self._last_rows(tokens)[1] if tokens else 0

    def rows(self, start: int, stop: int):
        return self.store.rows(start, stop)

    def identity(self) -> str:
        m = self.meta
        return f"store of {m.get('model')} {m.get('hook')} {m.get('hook_out')}, {self.n_tokens} tokens, " \
               f"tokenizer {str(m.get('tokenizer_sha256'))[:16]}, corpus {m.get('corpus')}"

    def describe_token(self, i: int) -> str:
        """Token i of the store: which text row and position it came from."""
        kept = self._kept()
        row, position = np.unravel_index(np.flatnonzero(kept.reshape(-1))[i], kept.shape)
        return f"token {i} of {self.store.folder} (text row {row}, position {position})"

    def batches(self, batch_size: int, seed: int = 0, start_token: int = 0, holdout: int = 0):
        return self.store.batches(batch_size, seed=seed, start_token=start_token, holdout=holdout)

    def holdout_tokens(self, n_train: int):
        """The token rows whose activations are n_train onwards."""
        rows = self._last_rows(self.n_tokens - n_train)[0]
        return np.asarray(self.store.tokens[-rows:], dtype=np.int64)


def nonfinite_error(data) -> SAEInputError:
    """An SAEInputError naming the first token whose activations hold NaN or infinity (a scan, chunk by chunk)."""
    chunk = 65536
    for start in range(0, data.n_tokens, chunk):
        for name, part in zip(("input", "output"), data.rows(start, min(start + chunk, data.n_tokens))):
            if part is None:
                continue
            bad = np.flatnonzero(~np.isfinite(part).all(axis=1))
            if len(bad):
                where = data.describe_token(start + int(bad[0]))
                return SAEInputError(f"the {name} activations hold NaN or infinity at {where}: the model "
                                     "produced them there (or the store is damaged); nothing was trained on them")
    return SAEInputError("the activations hold NaN or infinity")


def _rows_of(a, what: str) -> np.ndarray:
    a = array_of(a, what, SAEInputError)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise SAEInputError(f"{what} must be a non-empty array [tokens, width], got shape {list(a.shape)}")
    if not np.issubdtype(a.dtype, np.floating):
        raise SAEInputError(f"{what} must be floating point, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)
