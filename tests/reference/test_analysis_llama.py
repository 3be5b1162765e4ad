"""The analyses on a Llama-class model, whose final norm is an RMSNorm (no
centering, no bias): the logit lens's last row is the model's output,
attributions sum to the logit, the ActivationCache's norm-applied stacks equal
TransformerLens's on the same weights, and the TUI's analysis runs."""
import numpy as np
import pytest
import torch

import tinymech as tm
from llama_factory import LLAMA_SHAPES, make_hf_llama
from model_factory import save_tokenizer
from tinymech import analysis
from tinymech.tui.backend import Backend
from tl_reference import tl_llama

SHAPE = LLAMA_SHAPES["gqa"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_analysis")
    hf = make_hf_llama(path, **SHAPE)
    save_tokenizer(path, SHAPE["vocab_size"])
    return tm.load(path), tl_llama(hf)


def softmax(x):
    e = np.exp(np.asarray(x, np.float64) - np.max(x, -1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("ln", ["recompute", "frozen"])
def test_logit_lens_last_row_is_the_output(pair, ln):
    model, _ = pair
    tokens = np.random.default_rng(1).integers(0, model.cfg.d_vocab, (2, 9))
    lens = analysis.logit_lens(model, tokens, k=4, ln=ln)
    probs = softmax(model(tokens))
    expected = np.argsort(-probs, axis=-1, kind="stable")[..., :4]
    np.testing.assert_array_equal(lens.top_ids[-1], expected)
    np.testing.assert_allclose(lens.top_probs[-1], np.take_along_axis(probs, expected, -1), rtol=1e-4, atol=1e-7)


def test_logit_attribution_sums_to_the_logit(pair):
    model, _ = pair
    tokens = np.random.default_rng(2).integers(0, model.cfg.d_vocab, (1, 8))
    res = analysis.logit_attribution(model, tokens, 5, 9)
    logits = model(tokens)[0, -1]
    assert res.labels[:2] == ["embed", "L0H0"] and res.labels[-1] == "ln_final_bias"
    assert res["ln_final_bias"] == 0.0  # an RMSNorm has no bias and this model no b_U
    np.testing.assert_allclose(res.values.sum(), logits[5] - logits[9], rtol=1e-4, atol=1e-4)


def test_cache_stacks_with_the_norm_applied_match_transformer_lens(pair):
    model, tl = pair
    tokens = np.random.default_rng(3).integers(0, model.cfg.d_vocab, (2, 7))
    _, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.as_tensor(tokens))
        tl_resid = tl_cache.accumulated_resid(apply_ln=True).numpy()
        tl_scaled = tl_cache.apply_ln_to_stack(tl_cache.decompose_resid(layer=1)).numpy()
    np.testing.assert_allclose(cache.accumulated_resid(apply_ln=True), tl_resid, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cache.apply_ln_to_stack(cache.decompose_resid(layer=1)), tl_scaled,
                               rtol=1e-4, atol=1e-4)


def test_tui_analysis_runs(pair):
    model, _ = pair
    a = Backend(model).analyze("the cat sat on the mat")
    last = a.n_tokens - 1
    lens = a.lens_at(last)
    assert lens.ids.shape == (len(a.lens_labels), 10)
    np.testing.assert_array_equal(lens.ids[-1], a.top_ids[last])  # the lens's last row is the prediction
