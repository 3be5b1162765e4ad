"""TopK SAEs: each token keeps its k largest pre-activations (SAELens's TopKSAE)."""
from __future__ import annotations

from ...errors import SAELoadError

ACTIVATION = "topk"
# SAELens 6.54 has no TopK transcoder class: these two are tinymech's (train_sae writes them)
NAMES = {"topk": "sae", "topk_transcoder": "transcoder", "topk_skip_transcoder": "skip_transcoder"}
# Training (tinymech.sae.Trainer, tm.train_sae): name -> k ("whole" per row, or "mean" per row
# over the batch), the module of this folder it is saved as (BatchTopK as a JumpReLU SAE, as
# SAELens saves it), its sparsity coefficient's default and warm-up share of the steps (none).
TRAINING = {"topk": dict(k="whole", saved_as="topk", coefficient=0.0, warm_up=0.0),
            "batchtopk": dict(k="mean", saved_as="jumprelu", coefficient=0.0, warm_up=0.0)}
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


def weights(file, read, cfg) -> dict:
    return {}
