"""TopK SAEs: each token keeps its k largest pre-activations (SAELens's TopKSAE)."""
from __future__ import annotations

from ...errors import SAELoadError

ACTIVATION = "topk"
# SAELens 6.54 has no TopK transcoder class: these two are tinymech's (train_sae writes them)
NAMES = {"topk": "sae", "topk_transcoder": "transcoder", "topk_skip_transcoder": "skip_transcoder"}
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

# Training: csrc/sae/train.cpp (MSE + AuxK on dead latents; batchtopk saves as jumprelu).
