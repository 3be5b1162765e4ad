"""Saliency against torch autograd on the same weights: gradient × input and integrated gradients
computed by hand in torch (TransformerLens's model, a hook putting a leaf tensor at hook_embed,
the same alphas and weights), for GPT-2 (token and token + position embeddings) and Llama-class
models, odd shapes, batch > 1, length 1 and the full context."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tinymech as tm
from tinymech import analysis
from tinymech.analysis.saliency import quadrature
from llama_factory import LLAMA_SHAPES, make_hf_llama
from model_factory import SHAPES, make_hf_gpt2
from tl_reference import act_err, hooked_transformer, tl_llama

TOL = 1e-4


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    path = tmp_path_factory.mktemp("sal_gpt2")
    hf = make_hf_gpt2(path, **SHAPES["odd"])  # d_head 20, n_ctx 24
    return tm.load(path), hooked_transformer(hf, use_attn_result=False)


@pytest.fixture(scope="module", params=["gqa", "mha_tied"])
def llama_pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("sal_llama")
    hf = make_hf_llama(path, **LLAMA_SHAPES[request.param])
    return tm.load(path), tl_llama(hf)


def torch_saliency(tl, tokens, metric, alphas, weights, baseline=None, with_pos=False):
    """(scores [batch, pos], metric per sequence at each alpha) by autograd: the path's gradient at
    each alpha is a leaf put at hook_embed (hook_pos_embed zeroed when it is part of the input)."""
    toks = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    with torch.no_grad():
        x = tl.embed(toks) + (tl.pos_embed(toks) if with_pos else 0)
    x0 = torch.zeros_like(x) if baseline is None else torch.as_tensor(baseline, dtype=torch.float32).expand_as(x)
    mean_grad, values = torch.zeros_like(x, dtype=torch.float64), []
    for a, w in zip(alphas, weights):
        point = (x0 + float(a) * (x - x0)).detach().requires_grad_()
        hooks = [("hook_embed", lambda act, hook: point)]
        if with_pos:
            hooks.append(("hook_pos_embed", lambda act, hook: torch.zeros_like(act)))
        with tl.hooks(fwd_hooks=hooks):
            per_seq = metric(tl(toks))
        per_seq.sum().backward()
        mean_grad += float(w) * point.grad.double()
        values.append(per_seq.detach().double().numpy())
    return ((x - x0).double() * mean_grad).sum(-1).numpy(), np.stack(values)


def log_prob_at(position, target):
    def metric(logits):
        return logits[:, position].log_softmax(-1)[torch.arange(logits.shape[0]), torch.as_tensor(target)]

    return metric


def logit_diff(correct, wrong):
    def metric(logits):
        rows = torch.arange(logits.shape[0])
        return logits[rows, -1, torch.as_tensor(correct)] - logits[rows, -1, torch.as_tensor(wrong)]

    return metric


@pytest.mark.parametrize("batch, length, position", [(1, 1, -1), (2, 7, -1), (3, 7, 2), (2, 24, -1), (2, 24, 0)])
@pytest.mark.parametrize("embeddings", ["token", "token+pos"])
def test_gpt2_grad_x_input(gpt2_pair, batch, length, position, embeddings):
    model, tl = gpt2_pair
    tokens = np.random.default_rng(length * 10 + batch).integers(0, model.cfg.d_vocab, (batch, length))
    ours = analysis.saliency(model, tokens, position=position, embeddings=embeddings)
    ref, values = torch_saliency(tl, tokens, log_prob_at(position, ours.target), [1.0], [1.0],
                                 with_pos=embeddings == "token+pos")
    assert act_err(ours.scores, ref) < TOL
    np.testing.assert_allclose(ours.metric_value, values[0], rtol=1e-5, atol=1e-5)
    # the default target is torch's top prediction too
    with torch.no_grad():
        top = tl(torch.as_tensor(tokens))[:, position].argmax(-1).numpy()
    np.testing.assert_array_equal(ours.target, top)


@pytest.mark.parametrize("rule, steps, batch_size", [("gauss_legendre", 5, None), ("riemann", 7, 3),
                                                     ("trapezoid", 4, 1)])
@pytest.mark.parametrize("embeddings", ["token", "token+pos"])
def test_gpt2_integrated_gradients(gpt2_pair, rule, steps, batch_size, embeddings):
    model, tl = gpt2_pair
    tokens = np.random.default_rng(steps).integers(0, model.cfg.d_vocab, (2, 9))
    baseline = np.random.default_rng(1).normal(size=(9, model.cfg.d_model)).astype(np.float32) * 0.1
    correct, wrong = np.array([3, 4]), np.array([5, 6])
    ours = analysis.saliency(model, tokens, metric=("logit_diff", correct, wrong), method="integrated_gradients",
                             steps=steps, rule=rule, baseline=baseline, embeddings=embeddings, batch_size=batch_size)
    alphas, weights = quadrature(rule, steps)
    ref, values = torch_saliency(tl, tokens, logit_diff(correct, wrong), np.append(alphas, [0.0, 1.0]),
                                 np.append(weights, [0.0, 0.0]), baseline, with_pos=embeddings == "token+pos")
    assert act_err(ours.scores, ref) < TOL
    np.testing.assert_allclose(ours.baseline_value, values[-2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.gap, ref.sum(-1) - (values[-1] - values[-2]), atol=1e-4)


@pytest.mark.parametrize("method", ["grad_x_input", "integrated_gradients"])
@pytest.mark.parametrize("batch, length, position", [(1, 1, -1), (2, 11, -1), (3, 6, 3)])
def test_llama(llama_pair, method, batch, length, position):
    model, tl = llama_pair
    tokens = np.random.default_rng(length).integers(0, model.cfg.d_vocab, (batch, length))
    target = np.arange(batch) + 7
    ours = analysis.saliency(model, tokens, target=target, position=position, method=method, steps=6)
    alphas, weights = quadrature("gauss_legendre", 6) if method != "grad_x_input" else ([1.0], [1.0])
    ref, _ = torch_saliency(tl, tokens, log_prob_at(position, target), alphas, weights)
    assert act_err(ours.scores, ref) < TOL
