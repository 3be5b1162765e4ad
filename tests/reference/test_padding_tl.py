"""Padded batches against TransformerLens on the same padded inputs: to_tokens' padding,
every hook point TransformerLens caches (padding positions included), logits and losses,
interventions, generate with and without the KV cache, and activation patching; on the
demo GPT-2 (its tokenizer on both sides: masks made from the pad tokens) and on a Llama
with grouped-query attention (rotary positions, masks given). Both padding sides, a batch
of three lengths, one of them a single token. (Torch-free: tests/unit/test_padding.py.)"""
import numpy as np
import pytest
import torch
from transformer_lens import patching as tl_patching
from transformer_lens.utilities import get_attention_mask

import tinymech as tm
from llama_factory import LLAMA_SHAPES, make_hf_llama
from tinymech import patching, utils
from tl_reference import act_err, as_tl_hook, demo_pair, tl_llama

TEXTS = ["Mr Darcy walked in. Mr Darcy", "", "It is a truth"]  # "" is the BOS alone
TOL = 1e-4


@pytest.fixture(scope="module")
def demo():
    return demo_pair()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_padding")
    hf = make_hf_llama(path, **LLAMA_SHAPES["gqa"])
    return tm.load(path), tl_llama(hf)


@pytest.fixture
def side(request, demo):
    """Both tokenizers padding on request.param's side, as set_tokenizer's default_padding_side sets it."""
    model, tl = demo
    model.tokenizer.padding_side = tl.tokenizer.padding_side = request.param
    yield request.param
    model.tokenizer.padding_side = tl.tokenizer.padding_side = "right"


def tl_run(tl, tokens, **kwargs):
    """TransformerLens's run_with_cache as numpy (masks given as numpy too)."""
    kwargs = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    with torch.no_grad():
        logits, cache = tl.run_with_cache(torch.as_tensor(tokens) if isinstance(tokens, np.ndarray) else tokens,
                                          **kwargs)
    return logits.numpy(), {name: value.numpy() for name, value in cache.items()}


def assert_every_hook_matches(ours, theirs):
    (logits, cache), (tl_logits, tl_cache) = ours, theirs
    assert act_err(logits, tl_logits) <= TOL
    assert set(tl_cache) <= set(cache.keys())
    for name, value in tl_cache.items():
        assert act_err(cache[name], value) <= TOL, name


def padded_tokens(model, side):
    """Random rows of three lengths, padded with token 0 on `side`: (tokens, mask)."""
    rng = np.random.default_rng(5)
    rows = [rng.integers(1, model.cfg.d_vocab, n) for n in (6, 1, 4)]
    tokens, mask = np.zeros((3, 6), np.int64), np.zeros((3, 6), np.int64)
    for b, row in enumerate(rows):
        at = slice(6 - len(row), 6) if side == "left" else slice(0, len(row))
        tokens[b, at], mask[b, at] = row, 1
    return tokens, mask


@pytest.mark.parametrize("side", ["left", "right"], indirect=True)
def test_gpt2_padded_texts_match_transformer_lens_at_every_hook(demo, side):
    model, tl = demo
    tokens = model.to_tokens(TEXTS)
    np.testing.assert_array_equal(tokens, tl.to_tokens(TEXTS).numpy())
    assert len({int((row != model.tokenizer.pad_token_id).sum()) for row in tokens}) == 3
    # the mask TransformerLens makes of left padding (none for right padding)
    assert_every_hook_matches(model.run_with_cache(TEXTS, names_filter=lambda name: True), tl_run(tl, TEXTS))
    for per_token in (False, True):
        ours = model(TEXTS, return_type="loss", loss_per_token=per_token)
        with torch.no_grad():
            theirs = tl(TEXTS, return_type="loss", loss_per_token=per_token).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=TOL, atol=TOL)
    # a mask given, on either side (right padding masked too: padding queries see the real keys only)
    lengths = [model.to_tokens(text).shape[1] for text in TEXTS]
    mask = np.array([[int(p >= len(row) - n if side == "left" else p < n) for p in range(len(row))]
                     for row, n in zip(tokens, lengths)])
    if side == "left":  # as TransformerLens makes it of the pad tokens
        np.testing.assert_array_equal(mask, get_attention_mask(tl.tokenizer, torch.as_tensor(tokens), True).numpy())
    assert_every_hook_matches(model.run_with_cache(tokens, attention_mask=mask, names_filter=lambda name: True),
                              tl_run(tl, tokens, attention_mask=mask))


@pytest.mark.parametrize("prepend_bos", [True, False])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_get_attention_mask_matches_transformer_lens(demo, padding_side, prepend_bos):
    model, tl = demo
    tokens = model.to_tokens(TEXTS, padding_side=padding_side)
    tokens[2, -1] = model.tokenizer.pad_token_id  # a pad token inside a row is a token, on either side
    ours = utils.get_attention_mask(model.tokenizer, tokens, prepend_bos, padding_side)
    theirs = get_attention_mask(tl.tokenizer, torch.as_tensor(tokens), prepend_bos, padding_side).numpy()
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(utils.get_attention_mask(model.tokenizer, tokens[1], prepend_bos, padding_side),
                                  ours[1])  # one row: [pos]


