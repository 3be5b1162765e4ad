"""Reading SAELens's on-disk SAE format: cfg.json + sae_weights.safetensors
(+ optional sparsity.safetensors, feature_labels.json).

Configs of every SAELens version are accepted: v6 keeps the hook and model
details under "metadata"; older ones are flat, name the hook "hook_point"
and the activation "activation_fn_str", and default apply_b_dec_to_input to
True. Weights are memory-mapped, never copied when stored as float32.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import _core
from ..errors import (
    InvalidInputError,
    ModelLoadError,
    ReadOnlyError,
    SAEInputError,
    SAELoadError,
    SAENotFoundError,
    true_or_false,
)
from ..io.files import read_json as read_json_file
from ..io.safetensors import SafetensorsFile
from ..text import printable
from .architectures import ARCHITECTURES, DEFAULT, OLD_ACTIVATION_FNS

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
LABELS_FILE = "feature_labels.json"
NOTES_FILE = "feature_notes.json"  # the user's labels and notes (tinymech.sae.dashboards.labels)
METRICS_FILE = "metrics.json"

# SAELens's SAEConfig's (an architecture may take others: its NORMALIZATIONS)
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm", "covariance_whitening")
PER_TOKEN_NORMS = ("constant_norm_rescale", "layer_norm")  # undone with the token's own input
# Run as no normalization: the whitening is folded into the weights on loading when the
# checkpoint keeps it, and SAELens's SAE applies none at run time either
UNAPPLIED_NORMS = ("covariance_whitening",)
_OLD_KEYS = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
             "activation_fn_str": "activation_fn"}


class SAEMetadata(dict):
    """cfg.json's fields (metadata flattened) read as a dict or, as SAELens 6 reads
    them, as attributes: cfg.metadata.hook_name; a field the file lacks is None. The
    config's own fields and options read as the config has them, and are not changed
    here (the SAE would not follow): other keys are the caller's."""

    def __getattr__(self, name: str):
        if name.startswith("_"):  # dunders and private names stay real attribute lookups
            raise AttributeError(name)
        return self.get(name)

    def __setattr__(self, name: str, value) -> None:
        self[name] = value

    def _keep(self, names) -> None:
        """Refuses a change to any of these names that the config owns (set by SAEConfig)."""
        options = self.__dict__.get("_options", {})
        for name in names:
            if name in CONFIG_FIELDS or name in options:
                raise unchangeable(name, options)

    def __setitem__(self, name, value) -> None:
        self._keep([name])
        super().__setitem__(name, value)

    def __delitem__(self, name) -> None:
        self._keep([name])
        super().__delitem__(name)

    def update(self, *args, **kwargs) -> None:
        new = dict(*args, **kwargs)
        self._keep(new)
        super().update(new)

    def __ior__(self, other):
        self.update(other)
        return self

    def setdefault(self, name, default=None):
        if name not in self:
            self._keep([name])
        return super().setdefault(name, default)

    def pop(self, name, *default):
        self._keep([name])
        return super().pop(name, *default)

    def popitem(self):
        self._keep(list(self)[-1:])
        return super().popitem()

    def clear(self) -> None:
        self._keep(self)
        super().clear()

    def __reduce__(self):  # pickle and copy rebuild it whole (item by item would be refused)
        return type(self), (dict(self),), self.__dict__

    def to_dict(self) -> dict:
        return dict(self)


