"""Saliency without torch: gradient × input against run_with_cache's own gradients, integrated
gradients' completeness and batching, the result's printing, and the errors of hostile input.
(tests/reference/test_saliency_torch.py checks both against torch autograd.)"""
from __future__ import annotations

import numpy as np
import pytest

import tinymech as tm
from tinymech import analysis
from tinymech.analysis.saliency import MAX_STEPS
from tinymech.errors import AnalysisError, InvalidInputError, InvalidTokensError, TinymechError
from llama_factory import LLAMA_SHAPES
from numpy_checkpoints import write_llama

PROMPT = "Mr Darcy walked into the room and"
PROMPTS = [PROMPT, "Mr Bingley walked into the room and"]  # one token length


@pytest.fixture(scope="module")
def demo():
    return tm.load()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tm.load(write_llama(tmp_path_factory.mktemp("sal_llama"), **LLAMA_SHAPES["mqa_llama3"]))


def embed_grads(model, tokens, metric, names=("hook_embed",)):
    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=metric,
                                    names_filter=list(names))
    return cache


def test_grad_x_input_is_the_caches_gradient_times_the_embedding(demo):
    tokens = demo.to_tokens(PROMPTS)
    ids = np.array([11, 12])
    result = analysis.saliency(demo, tokens, metric=("log_prob", ids))
    cache = embed_grads(demo, tokens, ("log_prob", ids))
    # the built-in metric is a mean over the batch; saliency explains each sequence's own term
    expected = 2 * (cache["hook_embed"].astype(np.float64) * cache["hook_embed_grad"]).sum(-1)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5, atol=1e-6)
    assert result.scores.shape == tokens.shape and result.gap is None and result.target is None


def test_the_default_metric_is_the_top_predictions_log_prob(demo):
    tokens = demo.to_tokens(PROMPTS)
    logits = demo(tokens)
    top = logits[:, -1].argmax(-1)
    result = analysis.saliency(demo, PROMPTS)
    np.testing.assert_array_equal(result.target, top)
    alone = [analysis.saliency(demo, tokens[b], metric=("log_prob", int(top[b]))).scores[0] for b in range(2)]
    np.testing.assert_allclose(result.scores, np.stack(alone), rtol=1e-4, atol=1e-5)  # float32 batch rounding
    x = logits[:, -1].astype(np.float64)
    log_p = x[[0, 1], top] - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) - x.max(-1)
    np.testing.assert_allclose(result.metric_value, log_p, rtol=1e-5)


def test_a_target_at_an_earlier_position_and_the_logit(demo):
    tokens = demo.to_tokens(PROMPT)
    target = " walked"
    t = demo.to_single_token(target)

    def logit_at_3(logits):
        G = np.zeros(logits.shape)
        G[:, 3, t] = 1
        return float(logits[:, 3, t].sum()), G

    result = analysis.saliency(demo, PROMPT, target=target, position=3, target_metric="logit")
    cache = embed_grads(demo, tokens, logit_at_3)
    np.testing.assert_allclose(result.scores[0], (cache["hook_embed"][0] * cache["hook_embed_grad"][0]).sum(-1),
                               rtol=1e-5, atol=1e-6)
    assert not result.scores[0, 4:].any()  # later tokens cannot push an earlier prediction
    assert result.position == 3 and "logit(·walked) at position 3" in str(result)


def test_token_plus_position_embeddings(demo, llama):
    tokens = demo.to_tokens(PROMPT)
    result = analysis.saliency(demo, tokens, metric=("log_prob", 7), embeddings="token+pos")
    cache = embed_grads(demo, tokens, ("log_prob", 7), ("hook_embed", "hook_pos_embed"))
    x = cache["hook_embed"].astype(np.float64) + cache["hook_pos_embed"]
    np.testing.assert_allclose(result.scores, (x * cache["hook_embed_grad"]).sum(-1), rtol=1e-5, atol=1e-6)
    # rotary models add no position vector: the same as the token embeddings alone
    ids = np.random.default_rng(0).integers(0, llama.cfg.d_vocab, (2, 5))
    a = analysis.saliency(llama, ids, embeddings="token+pos", method="integrated_gradients", steps=4)
    b = analysis.saliency(llama, ids, method="integrated_gradients", steps=4)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_llama_grad_x_input(llama):
    ids = np.random.default_rng(1).integers(0, llama.cfg.d_vocab, (3, 7))
    result = analysis.saliency(llama, ids, metric=("logit_diff", [1, 2, 3], 4))
    cache = embed_grads(llama, ids, ("logit_diff", [1, 2, 3], 4))
    np.testing.assert_allclose(result.scores, 3 * (cache["hook_embed"] * cache["hook_embed_grad"]).sum(-1),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["riemann", "gauss_legendre", "trapezoid"])
