"""Padded batches without torch: each row of a padded batch (left or right padding,
an attention mask given or made from the pad tokens) gives what the row gives alone,
at every hook point, under interventions, through a KV cache and in generate; hostile
masks get precise errors. (Against TransformerLens on the same padded inputs:
tests/reference/test_padding_tl.py.)"""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import tinymech as tm
from llama_factory import LLAMA_SHAPES
from numpy_checkpoints import write_llama
from tinymech.padding import mask_of_tokens, pad_counts

LENGTHS = (7, 1, 4)  # a batch of three lengths, one of a single token
TOL = 1e-4


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, saved_gpt2, tmp_path_factory):
    if request.param == "gpt2":
        return saved_gpt2("odd")[0]  # d_head 20, vocabulary 301
    return tm.load(write_llama(tmp_path_factory.mktemp("llama_pad"), **LLAMA_SHAPES["gqa"]))  # grouped-query


@pytest.fixture(scope="module")
def demo():
    return tm.load()


def rows_of(model, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, model.cfg.d_vocab, n) for n in LENGTHS]


def padded(rows, side: str, pad: int = 0):
    """(tokens [batch, width], mask, each row's slice of real positions)."""
    width = max(map(len, rows))
    tokens = np.full((len(rows), width), pad)
    mask = np.zeros_like(tokens)
    where = []
    for b, row in enumerate(rows):
        at = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        tokens[b, at], mask[b, at] = row, 1
        where.append(at)
    return tokens, mask, where


def real(name: str, activation: np.ndarray, at: slice) -> np.ndarray:
    """One row's activation at its real positions (query and key for patterns and scores)."""
    if name.endswith(("hook_pattern", "hook_attn_scores")):
        return activation[:, at, at]
    return activation[at]


def assert_close(ours, ref, what):
    ours, ref = np.asarray(ours), np.asarray(ref)
    finite = np.isfinite(ref)
    assert np.array_equal(np.isfinite(ours), finite), what
    scale = max(float(np.abs(ref[finite]).max(initial=0)), 1e-6)
    assert float(np.abs(ours[finite] - ref[finite]).max(initial=0)) <= TOL * scale, what


@pytest.mark.parametrize("side", ["left", "right"])
def test_each_padded_row_equals_its_own_run_at_every_hook_point(model, side):
    rows = rows_of(model)
    tokens, mask, where = padded(rows, side)
    logits, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=lambda name: True)
    for b, row in enumerate(rows):
        own_logits, own = model.run_with_cache(row, names_filter=lambda name: True)
        assert_close(logits[b, where[b]], own_logits[0], f"logits of row {b}")
        for name in model.hook_names():
            assert_close(real(name, cache[name][b], where[b]), own[name][0], f"{name} of row {b}")
    if side == "left":  # a query before its row's first token attends to nothing
        pattern = cache["blocks.0.attn.hook_pattern"][1]
        assert not pattern[:, : tokens.shape[1] - 1].any()
        assert np.all(np.isneginf(cache["blocks.0.attn.hook_attn_scores"][1][:, :, : tokens.shape[1] - 1]))


def grad_names(model):
    return [n for n in model.hook_names() if not n.startswith(("unembed", "ln_final"))]


@pytest.mark.parametrize("side", ["left", "right"])
def test_each_padded_rows_gradients_equal_its_own_runs(model, side):
    """A backward of a padded batch: each row's gradient at every hook point equals its run
    alone's (grad_logits at its last real position), and padding gets none; the loss metric
    counts real positions only (each row's gradient is its own loss's, weighted by its share)."""
    rows = rows_of(model, seed=2)
    tokens, mask, where = padded(rows, side)
    G = np.zeros(tokens.shape + (model.cfg.d_vocab,), np.float32)
    for b, at in enumerate(where):
        G[b, at.stop - 1, b + 3] = 1.0
    names = grad_names(model)
    _, cache = model.run_with_cache(tokens, attention_mask=mask, incl_bwd=True, grad_logits=G, names_filter=names)
    loss, loss_cache = model.run_with_cache(tokens, attention_mask=mask, incl_bwd=True, return_type="loss",
                                            names_filter=names)
    counted = [len(row) - 1 for row in rows]
    assert loss == pytest.approx(sum(model(row, return_type="loss") * n for row, n in zip(rows, counted) if n) /
                                 sum(counted), rel=1e-5)
    for b, row in enumerate(rows):
        g = np.zeros((1, len(row), model.cfg.d_vocab), np.float32)
        g[0, -1, b + 3] = 1.0
        _, own = model.run_with_cache(row, incl_bwd=True, grad_logits=g, names_filter=names)
        own_loss = model.run_with_cache(row, incl_bwd=True, return_type="loss", names_filter=names)[1] \
            if counted[b] else None
        for name in names:
            key = name + "_grad"
            assert_close(real(name, cache[key][b], where[b]), own[key][0], f"{key} of row {b}")
            if own_loss is not None:
                share = counted[b] / sum(counted)
                assert_close(real(name, loss_cache[key][b], where[b]), share * own_loss[key][0], f"loss {key} of row {b}")
            if not name.endswith("hook_pattern"):  # d pattern = dz . v reads every key, padding too
                outside = np.delete(cache[key][b], np.arange(tokens.shape[1])[where[b]],
                                    axis=1 if name.endswith("attn_scores") else 0)
                assert not outside.any(), f"{key} of row {b}'s padding"


