"""AbsTopK SAEs: each token keeps its k pre-activations largest in absolute value, signed
(SAELens's AbsTopKSAE: features fire in either direction). Inference only."""
from __future__ import annotations

from .topk import config  # noqa: F401 (the same k as TopK's)

ACTIVATION = "abstopk"
NAMES = {"abstopk": "sae"}


def weights(file, read, cfg) -> dict:
    return {}

# Training: not supported (tinymech.sae.Trainer names the architectures it trains).