def test_the_completeness_gap_shrinks_with_steps(demo, rule):
    gaps = [np.abs(analysis.saliency(demo, PROMPTS, method="integrated_gradients", steps=s, rule=rule).gap).max()
            for s in (4, 16, 64)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3, gaps


def test_integrated_gradients_batching_changes_nothing(demo, llama):
    for model, inputs in ((demo, PROMPTS), (llama, np.random.default_rng(2).integers(0, 100, (2, 1)))):
        kwargs = dict(method="integrated_gradients", steps=5, metric="loss" if model is demo else None)
        whole = analysis.saliency(model, inputs, **kwargs)
        one_row = analysis.saliency(model, inputs, batch_size=1, **kwargs)
        np.testing.assert_allclose(whole.scores, one_row.scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(whole.gap, one_row.gap, rtol=1e-4, atol=1e-5)
        tokens = model.tokens_of(inputs)
        for b in range(2):
            alone = analysis.saliency(model, tokens[b], **kwargs)
            np.testing.assert_allclose(whole.scores[b], alone.scores[0], rtol=1e-4, atol=1e-5)


def test_baselines(demo):
    tokens = demo.to_tokens(PROMPT)
    _, cache = demo.run_with_cache(tokens, names_filter="hook_embed")
    x = cache["hook_embed"]
    same = analysis.saliency(demo, tokens, method="integrated_gradients", steps=3, baseline=x[0])
    assert not same.scores.any() and abs(same.gap[0]) < 1e-5  # the baseline is the input
    pad = demo.W_E[0]
    for baseline in (pad, np.broadcast_to(pad, x.shape[1:]), np.broadcast_to(pad, x.shape)):
        r = analysis.saliency(demo, tokens, method="integrated_gradients", steps=32, baseline=baseline)
        assert abs(r.gap[0]) < 1e-3
    np.testing.assert_allclose(r.baseline_value + r.scores.sum(-1), r.metric_value, atol=1e-3)


def test_a_metric_function_sees_one_sequence(demo):
    seen = []

    def last_logit_sum(logits):
        seen.append(logits.shape)
        G = np.zeros(logits.shape)
        G[:, -1, :10] = 1
        return logits[:, -1, :10].sum(), G

    r = analysis.saliency(demo, PROMPTS, metric=last_logit_sum)
    assert seen == [(1, 8, demo.cfg.d_vocab)] * 2 and "last_logit_sum" in r.metric


def test_the_result_prints_and_ranks(demo):
    r = analysis.saliency(demo, PROMPT)
    assert r.labels[0][2] == "·Darcy"
    top = r.top(3)
    assert [abs(s) for _, _, s in top] == sorted((abs(s) for s in r.scores[0]), reverse=True)[:3]
    assert all(s > 0 for _, _, s in r.top(20, sign="+")) and all(s < 0 for _, _, s in r.top(20, sign="-"))
    assert len(r.top(20, sign="+")) + len(r.top(20, sign="-")) == 8
    text = str(r)
    assert text.startswith("Gradient × input of log p(") and "·Darcy" in text
    ig = analysis.saliency(demo, PROMPTS, method="integrated_gradients", steps=4, embeddings="token+pos")
    assert "completeness gap" in ig.table(batch=1) and "token + position" in ig.table()
    with pytest.raises(AnalysisError, match="batch 2 is outside the 2 sequences"):
        ig.table(batch=2)
    with pytest.raises(AnalysisError, match="sign must be"):
        r.top(sign="up")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="integrated_gradients", steps=0), AnalysisError, r"steps must be an integer in \[1, 1024\], not 0"),
    (dict(method="integrated_gradients", steps=MAX_STEPS + 1), AnalysisError, "not 1025"),
    (dict(steps=10**12), AnalysisError, "steps must be an integer"),
    (dict(steps=True), AnalysisError, "steps must be an integer"),
    (dict(steps=2.5), AnalysisError, "steps must be an integer"),
    (dict(steps=1, rule="trapezoid"), AnalysisError, r"steps must be an integer in \[2, 1024\]"),
    (dict(method="lrp"), AnalysisError, "method must be one of"),
    (dict(rule="simpson"), AnalysisError, "rule must be one of"),
    (dict(embeddings="pos"), AnalysisError, "embeddings must be one of"),
    (dict(target_metric="prob"), AnalysisError, "target_metric must be one of"),
    (dict(batch_size=0), AnalysisError, "batch_size must be an integer"),
    (dict(target=" Darcy walked"), InvalidTokensError, ""),
    (dict(target=10**6), InvalidTokensError, "outside the vocabulary"),
    (dict(target=[1, 2, 3]), AnalysisError, r"one token or one per sequence \(2\), not 3"),
    (dict(target=1.5), InvalidTokensError, "a token is a string or an integer id"),
    (dict(position=8), AnalysisError, "position 8 is outside a sequence of 8 tokens"),
    (dict(position=-9), AnalysisError, "outside"),
    (dict(metric="loss", target=3), AnalysisError, "a metric= reads its own"),
    (dict(metric="loss", position=2), AnalysisError, "a metric= reads its own"),
    (dict(metric="entropy"), InvalidInputError, "unknown metric"),
    (dict(metric=("log_prob", [1, 2, 3])), InvalidInputError, r"one per sequence \(2\)"),
    (dict(metric=("logit_diff", 1, 10**6)), InvalidInputError, "outside the vocabulary"),
    (dict(baseline=np.zeros(256)), AnalysisError, "a baseline goes with method='integrated_gradients'"),
    (dict(method="integrated_gradients", baseline=np.zeros(255)), AnalysisError,
     r"\[d_model\] \(256\), \[pos, d_model\] \(8, 256\) or \[batch, pos, d_model\] \(2, 8, 256\), not shape \[255\]"),
    (dict(method="integrated_gradients", baseline=np.zeros((3, 8, 256))), AnalysisError, "not shape"),
    (dict(method="integrated_gradients", baseline=np.full(256, np.nan)), AnalysisError, "NaN"),
    (dict(method="integrated_gradients", baseline="mean"), AnalysisError, "baseline must be 'zero' or an array"),
    (dict(method="integrated_gradients", baseline=np.array(["a"] * 256)), AnalysisError, "holds numbers"),
])
def test_hostile_input_gets_precise_errors(demo, kwargs, error, match):
    with pytest.raises(error, match=match):
        analysis.saliency(demo, PROMPTS, **kwargs)


def test_bad_metric_functions_and_inputs(demo):
    def raises(logits):
        raise RuntimeError("boom")

    with pytest.raises(InvalidInputError, match="raised RuntimeError: boom"):
        analysis.saliency(demo, PROMPT, metric=raises)
    with pytest.raises(InvalidInputError, match="the metric function's gradient must have the logits' shape"):
        analysis.saliency(demo, PROMPT, metric=lambda lg: (1.0, np.zeros(3)))
    with pytest.raises(InvalidInputError, match="metric function's value must be one number"):
        analysis.saliency(demo, PROMPT, metric=lambda lg: (np.ones(2), np.zeros(lg.shape)))
    with pytest.raises(AnalysisError, match="value is nan"):
        analysis.saliency(demo, PROMPT, metric=lambda lg: (float("nan"), np.zeros(lg.shape)))
    with pytest.raises(InvalidInputError, match="loss metric needs"):
        analysis.saliency(demo, [0], metric="loss")
    with pytest.raises(InvalidTokensError, match="different token lengths"):
        analysis.saliency(demo, ["Mr Darcy", "Mr Darcy walked in"])
    with pytest.raises(TinymechError):
        analysis.saliency(demo, [])
