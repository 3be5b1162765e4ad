"""A decoding step's attention (one query per row against the KV cache) reads
the cache position by position, all heads at once, in blocks of 64 keys spread
over threads. It must give what the prompt's own forward gives, across block
boundaries, with grouped key/value heads, padding and any thread count."""
import dataclasses

import numpy as np
import pytest

from numpy_models import rotary_model
from tinymech import _core
from tinymech.model import Model


def grouped_model(n_heads: int = 6, n_kv_heads: int = 2, d_head: int = 12, n_ctx: int = 200) -> Model:
    """rotary_model's shape with fewer key/value heads than query heads (d_head 12: not a multiple of 8)."""
    base = rotary_model(n_ctx=n_ctx, d_model=n_heads * d_head, n_heads=n_heads, seed=3)
    rng = np.random.default_rng(4)
    d_model, width = n_heads * d_head, (n_heads + 2 * n_kv_heads) * d_head
    layers = []
    for layer in base._weights["layers"]:
        layer = dict(layer)
        layer["qkv_w"] = (rng.standard_normal((width, d_model)) * 0.5 / np.sqrt(d_model)).astype(np.float32)
        layers.append(layer)
    weights = dict(base._weights, layers=layers)
    return Model(dataclasses.replace(base.cfg, n_key_value_heads=n_kv_heads), weights, None)


MODELS = {"mha": lambda: rotary_model(n_ctx=200, d_model=40, n_heads=4, seed=1), "gqa": grouped_model}


def decode(model, tokens, prompt_len):
    """Logits of each position from prompt_len on, one decoding step at a time."""
    cache = model.new_cache(batch=tokens.shape[0])
    model.forward(tokens[:, :prompt_len], cache=cache, logits="none")
    return np.stack([model.forward(tokens[:, t:t + 1], cache=cache, logits="last")
                     for t in range(prompt_len, tokens.shape[1])], axis=1)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("prompt_len,length", [(1, 5), (60, 70), (63, 66), (127, 131), (190, 200)])
def test_decoding_steps_equal_the_whole_forward(kind, prompt_len, length):
    model = MODELS[kind]()
    tokens = np.random.default_rng(length).integers(0, model.cfg.d_vocab, (2, length))
    full = model(tokens)[:, prompt_len:]
    steps = decode(model, tokens, prompt_len)
    assert np.abs(steps - full).max() <= 2e-5 * np.abs(full).max()


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_decoding_steps_give_the_same_bits_for_any_thread_count(kind):
    model = MODELS[kind]()
    tokens = np.random.default_rng(0).integers(0, model.cfg.d_vocab, (3, 150))
    before = _core.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            _core.set_num_threads(threads)
            runs.append(decode(model, tokens, 120))
    finally:
        _core.set_num_threads(before)
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])


def test_left_padded_rows_decode_as_they_do_alone():
    """Rows of different lengths in one batch, padded on the left (as a cache
    takes them), then decoded together: each row's steps equal its own
    unpadded run (the keys before a row's first token stay unseen)."""
    model = grouped_model()
    rng = np.random.default_rng(9)
    lengths = [70, 130]
    rows = [rng.integers(2, model.cfg.d_vocab, n) for n in lengths]
    width = max(lengths)
    tokens = np.zeros((2, width), dtype=np.int64)
    mask = np.zeros((2, width), dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, width - len(row):], mask[i, width - len(row):] = row, 1
    cache = model.new_cache(batch=2)
    model.forward(tokens, cache=cache, logits="none", attention_mask=mask)
    nxt = rng.integers(2, model.cfg.d_vocab, (2, 6))
    batched = np.stack([model.forward(nxt[:, t:t + 1], cache=cache, logits="last") for t in range(6)], axis=1)
    for i, row in enumerate(rows):
        alone = decode(model, np.concatenate([row, nxt[i]])[None], len(row))[0]
        assert np.abs(batched[i] - alone).max() <= 2e-5 * np.abs(alone).max()


@pytest.mark.parametrize("point", ["hook_pattern", "hook_attn_scores"])
def test_a_hook_that_reads_the_pattern_changes_no_bit_of_a_decoding_step(point):
    """With the scores or the pattern hooked the step materializes them for the
    hook, then sums the values as the unhooked step does."""
    model = MODELS["mha"]()
    tokens = np.random.default_rng(2).integers(0, model.cfg.d_vocab, (2, 131))
    outs = []
    for hooks in ((), [(f"blocks.{layer}.attn.{point}", lambda x, hook: None) for layer in range(2)]):
        cache = model.new_cache(batch=2)
        model.forward(tokens[:, :128], cache=cache, logits="none")
        outs.append([model.forward(tokens[:, t:t + 1], cache=cache, logits="last", hooks=hooks) for t in range(128, 131)])
    np.testing.assert_array_equal(np.stack(outs[0]), np.stack(outs[1]))
