"""Choosing the next token from logits: greedy, temperature, top-k, top-p."""
from __future__ import annotations

import numpy as np


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
    out = np.empty(logits.shape[0], dtype=np.int64)
    for row, z in enumerate(logits.astype(np.float64) / temperature):
        if top_k is not None and top_k < z.size:
            cut = np.partition(z, -top_k)[-top_k]
            z = np.where(z < cut, -np.inf, z)
        p = np.exp(z - z.max())
        p /= p.sum()
        if top_p is not None and top_p < 1:
            order = np.argsort(-p, kind="stable")
            cum = np.cumsum(p[order])
            keep = order[: int(np.searchsorted(cum, top_p)) + 1]  # smallest set reaching top_p
            mask = np.zeros_like(p)
            mask[keep] = p[keep]
            p = mask / mask.sum()
        out[row] = rng.choice(p.size, p=p)
    return out
