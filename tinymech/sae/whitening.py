"""SAEs trained with normalize_activations="covariance_whitening" (SAELens 6.54,
arXiv 2511.13981). SAELens trains such an SAE on whitened activations z = (x - mean) @ M
and, when training ends, folds the whitening into its weights (SAE.fold_activation_whitening)
and saves it with normalize_activations "none": a finished SAE needs nothing here.
A training checkpoint still says "covariance_whitening" and keeps mean, M and M⁻¹ in
activation_whitening.safetensors beside activation_scaler.json; tinymech folds them on
loading, exactly as SAELens's fold would. SAELens's SAE class itself never applies the
whitening: without that file the SAE runs, as SAELens runs it, on the activations as they are.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError, SAELoadError
from ..io.safetensors import SafetensorsFile
from .architectures import ARCHITECTURES
from .loading import SAEConfig, read_json

WHITENING_FILE = "activation_whitening.safetensors"
SCALER_FILE = "activation_scaler.json"
NORM = "covariance_whitening"


def _read(path: Path, d_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(mean [d_in], M [d_in, d_in], M⁻¹ [d_in, d_in]) as float64, or None when the checkpoint has none."""
    file = path / WHITENING_FILE
    if not file.is_file():
        return None
    if (path / SCALER_FILE).is_file():
        scaler = read_json(path / SCALER_FILE, "activation scaler")
        if isinstance(scaler, dict) and scaler.get("has_whitening", True) is False:  # SAELens skips the file then
            return None
    try:
        sf = SafetensorsFile(file)
        out = []
        for name, shape in (("mean", (d_in,)), ("matrix", (d_in, d_in)), ("inverse_matrix", (d_in, d_in))):
            if name not in sf or tuple(sf.shape(name)) != shape:
                got = list(sf.shape(name)) if name in sf else "nothing"
                raise SAELoadError(f"{file}: {name!r} must have shape {list(shape)}, got {got}")
            t = sf.tensor(name) if sf.dtype(name) == "F64" else sf.to_float32(name)
            t = np.asarray(t, dtype=np.float64)
            if not np.isfinite(t).all():
                raise SAELoadError(f"{file}: {name!r} contains NaN or infinite values")
            out.append(t)
    except ModelLoadError as e:
        raise SAELoadError(str(e)) from e
    return out[0], out[1], out[2]


def _unit_decoder_rows(weights: dict) -> dict:
    """SAELens's fold_W_dec_norm: W_dec's rows to unit norm (at least 1e-8), W_enc's columns
    and b_enc scaled up to match."""
    norms = np.maximum(np.linalg.norm(weights["W_dec"], axis=1), np.float32(1e-8)).astype(np.float32)
    return {**weights, "W_dec": weights["W_dec"] / norms[:, None], "W_enc": weights["W_enc"] * norms[None, :],
            "b_enc": weights["b_enc"] * norms}


def fold_whitening(weights: dict, cfg: SAEConfig, mean: np.ndarray, matrix: np.ndarray,
                   inverse: np.ndarray) -> tuple[dict, SAEConfig]:
    """The weights and config of the SAE reading raw activations, as SAELens's
    fold_activation_whitening leaves them (computed in float64, stored as float32):
    W_enc ← M W_enc; b_enc ← b_enc − mean · W_enc unless b_dec is subtracted from the input;
    W_dec ← W_dec M⁻¹; b_dec ← b_dec M⁻¹ + mean. A TopK SAE that rescales by its decoder
    norms first folds them (its ranking would change otherwise)."""
    module = ARCHITECTURES[cfg.architecture].module
    if not getattr(module, "FOLDS_WHITENING", True):
        raise SAELoadError(f"a {cfg.architecture} SAE's covariance whitening cannot be folded into its tied encoder "
                           "(SAELens refuses it too)")
    if cfg.d_out != cfg.d_in:
        raise SAELoadError(f"a covariance whitening of the {cfg.d_in} inputs cannot be folded into a decoder of "
                           f"{cfg.d_out} outputs (SAELens cannot either)")
    if cfg.rescale_acts_by_decoder_norm:
        weights = _unit_decoder_rows(weights)
        cfg = dataclasses.replace(cfg, rescale_acts_by_decoder_norm=False)
    f32 = np.float32
    with np.errstate(over="ignore", invalid="ignore"):  # checked below, with the SAE's words
        out = dict(weights)
        out["W_enc"] = (matrix @ weights["W_enc"].astype(np.float64)).astype(f32)
        if not cfg.apply_b_dec_to_input:
            shift = mean @ out["W_enc"].astype(np.float64)
            if hasattr(module, "shift_encoder_biases"):
                out = {k: np.asarray(v, f32) if v is not None else None
                       for k, v in module.shift_encoder_biases(out, shift).items()}
            else:
                out["b_enc"] = (weights["b_enc"] - shift).astype(f32)
        out["W_dec"] = (weights["W_dec"].astype(np.float64) @ inverse).astype(f32)
        out["b_dec"] = (weights["b_dec"].astype(np.float64) @ inverse + mean).astype(f32)
    bad = [name for name, w in out.items() if w is not None and not np.isfinite(w).all()]
    if bad:
        raise SAELoadError(f"folding {WHITENING_FILE} into the SAE overflows float32 in {', '.join(bad)}: its "
                           "matrices are finite but too large (or small) for the weights")
    return out, dataclasses.replace(cfg, normalize_activations="none")


def unwhitened(path: Path, weights: dict, cfg: SAEConfig) -> tuple[dict, SAEConfig]:
    """An SAE of normalize_activations "covariance_whitening" with its checkpoint's whitening
    folded in; without one, as it is (with a warning: its weights expect whitened inputs)."""
    if cfg.normalize_activations != NORM:
        return weights, cfg
    whitening = _read(path, cfg.d_in)
    if whitening is None:
        warnings.warn(f"{path}: this SAE was trained on whitened activations (normalize_activations="
                      f"'{NORM}') but no {WHITENING_FILE} is beside it; it runs, as SAELens's SAE runs it, on the "
                      "activations as they are", stacklevel=4)
        return weights, cfg
    return fold_whitening(weights, cfg, *whitening)
