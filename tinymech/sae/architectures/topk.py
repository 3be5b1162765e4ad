"""TopK SAEs: each token keeps its k largest pre-activations (SAELens's TopKSAE)."""
from __future__ import annotations

from ...errors import SAELoadError

ACTIVATION = "topk"
NAMES = {"topk": "sae"}
# Training (tinymech.sae.Trainer): name -> (k: per row "whole" or per row on average "mean",
# saved as (a module of this folder)); BatchTopK is saved as a JumpReLU SAE, as SAELens saves it.
TRAINING = {"topk": ("whole", "topk"), "batchtopk": ("mean", "jumprelu")}
OLD_ACTIVATION_FN = "topk"  # pre-6: architecture "standard", activation_fn "topk", k in activation_fn_kwargs


def config(flat: dict, d_sae: int) -> dict:
    k, kwargs = flat.get("k"), flat.get("activation_fn_kwargs")
    if k is None and isinstance(kwargs, dict):
        k = kwargs.get("k")
    if type(k) is not int or k <= 0:
        raise SAELoadError(f"cfg.json: 'k' must be a positive integer, got {k!r}")
    if k > d_sae:
        raise SAELoadError(f"cfg.json: k={k} exceeds d_sae={d_sae}")
    return {"k": k}


def weights(file, read, d_sae: int) -> dict:
    return {}

