"""Writing an SAE or transcoder in SAELens 6's on-disk format: a folder with
cfg.json, sae_weights.safetensors and (optionally) sparsity.safetensors, which
sae_lens.SAE.load_from_disk and tm.SAE.load both read.

Each file is written beside its target and then moved onto it, so a full disk
or an interruption leaves the previous file as it was; other files in the
folder (feature labels, checkpoints) are kept.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ..errors import SAEInputError
from .loading import CFG_FILE, SAEConfig

WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip", "b_gate", "r_mag", "b_mag")
# The format written, as SAELens marks it: a cfg.json without a version is read as pre-6 (its metadata dropped).
FORMAT_VERSION = "6.0.0"


def config_json(cfg: SAEConfig) -> dict:
    """cfg.json as SAELens 6 writes it: the architecture's fields at the top, the rest under metadata."""
    meta = {k: v for k, v in cfg.metadata.items() if k not in _TOP_LEVEL and k not in cfg.options}
    meta.update(hook_name=cfg.hook_name, hook_head_index=cfg.hook_head_index, model_name=cfg.model_name,
                prepend_bos=cfg.prepend_bos, context_size=cfg.context_size,
                model_from_pretrained_kwargs=cfg.model_from_pretrained_kwargs, neuronpedia_id=cfg.neuronpedia_id)
    if cfg.hook_name_out is not None:
        meta["hook_name_out"] = cfg.hook_name_out
    out = dict(architecture=cfg.architecture, d_in=cfg.d_in, d_sae=cfg.d_sae, dtype="float32", device="cpu",
               apply_b_dec_to_input=cfg.apply_b_dec_to_input, normalize_activations=cfg.normalize_activations,
               reshape_activations=cfg.reshape_activations, metadata=meta)
    if cfg.is_transcoder:
        out["d_out"] = cfg.d_out
    if cfg.k is not None:
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = cfg.rescale_acts_by_decoder_norm
    out.update(cfg.options)  # the architecture's own fields, where SAELens keeps them
    return out


# Keys SAELens keeps at the top level of cfg.json (never duplicated into metadata).
_TOP_LEVEL = {"architecture", "d_in", "d_sae", "d_out", "dtype", "device", "apply_b_dec_to_input",
              "normalize_activations", "reshape_activations", "k", "rescale_acts_by_decoder_norm"}


DTYPES = {"float32": np.float32, "float16": np.float16}


def write_sae_folder(path, config: dict, weights: dict, log_sparsity: np.ndarray | None = None,
                     extra_files: dict[str, str] | None = None, dtype: str = "float32",
                     extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write config (cfg.json's contents), weights (arrays named as SAELens names them,
    stored as dtype: "float32" or "float16", half the bytes) and log_sparsity (log10
    feature densities) into the folder `path`. extra_files: {file name: text} written
    beside them (e.g. metrics.json); extra: an architecture's own tensors, by SAELens's
    names (a temporal SAE's attention layers)."""
    path = Path(path)
    unknown = set(weights) - set(TENSORS)
    if unknown:
        raise SAEInputError(f"unknown SAE tensors {sorted(unknown)}; SAELens names them {', '.join(TENSORS)}")
    if dtype not in DTYPES:
        raise SAEInputError(f"dtype must be 'float32' or 'float16', not {dtype!r}")
    config = dict(config, dtype=dtype)
    config["metadata"] = dict(config.get("metadata") or {})
    config["metadata"].setdefault("sae_lens_version", FORMAT_VERSION)
    path.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v, dtype=DTYPES[dtype]) for k, v in {**weights, **(extra or {})}.items()
              if v is not None}
    write_atomically(path / WEIGHTS_FILE, lambda p: save_file(arrays, str(p)))
    if log_sparsity is not None:
        sparsity = {"sparsity": np.ascontiguousarray(log_sparsity, dtype=np.float32)}
        write_atomically(path / SPARSITY_FILE, lambda p: save_file(sparsity, str(p)))
    files = {CFG_FILE: json.dumps(config, indent=2) + "\n", **(extra_files or {})}
    for name, text in files.items():
        write_atomically(path / name, lambda p, text=text: p.write_text(text))
    return path


def write_atomically(target: Path, write) -> None:
    """write(tmp) then move tmp onto target: a full disk or an interruption leaves target as it was.
    The file is readable by all (safetensors creates its files for their owner only)."""
    tmp = target.with_name(target.name + ".partial")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
