"""The core's backward against TransformerLens's gradients (torch autograd) on the same weights:
every hook point's gradient, each built-in metric, GPT-2 and grouped-query Llama, backward hooks
that rewrite a gradient, and the frozen (linearized) backwards against torch with the frozen
factor detached."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tinymech as tm
from llama_factory import LLAMA_SHAPES, make_hf_llama
from model_factory import SHAPES, make_hf_gpt2
from tl_reference import act_err, hooked_transformer, tl_llama

TOL = 1e-4


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    path = tmp_path_factory.mktemp("grad_gpt2")
    hf = make_hf_gpt2(path, **SHAPES["odd"])  # d_head 20, n_ctx 24
    return tm.load(path), hooked_transformer(hf)


@pytest.fixture(scope="module", params=["gqa", "mha_tied"])  # TransformerLens's conversion drops attention biases
def llama_pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("grad_llama")
    hf = make_hf_llama(path, **LLAMA_SHAPES[request.param])
    return tm.load(path), tl_llama(hf)


def torch_metric(metric, logits, tokens):
    """The built-in metrics of tinymech/gradients.py, written in torch."""
    rows = torch.arange(logits.shape[0])
    if metric == "loss":
        logp = logits[:, :-1].log_softmax(-1)
        return -logp.gather(-1, torch.as_tensor(tokens[:, 1:, None])).mean()
    if metric[0] == "logit_diff":
        last = logits[:, -1]
        return (last[rows, torch.as_tensor(metric[1])] - last[rows, torch.as_tensor(metric[2])]).mean()
    return logits[:, -1].log_softmax(-1)[rows, torch.as_tensor(metric[1])].mean()


def tl_grads(tl, tokens, metric, fwd_hooks=(), bwd_hooks=()):
    """(metric value, {name + "_grad": gradient}) by torch autograd. A point TransformerLens
    visits several times (ln1 reads q, k and v's inputs) gets the sum of its gradients."""
    grads = {}

    def save(grad, hook):
        grads[hook.name + "_grad"] = grads.get(hook.name + "_grad", 0) + grad.detach().numpy()

    for point in tl.hook_dict.values():  # on the points themselves: unused ones (hook_attn_in) never fire
        point.add_hook(save, dir="bwd")
    for name, fn in bwd_hooks:
        tl.add_hook(name, fn, dir="bwd", prepend=True)
    try:
        with tl.hooks(fwd_hooks=list(fwd_hooks)):
            logits = tl(torch.as_tensor(np.asarray(tokens, dtype=np.int64)))
            value = torch_metric(metric, logits, tokens)
            value.backward()
    finally:
        tl.reset_hooks()
    return float(value), grads


def assert_grads_match(cache, ref, expect_zero=()):
    ours = {k: v for k, v in cache.items() if k.endswith("_grad")}
    for name, g in ref.items():
        assert name in ours, name
        assert act_err(ours[name], g) < TOL, (name, act_err(ours[name], g))
    for name in set(ours) - set(ref):  # only where no gradient reaches in torch
        assert name.endswith(expect_zero) and not ours[name].any(), name


def metrics(batch):
    rng = np.random.default_rng(1)
    return ["loss", ("logit_diff", rng.integers(0, 200, batch), rng.integers(0, 200, batch)),
            ("log_prob", rng.integers(0, 200, batch))]


@pytest.mark.parametrize("batch, length, which", [  # which metric; a loss needs two positions
    (2, 7, 0), (2, 7, 1), (2, 7, 2), (1, 1, 1), (1, 1, 2), (2, 24, 0), (2, 24, 1), (2, 24, 2)])
def test_gpt2_every_hook_point(gpt2_pair, batch, length, which):
    model, tl = gpt2_pair
    metric = metrics(batch)[which]
    tokens = np.random.default_rng(length).integers(0, model.cfg.d_vocab, (batch, length))
    model.set_use_attn_result(True)
    try:
        _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=metric)
    finally:
        model.set_use_attn_result(False)
    _, ref = tl_grads(tl, tokens, metric)
    assert set(ref) == {k for k in cache.keys() if k.endswith("_grad")}
    assert_grads_match(cache, ref)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_llama_every_hook_point(llama_pair, which):
    model, tl = llama_pair
    metric = metrics(2)[which]
    tokens = np.random.default_rng(3).integers(0, model.cfg.d_vocab, (2, 11))
    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=metric,
                                    names_filter=lambda n: not n.endswith("hook_result"))
    _, ref = tl_grads(tl, tokens, metric)
    ref = {k: v for k, v in ref.items() if not k.endswith("hook_result_grad")}
    assert_grads_match(cache, ref)


