"""The model most benchmarks time: random weights of GPT-2-small's shape (d_model
768, 12 heads, vocab 50257, context 1024; 12 layers unless asked otherwise),
made by transformers with its own initialization and default attention
implementation, saved with save_pretrained and memory-mapped by tm.load."""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from timing import evict_from_page_cache

GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)


def build_gpt2_small(path, layers: int = 12, seed: int = 0):
    """Make and save (safetensors, fp32) the HF GPT2LMHeadModel; returns it in eval mode."""
    import torch
    import transformers

    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**dict(GPT2_SMALL, n_layer=layers))).eval()
    hf.save_pretrained(path)
    evict_from_page_cache(path)  # tm.load maps it as a model file read cold
    return hf


@contextlib.contextmanager
def gpt2_small(layers: int = 12, seed: int = 0):
    """(directory, HF model, tinymech model) of one random GPT-2-small-shaped
    checkpoint in a temporary directory, removed on exit."""
    import tinymech as tm

    with tempfile.TemporaryDirectory() as tmp:
        hf = build_gpt2_small(tmp, layers, seed)
        yield Path(tmp), hf, tm.load(tmp)
