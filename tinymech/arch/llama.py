"""The core's weight dict from Hugging Face Llama names (LlamaForCausalLM).

Linear weights stay in nn.Linear's [out, in] layout (config.weight_layout
"out_in"), memory-mapped where the checkpoint is float32; only q, k and v are
concatenated (a copy) so the core computes them with one matrix product.
"""
from __future__ import annotations

import numpy as np

from .config import Config
from .rope import inverse_frequencies


def load_llama_weights(store, cfg: Config) -> dict:
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