def test_loss_return_type_alone_means_the_loss(gpt2_pair):
    """As TransformerLens's run_with_cache(incl_bwd=True) calls backward() on the loss."""
    model, tl = gpt2_pair
    tokens = np.random.default_rng(5).integers(0, model.cfg.d_vocab, (2, 6))
    loss, cache = model.run_with_cache(tokens, prepend_bos=False, return_type="loss", incl_bwd=True,
                                       names_filter=["blocks.1.hook_resid_pre", "hook_embed"])
    tl_loss, tl_cache = tl.run_with_cache(torch.as_tensor(tokens), return_type="loss", incl_bwd=True)
    assert loss == pytest.approx(float(tl_loss.detach()), rel=1e-5)
    assert set(cache.keys()) == {"blocks.1.hook_resid_pre", "hook_embed", "blocks.1.hook_resid_pre_grad",
                                 "hook_embed_grad"}
    assert act_err(cache["hook_embed_grad"], tl_cache["hook_embed_grad"].numpy()) < TOL


def test_grad_logits_given(gpt2_pair):
    model, tl = gpt2_pair
    tokens = np.random.default_rng(6).integers(0, model.cfg.d_vocab, (2, 5))
    G = np.random.default_rng(7).normal(size=(2, 5, model.cfg.d_vocab)).astype(np.float32)
    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, grad_logits=G,
                                    names_filter="blocks.0.attn.hook_v")
    grads = {}
    tl.add_hook("blocks.0.attn.hook_v", lambda g, hook: grads.update(v=g.detach().numpy()), dir="bwd")
    try:
        logits = tl(torch.as_tensor(tokens))
        (logits * torch.as_tensor(G)).sum().backward()
    finally:
        tl.reset_hooks()
    assert act_err(cache["blocks.0.attn.hook_v_grad"], grads["v"]) < TOL


@pytest.mark.parametrize("point", ["blocks.1.hook_resid_mid", "blocks.1.attn.hook_pattern", "blocks.2.hook_mlp_out",
                                   "blocks.1.attn.hook_z", "blocks.2.mlp.hook_post"])
def test_backward_hook_rewrites_upstream(gpt2_pair, point):
    """A backward hook that rewrites a gradient changes every gradient upstream, as in TransformerLens."""
    model, tl = gpt2_pair
    tokens = np.random.default_rng(8).integers(0, model.cfg.d_vocab, (2, 9))

    def halve_first_half(grad, hook):
        grad = grad.copy() if isinstance(grad, np.ndarray) else grad.clone()
        grad[:, : grad.shape[1] // 2] *= 0.5
        return grad

    metric = ("log_prob", np.array([3, 4]))
    model.add_hook(point, halve_first_half, dir="bwd")
    try:
        _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=metric)
    finally:
        model.reset_hooks()
    _, ref = tl_grads(tl, tokens, metric, bwd_hooks=[(point, halve_first_half)])
    ref = {k: v for k, v in ref.items() if not k.endswith("hook_result_grad")}
    # TransformerLens's cache keeps the gradient the hook was given; tinymech's, as for activations,
    # the one it returned
    ref[point + "_grad"] = halve_first_half(ref[point + "_grad"], None)
    assert_grads_match(cache, ref)
    # and run_with_hooks runs the same backward hooks
    seen = {}
    model.run_with_hooks(tokens, prepend_bos=False, metric=metric, bwd_hooks=[
        (point, halve_first_half), ("hook_embed", lambda g, hook: seen.update(g=g.copy()))])
    assert act_err(seen["g"], ref["hook_embed_grad"]) < TOL


def frozen_hooks(tl, freeze):
    """Forward hooks that hold the pattern or the norm scales constant in torch: the activation is
    replaced by a detached copy (gradients stop there)."""
    hooks = []
    for name in tl.hook_dict:
        if ("pattern" in freeze and name.endswith("hook_pattern")) or ("scales" in freeze and name.endswith("scale")):
            hooks.append((name, lambda act, hook: act.detach()))
    return hooks


