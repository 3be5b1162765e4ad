"""Matching-pursuit SAEs (SAELens's MatchingPursuitSAE): tied (W_enc is W_dec's transpose,
and no b_enc is stored); each token's codes come from greedily picking decoder rows until
the picked set stops growing, the residual's norm falls below residual_threshold or
max_iterations picks are made (the loop: csrc/sae/matching_pursuit.cpp). Inference only."""
from __future__ import annotations

import math

import numpy as np

from ...errors import SAELoadError, real_number, true_or_false, whole_number

ACTIVATION = "matching_pursuit"
NAMES = {"matching_pursuit": "sae"}
MAX_ITERATIONS = 2**31 - 1
PRE_ACTIVATIONS = False  # SAELens's encode has no hook_sae_acts_pre (nor acts_post) to cache
FOLDS_WHITENING = False  # SAELens: the whitening cannot be folded into the tied encoder


def tied(options: dict) -> bool:
    return True


def decode_bias(cfg) -> bool:
    """SAELens adds b_dec when decoding only if it subtracted it from the input."""
    return cfg.apply_b_dec_to_input


def config(flat: dict, d_sae: int) -> dict:
    threshold = real_number(flat.get("residual_threshold", 1e-2), "cfg.json: residual_threshold", SAELoadError)
    if math.isnan(threshold):
        raise SAELoadError("cfg.json: residual_threshold must be a number, not NaN")
    iterations = flat.get("max_iterations")
    if iterations is not None:
        iterations = whole_number(iterations, "cfg.json: max_iterations", 0, SAELoadError, maximum=MAX_ITERATIONS)
    stop = true_or_false(flat.get("stop_on_duplicate_support", True), "cfg.json: stop_on_duplicate_support",
                         SAELoadError)
    return {"residual_threshold": threshold, "max_iterations": iterations, "stop_on_duplicate_support": stop}


def core_config(cfg) -> dict:
    o = cfg.options
    return {"residual_threshold": o["residual_threshold"], "stop_on_duplicate_support": o["stop_on_duplicate_support"],
            "max_iterations": cfg.d_in if o["max_iterations"] is None else o["max_iterations"]}  # SAELens's default


def weights(file, read, cfg) -> dict:
    return {}


def fold_scale(weights: dict, options: dict, factor: float) -> tuple[dict, dict]:
    """SAELens's fold for a tied SAE: W_enc * s is W_dec * s in place, undone by W_dec / s, so
    only b_dec / s is left, and the threshold moves to the unscaled units (residual_threshold / s)."""
    return ({**weights, "b_dec": weights["b_dec"] / np.float32(factor)},
            {**options, "residual_threshold": options["residual_threshold"] / factor})

# Training: not supported (tinymech.sae.Trainer names the architectures it trains).
