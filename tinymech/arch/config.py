"""The model configuration with TransformerLens's field names, and the checks every family's
config mapping applies to the values a file declares (arch/families.py reads config.json)."""
from __future__ import annotations

import dataclasses
import os
import sys
import weakref
from typing import Any

from .. import _core
from ..errors import ModelLoadError, ReadOnlyError, UnsupportedArchitectureError, true_or_false, whole_number

# TransformerLens's run-time switches, read and set as fields of a model's cfg
# (cfg.use_attn_result = True) as through its set_use_* methods: the model keeps them.
MODES = ("use_attn_result", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in")
# Fields read at each call, not built into the core: a model's cfg takes new values.
CALL_TIME_FIELDS = ("default_prepend_bos",)

@dataclasses.dataclass(frozen=True)
class Config:
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    act_fn: str = "gelu_new"
    eps: float = 1e-5
    normalization_type: str = "LN"
    positional_embedding_type: str = "standard"
    attn_scale: float = 8.0
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    default_prepend_bos: bool = True
    default_padding_side: str = "right"  # the tokenizer's padding_side at load, as TransformerLens's default
    original_architecture: str = "GPT2LMHeadModel"
    family: str = "gpt2"  # the arch/ module that maps its config and weights (arch/families.py)
    model_name: str = ""
    # Llama-class fields (TransformerLens's names where it has them)
    n_key_value_heads: int | None = None  # None: as many as n_heads
    gated_mlp: bool = False
    rotary_dim: int | None = None
    rotary_base: float = 10000.0
    rope_scaling: dict | None = None  # HF's rope parameters when not plain RoPE (e.g. llama3)
    weight_layout: str = "in_out"  # linear weights [in, out] (GPT-2 Conv1D) or [out, in] (nn.Linear)
    chat_template: str | None = None

    @property
    def is_llama(self) -> bool:
        return self.family == "llama"

    # default_prepend_bos can change on a model's config: a hash would change with it
    __hash__ = None

    def __getattr__(self, name: str):
        """A switch of MODES: the model's; a copy's, as its model's were when copied (else False)."""
        if name in MODES:
            model = _model_of(self)
            return self.__dict__.get("_modes", {}).get(name, False) if model is None else model._modes[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __getstate__(self) -> dict:
        """Pickled and copied without the model it is bound to, with its switches as they are."""
        state = {k: v for k, v in self.__dict__.items() if k != "_model"}
        model = _model_of(self)
        if model is not None:
            state["_modes"] = dict(model._modes)
            state["_facts"] = {fact: read(model) for fact, read in MODEL_FACTS.items()}
        return state

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    @property
    def device(self) -> str:
        """Where the model runs, as TransformerLens's cfg.device: always the CPU."""
        return "cpu"

    @property
    def n_params(self) -> int:
        """TransformerLens's count: the attention's and MLP's weight matrices (W_Q, W_K, W_V, W_O
        counted per query head, W_in, W_gate, W_out), without embeddings, biases and norms."""
        mlp = self.d_model * self.d_mlp * (3 if self.gated_mlp else 2)
        return self.n_layers * (4 * self.d_model * self.d_head * self.n_heads + mlp)

    # TransformerLens's switches for architectures tinymech does not load (attention-only,
    # parallel attention and MLP, bidirectional attention): always these.
    attn_only = False
    parallel_attn_mlp = False
    attention_dir = "causal"
    # More of its fields whose value is the same for every model tinymech loads: scores are always
    # divided by attn_scale (1.0 where a GPT-2 config turns scaling off), attention is global, rotary
    # models rotate the two halves of a head (not adjacent pairs), and none of these features exists here.
    use_attn_scale = True
    use_local_attn = False
    window_size = None
    attn_types = None
    rotary_adjacent_pairs = False
    use_hook_tokens = False
    post_embedding_ln = False
    use_normalization_before_and_after = False
    use_qk_norm = False
    attn_scores_soft_cap = -1.0  # TransformerLens's "no cap"
    output_logits_soft_cap = -1.0
    num_experts = None
    experts_per_token = None
    ungroup_grouped_query_attention = False
    n_devices = 1
    load_in_4bit = False
    trust_remote_code = False
    from_checkpoint = False
    checkpoint_index = None
    checkpoint_label_type = None
    checkpoint_value = None

    @property
    def final_rms(self) -> bool:
        """Whether the final norm is an RMSNorm, as TransformerLens's field (the blocks' norms are the same kind)."""
        return self.normalization_type.startswith("RMS")

    @property
    def uses_rms_norm(self) -> bool:
        return self.normalization_type.startswith("RMS")

    @property
    def dtype(self) -> str:
        """The dtype the model's core reads its weight matrices as: "float32", or "bfloat16" for a model
        loaded with dtype="bf16" (a string: tinymech does not import torch for TransformerLens's torch dtype)."""
        return "bfloat16" if self._of_model("dtype") == "bf16" else "float32"

    @property
    def tokenizer_name(self) -> str | None:
        """Where the model's tokenizer was read from, a folder (transformers.AutoTokenizer.from_pretrained takes
        it), as TransformerLens's field names where it loads one from; None for a tokenizer read from a GGUF
        file, or no tokenizer."""
        return self._of_model("tokenizer_name")

    def _of_model(self, fact: str):
        """A fact of the model the config is bound to (MODEL_FACTS); a copy keeps its model's."""
        model = _model_of(self)
        return self.__dict__.get("_facts", {}).get(fact) if model is None else MODEL_FACTS[fact](model)

    def core_dict(self) -> dict[str, Any]:
        """The fields the C++ core needs."""
        return {
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "d_head": self.d_head,
            "d_mlp": self.d_mlp,
            "d_vocab": self.d_vocab,
            "n_ctx": self.n_ctx,
            "eps": self.eps,
            "attn_scale": self.attn_scale,
            "act_fn": self.act_fn,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "normalization_type": self.normalization_type,
            "positional_embedding_type": self.positional_embedding_type,
            "n_key_value_heads": self.n_key_value_heads,
            "gated_mlp": self.gated_mlp,
            "rotary_dim": self.rotary_dim,
            "weight_layout": self.weight_layout,
        }


def _tokenizer_folder(model) -> str | None:
    """The folder the model's tokenizer was read from, or None."""
    path = getattr(model, "path", None)
    return path if model.tokenizer is not None and path is not None and os.path.isdir(path) else None


# What a config reads from its model (Config._of_model), and a copy keeps.
MODEL_FACTS = {"dtype": lambda model: model.dtype, "tokenizer_name": _tokenizer_folder}


def bound(cfg: Config, model) -> Config:
    """A copy of cfg bound to the model, whose switches (MODES) it reads and sets."""
    cfg = dataclasses.replace(cfg)
    object.__setattr__(cfg, "_model", weakref.ref(model))
    return cfg


def _model_of(cfg: Config):
    ref = cfg.__dict__.get("_model")
    return None if ref is None else ref()


def _set_field(cfg: Config, name: str, value) -> None:
    """cfg.name = value: a switch goes to the model's set_name and a call-time field is
    taken; the others are what the model was loaded with (its weights and C++ core
    follow from them), so they are refused, each with what to do instead."""
    model = _model_of(cfg)
    if model is not None and name in MODES:
        getattr(model, f"set_{name}")(value)  # with its checks (exclusive switches, grouped-query attention)
        return
    if model is not None and name in CALL_TIME_FIELDS:
        object.__setattr__(cfg, name, true_or_false(value, name))
        return
    label = "model.cfg" if model is not None else "this config"
    if name not in MODES and name not in _FIELDS:
        if hasattr(type(cfg), name):  # a property (device, n_params) or a constant (attn_only)
            raise ReadOnlyError(f"{label}.{name} is read-only: it follows from the config's fields")
        raise ReadOnlyError(f"{label} is frozen, and {name!r} is not one of its fields")
    if model is None:
        instead = "" if name in MODES else f", or a changed copy with dataclasses.replace(cfg, {name}=...)"
        raise ReadOnlyError(f"this config belongs to no model (a copy, or one not loaded yet): set {name} on a "
                            f"loaded model's model.cfg{instead}")
    raise ReadOnlyError(f"model.cfg.{name} cannot be changed: {_INSTEAD.get(name, _RELOAD)}")


def _delete_field(cfg: Config, name: str) -> None:
    raise ReadOnlyError(f"cfg.{name} cannot be deleted: a config keeps every field")


_FIELDS = frozenset(f.name for f in dataclasses.fields(Config))
_RELOAD = ("the model was loaded with it (its weights and C++ core follow from the config); load the model again "
           "with what you want")
_INSTEAD = {"default_padding_side": "it is the padding side the tokenizer was given at load; set "
                                    "model.tokenizer.padding_side instead"}
Config.__setattr__ = _set_field
Config.__delattr__ = _delete_field


# Every size a config declares fits in 31 bits (token ids are int32 in the core),
# and its context is capped to what memory can hold: the key/value cache of
# one sequence at full context must fit in the 2^47 bytes a process can
# address on x86-64 and arm64. The longest real contexts (10M positions) are
# far below both; the cap keeps the core's size arithmetic from overflowing.
MAX_SIZE = (1 << 31) - 1
ADDRESS_SPACE = 1 << 47


# every name of an MLP activation a config may give -> the core's canonical name (the core's table)
ACTIVATIONS = dict(_core.activation_names())


def activation(name) -> str:
    """The canonical name of an activation function a config names."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise UnsupportedArchitectureError(f"activation function {name!r} is not supported; supported: "
                                           f"{', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def size(value, what: str) -> int:
    value = whole_number(value, what, minimum=1, error=ModelLoadError)
    if value > MAX_SIZE:
        raise ModelLoadError(f"{what}={value} exceeds 2^31 - 1, the largest size tinymech accepts (its core's "
                             "token ids are 32-bit; no real model comes near it)")
    return value


def number(value, what: str, positive: bool = False) -> float:
    """A finite real number (not a bool) that is > 0, or >= 0."""
    real = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max
    if not real or value < 0 or (positive and value == 0):
        raise ModelLoadError(f"{what} must be a {'positive' if positive else 'non-negative'} finite number, "
                             f"got {value!r}")
    return float(value)


def token_id(value, what: str, d_vocab: int) -> int | None:
    """None, or a token of the vocabulary (of a list of ids, the first counts)."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    value = whole_number(value, what, minimum=0, error=ModelLoadError)
    if value >= d_vocab:
        raise ModelLoadError(f"{what}={value} is outside the vocabulary of {d_vocab} tokens")
    return value


def check_context(n_ctx: int, what: str, n_layers: int, d_kv: int) -> None:
    per_position = 2 * n_layers * d_kv * 4  # float32 keys and values of every layer
    limit = ADDRESS_SPACE // per_position
    if n_ctx > limit:
        raise ModelLoadError(
            f"{what}={n_ctx} is more context than memory can hold: tinymech's limit for this model is {limit} "
            f"positions, whose key/value cache ({per_position} bytes a position) fills the 2^47 bytes a "
            "process can address"
        )


def architectures(hf: dict, where: str) -> list:
    archs = hf.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ModelLoadError(f"{where}: architectures must be a list of names, got {archs!r:.60}")
    return archs
