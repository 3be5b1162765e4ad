"""Sparse autoencoders and transcoders: load SAELens checkpoints, encode and
decode in the C++ core, splice into a model, inspect and steer features.

    sae = tm.SAE.load("models/demo-gpt2/saes/blocks.2.hook_resid_pre")
    logits, cache = run_with_cache_with_saes(model, "Mr Darcy walked in", [sae])
    cache["blocks.2.hook_resid_pre.hook_sae_acts_post"]      # [batch, pos, d_sae]
    model.generate("The", hooks=[sae.steer(feature=12, strength=8.0)])

Architectures: those registered in tinymech/sae/architectures/ (ReLU, JumpReLU, TopK,
AbsTopK, gated, matching-pursuit and temporal SAEs, ReLU and JumpReLU transcoders and
skip transcoders), with SAELens's input normalizations.
"""
from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import threading
import warnings
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .. import _core
from .. import hooks as _hooks
from ..text import format_table, printable, readable_token
from ..errors import (
    FeatureIndexError,
    HookError,
    ReadOnlyError,
    SAEInputError,
    SAELoadError,
    array_of,
    check_model,
    read_only_attribute,
    real_number,
    whole_number,
)
from ..io.files import folder_to_write
from ..runtime import check_memory
from .loading import (
    CFG_FILE,
    FIXED_FIELDS,
    LABELS_FILE,
    METRICS_FILE,
    PER_TOKEN_NORMS,
    SAEConfig,
    encoder_bias_name,
    given_weights,
    parse_config,
    read_feature_labels,
    read_json,
    read_log_sparsity,
    read_metrics,
    read_weights,
    sae_dir,
    weight_array,
)
from .architectures import ARCHITECTURES
from .pretrained import resolve
from .saving import config_json, config_text, write_sae_folder
from .whitening import unwhitened
from .splice import (  # noqa: F401 (Model's SAE methods import these from here)
    add_sae,
    attached,
    attached_specs,
    check_hooks,
    model_names_filter,
    reset_saes,
    run_with_cache_with_saes,
    run_with_hooks_with_saes,
    run_with_saes,
    splice_hooks,
    with_sae_entries,
)

__all__ = ["SAE", "SAEConfig", "LogitEffects", "run_with_saes", "run_with_cache_with_saes"]


class LogitEffects(NamedTuple):
    """A feature's direct effect on the logits, W_dec[f] @ W_U: the k most
    promoted and most suppressed tokens (ids) with their values, most extreme
    first, and the same tokens as strings decoded with the model's tokenizer
    (None when the model has none). print() shows them as a table."""

    promoted: np.ndarray
    promoted_values: np.ndarray
    suppressed: np.ndarray
    suppressed_values: np.ndarray
    # defaults keep the four-field constructor working
    promoted_tokens: tuple[str, ...] | None = None
    suppressed_tokens: tuple[str, ...] | None = None

    def _named(self, side: str, show) -> list[tuple[str, float]]:
        """(token shown by `show`, or '#id' without a tokenizer; value) of "promoted" or "suppressed"."""
        ids, strings = getattr(self, side), getattr(self, side + "_tokens")
        names = [f"#{int(i)}" for i in ids] if strings is None else [show(s) for s in strings]
        return list(zip(names, (float(v) for v in getattr(self, side + "_values"))))

    def table(self) -> str:
        rows = [[up, f"{up_value:+.4f}", down, f"{down_value:+.4f}"]
                for (up, up_value), (down, down_value) in zip(self._named("promoted", readable_token),
                                                              self._named("suppressed", readable_token))]
        return format_table(["promoted", "effect", "suppressed", "effect"], rows, align="lrlr",
                            title=f"Direct logit effects (W_dec[f] @ W_U), top {len(rows)} each way")

    def __str__(self):
        return self.table()

    def __repr__(self):
        def listed(side):
            return "[" + ", ".join(f"{name} {value:+.4f}" for name, value in self._named(side, repr)) + "]"

        return f"LogitEffects(promoted={listed('promoted')}, suppressed={listed('suppressed')})"


def fold_norm_scaling(weights: dict, factor: float, factor_out: float | None = None, skip: bool = False) -> dict:
    """Fold dataset-wide activation scales into the weights, as SAELens does, so the SAE
    reads raw activations: W_enc * s_in, W_dec / s_out, b_dec / s_out (s_out = s_in unless
    given: a transcoder's output scale), and with skip W_skip * s_in / s_out."""
    factor = _check_factor(factor)
    factor_out = factor if factor_out is None else _check_factor(factor_out)
    out = dict(weights)
    out["W_enc"] = weights["W_enc"] * np.float32(factor)
    out["W_dec"] = weights["W_dec"] / np.float32(factor_out)
    out["b_dec"] = weights["b_dec"] / np.float32(factor_out)
    if skip and weights.get("W_skip") is not None:
        out["W_skip"] = weights["W_skip"] * np.float32(factor / factor_out)
    return out


def _check_factor(factor) -> float:
    """factor as a float (numpy's, and a 0-d array or tensor, included); SAELoadError unless positive and finite."""
    value = real_number(factor, "norm_scaling_factor", error=SAELoadError)
    if not (math.isfinite(value) and value > 0):
        raise SAELoadError(f"norm_scaling_factor must be a positive number, got {factor!r}")
    return value


