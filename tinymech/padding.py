"""Padded batches as TransformerLens reads them: the attention mask it makes of
padded tokens (its utils.get_attention_mask), and the per-row counts of padding
the core takes in its place (masked keys, positions counted from each row's first
real token). A mask is 1 for a real token and 0 for padding; tinymech takes padding
at either end of a row (left and right padding, as tokenizers give it), not zeros
between ones."""
from __future__ import annotations

import numpy as np

from .errors import InvalidInputError

SIDES = ("left", "right")


def mask_of_tokens(tokens: np.ndarray, pad_token_id: int | None, bos_token_id: int | None, prepend_bos: bool,
                   padding_side: str) -> np.ndarray:
    """[batch, pos] int64, as TransformerLens's get_attention_mask: the pad tokens at the
    start of each row ("left") or at its end ("right") are 0. Left padding before a BOS
    that is the pad token itself (GPT-2's): with prepend_bos the last of the leading
    pad tokens is that BOS and stays 1."""
    tokens = np.asarray(tokens)
    mask = np.ones(tokens.shape, dtype=np.int64)
    if pad_token_id is None:
        return mask
    real = tokens != pad_token_id
    if padding_side == "right":
        mask[np.cumsum(real[:, ::-1], axis=1)[:, ::-1] == 0] = 0
        return mask
    leading = np.cumsum(real, axis=1) == 0
    mask[leading] = 0
    if prepend_bos and bos_token_id == pad_token_id:
        # a row with no leading pad gives index -1 (its last token, 1 already), as in TransformerLens
        mask[np.arange(len(mask)), leading.sum(axis=1) - 1] = 1
    return mask


def checked_mask(mask, shape: tuple[int, int]) -> np.ndarray:
    """attention_mask as a [batch, pos] array of 0 and 1 (bools or integers, a [pos] one
    for a batch of one; numpy or torch), checked against the tokens' shape."""
    try:
        array = np.asarray(mask)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InvalidInputError(f"attention_mask must be an array of 0 and 1 [batch, pos]: {e}") from None
    if array.ndim == 1 and shape[0] == 1:
        array = array[None]
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise InvalidInputError(f"attention_mask must hold integers or bools (1: a real token, 0: padding), "
                                f"not dtype {array.dtype}")
    if array.shape != tuple(shape):
        raise InvalidInputError(f"attention_mask {list(array.shape)} must have the tokens' shape [batch, pos] "
                                f"{list(shape)}")
    if array.size and not np.isin(array, (0, 1)).all():
        bad = array[~np.isin(array, (0, 1))].flat[0]
        raise InvalidInputError(f"attention_mask holds {bad}: its entries are 1 (a real token) or 0 (padding)")
    return array.astype(np.int64)


def pad_counts(mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(left, right): each row's padding before its first and after its last real token,
    [batch] int64 each, from a checked mask; None when no row is padded."""
    if mask is None or mask.all():
        return None
    real = mask != 0
    empty = np.flatnonzero(~real.any(axis=1))
    if empty.size:
        raise InvalidInputError(f"row {empty[0]} of attention_mask is all padding (zeros): every row needs a "
                                "real token")
    left = real.argmax(axis=1)
    right = real[:, ::-1].argmax(axis=1)
    holes = np.flatnonzero(real.sum(axis=1) != mask.shape[1] - left - right)
    if holes.size:
        row = holes[0]
        raise InvalidInputError(f"row {row} of attention_mask has a 0 between 1s ({mask[row].tolist()}): tinymech "
                                "takes padding at the start or the end of a row (left or right padding), not inside it")
    return left.astype(np.int64), right.astype(np.int64)