@pytest.mark.parametrize("side", ["left", "right"])
def test_interventions_losses_and_spans_of_padded_rows(model, side):
    rows = rows_of(model, seed=1)
    tokens, mask, where = padded(rows, side)
    hooks = [("blocks.0.attn.hook_z", tm.zero_ablate(heads=[1])), ("blocks.1.attn.hook_pattern", tm.scale(0.5))]
    edited = model.run_with_hooks(tokens, fwd_hooks=hooks, attention_mask=mask)
    per_token = model(tokens, return_type="loss", loss_per_token=True, attention_mask=mask)
    resid = model(tokens, stop_at_layer=1, attention_mask=mask)
    resumed = model(resid, start_at_layer=1, attention_mask=mask)
    for b, row in enumerate(rows):
        assert_close(edited[b, where[b]], model.run_with_hooks(row, fwd_hooks=hooks)[0], f"edited row {b}")
        assert_close(resumed[b, where[b]], model(row)[0], f"row {b} resumed at block 1")
        counted = (mask[b, :-1] & mask[b, 1:]).astype(bool)  # a real token predicting a real one
        assert_close(per_token[b][counted], model(row, return_type="loss", loss_per_token=True)[0], f"losses of row {b}")
        assert not per_token[b][~counted].any()  # padding counts for nothing
    mean = model(tokens, return_type="loss", attention_mask=mask)
    losses = np.concatenate([model(row, return_type="loss", loss_per_token=True)[0] for row in rows])
    assert abs(mean - losses.mean()) <= TOL * abs(losses.mean())


def test_a_kv_cache_keeps_each_rows_left_padding(model):
    rows = rows_of(model, seed=2)
    tokens, mask, where = padded(rows, "left")
    cache = model.new_cache(len(rows))
    model.forward(tokens, cache=cache, attention_mask=mask, logits="none")
    np.testing.assert_array_equal(cache.left_padding, tokens.shape[1] - np.array(LENGTHS))
    steps = np.random.default_rng(3).integers(1, model.cfg.d_vocab, (len(rows), 3))
    # decode step by step: every row as it decodes alone
    alone = [model.new_cache() for _ in rows]
    for own, row in zip(alone, rows):
        model.forward(row, cache=own, logits="none")
    for t in range(steps.shape[1]):
        last = model.forward(steps[:, t : t + 1], cache=cache, logits="last")
        for b, own in enumerate(alone):
            assert_close(last[b], model.forward(steps[b : b + 1, t : t + 1], cache=own, logits="last")[0],
                         f"decode step {t} of row {b}")
    # truncating into a row's padding leaves the row padding only; reset forgets it
    cut = cache.fork()
    cut.truncate(2)
    np.testing.assert_array_equal(cut.left_padding, np.minimum(tokens.shape[1] - np.array(LENGTHS), 2))
    cut.reset()
    assert not cut.left_padding.any()


def test_generate_continues_each_text_as_alone(demo):
    texts = ["Mr Darcy walked in. Mr Darcy", "Hello", "It is a truth universally"]
    alone = [demo.generate(t, max_new_tokens=8) for t in texts]
    assert demo.generate(texts, max_new_tokens=8) == alone  # padded on the left
    assert demo.generate(texts, max_new_tokens=8, use_past_kv_cache=False) == alone
    # token ids padded on the left: generate(padding_side="left") masks their padding
    tokens = demo.to_tokens(texts, padding_side="left")
    ids = demo.generate(tokens, max_new_tokens=8, padding_side="left", stop_at_eos=False)
    for b, text in enumerate(texts):
        own = demo.generate(text, max_new_tokens=8, stop_at_eos=False, return_type="tokens")[0]
        np.testing.assert_array_equal(ids[b, tokens.shape[1]:], own[-8:])


