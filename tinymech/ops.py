"""Core-backed numerics around the forward pass: top-k and log-sum-exp along the last axis,
sampling the next token, and the final norm applied outside the core."""
from __future__ import annotations

import math

import numpy as np

from . import _core
from .errors import InvalidInputError, real_number, whole_number


# ---- top-k and log-sum-exp ----

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

# ---- sampling ----

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
    try:
        return _core.sample(np.ascontiguousarray(logits, dtype=np.float32), float(temperature), kept,
                            float(1.0 if top_p is None else top_p), rng.random(logits.shape[0]))
    except ValueError as e:  # the settings were checked: the logits hold NaN or +inf (a hook's, say)
        raise InvalidInputError(str(e)) from None

# ---- the final norm ----

def norm_centers(model) -> bool:
    """Whether the model's norms subtract the mean first (LayerNorm) or not (RMSNorm)."""
    return not model.cfg.normalization_type.startswith("RMS")


def final_norm(model, resid: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """ln_final applied to each residual [..., d_model] on its own: with its own
    scale, or with a given one ([..., 1], e.g. the real run's ln_final.hook_scale)."""
    x = np.asarray(resid, dtype=np.float64)
    if norm_centers(model):
        x = x - x.mean(-1, keepdims=True)
    if scale is None:
        scale = np.sqrt((x * x).mean(-1, keepdims=True) + model.cfg.eps)
    out = x / scale * model.ln_final_w
    bias = model.ln_final_b
    return (out if bias is None else out + bias).astype(np.float32)
