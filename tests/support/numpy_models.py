"""Random-weight Llama-shaped models built from numpy arrays alone (no torch,
no files): for tests of the core's limits, where a model needs an unusual
config (a huge n_ctx) or many layers."""
from __future__ import annotations

import numpy as np

from tinymech.arch.config import Config
from tinymech.model import Model


def rotary_model(n_ctx: int = 64, n_layers: int = 2, d_model: int = 32, n_heads: int = 4, d_vocab: int = 50,
                 seed: int = 0, shared_layers: bool = False) -> Model:
    """RMSNorm, rotary positions, a gated MLP, no biases, weights [out, in];
    shared_layers: every block reads the same arrays (many layers in little memory)."""
    rng = np.random.default_rng(seed)
    d_head, d_mlp = d_model // n_heads, 2 * d_model

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.5 / np.sqrt(shape[-1])).astype(np.float32)

    def layer():
        return dict(ln1_w=np.ones(d_model, np.float32), ln1_b=None, qkv_w=rand(3 * d_model, d_model), qkv_b=None,
                    out_w=rand(d_model, d_model), out_b=None, ln2_w=np.ones(d_model, np.float32), ln2_b=None,
                    gate_w=rand(d_mlp, d_model), gate_b=None, fc_w=rand(d_mlp, d_model), fc_b=None,
                    proj_w=rand(d_model, d_mlp), proj_b=None)

    first = layer()
    layers = [first] + [first if shared_layers else layer() for _ in range(n_layers - 1)]
    inv_freq = (1.0 / 10000.0 ** (np.arange(0, d_head, 2) / d_head)).astype(np.float32)
    weights = dict(wte=rand(d_vocab, d_model) * 8, wpe=None, rope_inv_freq=inv_freq, lnf_w=np.ones(d_model, np.float32),
                   lnf_b=None, unembed=rand(d_vocab, d_model), unembed_b=None, layers=layers)
    cfg = Config(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp, d_vocab=d_vocab,
                 n_ctx=n_ctx, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                 attn_scale=float(np.sqrt(d_head)), gated_mlp=True, rotary_dim=d_head, weight_layout="out_in",
                 original_architecture="LlamaForCausalLM", family="llama", bos_token_id=0, eos_token_id=1)
    return Model(cfg, weights, None)


def random_tokens(model, batch: int, length: int, seed: int = 0) -> np.ndarray:
    """[batch, length] token ids drawn uniformly from the model's vocabulary."""
    return np.random.default_rng(seed).integers(0, model.cfg.d_vocab, (batch, length))
