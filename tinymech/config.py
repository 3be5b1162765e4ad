"""Model configuration with TransformerLens's field names, read from a
Hugging Face config.json."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from .errors import ModelLoadError, UnsupportedArchitectureError

SUPPORTED_ARCHITECTURES = ("gpt2 (GPT2LMHeadModel)",)


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
        }


def _positive_int(hf: dict, key: str, default=None) -> int:
    value = hf.get(key, default)
    if type(value) is not int or value <= 0:
        raise ModelLoadError(f"config.json: {key!r} must be a positive integer, got {value!r}")
    return value


def config_from_hf(hf: dict, model_name: str = "") -> Config:
    """Translate a Hugging Face GPT-2 config.json dict."""
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
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
