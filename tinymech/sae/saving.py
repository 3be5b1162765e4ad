"""Writing an SAE or transcoder in SAELens 6's on-disk format: a folder with
cfg.json, sae_weights.safetensors and (optionally) sparsity.safetensors, which
sae_lens.SAE.load_from_disk and tm.SAE.load both read.

Every file's contents are made and checked first (cfg.json's text, the weights in the
dtype asked for), then each file is written beside its target and, once all are written,
moved onto it: a config JSON cannot hold, a weight float16 cannot hold, a full disk or an
interruption leaves the SAE already in the folder as it was; other files in the folder
(feature labels, checkpoints) are kept.
"""
from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ..errors import SAEInputError
from ..text import printable
from .loading import CFG_FILE, LABELS_FILE, METRICS_FILE, SAEConfig

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
    if cfg.k is not None or cfg.rescale_acts_by_decoder_norm:  # SAELens's TopK field; kept wherever it is set
        out["rescale_acts_by_decoder_norm"] = cfg.rescale_acts_by_decoder_norm
    out.update(cfg.options)  # the architecture's own fields, where SAELens keeps them
    return out


# Keys SAELens keeps at the top level of cfg.json (never duplicated into metadata).
_TOP_LEVEL = {"architecture", "d_in", "d_sae", "d_out", "dtype", "device", "apply_b_dec_to_input",
              "normalize_activations", "reshape_activations", "k", "rescale_acts_by_decoder_norm"}


def config_text(config: dict) -> str:
    """cfg.json's text: numpy scalars written as the numbers they hold; SAEInputError naming
    the entry JSON cannot hold (an object, an array, NaN, which no reader takes back)."""
    try:
        return json.dumps(config, indent=2, allow_nan=False, default=_plain) + "\n"
    except (TypeError, ValueError, RecursionError) as e:
        where = _unwritable(config, "cfg", 0) or "a value"
        raise SAEInputError(f"cfg.json cannot hold {where} ({e}): a config holds numbers, strings, True/False, "
                            "None, and lists and dicts of them") from None


def _plain(value):
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()  # np.int64(128) -> 128, np.float32(0.5) -> 0.5
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _unwritable(value, where: str, depth: int) -> str | None:
    """The first entry of value that JSON cannot hold, as cfg.metadata.note = <value>."""
    if depth > 50:  # a dict that holds itself
        return where
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        value = value.item()
    if isinstance(value, dict):
        for key, v in value.items():
            inner = f"{where}.{key}" if isinstance(key, str) else f"{where}[{key!r}]"
            if not (key is None or isinstance(key, (str, int, float))):
                return printable(inner)
            bad = _unwritable(v, inner, depth + 1)
            if bad:
                return bad
        return None
    if isinstance(value, (list, tuple)):
        return next((bad for i, v in enumerate(value) if (bad := _unwritable(v, f"{where}[{i}]", depth + 1))), None)
    if value is None or isinstance(value, (str, int)) or (isinstance(value, float) and math.isfinite(value)):
        return None
    shown = repr(value)
    return printable(f"{where} = {shown[:80] + '...' if len(shown) > 80 else shown}")


DTYPES = {"float32": np.float32, "float16": np.float16}


