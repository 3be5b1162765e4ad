"""Temporal SAEs (SAELens's TemporalSAE, arXiv 2511.01836): before its sparse code is
taken, each position's input loses what causal attention over the earlier positions'
codes predicts (csrc/sae/temporal.hpp); encode gives the sparse ("novel") codes, forward
decodes them with the predicted ones, and decode (as SAELens's, and so a model's splice)
the novel ones only. Its activations are whole sequences [batch, pos, d_in]. Inference only."""
from __future__ import annotations

import math

from ...errors import SAELoadError, real_number, true_or_false, whole_number

ACTIVATION = "temporal"
NAMES = {"temporal": "sae"}
ENCODER_BIAS = None  # it has none (its W_enc is W_dec's transpose unless tied_weights is false)
SEQUENTIAL = True  # encodes [batch, pos, d_in], attending over pos
# TemporalSAEConfig's list: constant_scalar_rescale (times activation_normalization_factor) is its own
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "constant_scalar_rescale",
                  "layer_norm")
LAYERS = ("k_ctx", "q_target", "v_ctx", "c_proj")  # each attention layer's torch Linear modules
MAX_LAYERS = 1024


def _positive(flat: dict, key: str, default: int, maximum: int | None = None) -> int:
    return whole_number(flat.get(key, default), f"cfg.json: {key}", 1, SAELoadError, maximum=maximum)


def config(flat: dict, d_sae: int) -> dict:
    n_heads, bottleneck = _positive(flat, "n_heads", 8), _positive(flat, "bottleneck_factor", 64)
    if d_sae % (bottleneck * n_heads):
        raise SAELoadError(f"cfg.json: a temporal SAE needs d_sae ({d_sae}) to be a multiple of bottleneck_factor "
                           f"x n_heads ({bottleneck} x {n_heads})")
    layers = whole_number(flat.get("n_attn_layers", 1), "cfg.json: n_attn_layers", 0, SAELoadError,
                          maximum=MAX_LAYERS)
    diff = flat.get("sae_diff_type", "topk")
    if diff not in ("relu", "topk"):
        raise SAELoadError(f"cfg.json: sae_diff_type must be 'relu' or 'topk', not {diff!r}")
    k = flat.get("kval_topk")
    if k is not None:
        k = whole_number(k, "cfg.json: kval_topk", 1, SAELoadError)
        if k > d_sae:
            raise SAELoadError(f"cfg.json: kval_topk={k} exceeds d_sae={d_sae}")
    factor = real_number(flat.get("activation_normalization_factor", 1.0),
                         "cfg.json: activation_normalization_factor", SAELoadError)
    if not math.isfinite(factor) or factor == 0:
        raise SAELoadError(f"cfg.json: activation_normalization_factor must be finite and nonzero, not {factor!r}")
    return {"n_heads": n_heads, "n_attn_layers": layers, "bottleneck_factor": bottleneck, "sae_diff_type": diff,
            "kval_topk": k, "tied_weights": true_or_false(flat.get("tied_weights", True), "cfg.json: tied_weights",
                                                          SAELoadError),
            "activation_normalization_factor": factor}


def tied(options: dict) -> bool:
    return options["tied_weights"]


def decode_bias(cfg) -> bool:
    return not cfg.options["tied_weights"] or cfg.apply_b_dec_to_input


def core_config(cfg) -> dict:
    o = cfg.options
    return {"n_heads": o["n_heads"], "n_attn_layers": o["n_attn_layers"], "lam": 1 / (4 * cfg.d_in),
            "attention_width": cfg.d_sae // o["bottleneck_factor"], "norm_factor": o["activation_normalization_factor"],
            "k": (o["kval_topk"] or 0) if o["sae_diff_type"] == "topk" else 0}


def weights(file, read, cfg) -> dict:
    """Each attention layer's projections, under SAELens's names (attn_layers.{i}.k_ctx.weight, ...)."""
    d, width = cfg.d_sae, cfg.d_sae // cfg.options["bottleneck_factor"]
    out = {}
    for i in range(cfg.options["n_attn_layers"]):
        for name in LAYERS:
            rows = width if name in ("k_ctx", "q_target") else d
            for part, shape in (("weight", (rows, d)), ("bias", (rows,))):
                key = f"attn_layers.{i}.{name}.{part}"
                if key not in file:
                    raise SAELoadError(f"{file.path}: a temporal SAE with {cfg.options['n_attn_layers']} attention "
                                       f"layer(s) needs {key!r}")
                out[key] = read(key, shape)
    return out


def fold_scale(weights: dict, options: dict, factor: float) -> tuple[dict, dict]:
    raise SAELoadError("a temporal SAE cannot fold a dataset-wide input scale into its weights (SAELens cannot "
                       "either: its attention is not linear in the input)")

# Training: not supported (tinymech.sae.Trainer names the architectures it trains).