@pytest.mark.parametrize("freeze", [("pattern",), ("scales",), ("pattern", "scales")])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_frozen_backward_matches_detached_torch(gpt2_pair, llama_pair, family, freeze):
    model, tl = gpt2_pair if family == "gpt2" else llama_pair
    tokens = np.random.default_rng(9).integers(0, model.cfg.d_vocab, (2, 8))
    metric = ("logit_diff", np.array([5, 6]), np.array([7, 8]))
    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=metric, freeze=freeze)
    _, ref = tl_grads(tl, tokens, metric, fwd_hooks=frozen_hooks(tl, freeze))
    ours = {k: v for k, v in cache.items() if k.endswith("_grad")}
    # upstream of a frozen factor torch has no gradient (tinymech: 0); at it, its own gradient
    frozen_points = (("attn.hook_pattern_grad",) if "pattern" in freeze else ()) + \
                    (("hook_scale_grad",) if "scales" in freeze else ())
    for name, g in ours.items():
        if name in ref:
            assert act_err(g, ref[name]) < TOL, (name, act_err(g, ref[name]))
        elif not name.endswith(frozen_points):
            assert not g.any(), name
    # the residual stream's gradients are all there, and differ from the exact backward's
    assert "blocks.0.hook_resid_pre_grad" in ref
    _, exact = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=metric,
                                    names_filter="blocks.0.hook_resid_pre")
    assert act_err(cache["blocks.0.hook_resid_pre_grad"], exact["blocks.0.hook_resid_pre_grad"]) > 1e-3


def test_llama3_rope_scaling_biases_mqa_against_hf(tmp_path):
    """Llama 3 RoPE scaling, attention and MLP biases, one key/value head (which TransformerLens's
    conversion cannot hold): the residual stream's gradients against Hugging Face's autograd."""
    hf = make_hf_llama(tmp_path, **LLAMA_SHAPES["mqa_llama3"])
    model = tm.load(tmp_path)
    tokens = np.random.default_rng(10).integers(0, model.cfg.d_vocab, (2, 13))
    metric = ("log_prob", np.array([11, 12]))
    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=metric,
                                    names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_embed")))
    embeds = hf.model.embed_tokens(torch.as_tensor(tokens)).detach().requires_grad_()
    out = hf(inputs_embeds=embeds, output_hidden_states=True)
    for h in out.hidden_states[:-1]:
        h.retain_grad()
    torch_metric(metric, out.logits, tokens).backward()
    assert act_err(cache["hook_embed_grad"], embeds.grad.numpy()) < TOL
    for layer in range(model.cfg.n_layers):
        ref = out.hidden_states[layer].grad.numpy()
        assert act_err(cache[f"blocks.{layer}.hook_resid_pre_grad"], ref) < TOL, layer


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_gpt2_other_activations_untied_layer_scaled(tmp_path, act):
    """The exact GELU and ReLU, an untied unembedding and scores scaled by 1 / (layer + 1)."""
    hf = make_hf_gpt2(tmp_path, **SHAPES["odd"], activation_function=act, tie_word_embeddings=False,
                      scale_attn_by_inverse_layer_idx=True)
    model, tl = tm.load(tmp_path), hooked_transformer(hf, use_attn_result=False)
    tokens = np.random.default_rng(11).integers(0, model.cfg.d_vocab, (2, 9))
    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric="loss")
    _, ref = tl_grads(tl, tokens, "loss")
    assert_grads_match(cache, ref)


def test_gradients_written_at_masked_scores_reach_nothing(gpt2_pair):
    """TransformerLens masks the scores with torch.where: a gradient a hook writes at a masked score
    stops there (before this, tinymech's queries and keys took it in)."""
    model, tl = gpt2_pair
    tokens = np.random.default_rng(12).integers(0, model.cfg.d_vocab, (2, 7))
    point = "blocks.1.attn.hook_attn_scores"

    def plus_one(grad, hook):
        return grad + 1

    metric = ("log_prob", np.array([3, 4]))
    model.add_hook(point, plus_one, dir="bwd")
    try:
        _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=metric,
                                        names_filter=lambda n: not n.endswith("hook_result"))
    finally:
        model.reset_hooks()
    _, ref = tl_grads(tl, tokens, metric, bwd_hooks=[(point, plus_one)])
    ref = {k: v for k, v in ref.items() if not k.endswith("hook_result_grad")}
    ref[point + "_grad"] = plus_one(ref[point + "_grad"], None)
    assert_grads_match(cache, ref)


