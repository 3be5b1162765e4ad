"""Choosing the next token from logits: greedy, temperature, top-k, top-p."""
from __future__ import annotations

import numpy as np

from . import _core


def sample_next(logits: np.ndarray, temperature: float, top_k, top_p, rng: np.random.Generator) -> np.ndarray:
    """One token id per row of logits [batch, d_vocab]."""
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if top_k is not None and top_k < 1:
        raise ValueError("top_k must be >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    if temperature == 0:
        return logits.argmax(-1).astype(np.int64)
    # the draw runs in the core; the randomness comes from rng, so a seed reproduces it
    return _core.sample(np.ascontiguousarray(logits, dtype=np.float32), float(temperature), int(top_k or 0),
                        float(1.0 if top_p is None else top_p), rng.random(logits.shape[0]))
