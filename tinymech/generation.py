"""Choosing the next token from logits: greedy, temperature, top-k, top-p."""
from __future__ import annotations

import math

import numpy as np

from . import _core
from .checks import real_number, whole_number
from .errors import InvalidInputError


def sampling_settings(temperature, top_k, top_p) -> tuple[float, int | None, float | None]:
    """generate's sampling arguments, checked: InvalidInputError names the first that is unusable."""
    temperature = real_number(temperature, "temperature")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InvalidInputError(f"temperature must be a finite number >= 0, not {temperature}")
    if top_k is not None:
        top_k = whole_number(top_k, "top_k", 1)
    if top_p is not None:
        top_p = real_number(top_p, "top_p")
        if not 0 < top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1], not {top_p}")
    return temperature, top_k, top_p


def sample_next(logits: np.ndarray, temperature: float, top_k, top_p, rng: np.random.Generator) -> np.ndarray:
    """One token id per row of logits [batch, d_vocab], with settings that
    sampling_settings accepts (a top_k past the vocabulary keeps every token)."""
    if temperature == 0:
        return logits.argmax(-1).astype(np.int64)
    # the draw runs in the core; the randomness comes from rng, so a seed reproduces it
    kept = 0 if top_k is None or top_k >= logits.shape[-1] else top_k
    return _core.sample(np.ascontiguousarray(logits, dtype=np.float32), float(temperature), kept,
                        float(1.0 if top_p is None else top_p), rng.random(logits.shape[0]))
