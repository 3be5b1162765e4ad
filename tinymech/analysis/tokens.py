"""Answer tokens given as strings or ids, and token labels for tables."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidTokensError


def token_id(model, token) -> int:
    """The id of one token, given as an id or as a string that is exactly one
    token (mind the leading space: " Paris", not "Paris")."""
    if isinstance(token, (int, np.integer)):
        if not 0 <= int(token) < model.cfg.d_vocab:
            raise InvalidTokensError(f"token id {int(token)} is outside the vocabulary [0, {model.cfg.d_vocab})")
        return int(token)
    if isinstance(token, str):
        return model.to_single_token(token)
    raise InvalidTokensError(f"a token is a string or an integer id, got {type(token).__name__}")


def token_ids(model, tokens) -> np.ndarray:
    """[n] int64 ids of a token, or of a sequence of tokens (strings or ids)."""
    if isinstance(tokens, (str, int, np.integer)):
        tokens = [tokens]
    return np.array([token_id(model, t) for t in np.asarray(tokens, dtype=object).reshape(-1)], dtype=np.int64)


def is_single_token(model, text: str) -> bool:
    return model.to_tokens(text, prepend_bos=False).shape[1] == 1
