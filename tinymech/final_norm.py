"""ln_final applied outside the forward pass (logit lens, accumulated residuals,
attribution): a LayerNorm centers, scales and adds its bias; an RMSNorm
(Llama-class models) only scales. TransformerLens treats the two alike."""
from __future__ import annotations

import numpy as np


def norm_centers(model) -> bool:
    """Whether the model's norms subtract the mean first (LayerNorm) or not (RMSNorm)."""
    return model.cfg.normalization_type != "RMS"


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
