"""JumpReLU SAEs and transcoders: a feature fires where its pre-activation exceeds its
threshold (SAELens's JumpReLUSAE, JumpReLUTranscoder, JumpReLUSkipTranscoder)."""
from __future__ import annotations

import numpy as np

from ...errors import SAELoadError

ACTIVATION = "jumprelu"
NAMES = {"jumprelu": "sae", "jumprelu_transcoder": "transcoder", "jumprelu_skip_transcoder": "skip_transcoder"}
TRAINING = {"jumprelu": dict(k=None, saved_as="jumprelu", coefficient=1.0, warm_up=0.1)}  # see topk.py; L0


def config(flat: dict, d_sae: int) -> dict:
    return {}


def weights(file, read, cfg) -> dict:
    """threshold [d_sae]; training checkpoints store its log."""
    if "threshold" in file:
        return {"threshold": read("threshold", (cfg.d_sae,))}
    if "log_threshold" in file:
        return {"threshold": np.exp(read("log_threshold", (cfg.d_sae,)))}
    raise SAELoadError(f"{file.path}: a JumpReLU SAE needs a 'threshold' tensor")

# Training: csrc/sae/train.cpp (MSE + L0 through the threshold's straight-through estimator).
