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
- refactor_factored_attn_matrices: each head's W_Q·W_K^T (with the biases as
  an extra input row) and W_V·W_O are refactored through their SVDs, so W_O
  is orthonormal and W_Q, W_K carry half of each singular value. Only
  W_QK and W_OV are defined: single singular vectors may differ in sign from
  TransformerLens's (another LAPACK), the circuits and outputs do not.

Processed arrays are new float32 arrays; untouched ones stay memory-mapped.
Layouts are the core's: linear weights [in, out] (GPT-2) or [out, in] (Llama-class,
config.weight_layout), "unembed" [d_vocab, d_model]. On RMSNorm models only the norms'
weights fold (no centering, no biases) and center_writing_weights is skipped, as in
TransformerLens.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import UnsupportedArchitectureError
from ..factored_matrix import FactoredMatrix


def process_weights(weights: dict, cfg, *, fold_ln=False, center_writing_weights=False,
                    center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False):
    """The processed weights and config; steps run in TransformerLens's order. RMSNorm models
    (Llama-class) fold only their norms' weights (nothing to center: RMSNorm keeps the mean)
    and skip center_writing_weights, as TransformerLens does."""
    if not (fold_ln or center_writing_weights or center_unembed or fold_value_biases
            or refactor_factored_attn_matrices):
        return weights, cfg
    if refactor_factored_attn_matrices:
        _check_refactorable(cfg)
    rms = cfg.normalization_type.startswith("RMS")
    in_out = cfg.weight_layout == "in_out"
    w = dict(weights, layers=[dict(layer) for layer in weights["layers"]])
    if fold_ln:
        _fold_layer_norms(w, in_out, rms)
        cfg = dataclasses.replace(cfg, normalization_type="RMSPre" if rms else "LNPre")
    if center_writing_weights and not rms:
        _center_writing_weights(w)
    if center_unembed:
        _center_unembed(w)
    if fold_value_biases:
        _fold_value_biases(w, cfg, in_out)
        if center_writing_weights and not rms:
            for layer in w["layers"]:
                layer["out_b"] = _centered(layer["out_b"], axis=-1)
    if refactor_factored_attn_matrices:
        _refactor_factored_attn_matrices(w, cfg, in_out)
    return w, cfg


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _centered(x: np.ndarray, axis: int) -> np.ndarray:
    return _f32(x - x.mean(axis=axis, keepdims=True))


def _folded(ln_w, ln_b, weight, bias, in_out: bool = True, center: bool = True):
    """A norm's affine map folded into the linear map reading it (weight [in, out], or [out, in]
    when not in_out): (n * ln_w + ln_b) @ W + b = n @ (ln_w[:, None] * W) + (ln_b @ W + b), the
    folded matrix's input rows then centered for a LayerNorm (n has zero mean)."""
    W = weight if in_out else weight.T
    new_bias = bias if ln_b is None else (ln_b @ W if bias is None else bias + ln_b @ W)
    new_weight = ln_w[:, None] * W
    if center:
        new_weight = new_weight - new_weight.mean(axis=0, keepdims=True)
    return _f32(new_weight if in_out else new_weight.T), None if new_bias is None else _f32(new_bias)


def _fold_layer_norms(w: dict, in_out: bool, rms: bool) -> None:
    fold = dict(in_out=in_out, center=not rms)
    for layer in w["layers"]:
        layer["qkv_w"], layer["qkv_b"] = _folded(layer["ln1_w"], layer["ln1_b"], layer["qkv_w"], layer["qkv_b"], **fold)
        layer["fc_w"], layer["fc_b"] = _folded(layer["ln2_w"], layer["ln2_b"], layer["fc_w"], layer["fc_b"], **fold)
        if layer.get("gate_w") is not None:  # a gated MLP's second reader of ln2
            layer["gate_w"], layer["gate_b"] = _folded(layer["ln2_w"], layer["ln2_b"], layer["gate_w"],
                                                       layer.get("gate_b"), **fold)
        for name in ("ln1", "ln2"):
            layer[name + "_w"], layer[name + "_b"] = _identity_affine(layer[name + "_w"], rms)
    # the unembedding is stored [d_vocab, d_model]: [out, in]
    w["unembed"], w["unembed_b"] = _folded(w["lnf_w"], w["lnf_b"], w["unembed"], w["unembed_b"], in_out=False,
                                           center=not rms)
    w["lnf_w"], w["lnf_b"] = _identity_affine(w["lnf_w"], rms)