def test_processed_weights(gpt2, tl_gpt2):
    """TransformerLens's weight processing (fold_ln: LNPre norms, centered writing weights and
    unembedding, folded value biases) on both sides: the same gradients."""
    from tl_reference import TL_PROCESSING

    hf, _, path = gpt2("odd")
    model, tl = tm.load(path, **TL_PROCESSING), tl_gpt2(hf, processed=True)
    tokens = np.random.default_rng(13).integers(0, model.cfg.d_vocab, (2, 8))
    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric="loss")
    _, ref = tl_grads(tl, tokens, "loss")
    ref = {k: v for k, v in ref.items() if not k.endswith("hook_result_grad")}
    assert_grads_match(cache, ref)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_every_point_but_the_pattern(gpt2_pair, llama_pair, family):
    """Without the pattern's gradient asked for, the backward works on the visible keys only."""
    model, tl = gpt2_pair if family == "gpt2" else llama_pair
    tokens = np.random.default_rng(14).integers(0, model.cfg.d_vocab, (2, 23))
    metric = "loss"
    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=metric,
                                    names_filter=lambda n: not n.endswith(("hook_pattern", "hook_result")))
    _, ref = tl_grads(tl, tokens, metric)
    ref = {k: v for k, v in ref.items() if not k.endswith(("hook_pattern_grad", "hook_result_grad"))}
    assert_grads_match(cache, ref)


def test_forward_edit_putting_weight_on_masked_keys(gpt2_pair):
    """A forward hook adding to the pattern (masked keys too): z reads every key, and the gradient
    passes through the added constant, as torch's does."""
    model, tl = gpt2_pair
    tokens = np.random.default_rng(15).integers(0, model.cfg.d_vocab, (2, 9))

    def add_tenth(pattern, hook):
        return pattern + 0.1

    point = "blocks.1.attn.hook_pattern"
    names = lambda n: not n.endswith(("hook_pattern", "hook_result"))  # noqa: E731
    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric="loss", names_filter=names,
                                    hooks=[(point, add_tenth)])
    _, ref = tl_grads(tl, tokens, "loss", fwd_hooks=[(point, add_tenth)])
    ref = {k: v for k, v in ref.items() if names(k.removesuffix("_grad"))}
    assert_grads_match(cache, ref)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_padded_batches_loss_gradients(gpt2_pair, llama_pair, family, side):
    """TransformerLens's run_with_cache(return_type="loss", incl_bwd=True) of a padded batch (its loss
    counts real positions only) against tinymech's, at every hook point, real positions compared
    (TransformerLens's pad queries, whose scores are all masked, can carry NaN gradients)."""
    model, tl = gpt2_pair if family == "gpt2" else llama_pair
    rng = np.random.default_rng(4)
    rows = [rng.integers(1, model.cfg.d_vocab, n) for n in (6, 2, 4)]
    tokens, mask = np.zeros((3, 6), np.int64), np.zeros((3, 6), np.int64)
    for b, row in enumerate(rows):
        at = slice(6 - len(row), 6) if side == "left" else slice(0, len(row))
        tokens[b, at], mask[b, at] = row, 1
    model.set_use_attn_result(tl.cfg.use_attn_result)
    try:
        loss, cache = model.run_with_cache(tokens, attention_mask=mask, return_type="loss", incl_bwd=True)
    finally:
        model.set_use_attn_result(False)
    tl_loss, tl_cache = tl.run_with_cache(torch.as_tensor(tokens), attention_mask=torch.as_tensor(mask),
                                          return_type="loss", incl_bwd=True)
    assert float(loss) == pytest.approx(float(tl_loss), rel=1e-5)
    real = mask.astype(bool)
    compared = 0
    for name, value in tl_cache.items():
        if not name.endswith("_grad") or ".ln1." in name:
            continue  # ln1's points: TransformerLens keeps the last of q, k and v's (see the docs)
        ref, ours = value.detach().numpy(), cache[name]
        if name.endswith(("hook_pattern_grad", "hook_attn_scores_grad")):  # [batch, head, query, key]
            ref, ours = ref.transpose(0, 2, 1, 3)[real], ours.transpose(0, 2, 1, 3)[real]
        else:
            ref, ours = ref[real], ours[real]
        finite = np.isfinite(ref)
        assert act_err(ours[finite], ref[finite]) < TOL, name
        compared += 1
    assert compared > 10
