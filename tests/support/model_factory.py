"""Random-weight GPT-2 checkpoints for tests: made with transformers, saved
with save_pretrained (safetensors), so tinymech and the references load the
same files. Weights are drawn wider than HF's init so that attention and
logits are far from uniform and mistakes show."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPES = {
    # gpt2-small's widths, fewer layers to stay fast
    "small": dict(n_layer=2, n_embd=768, n_head=12, n_positions=128, vocab_size=1000),
    # d_head 20 (not a multiple of 16), vocab not a multiple of 8, tiny context
    "odd": dict(n_layer=3, n_embd=60, n_head=3, n_positions=24, vocab_size=301),
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=257),
}


def make_hf_gpt2(path: Path, seed: int = 0, std: float = 0.1, **config):
    """Build, randomize and save a GPT2LMHeadModel; returns the model (eval mode)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        bos_token_id=0, eos_token_id=0, attn_implementation="eager", **config
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, std)
    model.save_pretrained(path)
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens, dtype=np.int64))).logits.numpy()


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """Max absolute difference relative to the reference's scale."""
    return float(np.abs(np.asarray(ours) - np.asarray(ref)).max() / max(np.abs(ref).max(), 1e-12))


SAMPLE_TEXT = [
    "The cat sat on the mat. The dog sat on the log.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "In the beginning God created the heaven and the earth.\nAnd the earth was without form",
    "Mr Darcy walked in. Mr Darcy walked out again, and nobody noticed.",
]


def save_tokenizer(path: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer.json with <|endoftext|> as id 0."""
    import tokenizers

    tok = tokenizers.ByteLevelBPETokenizer()
    tok.train_from_iterator(SAMPLE_TEXT * 20, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tok.save(str(Path(path) / "tokenizer.json"))
