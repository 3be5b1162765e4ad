"""Gated SAEs (SAELens's GatedSAE): a gate x·W_enc + b_gate > 0 picks the features, a
magnitude path sharing W_enc (its columns scaled by exp(r_mag)) plus b_mag gives their ReLU'd
values. tinymech holds b_gate as the SAE's b_enc (SAELens's b_enc is None); inference only."""
from __future__ import annotations

import numpy as np

from ...errors import SAELoadError

ACTIVATION = "gated"
NAMES = {"gated": "sae"}
ENCODER_BIAS = "b_gate"  # the name its b_enc is saved under


def config(flat: dict, d_sae: int) -> dict:
    return {}


def weights(file, read, cfg) -> dict:
    """r_mag and b_mag [d_sae]: the magnitude path's log column scales and bias."""
    missing = [name for name in ("r_mag", "b_mag") if name not in file]
    if missing:
        raise SAELoadError(f"{file.path}: a gated SAE needs {' and '.join(repr(n) for n in missing)}")
    return {name: read(name, (cfg.d_sae,)) for name in ("r_mag", "b_mag")}


def shift_encoder_biases(weights: dict, shift: np.ndarray) -> dict:
    """A whitening fold's input shift (mean · W_enc): b_gate (tinymech's b_enc) loses it, and
    b_mag loses it scaled as the magnitude path scales W_enc (SAELens's GatedSAE)."""
    return {**weights, "b_enc": weights["b_enc"] - shift, "b_mag": weights["b_mag"] - shift * np.exp(weights["r_mag"])}

# Training: not supported (tinymech.sae.Trainer names the architectures it trains).
