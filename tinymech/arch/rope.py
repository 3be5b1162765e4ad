"""Rotary position embeddings' inverse frequencies, as Hugging Face computes
them (the C++ core only rotates): plain RoPE, linear scaling, and Llama 3's
frequency-dependent scaling."""
from __future__ import annotations

import math

import numpy as np

from ..errors import ModelLoadError


def inverse_frequencies(rotary_dim: int, base: float, scaling: dict | None = None) -> np.ndarray:
    """[rotary_dim / 2] float32: base ** (-2i / rotary_dim), then scaled; a ModelLoadError
    when a base or factor the config allows (e.g. rope_theta 1e-300) makes one not finite."""
    with np.errstate(all="ignore"):
        inv_freq = _inverse_frequencies(rotary_dim, base, scaling)
    if not np.isfinite(inv_freq).all():
        raise ModelLoadError(f"rope_theta={base} and the RoPE scaling {scaling} give rotary frequencies that are "
                             "not finite in float32")
    return inv_freq


def _inverse_frequencies(rotary_dim: int, base: float, scaling: dict | None) -> np.ndarray:
    # float32 throughout, like transformers, so angles round the same way
    exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(rotary_dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(base), exponents)).astype(np.float32)
    if scaling is None:
        return inv_freq
    rope_type = scaling.get("rope_type")
    try:
        if rope_type == "linear":
            return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
        if rope_type == "llama3":
            return _llama3(inv_freq, scaling)
    except KeyError as e:
        raise ModelLoadError(f"RoPE scaling {rope_type!r} needs the parameter {e.args[0]!r}") from None
    raise ModelLoadError(f"unknown RoPE scaling {rope_type!r}")


def _llama3(inv_freq: np.ndarray, p: dict) -> np.ndarray:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, and a
    smooth interpolation between the two bands."""
    factor = float(p["factor"])
    low, high = float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old_context = float(p["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_context / low, old_context / high
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq).astype(np.float32)
    smooth = ((old_context / wavelen - low) / (high - low)).astype(np.float32)
    smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