def _identity_affine(ln_w: np.ndarray, rms: bool = False):
    return np.ones_like(ln_w, dtype=np.float32), None if rms else np.zeros_like(ln_w, dtype=np.float32)


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


def _fold_value_biases(w: dict, cfg, in_out: bool) -> None:
    """b_V into b_O: each query head's value bias (its key-value head's, with grouped queries)
    through W_O. Nothing to do without attention biases (Llama's)."""
    d_attn = cfg.n_heads * cfg.d_head
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    d_kv = n_kv * cfg.d_head
    for layer in w["layers"]:
        if layer["qkv_b"] is None:
            continue
        qkv_b = np.array(layer["qkv_b"], dtype=np.float32)
        b_V = qkv_b[d_attn + d_kv:].reshape(n_kv, cfg.d_head)
        per_head = np.repeat(b_V, cfg.n_heads // n_kv, axis=0).reshape(d_attn)  # query head h reads kv head h // g
        W_O = layer["out_w"] if in_out else layer["out_w"].T  # [d_attn, d_model], rows head-major like b_V
        out_b = layer["out_b"] if layer["out_b"] is not None else np.zeros(W_O.shape[1], np.float32)
        layer["out_b"] = _f32(out_b + per_head @ W_O)
        qkv_b[d_attn + d_kv:] = 0.0
        layer["qkv_b"] = qkv_b


def _check_refactorable(cfg) -> None:
    if cfg.positional_embedding_type == "rotary":
        raise UnsupportedArchitectureError(
            "refactor_factored_attn_matrices needs position-free queries and keys; this model rotates them "
            "(rotary embeddings make W_QK depend on the positions), as TransformerLens also refuses")
    if (cfg.n_key_value_heads or cfg.n_heads) != cfg.n_heads:
        raise UnsupportedArchitectureError(
            "refactor_factored_attn_matrices: grouped-query attention shares keys and values between heads, "
            "which a per-head refactoring would split")


def _refactor_factored_attn_matrices(w: dict, cfg, in_out: bool) -> None:
    """Per head: [W_Q; b_Q] [W_K; b_K]^T made even (U√S, √S V^T), and W_V W_O as (U S, V^T) with
    b_V moved into b_O, as TransformerLens's refactoring."""
    H, D, dh = cfg.n_heads, cfg.d_model, cfg.d_head
    Da = H * dh
    for layer in w["layers"]:
        qkv_w = np.array(layer["qkv_w"] if in_out else layer["qkv_w"].T, dtype=np.float32)  # [D, 3 Da]
        qkv_b = np.zeros(3 * Da, np.float32) if layer["qkv_b"] is None else np.array(layer["qkv_b"], np.float32)
        out_w = np.array(layer["out_w"] if in_out else layer["out_w"].T, dtype=np.float32)  # [Da, D]
        out_b = np.zeros(D, np.float32) if layer["out_b"] is None else np.array(layer["out_b"], np.float32)

        def heads(which: int) -> np.ndarray:  # [H, D + 1, dh]: weight rows, then the bias as a last row
            cols = slice(which * Da, (which + 1) * Da)
            W = qkv_w[:, cols].reshape(D, H, dh).transpose(1, 0, 2)
            return np.concatenate([W, qkv_b[cols].reshape(H, 1, dh)], axis=1)

        q_even, k_even_t = FactoredMatrix(heads(0), np.swapaxes(heads(1), -1, -2)).make_even().pair
        k_even = np.swapaxes(k_even_t, -1, -2)
        W_V = heads(2)[:, :D]
        W_O = out_w.reshape(H, dh, D)
        b_V = qkv_b[2 * Da:].reshape(H, dh)
        out_b = out_b + np.einsum("hd,hdm->m", b_V, W_O)
        U, S, V = FactoredMatrix(W_V, W_O).svd()
        for which, new in enumerate((q_even, k_even, U * S[..., None, :])):
            cols = slice(which * Da, (which + 1) * Da)
            qkv_w[:, cols] = new[:, :D].transpose(1, 0, 2).reshape(D, Da)
            qkv_b[cols] = new[:, D].reshape(Da) if which < 2 else 0.0
        out_w = np.swapaxes(V, -1, -2).reshape(Da, D)
        layer["qkv_w"] = _f32(qkv_w if in_out else qkv_w.T)
        layer["qkv_b"] = _f32(qkv_b)
        layer["out_w"] = _f32(out_w if in_out else out_w.T)
        layer["out_b"] = _f32(out_b)
