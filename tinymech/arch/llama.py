"""Llama-class models (LlamaForCausalLM): the config mapping, and the core's weight dict from
Hugging Face's tensor names.

Linear weights stay in nn.Linear's [out, in] layout (config.weight_layout
"out_in"), memory-mapped where the checkpoint is float32; only q, k and v are
concatenated (a copy) so the core computes them with one matrix product.
"""
from __future__ import annotations

import numpy as np

import math

from ..errors import ModelLoadError, UnsupportedArchitectureError
from .config import Config, activation, check_context, number, size, token_id
from .rope import inverse_frequencies

MODEL_TYPE = "llama"
NAME = "llama (LlamaForCausalLM)"
PROCESSING = True  # TransformerLens's weight processing (RMSNorm: the norms' weights fold; nothing centers)


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
    base = number(params.pop("rope_theta", hf.get("rope_theta", 10000.0)), f"{source}: rope_theta", positive=True)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise UnsupportedArchitectureError(
            f"RoPE type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}"
        )
    if rope_type == "default":
        return base, None
    number(params.get("factor"), f"{where}.factor", positive=True)
    if rope_type == "llama3":
        low = number(params.get("low_freq_factor"), f"{where}.low_freq_factor", positive=True)
        high = number(params.get("high_freq_factor"), f"{where}.high_freq_factor", positive=True)
        if high <= low:
            raise ModelLoadError(f"{where}: high_freq_factor={high} must exceed low_freq_factor={low}")
        size(params.get("original_max_position_embeddings"), f"{where}.original_max_position_embeddings")
    return base, dict(params, rope_type=rope_type)


def config(hf: dict, model_name: str, source: str) -> Config:
    """A Llama config.json (or a GGUF's metadata) as a Config, every field checked."""
    d_model = size(hf.get("hidden_size"), f"{source}: hidden_size")
    n_heads = size(hf.get("num_attention_heads"), f"{source}: num_attention_heads")
    n_kv = size(hf.get("num_key_value_heads", n_heads), f"{source}: num_key_value_heads")
    if n_heads % n_kv:
        raise ModelLoadError(
            f"{source}: num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}"
        )
    d_head = size(hf.get("head_dim") or d_model // n_heads, f"{source}: head_dim")
    if d_head % 2:
        raise ModelLoadError(f"{source}: head_dim={d_head} is odd, but rotary embeddings turn pairs of dimensions")
    n_layers = size(hf.get("num_hidden_layers"), f"{source}: num_hidden_layers")
    n_ctx = size(hf.get("max_position_embeddings"), f"{source}: max_position_embeddings")
    check_context(n_ctx, f"{source}: max_position_embeddings", n_layers, n_kv * d_head)
    d_vocab = size(hf.get("vocab_size"), f"{source}: vocab_size")
    act_fn = activation(hf.get("hidden_act", "silu"))
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
        d_mlp=size(hf.get("intermediate_size"), f"{source}: intermediate_size"),
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        act_fn=act_fn,
        eps=number(hf.get("rms_norm_eps", 1e-6), f"{source}: rms_norm_eps"),
        normalization_type="RMS",
        positional_embedding_type="rotary",
        attn_scale=math.sqrt(d_head),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=token_id(hf.get("bos_token_id"), f"{source}: bos_token_id", d_vocab),
        eos_token_id=token_id(hf.get("eos_token_id"), f"{source}: eos_token_id", d_vocab),
        original_architecture="LlamaForCausalLM",
        family=MODEL_TYPE,
        model_name=model_name,
        n_key_value_heads=n_kv,
        gated_mlp=True,
        rotary_dim=d_head,
        rotary_base=base,
        rope_scaling=scaling,
        weight_layout="out_in",
        chat_template=template,
    )


def weights(store, cfg: Config) -> dict:
    """store: anything with keys() and get(name, shape) -> float32 array (loading.WeightStore)."""
    prefix = "model." if any(k.startswith("model.") for k in store.keys()) else ""
    D, F, V = cfg.d_model, cfg.d_mlp, cfg.d_vocab
    Da = cfg.n_heads * cfg.d_head
    Dkv = (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head

    def get(name, shape):
        return store.get(prefix + name, shape)

    def optional(name, shape):
        return get(name, shape) if prefix + name in store.keys() else None

    layers = []
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        attn, mlp = p + "self_attn.", p + "mlp."
        biases = [optional(attn + f"{n}_proj.bias", (w,)) for n, w in (("q", Da), ("k", Dkv), ("v", Dkv))]
        layers.append(
            {
                "ln1_w": get(p + "input_layernorm.weight", (D,)),
                "ln1_b": None,
                "qkv_w": np.concatenate(
                    [get(attn + "q_proj.weight", (Da, D)), get(attn + "k_proj.weight", (Dkv, D)),
                     get(attn + "v_proj.weight", (Dkv, D))]
                ),
                "qkv_b": np.concatenate(biases) if all(b is not None for b in biases) else None,
                "out_w": get(attn + "o_proj.weight", (D, Da)),
                "out_b": optional(attn + "o_proj.bias", (D,)),
                "ln2_w": get(p + "post_attention_layernorm.weight", (D,)),
                "ln2_b": None,
                "gate_w": get(mlp + "gate_proj.weight", (F, D)),
                "gate_b": optional(mlp + "gate_proj.bias", (F,)),
                "fc_w": get(mlp + "up_proj.weight", (F, D)),
                "fc_b": optional(mlp + "up_proj.bias", (F,)),
                "proj_w": get(mlp + "down_proj.weight", (D, F)),
                "proj_b": optional(mlp + "down_proj.bias", (D,)),
            }
        )
    wte = get("embed_tokens.weight", (V, D))
    return {
        "wte": wte,
        "rope_inv_freq": inverse_frequencies(cfg.rotary_dim, cfg.rotary_base, cfg.rope_scaling),
        "lnf_w": get("norm.weight", (D,)),
        "lnf_b": None,
        "unembed": wte if cfg.tie_word_embeddings else store.get("lm_head.weight", (V, D)),
        "unembed_b": None,
        "layers": layers,
    }
