"""GPT-2 (GPT2LMHeadModel): its config.json as a Config, and the core's weight dict from
Hugging Face's tensor names."""
from __future__ import annotations

import math

from ..errors import ModelLoadError
from ..io.safetensors import WeightStore
from .config import Config, activation, architectures, check_context, number, size, token_id

MODEL_TYPE = "gpt2"
NAME = "gpt2 (GPT2LMHeadModel)"
PROCESSING = True  # TransformerLens's weight processing (arch/processing.py) is implemented


def config(hf: dict, model_name: str, source: str) -> Config:
    """A GPT-2 config.json as a Config, every field checked before anything is computed
    from it; errors name `source`."""
    archs = architectures(hf, source)
    d_model = size(hf.get("n_embd"), f"{source}: n_embd")
    n_heads = size(hf.get("n_head"), f"{source}: n_head")
    if d_model % n_heads:
        raise ModelLoadError(f"{source}: n_embd={d_model} is not divisible by n_head={n_heads}")
    n_inner = hf.get("n_inner")
    d_mlp = size(4 * d_model if n_inner is None else n_inner, f"{source}: n_inner")
    n_layers = size(hf.get("n_layer"), f"{source}: n_layer")
    n_ctx = size(hf.get("n_positions", hf.get("n_ctx")), f"{source}: n_positions")
    check_context(n_ctx, f"{source}: n_positions", n_layers, d_model)
    d_vocab = size(hf.get("vocab_size"), f"{source}: vocab_size")
    act_fn = activation(hf.get("activation_function", "gelu_new"))
    d_head = d_model // n_heads
    return Config(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        act_fn=act_fn,
        eps=number(hf.get("layer_norm_epsilon", 1e-5), f"{source}: layer_norm_epsilon"),
        attn_scale=math.sqrt(d_head) if hf.get("scale_attn_weights", True) else 1.0,
        scale_attn_by_inverse_layer_idx=bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        bos_token_id=token_id(hf.get("bos_token_id"), f"{source}: bos_token_id", d_vocab),
        eos_token_id=token_id(hf.get("eos_token_id"), f"{source}: eos_token_id", d_vocab),
        original_architecture=archs[0] if archs else "GPT2LMHeadModel",
        family=MODEL_TYPE,
        model_name=model_name,
    )


def weights(store: WeightStore, cfg: Config) -> dict:
    """The core's weight dict from HF GPT-2 names (with or without 'transformer.')."""
    prefix = "transformer." if any(k.startswith("transformer.") for k in store.keys()) else ""
    D, F, V = cfg.d_model, cfg.d_mlp, cfg.d_vocab

    def get(name, shape):
        return store.get(prefix + name, shape)

    layers = []
    for i in range(cfg.n_layers):
        h = f"h.{i}."
        layers.append(
            {
                "ln1_w": get(h + "ln_1.weight", (D,)),
                "ln1_b": get(h + "ln_1.bias", (D,)),
                "qkv_w": get(h + "attn.c_attn.weight", (D, 3 * D)),
                "qkv_b": get(h + "attn.c_attn.bias", (3 * D,)),
                "out_w": get(h + "attn.c_proj.weight", (D, D)),
                "out_b": get(h + "attn.c_proj.bias", (D,)),
                "ln2_w": get(h + "ln_2.weight", (D,)),
                "ln2_b": get(h + "ln_2.bias", (D,)),
                "fc_w": get(h + "mlp.c_fc.weight", (D, F)),
                "fc_b": get(h + "mlp.c_fc.bias", (F,)),
                "proj_w": get(h + "mlp.c_proj.weight", (F, D)),
                "proj_b": get(h + "mlp.c_proj.bias", (D,)),
            }
        )
    wte = get("wte.weight", (V, D))
    weights = {
        "wte": wte,
        "wpe": get("wpe.weight", (cfg.n_ctx, D)),
        "lnf_w": get("ln_f.weight", (D,)),
        "lnf_b": get("ln_f.bias", (D,)),
        # HF ties lm_head to wte unless the config says otherwise
        "unembed": wte if cfg.tie_word_embeddings else store.get("lm_head.weight", (V, D)),
        "unembed_b": None,
        "layers": layers,
    }
    return weights
