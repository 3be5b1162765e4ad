"""analysis.attribution_patch against attribution patching done the TransformerLens way (as in
Neel Nanda's attribution patching notebook): a clean run_with_cache, a corrupted run with
forward and backward hooks caching activations and their gradients (torch autograd), and
(clean - corrupted) * gradient summed per patch in torch. Every kind, both modes, on GPT-2
(d_head 20) and a grouped-query Llama, batch 1 of one token and batch 2."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tinymech as tm
from llama_factory import LLAMA_SHAPES, make_hf_llama
from model_factory import SHAPES, make_hf_gpt2
from tinymech import analysis
from tinymech.analysis.attribution_patching import KINDS
from tl_reference import hooked_transformer, tl_llama


@pytest.fixture(scope="module", params=["gpt2", "gqa"])
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"attr_{request.param}")
    if request.param == "gpt2":
        hf = make_hf_gpt2(path, **SHAPES["odd"])  # d_head 20, n_ctx 24
        return tm.load(path), hooked_transformer(hf)
    hf = make_hf_llama(path, **LLAMA_SHAPES["gqa"])
    return tm.load(path), tl_llama(hf)


def tl_metric(logits, good, bad):
    rows = torch.arange(logits.shape[0])
    last = logits[:, -1]
    return (last[rows, torch.as_tensor(good)] - last[rows, torch.as_tensor(bad)]).mean()


def tl_run(tl, tokens, names, good, bad, backward: bool):
    """(metric, {name: activation}, {name: gradient}) of one TransformerLens run."""
    acts, grads = {}, {}

    def save_act(act, hook):
        acts[hook.name] = act.detach()

    def save_grad(grad, hook):
        grads[hook.name] = grad.detach()

    for name in names:
        tl.add_hook(name, save_act)
        if backward:
            tl.add_hook(name, save_grad, dir="bwd")
    try:
        value = tl_metric(tl(torch.as_tensor(tokens)), good, bad)
        if backward:
            value.backward()
    finally:
        tl.reset_hooks()
    return float(value), acts, grads


def tl_attribution(kind, diff, grad):
    """One layer's map, the notebook's way: (source - target) * gradient summed per patch."""
    part = diff * grad  # [batch, ...]
    if kind in ("resid_pre", "resid_mid", "attn_out", "mlp_out"):
        return part.sum((0, 2))  # [pos]
    if kind in ("attn_out_all_pos", "mlp_out_all_pos"):
        return part.sum()
    if kind in ("head_z", "head_q", "head_k", "head_v"):
        return part.sum((0, 1, 3))  # [head]
    if kind == "head_z_by_pos":
        return part.sum((0, 3)).T  # [head, pos]
    if kind == "head_pattern":
        return part.sum((0, 2, 3))  # [head]
    if kind == "mlp_post":
        return part.sum(0)  # [pos, neuron]
    assert kind == "mlp_post_all_pos"
    return part.sum((0, 1))  # [neuron]


@pytest.mark.parametrize("batch, length", [(1, 1), (2, 9)])
@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_every_kind_equals_the_notebooks_attribution(pair, batch, length, mode):
    model, tl = pair
    rng = np.random.default_rng(length)
    clean = rng.integers(0, model.cfg.d_vocab, (batch, length))
    corrupted = clean.copy()
    corrupted[:, -1] = (clean[:, -1] + 1 + rng.integers(0, model.cfg.d_vocab - 1, batch)) % model.cfg.d_vocab
    corrupted[:, length // 2] = rng.integers(0, model.cfg.d_vocab, batch)
    good, bad = rng.integers(0, model.cfg.d_vocab, batch), rng.integers(0, model.cfg.d_vocab, batch)
    source, target = (clean, corrupted) if mode == "denoise" else (corrupted, clean)
    for kind, (suffix, axes) in KINDS.items():
        names = [f"blocks.{layer}.{suffix}" for layer in range(model.cfg.n_layers)]
        with torch.no_grad():
            source_score, source_acts, _ = tl_run(tl, source, names, good, bad, backward=False)
        target_score, target_acts, target_grads = tl_run(tl, target, names, good, bad, backward=True)
        expected = target_score + torch.stack([
            tl_attribution(kind, source_acts[n] - target_acts[n], target_grads[n]) for n in names]).numpy()
        got = analysis.attribution_patch(model, clean, corrupted, metric=("logit_diff", good, bad), over=kind,
                                         mode=mode)
        assert got.axes == axes and got.values.shape == expected.shape, kind
        scale = max(1.0, float(np.abs(expected - target_score).max()))
        np.testing.assert_allclose(got.values, expected, rtol=0, atol=1e-4 * scale, err_msg=kind)
        clean_score, corrupted_score = (source_score, target_score) if mode == "denoise" else (
            target_score, source_score)
        assert got.clean == pytest.approx(clean_score, abs=1e-4)
        assert got.corrupted == pytest.approx(corrupted_score, abs=1e-4)
