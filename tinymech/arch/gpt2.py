"""GPT-2 (GPT2LMHeadModel): the core's weight dict from Hugging Face's names."""
from __future__ import annotations

from ..io.safetensors import WeightStore
from .config import Config


def load_gpt2_weights(store: WeightStore, cfg: Config) -> dict:
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
