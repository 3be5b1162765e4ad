"""A corpus as rows of tokens, and batches of them: TransformerLens's
tokenize_and_concatenate for plain texts, so that a loop over a text file
(capturing activations, collecting SAE statistics) needs no datasets library.

    rows = tm.tokenize_and_concatenate(model, open("book.txt").read().split("\\n\\n"), max_length=128)
    for batch in tm.batches(rows, batch_size=16, progress=True):
        _, cache = model.run_with_cache(batch, names_filter="blocks.1.mlp.hook_post", return_type=None)
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from .errors import whole_number
from .errors import InvalidInputError, NoTokenizerError
from .progress import progress_function


def tokenize_and_concatenate(model, texts: str | Iterable[str], max_length: int = 1024,
                             add_bos_token: bool = True) -> np.ndarray:
    """Rows [n, max_length] (int64) of the texts' tokens, one after the
    other with the EOS token between texts, each row starting with BOS when
    add_bos_token (then max_length - 1 text tokens per row). The last
    tokens that do not fill a whole row are dropped, as TransformerLens's
    tokenize_and_concatenate does; unlike it, each text is tokenized whole
    (it tokenizes the joined texts in 20 pieces cut at arbitrary characters)."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise NoTokenizerError("tokenize_and_concatenate needs a model with a tokenizer")
    if isinstance(texts, str):
        texts = [texts]
    max_length = whole_number(max_length, "max_length", 1 + bool(add_bos_token))
    if max_length > model.cfg.n_ctx:
        raise InvalidInputError(f"max_length {max_length} is longer than the model's context of {model.cfg.n_ctx}")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if add_bos_token and bos is None:
        raise InvalidInputError("this tokenizer has no BOS token: pass add_bos_token=False")
    ids: list[int] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(f"texts must be strings; item {i} is a {type(text).__name__}")
        if i and eos is not None:
            ids.append(eos)
        ids += tokenizer.encode(text)
    width = max_length - 1 if add_bos_token else max_length
    n = len(ids) // width
    rows = np.asarray(ids[: n * width], dtype=np.int64).reshape(n, width)
    if add_bos_token:
        rows = np.concatenate([np.full((n, 1), bos, dtype=np.int64), rows], axis=1)
    return rows


def batches(rows, batch_size: int, progress=None) -> Iterator[np.ndarray]:
    """Consecutive slices of rows [n, ...] with batch_size rows each (the
    last may have fewer). progress: True for a line on stderr, or a function
    progress(done_rows, total_rows) called after each batch is used."""
    rows = np.asarray(rows)
    batch_size = whole_number(batch_size, "batch_size", 1)
    report = progress_function(progress, label="rows")
    total = len(rows)
    for start in range(0, total, batch_size):
        yield rows[start : start + batch_size]
        if report is not None:
            report(min(start + batch_size, total), total)
