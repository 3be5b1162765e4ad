"""generate at the edges: a prompt and continuation of n_ctx + 1 tokens (the last new token
is never run), and token prompts of different lengths, left-padded with an attention_mask,
on a model without a tokenizer (each row continues as it would alone)."""

from __future__ import annotations

import numpy as np
import pytest

import tinymech as tm
from llama_factory import LLAMA_SHAPES
from numpy_checkpoints import write_llama

TOL = 1e-4


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, saved_gpt2, tmp_path_factory):
    if request.param == "gpt2":
        return saved_gpt2("odd")[0]  # n_ctx 24, no tokenizer
    return tm.load(write_llama(tmp_path_factory.mktemp("llama_gen"), **LLAMA_SHAPES["gqa"]))  # rotary, grouped-query


def prompt(model, batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, model.cfg.d_vocab, (batch, length))


# ---- the context's last position ----


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("batch", [1, 2])
def test_generate_fills_the_context_and_samples_one_more(model, use_cache, batch):
    # refused as n_ctx + 1 positions, though the last sampled token never runs (Hugging Face's generate takes it)
    n_ctx = model.cfg.n_ctx
    tokens = prompt(model, batch, n_ctx - 4)
    out = model.generate(tokens, 5, stop_at_eos=False, use_past_kv_cache=use_cache)
    assert out.shape == (batch, n_ctx + 1)
    np.testing.assert_array_equal(out[:, :-1], model.generate(tokens, 4, stop_at_eos=False))
    last = model(out[:, :n_ctx])[:, -1].argmax(-1)  # the n_ctx-th position's prediction
    np.testing.assert_array_equal(out[:, -1], last)
    full = prompt(model, batch, n_ctx)
    assert model.generate(full, 1, stop_at_eos=False, use_past_kv_cache=use_cache).shape == (batch, n_ctx + 1)
    with pytest.raises(tm.ContextLengthError, match=f"context of {n_ctx}"):
        model.generate(tokens, 6, stop_at_eos=False, use_past_kv_cache=use_cache)
    with pytest.raises(tm.ContextLengthError, match=f"context of {n_ctx}"):
        model.generate(full, 2, stop_at_eos=False, use_past_kv_cache=use_cache)


# ---- token prompts of different lengths, with an attention mask ----


def _last_logits(model, tokens, **kwargs):
    """(generated ids, each step's last-position logits [steps, batch, d_vocab])."""
    seen = []

    def keep(logits, hook):
        seen.append(logits[:, -1].copy())

    out = model.generate(tokens, 6, stop_at_eos=False, hooks=[("unembed.hook_out", keep)], **kwargs)
    return out, np.stack(seen)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("pad", [0, 7])  # any id pads: the mask says where padding is
def test_left_padded_token_prompts_with_a_mask_continue_as_alone(model, use_cache, pad):
    rows = [prompt(model, 1, 7, seed=1)[0], prompt(model, 1, 4, seed=2)[0]]
    tokens = np.full((2, 7), pad)
    mask = np.zeros((2, 7), dtype=np.int64)
    for b, row in enumerate(rows):
        tokens[b, 7 - len(row) :], mask[b, 7 - len(row) :] = row, 1
    out, logits = _last_logits(model, tokens, attention_mask=mask, use_past_kv_cache=use_cache)
    assert out.shape == (2, 13)
    np.testing.assert_array_equal(out[:, :7], tokens)
    for b, row in enumerate(rows):
        alone, alone_logits = _last_logits(model, row[None], use_past_kv_cache=use_cache)
        np.testing.assert_array_equal(out[b, 7:], alone[0, len(row) :])
        np.testing.assert_allclose(logits[:, b], alone_logits[:, 0], atol=TOL, rtol=TOL)
    bools = model.generate(tokens, 6, stop_at_eos=False, attention_mask=mask.astype(bool))
    np.testing.assert_array_equal(bools, out)


def test_a_mask_of_ones_changes_nothing(model):
    tokens = prompt(model, 2, 5)
    np.testing.assert_array_equal(
        model.generate(tokens, 3, stop_at_eos=False, attention_mask=np.ones((2, 5), int)),
        model.generate(tokens, 3, stop_at_eos=False),
    )
    one = tokens[:1]
    np.testing.assert_array_equal(
        model.generate(one, 3, stop_at_eos=False, attention_mask=[0, 1, 1, 1, 1]),
        np.concatenate([one[:, :1], model.generate(one[:, 1:], 3, stop_at_eos=False)], 1),
    )


@pytest.mark.parametrize(
    "mask, match",
    [
        ([[1, 1, 1, 0], [1, 1, 1, 1]], "row 0 of attention_mask is padded on the right"),
        ([[1, 0, 1, 1], [1, 1, 1, 1]], "0 between 1s"),
        ([[0, 0, 0, 0], [1, 1, 1, 1]], "all padding"),
        ([[1, 1, 1], [1, 1, 1]], r"shape \[batch, pos\] \[2, 4\]"),
        ([[1, 1, 1, 2], [1, 1, 1, 1]], "entries are 1"),
        ([[1.0, 1, 1, 1], [1, 1, 1, 1]], "integers or bools"),
    ],
)
@pytest.mark.parametrize("use_cache", [True, False])
def test_bad_masks_are_refused(model, mask, match, use_cache):
    with pytest.raises(tm.InvalidInputError, match=match):
        model.generate(prompt(model, 2, 4), 3, attention_mask=np.array(mask), use_past_kv_cache=use_cache)


def test_a_mask_with_texts_is_refused():
    demo = tm.load()
    with pytest.raises(tm.InvalidInputError, match="attention_mask goes with token ids"):
        demo.generate(["Mr Darcy", "Hello there"], 3, attention_mask=np.ones((2, 4), int))