def test_left_padding_makes_its_mask_from_the_pad_tokens(demo):
    texts = ["Mr Darcy walked in. Mr Darcy", "Hello"]
    tokens = demo.to_tokens(texts, padding_side="left")
    n = demo.to_tokens("Hello").shape[1]  # BOS first
    bos = demo.tokenizer.bos_token_id
    assert bos == demo.tokenizer.pad_token_id  # GPT-2's BOS is its pad token: the BOS stays unmasked
    assert np.all(tokens[1, : 1 - n] == bos)
    mask = mask_of_tokens(tokens, bos, bos, True, "left")
    assert mask[1].tolist() == [0] * (tokens.shape[1] - n) + [1] * n
    left, right = pad_counts(mask)
    assert left.tolist() == [0, tokens.shape[1] - n] and not right.any()
    own = demo("Hello")[0]
    np.testing.assert_allclose(demo(tokens, padding_side="left")[1, -n:], own, atol=1e-4)
    demo.tokenizer.padding_side = "left"  # as TransformerLens, the tokenizer's side applies by default
    try:
        np.testing.assert_allclose(demo(texts)[1, -n:], own, atol=1e-4)
        np.testing.assert_allclose(demo(tokens)[1, -n:], own, atol=1e-4)
    finally:
        demo.tokenizer.padding_side = "right"
    assert not np.allclose(demo(tokens)[1, -n:], own, atol=1e-4)  # right: no mask is made, as TransformerLens


def test_token_ids_continuing_a_cache_are_tokens_even_when_they_are_pad_tokens(demo):
    eos = demo.tokenizer.pad_token_id
    expected = demo(demo.to_tokens("Mr Darcy").tolist()[0] + [eos, eos])[0, -1]
    demo.tokenizer.padding_side = "left"
    try:
        cache = demo.new_cache()
        demo.forward("Mr Darcy", cache=cache, logits="none")
        np.testing.assert_allclose(demo.forward([[eos, eos]], cache=cache, logits="last")[0], expected, atol=1e-4)
        # texts of different lengths continuing a cache would be padded after its real tokens
        cache = demo.new_cache(2)
        demo.forward(["Mr Darcy", "Mr Bingley walked"], cache=cache, logits="none")
        with pytest.raises(tm.InvalidInputError, match="padded on the left, but the KV cache"):
            demo.forward([" and sat down", " in"], cache=cache, logits="none")
    finally:
        demo.tokenizer.padding_side = "right"


def test_default_padding_side(demo):
    assert demo.cfg.default_padding_side == "right" == demo.tokenizer.padding_side
    left = tm.from_pretrained(None, default_padding_side="left")
    assert left.cfg.default_padding_side == "left" == left.tokenizer.padding_side
    assert pickle.loads(pickle.dumps(left)).tokenizer.padding_side == "left"
    texts = ["Mr Darcy", "Hello there, Mr Darcy"]
    assert left.to_tokens(texts)[0, 0] == left.tokenizer.pad_token_id
    assert demo.to_tokens(texts)[0, -1] == demo.tokenizer.pad_token_id
    left.tokenizer.padding_side = "right"  # changed since load: copies pad as the model does now
    for copied in (pickle.loads(pickle.dumps(left)), copy.deepcopy(left)):
        assert copied.tokenizer.padding_side == "right"
        np.testing.assert_array_equal(copied.to_tokens(texts), left.to_tokens(texts))
    left.tokenizer.padding_side = "left"


@pytest.mark.parametrize("mask, match", [
    (np.ones((3, 5), dtype=np.int64), r"shape \[batch, pos\] \[3, 7\]"),
    (np.ones((3, 7), dtype=np.float32), "integers or bools"),
    (np.full((3, 7), 2), "holds 2"),
    (np.array([[1] * 7, [1, 1, 0, 1, 1, 1, 1], [1] * 7]), "0 between 1s"),
    (np.array([[1] * 7, [0] * 7, [1] * 7]), "row 1 of attention_mask is all padding"),
    ([["a"] * 7] * 3, "integers or bools"),
])
def test_bad_attention_masks_are_refused(model, mask, match):
    tokens, _, _ = padded(rows_of(model), "left")
    for run in (lambda: model(tokens, attention_mask=mask), lambda: model.run_with_cache(tokens, attention_mask=mask),
                lambda: model.forward(tokens, attention_mask=mask)):
        with pytest.raises(tm.InvalidInputError, match=match):
            run()