def _fold_scale(weights: dict, cfg: SAEConfig, factor) -> tuple[dict, SAEConfig]:
    """The SAE reading raw activations, its dataset-wide input scale folded in (as the
    architecture folds it: fold_scale), its config saying normalize_activations "none"."""
    module = ARCHITECTURES[cfg.architecture].module
    if hasattr(module, "fold_scale"):
        weights, options = module.fold_scale(weights, cfg.options, _check_factor(factor))
        cfg = dataclasses.replace(cfg, options=options)
    else:
        weights = fold_norm_scaling(weights, factor)
    if ARCHITECTURES[cfg.architecture].tied(cfg.options):  # W_enc stays W_dec's transpose
        weights["W_enc"] = np.ascontiguousarray(weights["W_dec"].T)
    return weights, dataclasses.replace(cfg, normalize_activations="none")


def _decoded(model, ids) -> tuple[str, ...] | None:
    """Each token as a string, or None when the model has no tokenizer."""
    return None if model.tokenizer is None else tuple(model.tokenizer.decode_each(ids))


def _on_cpu(device, dtype) -> None:
    """SAELens's device= and dtype= arguments: tinymech computes in float32 on the CPU,
    so another device or dtype is accepted with a warning that says so."""
    for value, what, native in ((device, "device", "cpu"), (dtype, "dtype", "float32")):
        if value is None:
            continue
        if what == "device" and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = f"cuda:{int(value)}"  # torch's device index: a GPU
        name = str(value).removeprefix("torch.")
        if not isinstance(value, str) and type(value).__module__.split(".")[0] != "torch":
            raise SAEInputError(f"{what} must be a string such as {native!r}, got {type(value).__name__}")
        if name.split(":")[0] != native:
            warnings.warn(f"tinymech runs SAEs in float32 on the CPU; {what}={name!r} is ignored", stacklevel=3)


# names SAE.to reads as a dtype, not a device (torch's spellings), and what each is
_DTYPE_NAMES = {"float32": "float32", "float": "float32", "float16": "float16", "half": "float16",
                "bfloat16": "bfloat16", "float64": "float64", "double": "float64"}


def _device_and_dtype(args: tuple, kwargs: dict) -> tuple:
    """(device, dtype) from SAE.to's arguments, read as SAELens's SAE.to (torch's Module.to) reads
    them: a device (a string or torch.device), a dtype, a tensor (its device and dtype: an array
    too), non_blocking; device= and dtype= override them."""
    unknown = sorted(set(kwargs) - {"device", "dtype", "non_blocking", "copy", "memory_format"})
    if unknown:
        raise SAEInputError(f"SAE.to takes device=, dtype= and non_blocking= (as torch's), not {unknown[0]}=")
    device = dtype = None
    for arg in args:
        if isinstance(arg, (bool, np.bool_)):  # torch's positional non_blocking
            continue
        if isinstance(arg, np.dtype) or (isinstance(arg, type) and issubclass(arg, np.generic)):
            dtype = str(np.dtype(arg))
        elif hasattr(arg, "dtype") and hasattr(arg, "shape"):  # a tensor, or the array one becomes
            device, dtype = getattr(arg, "device", "cpu"), str(arg.dtype)
        elif isinstance(arg, str):
            if arg.removeprefix("torch.") in _DTYPE_NAMES:
                dtype = arg
            else:
                device = arg
        elif type(arg).__name__ == "dtype" and type(arg).__module__.split(".")[0] == "torch":
            dtype = arg
        elif arg is not None:
            device = arg  # a torch.device, or what _on_cpu refuses
    dtype = kwargs.get("dtype", dtype)
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPE_NAMES:  # "float" is float32
        dtype = _DTYPE_NAMES[dtype.removeprefix("torch.")]
    return kwargs.get("device", device), dtype


def _config_of(cfg, why: str) -> SAEConfig:
    """cfg with the checks a cfg.json gets; SAEInputError, beginning `why`, naming what is wrong.
    cfg is an SAEConfig, or a dict in cfg.json's form or an object with to_dict() (SAELens's
    config), read as SAE.load reads cfg.json. The config must be what its cfg.json reads back
    as: what sae.save writes is then what SAE.load reads."""
    if not isinstance(cfg, SAEConfig):
        raw = cfg
        if not isinstance(raw, (Mapping, type)) and callable(getattr(raw, "to_dict", None)):
            try:
                raw = raw.to_dict()
            except Exception as e:  # whatever a foreign object's to_dict raises
                raise SAEInputError(f"{why}: cfg.to_dict() failed ({type(e).__name__}: {e})") from None
        if not isinstance(raw, Mapping):
            raise SAEInputError(f"{why}: cfg must be an SAEConfig, a dict in cfg.json's form or SAELens's config "
                                f"(it has to_dict()), not {type(cfg).__name__}")
        cfg = _parsed(config_text(dict(raw)), why)
    try:
        known = cfg.architecture in ARCHITECTURES
    except TypeError:  # unhashable
        known = False
    if not known:  # config_json reads the architecture's kind
        raise SAEInputError(f"{why}: SAE architecture {cfg.architecture!r} is not supported; supported: "
                            f"{', '.join(ARCHITECTURES)}")
    try:
        text = config_text(config_json(cfg))
    except SAEInputError as e:
        raise SAEInputError(f"{why}: {e}") from None
    except Exception as e:  # whatever a field of the wrong type raises on the way
        raise SAEInputError(f"{why}: {type(e).__name__}: {e}") from None
    read = _parsed(text, why)
    if set(cfg.options) != set(read.options):  # a misspelt one would be saved, and never run
        raise SAEInputError(f"{why}: a {cfg.architecture} SAE's options are {sorted(read.options)}, not "
                            f"{sorted(cfg.options)}: dataclasses.replace(sae.cfg, options={{**sae.cfg.options, "
                            "name: value}) changes one")
    for field in dataclasses.fields(SAEConfig):
        mine, back = getattr(cfg, field.name), getattr(read, field.name)
        if field.name != "metadata" and not _same(mine, back):
            raise SAEInputError(f"{why}: cfg.{field.name}={mine!r} would not survive saving: a {cfg.architecture} "
                                f"SAE's cfg.json reads it back as {back!r}")
    return cfg


