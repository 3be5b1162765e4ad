"""Model configuration with TransformerLens's field names, read from a
Hugging Face config.json: GPT-2 and Llama-class models."""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, ModelNotFoundError, UnsupportedArchitectureError, whole_number
from ..io.files import read_json
from ..io.sources import model_name_of

SUPPORTED_ARCHITECTURES = ("gpt2 (GPT2LMHeadModel)", "llama (LlamaForCausalLM)")


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
    original_architecture: str = "GPT2LMHeadModel"
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
        return self.original_architecture == "LlamaForCausalLM"

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

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


# Every size a config declares fits in 31 bits (token ids are int32 in the core),
# and its context is capped to what memory can hold: the key/value cache of
# one sequence at full context must fit in the 2^47 bytes a process can
# address on x86-64 and arm64. The longest real contexts (10M positions) are
# far below both; the cap keeps the core's size arithmetic from overflowing.
MAX_SIZE = (1 << 31) - 1
ADDRESS_SPACE = 1 << 47


def _size(value, what: str) -> int:
    value = whole_number(value, what, minimum=1, error=ModelLoadError)
    if value > MAX_SIZE:
        raise ModelLoadError(f"{what}={value} exceeds 2^31 - 1, the largest size tinymech accepts (its core's "
                             "token ids are 32-bit; no real model comes near it)")
    return value


def _number(value, what: str, positive: bool = False) -> float:
    """A finite real number (not a bool) that is > 0, or >= 0."""
    real = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max
    if not real or value < 0 or (positive and value == 0):
        raise ModelLoadError(f"{what} must be a {'positive' if positive else 'non-negative'} finite number, "
                             f"got {value!r}")
    return float(value)