class FrozenOptions(dict):
    """An SAE config's options (its architecture's own fields), read-only: the SAE is built
    from them, so an edit in place would read back but never run."""

    def _refuse(self, *args, **kwargs):
        raise ReadOnlyError("an SAE's cfg.options are frozen: assign a new config, sae.cfg = "
                            "dataclasses.replace(sae.cfg, options={**sae.cfg.options, name: value})")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):  # pickle and copy rebuild it whole (item by item would be refused)
        return FrozenOptions, (dict(self),)


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """An SAE's configuration with SAELens's field names (metadata flattened)."""

    architecture: str
    d_in: int
    d_sae: int
    d_out: int
    hook_name: str | None
    hook_name_out: str | None = None
    hook_head_index: int | None = None
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    k: int | None = None
    rescale_acts_by_decoder_norm: bool = False
    model_name: str | None = None
    prepend_bos: bool = True
    context_size: int | None = None
    model_from_pretrained_kwargs: dict = dataclasses.field(default_factory=dict)
    neuronpedia_id: str | None = None
    metadata: SAEMetadata = dataclasses.field(default_factory=SAEMetadata)  # everything the file said, flattened
    options: dict = dataclasses.field(default_factory=dict)  # the architecture's own fields (cfg.residual_threshold)

    def __post_init__(self):
        for name in ("metadata", "options"):  # dict() of a list or a string fails, or reads nonsense
            value = self.__dict__.get(name)
            if value is not None and not isinstance(value, Mapping):
                raise SAEInputError(f"an SAE config's {name} is a dict, not {type(value).__name__}")
        object.__setattr__(self, "options", FrozenOptions(self.__dict__.get("options") or {}))
        # the file's fields, those the config owns as the config has them (one made by
        # dataclasses.replace read the old ones there): those the file had, and those set
        # to other than their default
        owned = dict(self.options)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in CONFIG_FIELDS - {"options"} and (f.name in (self.metadata or {}) or _set(f, value)):
                owned[f.name] = value
        metadata = SAEMetadata(dict(self.metadata or {}, **owned))
        object.__setattr__(metadata, "_options", dict(self.options))
        object.__setattr__(self, "metadata", metadata)

    def __setstate__(self, state: dict) -> None:  # a pickle from before options and metadata were kept as they are
        self.__dict__.update(state)
        self.__post_init__()

    def __getattr__(self, name: str):
        """An architecture's own field, as SAELens's config classes have them (cfg.n_heads)."""
        options = self.__dict__.get("options") or {}
        if name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def device(self) -> str:
        """Where the SAE computes, as SAELens names it: always the CPU."""
        return "cpu"

    @property
    def dtype(self) -> str:
        return "float32"

    @property
    def activation(self) -> str:
        return ARCHITECTURES[self.architecture].activation

    @property
    def is_transcoder(self) -> bool:
        return ARCHITECTURES[self.architecture].is_transcoder

    @property
    def output_hook(self) -> str | None:
        """Where the reconstruction goes: hook_name_out for transcoders, else hook_name."""
        return self.hook_name_out or self.hook_name

    @property
    def run_norm(self) -> str:
        """The normalization applied when encoding ("none" for one folded or not applied)."""
        return "none" if self.normalize_activations in UNAPPLIED_NORMS else self.normalize_activations


CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(SAEConfig)) - {"metadata"}


# Fields that place or shape an SAE or say what its weights mean: a new config cannot change them.
FIXED_FIELDS = ("architecture", "d_in", "d_sae", "d_out", "hook_name", "hook_name_out", "hook_head_index",
                "reshape_activations")


def _set(field: dataclasses.Field, value) -> bool:
    """Whether a config field holds other than its default (a required one, fixed when
    the SAE loads, never: the metadata has it where the file did)."""
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        return False
    try:
        return bool(value != default)
    except Exception:  # an array compares elementwise: set (and refused when an SAE is built with it)
        return True


def unchangeable(name: str, options) -> ReadOnlyError:
    """The error for changing an SAE config's field or option `name` in place, and what to do instead."""
    if name in FIXED_FIELDS:
        return ReadOnlyError(f"an SAE's {name} is fixed when it loads (its weights and where it attaches follow "
                             "from it): load the SAE with another instead")
    if name in options:
        return ReadOnlyError(f"an SAE's config is frozen: cfg.{name}, an option of its architecture, cannot be changed "
                             f"in place; assign a new config, sae.cfg = dataclasses.replace(sae.cfg, "
                             f"options={{**sae.cfg.options, {name!r}: ...}})")
    return ReadOnlyError(f"an SAE's config is frozen: cfg.{name} cannot be changed in place; assign a new config, "
                         f"sae.cfg = dataclasses.replace(sae.cfg, {name}=...), which the SAE is rebuilt with")


