"""Random-weight Llama checkpoints for tests, made with transformers and saved
with save_pretrained, so tinymech and the references load the same files.
Weights are drawn wider than HF's init so that attention and logits are far
from uniform and mistakes show."""
from __future__ import annotations

from pathlib import Path

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

LLAMA_SHAPES = {
    # grouped-query attention, d_head 20, untied embeddings
    "gqa": dict(hidden_size=80, num_attention_heads=4, num_key_value_heads=2, head_dim=20,
                intermediate_size=112, num_hidden_layers=2, vocab_size=301, max_position_embeddings=64),
    # multi-head attention, tied embeddings
    "mha_tied": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=96,
                     num_hidden_layers=2, vocab_size=257, max_position_embeddings=48, tie_word_embeddings=True),
    # one key/value head, d_head 24 with n_heads * d_head != d_model, biases, Llama 3 RoPE scaling
    "mqa_llama3": dict(hidden_size=84, num_attention_heads=3, num_key_value_heads=1, head_dim=24,
                       intermediate_size=80, num_hidden_layers=3, vocab_size=203, max_position_embeddings=40,
                       attention_bias=True, mlp_bias=True, rope_parameters=dict(LLAMA3_ROPE, rope_theta=500.0)),
}


def make_hf_llama(path: Path, seed: int = 0, std: float = 0.08, max_shard_size=None, **config):
    """Build, randomize and save a LlamaForCausalLM; returns the model (eval mode)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config.setdefault("tie_word_embeddings", False)
    cfg = transformers.LlamaConfig(bos_token_id=0, eos_token_id=1, attn_implementation="eager", **config)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, std if p.ndim > 1 or "embed" in name else 0.3)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return model


def hf_greedy(model, tokens, n_new: int):
    """Greedy continuation by full forward passes (no generation config involved)."""
    import numpy as np
    import torch

    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    with torch.no_grad():
        for _ in range(n_new):
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids.numpy()