def test_kv_cache_padding_that_would_leave_a_gap_is_refused(model):
    tokens, mask, _ = padded(rows_of(model), "right")
    with pytest.raises(tm.InvalidInputError, match="row 1 is padded on the right"):
        model.forward(tokens, cache=model.new_cache(3), attention_mask=mask)
    tokens, mask, _ = padded(rows_of(model), "left")
    cache = model.new_cache(3)
    model.forward(tokens, cache=cache, attention_mask=mask, logits="none")
    with pytest.raises(tm.InvalidInputError, match="row 0 is padded on the left, but the KV cache"):
        model.forward(tokens[:, :2], cache=cache, attention_mask=[[0, 1]] * 3)
    assert cache.n_past == tokens.shape[1]  # refused calls change nothing
    with pytest.raises(tm.InvalidInputError, match="padding_side"):
        model(tokens, padding_side="middle")
    with pytest.raises(tm.InvalidInputError, match=r"attention_mask \[3, 7\] must have the tokens' shape"):
        model(np.zeros((3, 4, model.cfg.d_model), np.float32), start_at_layer=1, attention_mask=mask)


def test_a_padded_call_on_a_cache_of_another_batch_is_refused_before_allocating(model):
    """A cache's batch may be declared far beyond memory (it allocates nothing until used):
    a padded call on it is refused by its batch before its padding counts are read."""
    tokens, mask, _ = padded(rows_of(model), "left")
    huge = model.new_cache(2**40)
    with pytest.raises(tm.InvalidInputError, match="tokens have batch 3 but the cache holds 1099511627776"):
        model.forward(tokens, cache=huge, attention_mask=mask)
    assert huge.n_past == 0 and model.new_cache(2).left_padding.tolist() == [0, 0]


def test_texts_padded_on_the_right_are_refused_by_a_kv_cache(demo):
    """Right padding would sit in the cache between a row's prompt and what continues it."""
    texts = ["Mr Darcy walked in", "She"]
    for side in (None, "right"):  # None: the tokenizer's, right by default
        cache = demo.new_cache(2)
        with pytest.raises(tm.InvalidInputError, match="pad on the left"):
            demo.forward(texts, cache=cache, padding_side=side)
        assert cache.n_past == 0
    cache = demo.new_cache(2)
    last = demo.forward(texts, cache=cache, padding_side="left", logits="last")
    np.testing.assert_allclose(last[1], demo.forward(texts[1], logits="last")[0], rtol=TOL, atol=TOL)
    demo.forward(["Mr Darcy", "Mr Bingley"], cache=demo.new_cache(2))  # one length: no padding


def test_bf16_attention_of_padded_rows(saved_gpt2):
    """bfloat16 weights: a prefill's attention reads bfloat16 copies of the keys and values
    (where the CPU has bfloat16 dot products), from each row's first real key."""
    model = tm.load(saved_gpt2("odd")[1], dtype="bf16")
    rows = [np.random.default_rng(4).integers(1, model.cfg.d_vocab, n) for n in (9, 6, 5)]  # long enough for it
    for side in ("left", "right"):
        tokens, mask, where = padded(rows, side)
        logits = model(tokens, attention_mask=mask)
        for b, row in enumerate(rows):
            assert_close(logits[b, where[b]], model(row)[0], f"{side} row {b}")


@pytest.mark.parametrize("tokenizer, tokens, match", [
    (None, [[1, 2]], "a tokenizer"),
    ("demo", [[1, 2], [3]], r"tokens are \[batch, pos\]"),
    ("demo", [["a", "b"]], "integers"),
])
def test_get_attention_mask_refuses_what_it_cannot_read(demo, tokenizer, tokens, match):
    tokenizer = demo.tokenizer if tokenizer == "demo" else tokenizer
    with pytest.raises(tm.TinymechError, match=match):
        tm.utils.get_attention_mask(tokenizer, tokens, True, "left")
    np.testing.assert_array_equal(tm.utils.get_attention_mask(demo.tokenizer, [0, 0, 5], False, "left"), [0, 0, 1])