def _parsed(text: str, why: str) -> SAEConfig:
    try:
        return parse_config(json.loads(text))
    except SAELoadError as e:
        raise SAEInputError(f"{why}: {e}") from None
    except Exception as e:  # whatever an architecture's config reader raises on a value of the wrong type
        raise SAEInputError(f"{why}: {type(e).__name__}: {e}") from None


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # an array, compared elementwise
        return False


class _ReadWeights(dict):
    """Weights SAE.load read and checked (shapes, finite values) as it read them: SAE(cfg, weights)
    takes them as they are. A scale folded into them after reading is checked again."""


def _initial_weights(cfg: SAEConfig) -> dict:
    """A new SAE's weights, as SAELens's initialize_weights makes them: W_dec kaiming-uniform, W_enc
    its transpose (a transcoder's its own, kaiming-uniform), every other weight zeros. A temporal
    SAE's attention layers (torch's own initialization in SAELens) are not made: SAEInputError."""
    rng = np.random.default_rng()

    def kaiming(shape):  # torch's kaiming_uniform_ (fan_in, a=0): U(-b, b), b = sqrt(6 / fan_in)
        bound = math.sqrt(6 / shape[1])
        return rng.uniform(-bound, bound, shape).astype(np.float32)

    W_dec = kaiming((cfg.d_sae, cfg.d_out))
    W_enc = kaiming((cfg.d_in, cfg.d_sae)) if cfg.is_transcoder else np.ascontiguousarray(W_dec.T)
    shapes = {"b_enc": (cfg.d_sae,), "b_dec": (cfg.d_out,), "threshold": (cfg.d_sae,), "r_mag": (cfg.d_sae,),
              "b_mag": (cfg.d_sae,), "W_skip": (cfg.d_out, cfg.d_in)}
    zeros = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    try:  # those of them the architecture has
        return given_weights({"W_enc": W_enc, "W_dec": W_dec, **zeros}, cfg, spare_ok=True)
    except SAELoadError as e:
        raise SAEInputError(f"tinymech cannot make a new {cfg.architecture} SAE's weights ({e}): give them, "
                            "SAE(cfg, weights)") from None


def _unchanging(array) -> bool:
    """Whether nothing in this process can write an array's memory: read-only views all the
    way down to bytes or a file mapped for reading (as SAE.load maps its file; rewriting that
    file in place while the SAE is loaded is not supported). An array that owns its memory can
    be made writable again, and a read-only view or memoryview may have a writable base."""
    while isinstance(array, np.ndarray):
        if array.flags.writeable or array.base is None:
            return False
        array = array.base
    if isinstance(array, memoryview):
        if not array.readonly:
            return False
        array = array.obj
    if isinstance(array, bytes):
        return True
    return isinstance(array, mmap.mmap) and memoryview(array).readonly


def _rebuilt(state: dict) -> "SAE":
    """An SAE from its pickled state: the core object is rebuilt from the weights."""
    sae = SAE.__new__(SAE)
    sae.__setstate__(state)
    return sae


def _check_room(need: int, doing: str) -> None:
    """InvalidInputError where the core's dense output would not fit in memory (past it: a bare
    bad_alloc, or the OOM killer), as train_sae and the dashboards check theirs."""
    check_memory(need, doing, "pass fewer rows at a time, or keep only the active features (encode_sparse, "
                 "top_features)")


def _padded_to_csr(indices, values, d_sae: int) -> tuple[tuple, tuple]:
    """(lead shape, (offsets, indices, values)) from encode_sparse's padded [..., n]
    pair, whose index -1 marks the padding of tokens with fewer features.
    Indices are checked as they are, before any cast could wrap or truncate them."""
    indices, values = np.asarray(indices), np.asarray(values)
    if indices.shape != values.shape or indices.ndim == 0:
        raise SAEInputError("sparse features are (indices, values) of one shape [..., n]")
    if indices.dtype.kind not in "iu":
        raise FeatureIndexError(f"feature indices must be integers, got dtype {indices.dtype}")
    if values.dtype.kind not in "iuf":
        raise SAEInputError(f"feature values must be real numbers, got dtype {values.dtype}")
    wrong = (indices < -1) | (indices >= d_sae)
    if wrong.any():
        raise FeatureIndexError(f"feature index {indices[wrong][0]} is out of range for d_sae={d_sae} "
                                "(-1 marks padding)")
    if (values[indices == -1] != 0).any():
        raise SAEInputError("index -1 marks padding, whose value must be 0 (features count from 0 to d_sae - 1)")
    lead = indices.shape[:-1]
    shape = (int(np.prod(lead)), indices.shape[-1])
    indices, values = indices.reshape(shape).astype(np.int64), values.reshape(shape)
    active = indices >= 0
    offsets = np.concatenate([[0], np.cumsum(active.sum(1))])
    return lead, (offsets, indices[active], values[active])


WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip", "r_mag", "b_mag")  # the SAE's arrays
# what sae.d_in = ... (a property read from the config) is told
_FROM_CONFIG = "it is read from sae.cfg, and an SAE's widths and hook points are fixed when it is built"
SEQUENCE_SHAPE = "[batch, pos, d_in] (or [batch, pos, n_heads, d_head] for hook_z)"


class SAE:
    """A sparse autoencoder or transcoder with SAELens's semantics.

    Attributes: cfg (SAEConfig), W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_out],
    b_dec, threshold (JumpReLU), W_skip (skip transcoders), r_mag and b_mag (gated SAEs,
    whose b_enc is SAELens's b_gate) or None (a tied SAE's W_enc is W_dec's transpose and
    its b_enc zeros), extra_weights (a temporal SAE's attention layers, by SAELens's
    names), d_head (a hook_z SAE's, once encode has seen [..., n_heads, d_head]), labels
    {feature: label} and label_details {feature: dict} from feature_labels.json,
    log_sparsity (log10 feature densities from sparsity.safetensors) or None,
    metrics (metrics.json's contents, as tm.train_sae writes it) or None.

    The core computes with the weight arrays themselves: edits in place reach it, and
    assigning one (sae.W_dec = array or tensor) rebuilds it around the new array.
    """

    def __init__(self, cfg: SAEConfig, weights: dict | None = None, path: str | None = None,
                 labels: dict[int, str] | None = None, label_details: dict[int, dict] | None = None,
                 log_sparsity: np.ndarray | None = None):
        """cfg: an SAEConfig, or cfg.json's dict or SAELens's config (read as SAE.load reads
        cfg.json); weights: {name: array or tensor}, by SAE's names or as SAELens's state_dict
        names them, checked as SAE.load checks a weights file (a weight the architecture lacks
        is refused); None: new ones, as SAELens's SAE(cfg) initializes them."""
        cfg = _config_of(cfg, "cannot build an SAE with this config")
        # float32 C-contiguous (no copy for memory-mapped float32 weights)
        if weights is None:
            weights = _initial_weights(cfg)
        elif not isinstance(weights, _ReadWeights):  # (SAE.load's were checked as it read them)
            weights = given_weights(weights, cfg)
        weights = {k: v for k, v in weights.items() if v is not None}
        if log_sparsity is not None:
            log_sparsity = np.asarray(weight_array("log_sparsity", log_sparsity, SAEInputError))
            if log_sparsity.shape != (cfg.d_sae,):
                raise SAEInputError(f"log_sparsity must have shape [{cfg.d_sae}] (d_sae), got "
                                    f"{list(log_sparsity.shape)}")
        self.cfg = cfg
        self.path = path
        self.W_enc, self.b_enc = weights["W_enc"], weights["b_enc"]
        self.W_dec, self.b_dec = weights["W_dec"], weights["b_dec"]
        self.threshold, self.W_skip = weights.get("threshold"), weights.get("W_skip")
        self.r_mag, self.b_mag = weights.get("r_mag"), weights.get("b_mag")
        self.extra_weights = {k: v for k, v in weights.items() if k not in WEIGHTS}
        self.d_head = None
        self.labels = labels or {}
        self.label_details = label_details or {}
        self.log_sparsity = log_sparsity
        self.metrics = None
        self.use_error_term = False  # SAELens's default for model.add_sae(sae)
        self._replacing = threading.RLock()  # re-entrant: an array-like being read may assign another weight
        self._core = self._built_core(weights)

    def __setattr__(self, name: str, value) -> None:
        if "_core" not in self.__dict__:  # being built
            super().__setattr__(name, value)
        elif name in WEIGHTS or name == "cfg":
            # one at a time: each builds its core from the arrays the others left (two at once
            # could each keep the other's old array, read back as new)
            with self._replacing:
                if name == "cfg":
                    self._replace_config(value)
                else:
                    self._replace_weight(name, value)
        else:
            error = read_only_attribute(self, name, "sae", _FROM_CONFIG)  # d_in, ...: Python's says "no setter"
            if error:
                raise error
            super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in WEIGHTS or name in ("cfg", "extra_weights"):  # the core computes with them
            instead = ("assign a new config (sae.cfg = dataclasses.replace(sae.cfg, ...))" if name == "cfg" else
                       "assign another array of its shape" if name in WEIGHTS else "it is read with the weights")
            raise ReadOnlyError(f"sae.{name} cannot be deleted: the SAE's C++ core is built from it; {instead}")
        error = read_only_attribute(self, name, "sae", _FROM_CONFIG)
        if error:
            raise error
        super().__delattr__(name)

    def _weights_now(self, **replaced) -> dict:
        """The arrays the core is built from: the weights, extra_weights, then `replaced`."""
        weights = {**{k: self.__dict__.get(k) for k in WEIGHTS}, **self.extra_weights, **replaced}
        return {k: v for k, v in weights.items() if v is not None}

    def _replace_config(self, cfg) -> None:
        """sae.cfg = dataclasses.replace(sae.cfg, k=32): the core is rebuilt with it (it kept
        computing with the old one otherwise). The config gets the checks a cfg.json gets; one
        that moves the SAE (hook points), reshapes it or changes what its weights mean
        (architecture, tied weights) is refused: load the SAE with it instead. A refused config
        changes nothing."""
        if not isinstance(cfg, SAEConfig):
            raise SAEInputError(f"cfg must be an SAEConfig (dataclasses.replace(sae.cfg, ...)), got {type(cfg).__name__}")
        old = self.cfg
        fixed = [f for f in FIXED_FIELDS if not _same(getattr(cfg, f), getattr(old, f))]
        if fixed:
            raise SAEInputError(f"a new cfg cannot change {', '.join(fixed)} (the SAE's weights and the hook points "
                                f"it is attached at follow from them): load the SAE with them instead")
        cfg = _config_of(cfg, "this SAE cannot take the new cfg")  # the checks a cfg.json gets
        if ARCHITECTURES[old.architecture].tied(old.options) != ARCHITECTURES[old.architecture].tied(cfg.options):
            raise SAEInputError("a new cfg cannot change tied_weights (what the SAE's weights mean follows from it): "
                                "load the SAE with it instead")
        try:
            super().__setattr__("cfg", cfg)  # _core_config reads it
            core = self._built_core(self._weights_now())
        except Exception as e:  # whatever a field of the wrong type raises on the way
            super().__setattr__("cfg", old)
            raise SAEInputError(f"this SAE cannot take the new cfg: {e}") from None
        self._run_core(core)

    def _replace_weight(self, name: str, value) -> None:
        """sae.W_enc = array (any of WEIGHTS): the core is rebuilt around the new array, so
        encode, decode and attached SAEs use it (the core kept the old one otherwise), and
        what it derives (decoder norms, exp(r_mag), a tied W_enc) is derived again; the
        other arrays, extra_weights too, are read again. Checked first: a refused array
        changes nothing."""
        old = self.__dict__.get(name)
        if value is None or old is None:
            if value is None and old is None:
                return
            raise SAEInputError(f"a {self.cfg.architecture} SAE {'has no' if old is None else 'needs its'} {name}: "
                                f"it cannot be {'added' if old is None else 'removed'}")
        architecture = ARCHITECTURES[self.cfg.architecture]
        tied = architecture.tied(self.cfg.options)
        if tied and name == "W_enc":
            raise SAEInputError("this SAE's W_enc is W_dec's transpose (tied weights): assign W_dec instead")
        if name == "b_enc" and (tied or encoder_bias_name(architecture) is None):
            raise SAEInputError(f"a {self.cfg.architecture} SAE has no encoder bias: its b_enc stays zeros")
        array = weight_array(name, value, SAEInputError)  # too large for float32: refused just below
        if array.shape != old.shape:
            raise SAEInputError(f"{name} must have shape {list(old.shape)} (this SAE's), got {list(array.shape)}")
        if not np.isfinite(array).all():
            raise SAEInputError(f"{name} contains NaN or infinite values (as float32)")
        replaced = {name: array}
        if tied and name == "W_dec":
            replaced["W_enc"] = np.ascontiguousarray(array.T)
        try:
            core = self._built_core(self._weights_now(**replaced))
        except SAELoadError as e:  # e.g. an r_mag whose exp overflows
            raise SAEInputError(f"{name}: {e}") from None
        for key, v in replaced.items():
            super().__setattr__(key, v)
        self._run_core(core)

    def _run_core(self, core) -> None:
        """The core that encode, decode and every splice made over the old one (as_hook's,
        add_sae's, a generation's under way) run from now on."""
        core.take_splices(self._core)
        self._core = core

    def _built_core(self, weights: dict):
        try:
            config = self._core_config()
            config["fixed_encoder"] = _unchanging(weights.get("W_enc"))
            return _core.Sae(config, weights)
        except ValueError as e:  # weights that do not fit the config
            raise SAELoadError(str(e)) from e

    # pickle and copy.deepcopy: everything but the core object, which is rebuilt from the weights
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_core", "_replacing")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__["_replacing"] = threading.RLock()
        self.__dict__.setdefault("extra_weights", {})
        self.__dict__.setdefault("d_head", None)
        self._core = self._built_core(self._weights_now())

    def __reduce__(self):
        return _rebuilt, (self.__getstate__(),)

    def _core_config(self) -> dict:
        c = self.cfg
        if c.normalize_activations == "expected_average_only_in":
            raise SAELoadError(
                "this SAE expects inputs scaled by a dataset-wide constant that is not stored with its weights "
                "(normalize_activations='expected_average_only_in'); pass norm_scaling_factor= to SAE.load (the "
                "release's pretrained_saes.yaml lists it) or load it with SAE.from_pretrained"
            )
        module = ARCHITECTURES[c.architecture].module
        return {
            "d_in": int(c.d_in), "d_sae": int(c.d_sae), "d_out": int(c.d_out), "activation": c.activation,
            "k": int(c.k or 0), "apply_b_dec_to_input": bool(c.apply_b_dec_to_input),  # checked: numpy's too
            "rescale_acts_by_decoder_norm": bool(c.rescale_acts_by_decoder_norm),
            "norm": c.run_norm, "denormalize_output": not c.is_transcoder, "norm_factor": 1.0,
            "decode_bias": module.decode_bias(c) if hasattr(module, "decode_bias") else True,
            **(module.core_config(c) if hasattr(module, "core_config") else {}),
        }

    # ---- loading ----------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, norm_scaling_factor: float | None = None) -> "SAE":
        """An SAE from a directory in SAELens's format (cfg.json + sae_weights.safetensors).

        norm_scaling_factor: the dataset-wide input scale of an SAE trained with
        normalize_activations='expected_average_only_in', folded into the weights.
        """
        return cls._read(sae_dir(path), {}, norm_scaling_factor)

    def to(self, *args, **kwargs):
        """The SAE itself, taking SAELens's (torch's) arguments: to(device), to(dtype),
        to(device, dtype), to(tensor), device=, dtype=, non_blocking=. It stays on the CPU in
        float32: another device or dtype warns."""
        _on_cpu(*_device_and_dtype(args, kwargs))
        return self

    def cpu(self):
        return self

    def eval(self):
        """The SAE itself (nothing to switch off at inference)."""
        return self

    @classmethod
    def from_dict(cls, config_dict: dict, weights: dict | None = None) -> "SAE":
        """SAELens's SAE.from_dict: an SAE of the config cfg.json's dict (or SAELens's
        cfg.to_dict()) describes, read as SAE.load reads cfg.json, with the weights given (as
        SAE(cfg, weights) takes them) or, as SAELens's, new ones."""
        if not isinstance(config_dict, Mapping):
            raise SAEInputError(f"SAE.from_dict takes cfg.json's dict (SAELens's cfg.to_dict()), not "
                                f"{type(config_dict).__name__}")
        return cls(config_dict, weights)

    @classmethod
    def load_from_disk(cls, path: str | os.PathLike, device: str = "cpu", dtype: str | None = None) -> "SAE":
        """SAELens 6's name for load: the SAE in the folder `path`. device and dtype are
        accepted for SAELens's code; tinymech computes in float32 on the CPU."""
        _on_cpu(device, dtype)
        return cls.load(path)

    @classmethod
    def from_pretrained(cls, release: str, sae_id: str, device: str = "cpu", dtype: str = "float32",
                        force_download: bool = False) -> "SAE":
        """An SAE by SAELens release name and id (e.g. "gpt2-small-res-jb",
        "blocks.8.hook_resid_pre"), or by Hugging Face repo id and folder.
        See tinymech.sae_pretrained for how names are resolved. device and dtype are
        accepted as SAELens takes them (tinymech computes in float32 on the CPU);
        force_download is ignored (files come from the local Hugging Face cache)."""
        _on_cpu(device, dtype)
        path, overrides, factor = resolve(release, sae_id)
        return cls._read(path, overrides, factor, only_if_expected=True)

    @classmethod
    def _read(cls, path, overrides: dict, factor: float | None, only_if_expected: bool = False) -> "SAE":
        cfg = parse_config(read_json(path / CFG_FILE, "SAE config"), overrides)
        weights, cfg = unwhitened(path, read_weights(path, cfg), cfg)
        if factor is not None and (cfg.normalize_activations == "expected_average_only_in" or not only_if_expected):
            weights, cfg = _fold_scale(weights, cfg, factor)
        else:  # read_weights checked each array's shape and values: not a second pass over them
            weights = _ReadWeights(weights)
        labels, details = read_feature_labels(path, cfg.d_sae)
        sae = cls(cfg, weights, str(path), labels, details, read_log_sparsity(path, cfg.d_sae))
        sae.metrics = read_metrics(path)
        return sae

    def save(self, path: str | os.PathLike, dtype: str = "float32") -> str:
        """Write this SAE in SAELens's format (cfg.json, sae_weights.safetensors and, when
        known, sparsity.safetensors) into the folder `path`; returns the path. dtype:
        "float32", or "float16" for half the bytes (both readers widen it on loading; a
        weight beyond float16's range is refused). Everything is checked before anything is
        written: a refused or failed save leaves an SAE already in the folder as it was. Saved
        into the folder it was loaded from, it keeps the labels and metrics.json there; in another
        folder, those files of an SAE saved there before are removed (they describe that SAE)."""
        path = folder_to_write(path, "path", required="the SAE", error=SAEInputError)
        architecture = ARCHITECTURES[self.cfg.architecture]
        weights = {k: getattr(self, k) for k in WEIGHTS}
        bias = weights.pop("b_enc")
        if architecture.tied(self.cfg.options):  # SAELens stores W_dec only
            del weights["W_enc"]
        elif encoder_bias_name(architecture) is not None:
            weights[encoder_bias_name(architecture)] = bias
        # its own folder keeps its labels and metrics; in another, those of an SAE saved there before go
        own = self.path is not None and os.path.realpath(self.path) == os.path.realpath(path)
        return str(write_sae_folder(path, config_json(self.cfg), weights, self.log_sparsity, dtype=dtype,
                                    extra=self.extra_weights, keep=(LABELS_FILE, METRICS_FILE) if own else ()))

    def __repr__(self):
        c = self.cfg
        hooks = c.hook_name if c.output_hook == c.hook_name else f"{c.hook_name} -> {c.output_hook}"
        out = "" if c.d_out == c.d_in else f" -> {c.d_out}"
        return printable(f"SAE({c.architecture}: {c.d_in} -> {c.d_sae}{out} at {hooks})")  # hook names from a file

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        return self.cfg.d_out

    @property
    def hook_name(self) -> str | None:
        return self.cfg.hook_name

    # ---- encode / decode ----------------------------------------------------------

    def _rows(self, acts, width: int, what: str, out: tuple[int, str] = (0, "")) -> tuple[np.ndarray, tuple]:
        """acts as float32 rows [n, width] and its leading shape; a hook_z SAE reads
        [.., n_heads, d_head] as one vector, as SAELens does, and keeps its d_head. out: (floats
        the core returns per row, what it does with "{rows}" rows): refused, before any copy,
        where those and the float32 copy of acts would not fit in the machine's memory."""
        a = array_of(acts, what, SAEInputError)
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise SAEInputError(f"{what} must be numeric, got dtype {a.dtype}")
        if self.cfg.reshape_activations == "hook_z" and a.ndim >= 2 and a.shape[-1] * a.shape[-2] == width:
            lead = a.shape[:-2]
            if width == self.d_in:
                self.d_head = a.shape[-1]
        elif a.ndim >= 1 and a.shape[-1] == width:
            lead = a.shape[:-1]
        else:
            raise SAEInputError(f"{what} have shape {list(a.shape)} but the SAE needs a last axis of {width}")
        floats, doing = out
        if floats:
            rows = math.prod(lead)
            copied = width if a.dtype != np.float32 or not a.flags.c_contiguous else 0
            _check_room(rows * (floats + copied) * 4, doing.format(rows=rows))
        return np.ascontiguousarray(a, dtype=np.float32).reshape(-1, width), lead

    def _input(self, acts, out: tuple[int, str] = (0, "")) -> tuple[np.ndarray, tuple, int]:
        """(rows [n, d_in], leading shape, seq_len): a temporal SAE's rows are sequences of
        seq_len positions, its activations [batch, pos, d_in]; 0 for others. out: as _rows'."""
        x, lead = self._rows(acts, self.d_in, "activations", out)
        if not ARCHITECTURES[self.cfg.architecture].sequential:
            return x, lead, 0
        if len(lead) != 2:
            raise SAEInputError(f"a temporal SAE attends over the positions of each sequence: its activations are "
                                f"{SEQUENCE_SHAPE}, not shape {list(np.shape(acts))}")
        return x, lead, max(lead[1], 1)

    def _head_shaped(self, out: np.ndarray) -> np.ndarray:
        """A hook_z SAE's output [..., d_out] as [..., n_heads, d_head], as SAELens's decode
        gives it, once d_head is known (from the activations encode saw)."""
        if self.cfg.reshape_activations != "hook_z" or not self.d_head or self.d_out % self.d_head:
            return out
        return out.reshape(out.shape[:-1] + (self.d_out // self.d_head, self.d_head))

    def encode(self, acts) -> np.ndarray:
        """Feature activations [..., d_sae] of activations [..., d_in]."""
        x, lead, seq_len = self._input(acts, (self.d_sae, f"encoding {{rows:,}} rows into {self.d_sae:,} features"))
        return self._core.encode(x, seq_len).reshape(lead + (self.d_sae,))

    def encode_with_predictions(self, acts) -> tuple[np.ndarray, np.ndarray]:
        """A temporal SAE's (novel codes, predicted codes), each [batch, pos, d_sae]: encode
        gives the first, forward decodes their sum."""
        if not ARCHITECTURES[self.cfg.architecture].sequential:
            raise SAEInputError(f"a {self.cfg.architecture} SAE predicts no codes from context (a temporal SAE does)")
        x, lead, seq_len = self._input(acts, (2 * self.d_sae, f"encoding {{rows:,}} rows into 2 x {self.d_sae:,} "
                                                             "codes"))
        return tuple(a.reshape(lead + (self.d_sae,)) for a in self._core.encode_predicted(x, seq_len))

    def encode_sparse(self, acts, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The active features of each token: (indices [..., n], values [..., n]),
        largest activation first, n = k or the most active features of any token;
        indices are -1 (values 0) where a token has fewer active features."""
        x, lead, seq_len = self._input(acts)
        offsets, idx, val = self._core.encode_sparse(x, seq_len)
        counts = np.diff(offsets)
        n = int(counts.max(initial=0)) if k is None else self._k(k, at_most=self.d_sae)
        rows = np.repeat(np.arange(len(counts)), counts)
        order = np.lexsort((-val, rows))  # by row, then largest value first
        rank = np.arange(len(order)) - offsets[rows]
        keep = rank < n
        indices = np.full((len(counts), n), -1, np.int64)
        values = np.zeros((len(counts), n), np.float32)
        indices[rows[keep], rank[keep]] = idx[order][keep]
        values[rows[keep], rank[keep]] = val[order][keep]
        return indices.reshape(lead + (n,)), values.reshape(lead + (n,))

    def top_features(self, acts, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k largest feature activations of each token, as torch.topk on the
        dense activations: (indices [..., k], values [..., k]), largest first."""
        k = self._k(k, at_most=self.d_sae)
        # int64 + float32 each
        x, lead, seq_len = self._input(acts, (3 * k, f"taking the top {k:,} features of {{rows:,}} rows"))
        idx, val = self._core.top_features(x, k, seq_len)
        return idx.reshape(lead + (k,)), val.reshape(lead + (k,))

    def decode(self, features, acts=None) -> np.ndarray:
        """Reconstruction [..., d_out] from dense features [..., d_sae] or from the
        sparse (indices, values) pair that encode_sparse / top_features return; a
        hook_z SAE's is [..., n_heads, d_head], as SAELens's, once d_head is known
        (encode or acts saw [..., n_heads, d_head]). A temporal SAE's decodes the
        features given, not the codes it predicts (forward adds those).

        acts (the encoded input) is needed to undo a per-token input
        normalization (constant_norm_rescale, layer_norm); when given to a skip
        transcoder its skip term is added too."""
        return self._head_shaped(self._decode_rows(features, acts))

    def _decode_rows(self, features, acts=None) -> np.ndarray:
        """decode's reconstruction [..., d_out], never split into heads (SAELens's hook_sae_recons)."""
        if self.cfg.run_norm in PER_TOKEN_NORMS and acts is None and not self.cfg.is_transcoder:
            raise SAEInputError(f"this SAE normalizes its input ({self.cfg.normalize_activations}); pass the "
                                "input activations as decode(features, acts) to undo it")
        x = None if acts is None else self._rows(acts, self.d_in, "activations")[0]
        if isinstance(features, tuple):
            if len(features) != 2:
                raise SAEInputError("sparse features are an (indices, values) pair")
            lead, args, core_decode = *_padded_to_csr(*features, self.d_sae), self._core.decode_sparse
            _check_room(math.prod(lead) * self.d_out * 4, f"decoding {math.prod(lead):,} rows")
        else:
            f, lead = self._rows(features, self.d_sae, "features", (self.d_out, "decoding {rows:,} rows"))
            args, core_decode = (f,), self._core.decode
        try:
            out = core_decode(*args, x)
        except IndexError as e:
            raise FeatureIndexError(str(e)) from e
        except ValueError as e:  # features and acts cover different numbers of rows
            raise SAEInputError(str(e)) from e
        return out.reshape(lead + (self.d_out,))

    def forward(self, acts) -> np.ndarray:
        """decode(encode(acts)) (+ the skip term; a temporal SAE decodes its predicted codes
        too): the reconstruction [..., d_out]."""
        a = array_of(acts, "activations", SAEInputError)
        inside = 2 * self.d_sae if ARCHITECTURES[self.cfg.architecture].sequential else 0  # codes and predicted
        x, lead, seq_len = self._input(a, (self.d_out + inside, "reconstructing {rows:,} rows"))
        out = self._core.forward(x, seq_len)
        if len(lead) == a.ndim - 2 and self.d_out == self.d_in:  # hook_z: back to [.., head, d_head]
            return out.reshape(a.shape)
        return out.reshape(lead + (self.d_out,))

    __call__ = forward

    # ---- splicing and features --------------------------------------------------------

    def as_hook(self, keep_error: bool = False):
        """A hook spec (name, action) that splices this SAE into a model: usable in
        run_with_hooks(fwd_hooks=[...]), generate(hooks=[...]) and model.hooks([...]).

        The activation is replaced by the reconstruction, or, with keep_error,
        left as it was (the error term is added back). A transcoder's spec names
        its input and output hooks: ([hook_name, hook_name_out], action)."""
        names = splice_hooks(self.cfg)
        with self._replacing:  # not between an assignment's taking the splices over and its new core
            splice = _core.SaeSplice(self._core, bool(keep_error), names[0], names[-1])  # the core keeps track of it
        return (names if len(names) == 2 else names[0]), splice

    def _k(self, k, at_most: int | None = None) -> int:
        k = whole_number(k, "k", 0, error=SAEInputError)
        if at_most is not None and k > at_most:
            raise SAEInputError(f"k={k} exceeds d_sae={at_most}")
        return k

    def _feature(self, feature) -> int:
        f = whole_number(feature, "a feature index", error=FeatureIndexError)
        if not 0 <= f < self.d_sae:
            raise FeatureIndexError(f"feature {f} is out of range for an SAE with d_sae={self.d_sae}")
        return f

    def feature_activations(self, model, input, feature: int, prepend_bos: bool | None = None) -> np.ndarray:
        """One feature's activation at every token of the input: [batch, pos]."""
        check_model(model, hint=" (sae.feature_activations(model, input, feature))")
        f = self._feature(feature)
        check_hooks(model, self.cfg)
        _, cache = model.run_with_cache(input, names_filter=[self.cfg.hook_name], prepend_bos=prepend_bos,
                                       return_type=None)
        return self.encode(cache[self.cfg.hook_name])[..., f]

    def logit_effects(self, model, feature: int, k: int = 10) -> LogitEffects:
        """The tokens the feature's decoder direction promotes and suppresses
        directly: W_dec[f] @ W_U, top k each way, as ids and as strings."""
        check_model(model, hint=" (sae.logit_effects(model, feature, k))")
        f = self._feature(feature)
        if self.d_out != model.cfg.d_model:
            raise SAEInputError(f"the SAE writes {self.d_out} numbers, not the model's d_model={model.cfg.d_model}")
        effects = self.W_dec[f] @ model.W_U
        k = min(self._k(k), effects.shape[0])
        order = np.argsort(-effects, kind="stable")
        up, down = order[:k], order[::-1][:k]
        return LogitEffects(up, effects[up], down, effects[down], *(_decoded(model, ids) for ids in (up, down)))

    def steer(self, feature: int, strength: float, mode: str = "add", positions=None):
        """A hook spec that steers the model with one feature, for generate(hooks=[...]).

        mode "add": add strength * W_dec[feature] to the output hook's activation
        (at the given absolute positions, or all). mode "clamp": splice the SAE
        keeping its error term and set the feature's activation to `strength`,
        so only that feature's contribution changes (at the given absolute
        positions, or all)."""
        f = self._feature(feature)
        strength = real_number(strength, "the steering strength", error=HookError)
        if not math.isfinite(strength):
            raise HookError(f"steering strength must be finite, got {strength!r}")
        if mode == "add":
            # the direction as it is now (a view of W_dec would follow edits in place, and not assignments)
            direction = np.array(self.W_dec[f], dtype=np.float32)
            return self.cfg.output_hook, _hooks.add(direction, coeff=float(strength), positions=positions)
        if mode != "clamp":
            raise HookError(f"steering mode must be 'add' or 'clamp', not {mode!r}")
        name, splice = self.as_hook(keep_error=True)
        splice.set_clamps([f], [float(strength)], _hooks._ints(positions, "positions"))
        return name, splice


