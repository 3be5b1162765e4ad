"""The weights the analyses need, read through Model's accessors."""
from __future__ import annotations

import numpy as np


def ln_final_params(model) -> tuple[np.ndarray, np.ndarray | None]:
    """ln_final's weight [d_model] and bias [d_model] (None for an RMSNorm, which has none)."""
    return model.ln_final_w, model.ln_final_b


def unembed_bias(model) -> np.ndarray | None:
    """b_U [d_vocab], or None (GPT-2 has none)."""
    return model.b_U


def attn_out_bias(model, layer: int) -> np.ndarray:
    """b_O of a layer [d_model]."""
    return model.b_O(layer)