def _token_id(value, what: str, d_vocab: int) -> int | None:
    """None, or a token of the vocabulary (of a list of ids, the first counts)."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    value = whole_number(value, what, minimum=0, error=ModelLoadError)
    if value >= d_vocab:
        raise ModelLoadError(f"{what}={value} is outside the vocabulary of {d_vocab} tokens")
    return value


def _check_context(n_ctx: int, what: str, n_layers: int, d_kv: int) -> None:
    per_position = 2 * n_layers * d_kv * 4  # float32 keys and values of every layer
    limit = ADDRESS_SPACE // per_position
    if n_ctx > limit:
        raise ModelLoadError(
            f"{what}={n_ctx} is more context than memory can hold: tinymech's limit for this model is {limit} "
            f"positions, whose key/value cache ({per_position} bytes a position) fills the 2^47 bytes a "
            "process can address"
        )


def _architectures(hf: dict, where: str) -> list:
    archs = hf.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ModelLoadError(f"{where}: architectures must be a list of names, got {archs!r:.60}")
    return archs


def config_from_hf(hf: dict, model_name: str = "", source: str = "config.json") -> Config:
    """Translate a Hugging Face config.json dict (GPT-2 or Llama), checking
    every field before anything is computed from it; errors name `source`."""
    model_type = hf.get("model_type")
    archs = _architectures(hf, source)
    if model_type == "llama":
        return _llama_config(hf, model_name, source)
    if model_type != "gpt2":
        what = model_type or (archs[0] if archs else "unknown")
        raise UnsupportedArchitectureError(
            f"architecture {what!r} is not supported yet; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    d_model = _size(hf.get("n_embd"), f"{source}: n_embd")
    n_heads = _size(hf.get("n_head"), f"{source}: n_head")
    if d_model % n_heads:
        raise ModelLoadError(f"{source}: n_embd={d_model} is not divisible by n_head={n_heads}")
    n_inner = hf.get("n_inner")
    d_mlp = _size(4 * d_model if n_inner is None else n_inner, f"{source}: n_inner")
    n_layers = _size(hf.get("n_layer"), f"{source}: n_layer")
    n_ctx = _size(hf.get("n_positions", hf.get("n_ctx")), f"{source}: n_positions")
    _check_context(n_ctx, f"{source}: n_positions", n_layers, d_model)
    d_vocab = _size(hf.get("vocab_size"), f"{source}: vocab_size")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu", "silu", "swish"):
        raise UnsupportedArchitectureError(f"activation function {act!r} is not supported")
    d_head = d_model // n_heads
    return Config(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        act_fn="gelu_new" if act in ("gelu_pytorch_tanh", "gelu_fast") else act,
        eps=_number(hf.get("layer_norm_epsilon", 1e-5), f"{source}: layer_norm_epsilon"),
        attn_scale=math.sqrt(d_head) if hf.get("scale_attn_weights", True) else 1.0,
        scale_attn_by_inverse_layer_idx=bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        bos_token_id=_token_id(hf.get("bos_token_id"), f"{source}: bos_token_id", d_vocab),
        eos_token_id=_token_id(hf.get("eos_token_id"), f"{source}: eos_token_id", d_vocab),
        original_architecture=archs[0] if archs else "GPT2LMHeadModel",
        model_name=model_name,
    )


# RoPE variants whose inverse frequencies tinymech.rope computes
ROPE_TYPES = ("default", "linear", "llama3")


def _rope_parameters(hf: dict, source: str) -> tuple[float, dict | None]:
    """(base, scaling) from transformers 5's rope_parameters or the older
    rope_theta + rope_scaling; scaling is None for plain RoPE. Every parameter
    the scaling uses is checked: a zero or NaN one would silently break the model."""
    section = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    params = hf.get(section) or {}
    if not isinstance(params, dict):
        raise ModelLoadError(f"{source}: {section} must be an object, got {params!r:.60}")
    params = dict(params)
    where = f"{source}: {section}"
    base = _number(params.pop("rope_theta", hf.get("rope_theta", 10000.0)), f"{source}: rope_theta", positive=True)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise UnsupportedArchitectureError(
            f"RoPE type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}"
        )
    if rope_type == "default":
        return base, None
    _number(params.get("factor"), f"{where}.factor", positive=True)
    if rope_type == "llama3":
        low = _number(params.get("low_freq_factor"), f"{where}.low_freq_factor", positive=True)
        high = _number(params.get("high_freq_factor"), f"{where}.high_freq_factor", positive=True)
        if high <= low:
            raise ModelLoadError(f"{where}: high_freq_factor={high} must exceed low_freq_factor={low}")
        _size(params.get("original_max_position_embeddings"), f"{where}.original_max_position_embeddings")
    return base, dict(params, rope_type=rope_type)


def _llama_config(hf: dict, model_name: str, source: str) -> Config:
    d_model = _size(hf.get("hidden_size"), f"{source}: hidden_size")
    n_heads = _size(hf.get("num_attention_heads"), f"{source}: num_attention_heads")
    n_kv = _size(hf.get("num_key_value_heads", n_heads), f"{source}: num_key_value_heads")
    if n_heads % n_kv:
        raise ModelLoadError(
            f"{source}: num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}"
        )
    d_head = _size(hf.get("head_dim") or d_model // n_heads, f"{source}: head_dim")
    if d_head % 2:
        raise ModelLoadError(f"{source}: head_dim={d_head} is odd, but rotary embeddings turn pairs of dimensions")
    n_layers = _size(hf.get("num_hidden_layers"), f"{source}: num_hidden_layers")
    n_ctx = _size(hf.get("max_position_embeddings"), f"{source}: max_position_embeddings")
    _check_context(n_ctx, f"{source}: max_position_embeddings", n_layers, n_kv * d_head)
    d_vocab = _size(hf.get("vocab_size"), f"{source}: vocab_size")
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish", "gelu", "relu", "gelu_new", "gelu_pytorch_tanh"):
        raise UnsupportedArchitectureError(f"activation function {act!r} is not supported")
    if hf.get("pretraining_tp", 1) not in (1, None):
        raise UnsupportedArchitectureError("Llama checkpoints with pretraining_tp > 1 are not supported")
    template = hf.get("chat_template")
    if template is not None and not isinstance(template, str):
        raise ModelLoadError(f"{source}: chat_template must be a string, got {template!r:.60}")
    base, scaling = _rope_parameters(hf, source)
    return Config(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=_size(hf.get("intermediate_size"), f"{source}: intermediate_size"),
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        act_fn="gelu_new" if act == "gelu_pytorch_tanh" else ("silu" if act == "swish" else act),
        eps=_number(hf.get("rms_norm_eps", 1e-6), f"{source}: rms_norm_eps"),
        normalization_type="RMS",
        positional_embedding_type="rotary",
        attn_scale=math.sqrt(d_head),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=_token_id(hf.get("bos_token_id"), f"{source}: bos_token_id", d_vocab),
        eos_token_id=_token_id(hf.get("eos_token_id"), f"{source}: eos_token_id", d_vocab),
        original_architecture="LlamaForCausalLM",
        model_name=model_name,
        n_key_value_heads=n_kv,
        gated_mlp=True,
        rotary_dim=d_head,
        rotary_base=base,
        rope_scaling=scaling,
        weight_layout="out_in",
        chat_template=template,
    )


def read_config(model_dir: Path) -> Config:
    path = model_dir / "config.json"
    if not path.exists():
        raise ModelNotFoundError(f"{model_dir} has no config.json")
    return config_from_hf(read_json(path, "the model config"), model_name=model_name_of(model_dir))
