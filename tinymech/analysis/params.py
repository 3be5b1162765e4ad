"""The weights the analyses need, read through Model's accessors."""
from __future__ import annotations

import numpy as np


def ln_final_params(model) -> tuple[np.ndarray, np.ndarray | None]:
    """ln_final's weight [d_model] and bias [d_model] (None for an RMSNorm, which has none)."""
    return model.ln_final_w, model.ln_final_b


def unembed_bias(model) -> np.ndarray | None:
    """b_U [d_vocab], or None when it is all zeros (GPT-2 and Llama have none;
    fold_ln makes one), so that callers skip adding it."""
    b_U = model.b_U
    return b_U if b_U.any() else None


def attn_out_bias(model, layer: int) -> np.ndarray:
    """b_O of a layer [d_model]."""
    return model.b_O[layer]
