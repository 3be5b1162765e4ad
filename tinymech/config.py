"""Model configuration with TransformerLens's field names, read from a
Hugging Face config.json: GPT-2 and Llama-class models."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from .errors import ModelLoadError, UnsupportedArchitectureError

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


def _positive_int(hf: dict, key: str, default=None) -> int:
    value = hf.get(key, default)
    if type(value) is not int or value <= 0:
        raise ModelLoadError(f"config.json: {key!r} must be a positive integer, got {value!r}")
    return value


def config_from_hf(hf: dict, model_name: str = "") -> Config:
    """Translate a Hugging Face config.json dict (GPT-2 or Llama)."""
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type == "llama":
        return _llama_config(hf, model_name)
    if model_type != "gpt2":
        what = model_type or (archs[0] if archs else "unknown")
        raise UnsupportedArchitectureError(
            f"architecture {what!r} is not supported yet; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    d_model = _positive_int(hf, "n_embd")
    n_heads = _positive_int(hf, "n_head")
    if d_model % n_heads:
        raise ModelLoadError(f"config.json: n_embd={d_model} is not divisible by n_head={n_heads}")
    n_inner = hf.get("n_inner")
    d_mlp = 4 * d_model if n_inner is None else _positive_int(hf, "n_inner")
    n_ctx = _positive_int(hf, "n_positions", hf.get("n_ctx"))
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu", "silu", "swish"):
        raise UnsupportedArchitectureError(f"activation function {act!r} is not supported")
    d_head = d_model // n_heads
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ModelLoadError(f"config.json: layer_norm_epsilon must be a non-negative number, got {eps!r}")
    return Config(
        n_layers=_positive_int(hf, "n_layer"),
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab=_positive_int(hf, "vocab_size"),
        n_ctx=n_ctx,
        act_fn="gelu_new" if act in ("gelu_pytorch_tanh", "gelu_fast") else act,
        eps=float(eps),
        attn_scale=math.sqrt(d_head) if hf.get("scale_attn_weights", True) else 1.0,
        scale_attn_by_inverse_layer_idx=bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        original_architecture=archs[0] if archs else "GPT2LMHeadModel",
        model_name=model_name,
    )


def _first_id(value):
    """A token id from a config entry that may also be a list of ids (the first counts)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


# RoPE variants whose inverse frequencies tinymech.rope computes
ROPE_TYPES = ("default", "linear", "llama3")


def _rope_parameters(hf: dict) -> tuple[float, dict | None]:
    """(base, scaling) from transformers 5's rope_parameters or the older
    rope_theta + rope_scaling; scaling is None for plain RoPE."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    base = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise UnsupportedArchitectureError(
            f"RoPE type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}"
        )
    if not isinstance(base, (int, float)) or base <= 0:
        raise ModelLoadError(f"config.json: rope_theta must be a positive number, got {base!r}")
    return float(base), (dict(params, rope_type=rope_type) if rope_type != "default" else None)


def _llama_config(hf: dict, model_name: str) -> Config:
    d_model = _positive_int(hf, "hidden_size")
    n_heads = _positive_int(hf, "num_attention_heads")
    n_kv = _positive_int(hf, "num_key_value_heads", n_heads)
    if n_heads % n_kv:
        raise ModelLoadError(
            f"config.json: num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}"
        )
    d_head = hf.get("head_dim") or d_model // n_heads
    if type(d_head) is not int or d_head <= 0:
        raise ModelLoadError(f"config.json: head_dim must be a positive integer, got {d_head!r}")
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish", "gelu", "relu", "gelu_new", "gelu_pytorch_tanh"):
        raise UnsupportedArchitectureError(f"activation function {act!r} is not supported")
    eps = hf.get("rms_norm_eps", 1e-6)
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ModelLoadError(f"config.json: rms_norm_eps must be a non-negative number, got {eps!r}")
    if hf.get("pretraining_tp", 1) not in (1, None):
        raise UnsupportedArchitectureError("Llama checkpoints with pretraining_tp > 1 are not supported")
    base, scaling = _rope_parameters(hf)
    return Config(
        n_layers=_positive_int(hf, "num_hidden_layers"),
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=_positive_int(hf, "intermediate_size"),
        d_vocab=_positive_int(hf, "vocab_size"),
        n_ctx=_positive_int(hf, "max_position_embeddings"),
        act_fn="gelu_new" if act == "gelu_pytorch_tanh" else ("silu" if act == "swish" else act),
        eps=float(eps),
        normalization_type="RMS",
        positional_embedding_type="rotary",
        attn_scale=math.sqrt(d_head),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=_first_id(hf.get("bos_token_id")),
        eos_token_id=_first_id(hf.get("eos_token_id")),
        original_architecture="LlamaForCausalLM",
        model_name=model_name,
        n_key_value_heads=n_kv,
        gated_mlp=True,
        rotary_dim=d_head,
        rotary_base=base,
        rope_scaling=scaling,
        weight_layout="out_in",
        chat_template=hf.get("chat_template"),
    )
