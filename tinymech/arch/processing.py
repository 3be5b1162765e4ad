"""TransformerLens's weight processing on tinymech's weight dict.

None of it changes the model's output distribution; it rewrites weights so
that activations are easier to read, and so that they equal those of
HookedTransformer.from_pretrained (whose defaults turn all four on):

- fold_ln: each LayerNorm's weight and bias move into the matrices that read
  its output (W_Q/W_K/W_V, W_in, W_U; ln_final's bias becomes an unembedding
  bias), whose input rows are then centered. The LayerNorms keep only their
  normalization (weight ones, bias zeros), as TransformerLens's LNPre.
- center_writing_weights: every matrix writing to the residual stream (W_E,
  W_pos, W_O, W_out and their biases) gets zero mean over d_model, so the
  residual stream is mean-free, which the next LayerNorm would remove anyway.
- center_unembed: W_U (and b_U) get zero mean over the vocabulary; logits
  shift by a constant per position, which softmax ignores.
- fold_value_biases: b_V moves into b_O (attention patterns sum to one, so a
  value bias adds the same b_V @ W_O at every position).

Processed arrays are new float32 arrays; untouched ones stay memory-mapped.
Layouts are the core's: linear weights [in, out], "unembed" [d_vocab, d_model].
"""
from __future__ import annotations

import dataclasses

import numpy as np


def process_weights(weights: dict, cfg, *, fold_ln=False, center_writing_weights=False,
                    center_unembed=False, fold_value_biases=False):
    """The processed weights and config; steps run in TransformerLens's order."""
    if not (fold_ln or center_writing_weights or center_unembed or fold_value_biases):
        return weights, cfg
    w = dict(weights, layers=[dict(layer) for layer in weights["layers"]])
    if fold_ln:
        _fold_layer_norms(w)
        cfg = dataclasses.replace(cfg, normalization_type="LNPre")
    if center_writing_weights:
        _center_writing_weights(w)
    if center_unembed:
        _center_unembed(w)
    if fold_value_biases:
        _fold_value_biases(w, cfg.n_heads * cfg.d_head)
        if center_writing_weights:
            for layer in w["layers"]:
                layer["out_b"] = _centered(layer["out_b"], axis=-1)
    return w, cfg


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _centered(x: np.ndarray, axis: int) -> np.ndarray:
    return _f32(x - x.mean(axis=axis, keepdims=True))


def _folded(ln_w, ln_b, weight, bias):
    """A LayerNorm's affine map folded into the linear map [in, out] reading it:
    (n * ln_w + ln_b) @ W + b = n @ (ln_w[:, None] * W) + (ln_b @ W + b),
    with the folded matrix's input rows then centered (n has zero mean)."""
    new_bias = ln_b @ weight if bias is None else bias + ln_b @ weight
    new_weight = ln_w[:, None] * weight
    return _centered(new_weight, axis=0), _f32(new_bias)


def _fold_layer_norms(w: dict) -> None:
    for layer in w["layers"]:
        layer["qkv_w"], layer["qkv_b"] = _folded(layer["ln1_w"], layer["ln1_b"], layer["qkv_w"], layer["qkv_b"])
        layer["fc_w"], layer["fc_b"] = _folded(layer["ln2_w"], layer["ln2_b"], layer["fc_w"], layer["fc_b"])
        for name in ("ln1", "ln2"):
            layer[name + "_w"], layer[name + "_b"] = _identity_affine(layer[name + "_w"])
    # the unembedding is stored [d_vocab, d_model], so it folds transposed
    W_U, b_U = _folded(w["lnf_w"], w["lnf_b"], w["unembed"].T, w["unembed_b"])
    w["unembed"], w["unembed_b"] = _f32(W_U.T), b_U
    w["lnf_w"], w["lnf_b"] = _identity_affine(w["lnf_w"])


def _identity_affine(ln_w: np.ndarray):
    return np.ones_like(ln_w, dtype=np.float32), np.zeros_like(ln_w, dtype=np.float32)


def _center_writing_weights(w: dict) -> None:
    w["wte"] = _centered(w["wte"], axis=-1)
    w["wpe"] = _centered(w["wpe"], axis=-1)
    for layer in w["layers"]:
        for name in ("out_w", "out_b", "proj_w", "proj_b"):
            layer[name] = _centered(layer[name], axis=-1)


def _center_unembed(w: dict) -> None:
    w["unembed"] = _centered(w["unembed"], axis=0)
    if w["unembed_b"] is not None:
        w["unembed_b"] = _centered(w["unembed_b"], axis=0)


def _fold_value_biases(w: dict, d_attn: int) -> None:
    for layer in w["layers"]:
        qkv_b = np.array(layer["qkv_b"], dtype=np.float32)
        b_V = qkv_b[2 * d_attn :]
        # out_w's rows are head-major like b_V, so one product sums over heads
        layer["out_b"] = _f32(layer["out_b"] + b_V @ layer["out_w"])
        b_V[:] = 0.0
        layer["qkv_b"] = qkv_b