def write_sae_folder(path, config: dict, weights: dict, log_sparsity: np.ndarray | None = None,
                     extra_files: dict[str, str] | None = None, dtype: str = "float32",
                     extra: dict[str, np.ndarray] | None = None, keep: tuple[str, ...] = ()) -> Path:
    """Write config (cfg.json's contents), weights (arrays named as SAELens names them,
    stored as dtype: "float32" or "float16", half the bytes) and log_sparsity (log10
    feature densities) into the folder `path`. extra_files: {file name: text} written
    beside them (e.g. metrics.json); extra: an architecture's own tensors, by SAELens's
    names (a temporal SAE's attention layers). A sparsity.safetensors, feature_labels.json
    or metrics.json there that is not written is removed (it described the SAE replaced), unless
    named in keep (the same SAE saved again in its own folder)."""
    path = Path(path)
    unknown = set(weights) - set(TENSORS)
    if unknown:
        raise SAEInputError(f"unknown SAE tensors {sorted(unknown)}; SAELens names them {', '.join(TENSORS)}")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise SAEInputError(f"dtype must be 'float32' or 'float16', not {dtype!r}")
    config = dict(config, dtype=dtype)
    config["metadata"] = dict(config.get("metadata") or {})
    config["metadata"].setdefault("sae_lens_version", FORMAT_VERSION)
    # everything made and checked before anything is written
    texts = {CFG_FILE: config_text(config), **(extra_files or {})}
    arrays = {k: _stored(k, v, dtype) for k, v in {**weights, **(extra or {})}.items() if v is not None}
    writes = {WEIGHTS_FILE: lambda p: save_file(arrays, str(p))}
    if log_sparsity is not None:
        sparsity = {"sparsity": np.ascontiguousarray(log_sparsity, dtype=np.float32)}
        writes[SPARSITY_FILE] = lambda p: save_file(sparsity, str(p))
    for name, text in texts.items():
        writes[name] = lambda p, text=text: p.write_text(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_all_atomically({path / name: write for name, write in writes.items()}, last=path / CFG_FILE)
        for name in (SPARSITY_FILE, LABELS_FILE, METRICS_FILE):
            if name not in writes and name not in keep:
                (path / name).unlink(missing_ok=True)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SAEInputError(f"cannot save the SAE in {printable(str(path))!r} ({reason}); an SAE already there "
                            "is as it was") from e
    return path


def _stored(name: str, array, dtype: str) -> np.ndarray:
    """array as stored: in dtype, C-contiguous; refused where that is not finite (the folder
    would not load: SAE.load refuses NaN and infinities), naming the weight and why."""
    array = np.asarray(array)
    with np.errstate(over="ignore", invalid="ignore"):
        stored = np.ascontiguousarray(array, dtype=DTYPES[dtype])
    if np.isfinite(stored).all():
        return stored
    if not np.isfinite(array).all():
        raise SAEInputError(f"{name} contains NaN or infinite values: the saved SAE could not be loaded")
    largest = float(np.abs(array).max())
    raise SAEInputError(f"{name} holds {largest:.6g}, beyond {dtype}'s largest value ({float(np.finfo(dtype).max):g}): "
                        f"save it as float32 (dtype=\"float32\")")


def write_all_atomically(files: dict, last: Path | None = None) -> None:
    """{target: write}: each write(tmp) beside its target, then, once all are written, each moved
    onto its target: a failed write (a full disk, an interruption) leaves every target as it was.
    last (one of the targets: the file that makes the others one whole, an SAE's cfg.json) is
    removed before the moves and moved last, so that moves cut short leave no whole made of old and
    new files. The files are readable by all (safetensors creates its files for their owner only)."""
    done = {}
    try:
        for target, write in files.items():
            tmp = target.with_name(target.name + ".partial")
            done[target] = tmp
            write(tmp)
            os.chmod(tmp, 0o644)
        for target in files:  # a folder in a file's place: found now, not by a move after others were made
            if target.is_dir():
                raise IsADirectoryError(errno.EISDIR, f"{target.name} there is a folder", str(target))
        order = [t for t in files if t != last] + ([last] if last in files else [])
        if last in files:
            last.unlink(missing_ok=True)
        for target in order:
            os.replace(done[target], target)
            del done[target]
    finally:  # what was written and not moved (an error, an interruption)
        for tmp in done.values():
            tmp.unlink(missing_ok=True)


def write_atomically(target: Path, write) -> None:
    """write(tmp) then move tmp onto target: a full disk or an interruption leaves target as it was.
    The file is readable by all (safetensors creates its files for their owner only)."""
    write_all_atomically({target: write})