@pytest.mark.parametrize("side", ["left", "right"])
def test_grouped_query_llama_padded_tokens_match_transformer_lens_at_every_hook(llama, side):
    model, tl = llama
    tokens, mask = padded_tokens(model, side)
    assert_every_hook_matches(model.run_with_cache(tokens, attention_mask=mask, names_filter=lambda name: True),
                              tl_run(tl, tokens, attention_mask=mask))
    with torch.no_grad():
        theirs = tl(torch.as_tensor(tokens), return_type="loss", attention_mask=torch.as_tensor(mask)).item()
    assert abs(model(tokens, return_type="loss", attention_mask=mask) - theirs) <= TOL * abs(theirs)


@pytest.mark.parametrize("side", ["left"], indirect=True)
def test_hooks_on_padded_texts_match_transformer_lens(demo, side):
    model, tl = demo

    def halve_head(activation, hook):
        activation[:, :, 2] *= 0.5

    hooks = [("blocks.1.attn.hook_z", halve_head), ("blocks.2.attn.hook_pattern", lambda a, hook: a * 0.9)]
    ours = model.run_with_hooks(TEXTS, fwd_hooks=hooks)
    with torch.no_grad():
        theirs = tl.run_with_hooks(TEXTS, fwd_hooks=[(name, as_tl_hook(fn)) for name, fn in hooks]).numpy()
    assert act_err(ours, theirs) <= TOL


@pytest.mark.parametrize("options", [{}, pytest.param({"use_past_kv_cache": False}, marks=pytest.mark.slow),
                                     {"return_type": "tokens", "stop_at_eos": False}], ids=str)
def test_generate_from_texts_of_different_lengths_matches_transformer_lens(demo, options):
    model, tl = demo
    ours = model.generate(TEXTS, max_new_tokens=10, do_sample=False, **options)
    with torch.no_grad():
        theirs = tl.generate(TEXTS, max_new_tokens=10, do_sample=False, verbose=False, **options)
    if isinstance(theirs, torch.Tensor):
        np.testing.assert_array_equal(ours, theirs.numpy())
    else:
        assert ours == theirs
    # and each row continues as its text alone does
    if "return_type" not in options:
        assert ours == [model.generate(text, max_new_tokens=10, do_sample=False, **options) for text in TEXTS]


def test_grouped_query_llama_decodes_after_left_padding_as_transformer_lens(llama):
    from transformer_lens import TransformerLensKeyValueCache

    model, tl = llama
    tokens, mask = padded_tokens(model, "left")
    cache = model.new_cache(3)
    ours = [model.forward(tokens, cache=cache, attention_mask=mask, logits="last")]
    tl_cache = TransformerLensKeyValueCache.init_cache(tl.cfg, "cpu", 3)
    with torch.no_grad():
        theirs = [tl(torch.as_tensor(tokens), past_kv_cache=tl_cache, attention_mask=torch.as_tensor(mask))[:, -1]]
        for _ in range(4):  # greedy, each library on its own choices
            new = theirs[-1].argmax(-1, keepdim=True)
            theirs.append(tl(new, past_kv_cache=tl_cache, attention_mask=torch.ones_like(new))[:, -1])
            ours.append(model.forward(ours[-1].argmax(-1)[:, None], cache=cache, logits="last"))
            np.testing.assert_array_equal(ours[-2].argmax(-1), new[:, 0].numpy())
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert act_err(a, b.numpy()) <= TOL, step


@pytest.mark.parametrize("side", ["left"], indirect=True)
@pytest.mark.parametrize("name", ["get_act_patch_resid_pre",
                                  pytest.param("get_act_patch_attn_head_out_all_pos", marks=pytest.mark.slow)])
def test_patching_padded_tokens_matches_transformer_lens(demo, side, name):
    model, tl = demo
    clean = model.to_tokens(["Mr Darcy walked in. Mr Darcy", "She sat"])
    corrupted = model.to_tokens(["Mr Bingley walked in. Mr Darcy", "He sat"])
    assert clean.shape == corrupted.shape and (clean == model.tokenizer.pad_token_id)[1, 1]  # row 1 padded

    def metric(logits):  # the last position is each row's last real token
        return (logits[:, -1, 1508] - logits[:, -1, 420]).mean()

    _, cache = model.run_with_cache(clean)
    got = getattr(patching, name)(model, corrupted, cache, metric)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.as_tensor(clean))
        expected = getattr(tl_patching, name)(tl, torch.as_tensor(corrupted), tl_cache, metric).numpy()
    np.testing.assert_allclose(got, expected, rtol=TOL, atol=TOL * np.abs(expected).max())
    assert np.ptp(expected) > 1e-3