def _frozen(cfg: SAEConfig, name: str, value=None) -> None:
    options = cfg.__dict__.get("options") or {}
    if name not in CONFIG_FIELDS and name != "metadata" and name not in options:
        raise ReadOnlyError(f"an SAE's config is frozen, and {name!r} is not one of its fields")
    raise unchangeable(name, options)


# In place of dataclasses' FrozenInstanceError, which names no way out (a frozen
# dataclass may not define these in its body).
SAEConfig.__setattr__ = _frozen
SAEConfig.__delattr__ = _frozen


def read_json(path: Path, what: str):
    return read_json_file(path, what, SAELoadError, top=None)


def _flatten(raw: dict) -> dict:
    """One flat dict: old keys renamed, metadata lifted to the top level."""
    flat = {_OLD_KEYS.get(k, k): v for k, v in raw.items() if k != "metadata"}
    meta = raw.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise SAELoadError(f"cfg.json: 'metadata' must be an object, got {meta!r}")
    for k, v in (meta or {}).items():
        flat.setdefault(_OLD_KEYS.get(k, k), v)
    return flat


_ONE_BLOCK = _core.hook_names(1)  # every kind of hook point in forward order, block 0's as "blocks.0.*"


def _forward_place(name: str) -> tuple[float, int | None] | None:
    """Where a pass meets a hook point: (block, place among the points of a
    block); the embeddings' before block 0, ln_final's after every block. The
    place is None for a block's point tinymech does not have; None for a name
    outside the blocks that it does not have."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m:
        key = f"blocks.0.{m.group(2)}"
        return int(m.group(1)), _ONE_BLOCK.index(key) if key in _ONE_BLOCK else None
    if name not in _ONE_BLOCK:
        return None
    place = _ONE_BLOCK.index(name)
    return (-1 if name.startswith("hook_") else float("inf")), place


def _comes_before(a: str, b: str) -> bool:
    """Whether a pass surely meets hook point a before hook point b."""
    pa, pb = _forward_place(a), _forward_place(b)
    if pa is None or pb is None:
        return False
    if pa[0] != pb[0]:
        return pa[0] < pb[0]
    return pa[1] is not None and pb[1] is not None and pa[1] < pb[1]


def _check_hooks(hook_in, hook_out, d_in: int, d_out: int) -> None:
    """An SAE reads hook_name and writes hook_name_out (if given, else
    hook_name): a later hook point, or the same one at the same width."""
    for key, name in (("hook_name", hook_in), ("hook_name_out", hook_out)):
        if name is not None and not isinstance(name, str):
            raise SAELoadError(f"cfg.json: {key} must be a string, got {name!r}")
    hook_out = hook_out or hook_in
    if hook_in is None:
        return
    shown_in, shown_out = printable(hook_in), printable(hook_out)  # names from a file, for a terminal
    if hook_out == hook_in and d_in != d_out:
        raise SAELoadError(f"cfg.json: the SAE reads and writes {shown_in} but d_in={d_in} != d_out={d_out}; "
                           "hook_name_out must name the later hook point it writes")
    if _comes_before(hook_out, hook_in):
        raise SAELoadError(f"cfg.json: the SAE reads {shown_in} but writes {shown_out}, which comes before it in a "
                           "forward pass (are hook_name and hook_name_out swapped?)")


def _int(flat: dict, key: str) -> int:
    v = flat.get(key)
    if type(v) is not int or v <= 0:
        raise SAELoadError(f"cfg.json: {key!r} must be a positive integer, got {v!r}")
    return v


def _flag(flat: dict, key: str, default: bool) -> bool:
    """A true-or-false field: null, 0 and 1 read as bool() reads them (as before, and as SAELens's
    code uses them); anything else but True or False is refused (a string such as "no" reads as True)."""
    v = flat.get(key, default)
    if v is None or (type(v) is int and v in (0, 1)):
        return bool(v)
    return true_or_false(v, f"cfg.json: {key}", SAELoadError)


def _optional(flat: dict, key: str, kind: str):
    """A field tinymech only records: null or a string (kind "text"), or a whole number ("count").
    Others' files write these loosely (128.0, -1 for unset, a number for a name), and SAELens loads
    them: a whole float is read as its int, a number as its text, anything else as null with a warning."""
    v = flat.get(key)
    if v is None:
        return None
    if kind == "count":
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    elif isinstance(v, str):
        return v
    elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return str(v)
    warnings.warn(printable(f"cfg.json: {key} {v!r:.60} is not {'a whole number' if kind == 'count' else 'a text'}: "
                            "read as null (tinymech only records it)", keep=""), stacklevel=4)
    return None


def _object(flat: dict, key: str) -> dict:
    v = flat.get(key) or {}
    if not isinstance(v, dict):
        raise SAELoadError(f"cfg.json: {key!r} must be an object, got {v!r}")
    return v


def _architecture(flat: dict) -> str:
    """The registry's name for the config's architecture (pre-6 ones named it by activation_fn)."""
    default = ARCHITECTURES[DEFAULT].activation
    activation_fn = flat.get("activation_fn") or default
    arch = flat.get("architecture") or DEFAULT
    if arch == DEFAULT and activation_fn != default:
        if not isinstance(activation_fn, str) or activation_fn not in OLD_ACTIVATION_FNS:
            raise SAELoadError(f"activation function {activation_fn!r} is not supported "
                               f"(supported: {', '.join([default, *OLD_ACTIVATION_FNS])})")
        arch = OLD_ACTIVATION_FNS[activation_fn]
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise SAELoadError(f"SAE architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    return arch


def parse_config(raw: Any, overrides: dict | None = None) -> SAEConfig:
    """SAEConfig from a cfg.json dict of any SAELens version."""
    if not isinstance(raw, dict):
        raise SAELoadError("cfg.json must hold a JSON object")
    flat = _flatten(raw)
    flat.update(overrides or {})
    arch = _architecture(flat)
    d_in, d_sae = _int(flat, "d_in"), _int(flat, "d_sae")
    is_transcoder = ARCHITECTURES[arch].is_transcoder
    d_out = _int(flat, "d_out") if is_transcoder else d_in
    norm = flat.get("normalize_activations")
    if isinstance(norm, bool) or norm is None:  # pre-6: a flag meaning the dataset-wide constant
        norm = "expected_average_only_in" if norm else "none"
    norms = getattr(ARCHITECTURES[arch].module, "NORMALIZATIONS", NORMALIZATIONS)
    if not isinstance(norm, str) or norm not in norms:
        raise SAELoadError(f"normalize_activations {norm!r} is not supported by a {arch} SAE; supported: "
                           f"{', '.join(norms)}")
    reshape = flat.get("reshape_activations") or ("hook_z" if "hook_z" in str(flat.get("hook_name", "")) else "none")
    if not isinstance(reshape, str) or reshape not in ("none", "hook_z"):
        raise SAELoadError(f"reshape_activations {reshape!r} is not supported")
    apply_b_dec = _flag(flat, "apply_b_dec_to_input", not is_transcoder)
    if is_transcoder and apply_b_dec:
        raise SAELoadError("apply_b_dec_to_input cannot be used by a transcoder (b_dec lives in the output space)")
    extra = dict(ARCHITECTURES[arch].module.config(flat, d_sae))
    k = extra.pop("k", None)
    hook, hook_out = flat.get("hook_name"), flat.get("hook_name_out")
    _check_hooks(hook, hook_out, d_in, d_out)
    return SAEConfig(
        architecture=arch,
        d_in=d_in,
        d_sae=d_sae,
        d_out=d_out,
        hook_name=hook,
        hook_name_out=hook_out,
        hook_head_index=_optional(flat, "hook_head_index", "count"),
        apply_b_dec_to_input=apply_b_dec,
        normalize_activations=norm,
        reshape_activations=reshape,
        k=k,
        rescale_acts_by_decoder_norm=_flag(flat, "rescale_acts_by_decoder_norm", False),
        model_name=_optional(flat, "model_name", "text"),
        prepend_bos=_flag(flat, "prepend_bos", True),
        context_size=_optional(flat, "context_size", "count"),
        model_from_pretrained_kwargs=dict(_object(flat, "model_from_pretrained_kwargs")),
        neuronpedia_id=_optional(flat, "neuronpedia_id", "text"),
        metadata=SAEMetadata(flat, prepend_bos=_flag(flat, "prepend_bos", True)),  # SAELens's default
        options=extra,
    )


def _tensor(sf: SafetensorsFile, name: str, shape: tuple) -> np.ndarray:
    if tuple(sf.shape(name)) != shape:
        raise SAELoadError(f"{sf.path}: {name!r} has shape {list(sf.shape(name))} but the config needs {list(shape)}")
    try:
        t = sf.to_float32(name)
    except ModelLoadError as e:
        raise SAELoadError(str(e)) from e
    if not np.isfinite(t).all():
        raise SAELoadError(f"{sf.path}: {name!r} contains NaN or infinite values")
    return t


def encoder_bias_name(architecture) -> str | None:
    """The name the architecture saves its b_enc under (a gated SAE's is b_gate; None: it has none)."""
    return getattr(architecture.module, "ENCODER_BIAS", "b_enc")


def read_weights(path: Path, cfg: SAEConfig) -> dict[str, np.ndarray | None]:
    """The SAE's tensors as float32 arrays, shape- and finiteness-checked."""
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise SAENotFoundError(f"{path} has no {WEIGHTS_FILE}")
    try:
        sf = SafetensorsFile(file)
    except ModelLoadError as e:
        raise SAELoadError(str(e)) from e
    return _weights_in(sf, cfg, f"{file} lacks")


def _weights_in(sf, cfg: SAEConfig, lacks: str) -> dict[str, np.ndarray | None]:
    """The tensors an SAE of this config has, read from sf (a weights file, or _GivenArrays),
    by the names SAE keeps them under; `lacks` begins the message naming those sf lacks."""
    architecture = ARCHITECTURES[cfg.architecture]
    b_enc = encoder_bias_name(architecture)
    tied = architecture.tied(cfg.options)
    shapes = {"W_dec": (cfg.d_sae, cfg.d_out), "b_dec": (cfg.d_out,)}
    if not tied:
        shapes["W_enc"] = (cfg.d_in, cfg.d_sae)
    if b_enc is not None and not tied:
        shapes[b_enc] = (cfg.d_sae,)
    missing = [n for n in shapes if n not in sf]
    if missing:
        raise SAELoadError(f"{lacks} {', '.join(missing)} (has {printable(', '.join(sorted(sf.keys())))})")
    weights: dict[str, np.ndarray | None] = {n: _tensor(sf, n, s) for n, s in shapes.items()}
    if tied:  # SAELens's W_enc is a view of W_dec then
        weights["W_enc"] = np.ascontiguousarray(weights["W_dec"].T)
    # an architecture without an encoder bias (tied, or ENCODER_BIAS None) adds zeros
    weights["b_enc"] = weights.pop(b_enc) if b_enc in shapes else np.zeros(cfg.d_sae, np.float32)
    weights["threshold"] = weights["W_skip"] = None
    weights.update(architecture.module.weights(sf, functools.partial(_tensor, sf), cfg))
    if architecture.has_skip:
        if "W_skip" not in sf:
            raise SAELoadError(f"{sf.path}: a skip transcoder needs a 'W_skip' tensor")
        weights["W_skip"] = _tensor(sf, "W_skip", (cfg.d_out, cfg.d_in))
    if "scaling_factor" in sf and not np.all(sf.to_float32("scaling_factor") == 1):
        raise SAELoadError(f"{sf.path}: a fine-tuning scaling_factor other than 1 is not supported")
    return weights


def weight_array(name: str, value, error=SAELoadError) -> np.ndarray:
    """A weight given as an array or a tensor (a torch Parameter, a bfloat16 one too) as float32
    C-contiguous (no copy where it is one); `error` unless it holds real numbers. Not checked
    for finiteness: the caller says where a NaN came from."""
    try:
        if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor or Parameter: its values
            value = value.detach().cpu()
            value = value.float() if str(value.dtype) == "torch.bfloat16" else value  # numpy has no bfloat16
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise error(f"{name} must be real numbers, got dtype {array.dtype}")
        with np.errstate(over="ignore"):  # too large for float32: the caller refuses the inf
            return np.ascontiguousarray(array, dtype=np.float32)
    except error:
        raise
    except Exception as e:  # whatever an array-like raises when read (a meta tensor, a failing __array__)
        raise error(f"{name} cannot be read as an array of real numbers: {type(e).__name__}: {e}") from None


class _GivenArrays:
    """SAE(cfg, weights)'s arrays, read as a weights file is read (read_weights' checks) by the
    names SAELens saves them under: a gated SAE's encoder bias as b_gate or as b_enc (the name
    SAE keeps it under). Records the names read."""

    path = "the weights"

    def __init__(self, weights: Mapping, architecture):
        self._values = {}
        for name, value in weights.items():
            if not isinstance(name, str):
                raise SAELoadError(f"the weights are named by strings (W_enc, b_enc, ...), not {name!r}")
            if value is not None:  # None: the SAE has no such weight
                self._values[name] = value
        bias = encoder_bias_name(architecture)
        if bias not in (None, "b_enc") and "b_enc" in self._values:
            if bias in self._values:
                raise SAELoadError(f"the weights give both b_enc and {bias}, which are one weight of a "
                                   f"{architecture.name} SAE (SAELens names it {bias}): give one")
            self._values[bias] = self._values.pop("b_enc")
        self._arrays: dict[str, np.ndarray] = {}
        self.read: set[str] = set()

    def keys(self):
        return self._values.keys()

    def __contains__(self, name) -> bool:
        return name in self._values

    def shape(self, name: str) -> tuple:
        return self._array(name).shape

    def to_float32(self, name: str) -> np.ndarray:
        self.read.add(name)
        return self._array(name)

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = weight_array(name, self._values[name])
        return self._arrays[name]


def given_weights(weights, cfg: SAEConfig, spare_ok: bool = False) -> dict[str, np.ndarray | None]:
    """SAE(cfg, weights)'s arrays (a dict of arrays or tensors: SAE's names, or SAELens's state
    dict), with the checks SAE.load gives a weights file: those the architecture needs, each of
    its shape and finite. A weight the architecture lacks is refused (it would run, then be
    lost on saving) unless spare_ok; a tied SAE's W_enc, and the b_enc of one without an
    encoder bias, may be given only as what they are (W_dec's transpose, zeros)."""
    if not isinstance(weights, Mapping):
        raise SAEInputError(f"an SAE's weights are a dict of arrays (W_enc, b_enc, W_dec, b_dec, ...), not "
                            f"{type(weights).__name__}")
    architecture = ARCHITECTURES[cfg.architecture]
    given = _GivenArrays(weights, architecture)
    out = _weights_in(given, cfg, "the weights lack")
    for name, what in (("W_enc", "W_dec's transpose (tied weights)"), ("b_enc", "zeros (it has no encoder bias)")):
        if name in given and name not in given.read:
            array = given.to_float32(name)
            if not spare_ok and not (array.shape == out[name].shape and np.array_equal(array, out[name])):
                raise SAELoadError(f"a {cfg.architecture} SAE's {name} is {what}: the weights give another")
            if not spare_ok:
                out[name] = array  # the caller's array, as it is (memory nothing can write stays so)
    spare = sorted(set(given.keys()) - given.read)
    if spare and not spare_ok:
        them = "it" if len(spare) == 1 else "them"
        raise SAELoadError(f"a {cfg.architecture} SAE has no {printable(', '.join(spare))}: remove {them} from the "
                           f"weights (the SAE would run with {them}, and its saved folder load without)")
    return out


def read_log_sparsity(path: Path, d_sae: int) -> np.ndarray | None:
    """log10 feature densities from sparsity.safetensors, when present and sound."""
    file = path / SPARSITY_FILE
    if not file.is_file():
        return None
    try:
        sf = SafetensorsFile(file)
        if "sparsity" in sf and tuple(sf.shape("sparsity")) == (d_sae,):
            return sf.to_float32("sparsity")
    except ModelLoadError:
        pass
    warnings.warn(f"ignoring {file}: not a [d_sae] 'sparsity' tensor", stacklevel=3)
    return None


def _label_of(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("label", "explanation", "description", "name"):
            if isinstance(value.get(key), str):
                return value[key]
    return None


def read_metrics(path: Path) -> dict | None:
    """metrics.json (what tm.train_sae measured), when present and sound; a warning otherwise."""
    file = path / METRICS_FILE
    if not file.is_file():
        return None
    try:
        data = read_json(file, "SAE metrics")
    except SAELoadError as e:
        warnings.warn(f"ignoring {file}: {e}", stacklevel=3)
        return None
    return data if isinstance(data, dict) else None


def read_feature_labels(path: Path, d_sae: int) -> tuple[dict[int, str], dict[int, dict]]:
    """(labels, details) from feature_labels.json, tolerantly, with the user's labels
    from feature_notes.json preferred where both label a feature.

    Accepts {"feature": "label"}, {"feature": {"label" | "explanation" |
    "description": ..., ...}} and Neuronpedia-style lists of objects with an
    "index" or "feature"; entries that fit none of these are skipped.
    """
    labels, details = _read_labels_file(path / LABELS_FILE, d_sae)
    labels.update(_read_user_labels(path / NOTES_FILE, d_sae))
    return labels, details


def _read_user_labels(file: Path, d_sae: int) -> dict[int, str]:
    from .dashboards.labels import read_notes  # a stage's own module, imported late: it imports this one

    try:
        notes = read_notes(file, d_sae)
    except InvalidInputError as e:
        warnings.warn(f"ignoring {file}: {e}", stacklevel=4)
        return {}
    return {f: entry["label"] for f, entry in notes.items() if entry.get("label")}


def _read_labels_file(file: Path, d_sae: int) -> tuple[dict[int, str], dict[int, dict]]:
    if not file.is_file():
        return {}, {}
    try:
        data = read_json(file, "feature labels")
    except SAELoadError as e:
        warnings.warn(f"ignoring {file}: {e}", stacklevel=4)
        return {}, {}
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = [(e.get("index", e.get("feature")), e) for e in data if isinstance(e, dict)]
    else:
        items = []
    labels, details = {}, {}
    for key, value in items:
        try:
            f = int(key)
        except (TypeError, ValueError):
            continue
        label = _label_of(value)
        if label is None or not 0 <= f < d_sae:
            continue
        labels[f] = label
        if isinstance(value, dict):
            details[f] = value
    return labels, details


def sae_dir(path) -> Path:
    """The directory holding cfg.json (a path to cfg.json or the weights file works too)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"an SAE's path is a string or a path, not {path!r}")
    p = Path(path).expanduser()
    if p.is_file() and p.name in (CFG_FILE, WEIGHTS_FILE):
        p = p.parent
    if not p.is_dir():
        raise SAENotFoundError(f"no SAE directory at {p}")
    if not (p / CFG_FILE).is_file():
        raise SAENotFoundError(f"{p} has no {CFG_FILE} (an SAELens SAE directory holds cfg.json and {WEIGHTS_FILE})")
    return p
