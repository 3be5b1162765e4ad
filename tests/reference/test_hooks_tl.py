"""Hook points and interventions against TransformerLens on the same weights
(no weight processing): every activation, ablations, patching, steering,
Python hook functions, and steered generation with the KV cache."""
import numpy as np
import pytest
import torch

import tinymech as tm
from model_factory import rel_err
from tl_reference import act_err, as_tl_hook, tl_greedy_cached, tl_run_with_cache, tl_run_with_hooks
from numpy_models import random_tokens

TOL = 1e-4


def assert_same_run(model, tl, tokens, hooks, tl_hooks):
    """Logits and every hook point agree between our hooked run and TL's."""
    logits, cache = model.run_with_cache(tokens, hooks=hooks, names_filter=lambda n: True)
    with tl.hooks(fwd_hooks=tl_hooks):
        tl_logits, tl_cache = tl_run_with_cache(tl, tokens)
    for name in model.hook_names():
        assert act_err(cache[name], tl_cache[name]) <= TOL, name
    assert rel_err(logits, tl_logits) <= TOL
    return logits


@pytest.mark.parametrize("batch,length", [(2, 1), (2, "n_ctx")])
def test_every_hook_point_matches(pair, batch, length):
    model, tl = pair
    length = model.cfg.n_ctx if length == "n_ctx" else length
    tokens = random_tokens(model, batch, length)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: True)
    tl_logits, tl_cache = tl_run_with_cache(tl, tokens)
    assert list(cache.keys()) == model.hook_names()
    assert set(cache) == set(tl_cache)  # every name TransformerLens has, unembed.hook_in/hook_out included
    assert "blocks.0.attn.hook_result" in cache
    for name in model.hook_names():
        assert cache[name].dtype == np.float32, name
        assert cache[name].shape == tl_cache[name].shape, name
        assert act_err(cache[name], tl_cache[name]) <= TOL, name
    assert rel_err(logits, tl_logits) <= TOL


def test_default_cache_matches_without_hook_result(pair):
    model, tl = pair
    tokens = random_tokens(model, 3, 7, seed=1)
    _, cache = model.run_with_cache(tokens)
    _, tl_cache = tl_run_with_cache(tl, tokens)
    assert not any(n.endswith("attn.hook_result") for n in cache)
    for name in cache:
        assert act_err(cache[name], tl_cache[name]) <= TOL, name


def test_zero_ablation_of_heads(pair):
    model, tl = pair
    H = model.cfg.n_heads
    tokens = random_tokens(model, 2, 9, seed=2)

    def tl_zero(z, hook):
        z[:, :, [0, H - 1]] = 0.0
        return z

    def tl_zero_at_positions(v, hook):
        v[:, [1, 4], 1] = 0.0
        return v

    ablated = assert_same_run(
        model, tl, tokens,
        hooks=[("blocks.0.attn.hook_z", tm.zero_ablate(heads=[0, H - 1])),
               (lambda n: n.endswith("1.attn.hook_v"), tm.zero_ablate(heads=1, positions=[1, 4]))],
        tl_hooks=[("blocks.0.attn.hook_z", tl_zero),
                  (lambda n: n.endswith("1.attn.hook_v"), tl_zero_at_positions)],
    )
    assert rel_err(ablated, model(tokens)) > 1e-3


def test_mean_ablation_of_heads(pair):
    model, tl = pair
    tokens = random_tokens(model, 2, 9, seed=3)
    _, reference = model.run_with_cache(random_tokens(model, 4, 9, seed=4), names_filter="blocks.1.attn.hook_z")
    mean = reference["z", 1].mean(axis=(0, 1))  # [head, d_head]
    tl_mean = torch.from_numpy(mean)

    def tl_mean_ablate(z, hook):
        z[:, :, 1] = tl_mean[1]
        z[:, 2, 0] = tl_mean[0]
        return z

    assert_same_run(
        model, tl, tokens,
        hooks=[("blocks.1.attn.hook_z", tm.mean_ablate(mean, heads=[1])),
               ("blocks.1.attn.hook_z", tm.mean_ablate(mean[0], heads=0, positions=2))],
        tl_hooks=[("blocks.1.attn.hook_z", tl_mean_ablate)],
    )


@pytest.mark.parametrize("point", ["z", "pattern", "resid_pre"])
def test_patching_from_a_corrupted_run(pair, point):
    model, tl = pair
    clean = random_tokens(model, 2, 10, seed=5)
    corrupted = random_tokens(model, 2, 10, seed=6)
    name = tm.get_act_name(point, 1)
    _, source = model.run_with_cache(corrupted, names_filter=name)
    src = source[name]
    tl_src = torch.from_numpy(src)
    if point == "z":  # [batch, pos, head, d_head]
        ours = tm.patch(src, heads=[0, 2], positions=[3, 7])

        def tl_patch(act, hook):
            for p in (3, 7):
                act[:, p, [0, 2]] = tl_src[:, p, [0, 2]]
            return act
    elif point == "pattern":  # [batch, head, query_pos, key_pos]; positions are query positions
        ours = tm.patch(src, heads=[1], positions=[5])

        def tl_patch(act, hook):
            act[:, 1, 5] = tl_src[:, 1, 5]
            return act
    else:  # one batch row broadcast over the batch
        ours = tm.patch(src[1:], positions=[4])

        def tl_patch(act, hook):
            act = act.clone()  # resid_pre is the same tensor as the cached resid_post before it
            act[:, 4] = tl_src[1, 4]
            return act

    assert_same_run(model, tl, clean, hooks=[(name, ours)], tl_hooks=[(name, tl_patch)])


def test_steering_at_positions(pair):
    model, tl = pair
    tokens = random_tokens(model, 3, 8, seed=7)
    vec = np.random.default_rng(8).normal(size=model.cfg.d_model).astype(np.float32)
    tl_vec = torch.from_numpy(vec)

    def tl_steer(resid, hook):
        resid = resid.clone()  # not the cached resid_post before it
        resid[:, [1, 6]] += 4.0 * tl_vec
        return resid

    assert_same_run(
        model, tl, tokens,
        hooks=[("blocks.1.hook_resid_pre", tm.add(vec, coeff=4.0, positions=[1, 6]))],
        tl_hooks=[("blocks.1.hook_resid_pre", tl_steer)],
    )


def test_scale_and_fill(pair):
    model, tl = pair
    tokens = random_tokens(model, 2, 6, seed=9)

    def tl_scale(v, hook):
        v[:, :, 1] *= 0.5
        return v

    def tl_fill(post, hook):
        post[:, 2] = 0.25
        return post

    def tl_scale_scores(scores, hook):
        return scores * 2.0

    assert_same_run(
        model, tl, tokens,
        hooks=[("blocks.0.attn.hook_v", tm.scale(0.5, heads=[1])),
               ("blocks.0.mlp.hook_post", tm.fill(0.25, positions=[2])),
               ("blocks.1.attn.hook_attn_scores", tm.scale(2.0))],
        tl_hooks=[("blocks.0.attn.hook_v", tl_scale), ("blocks.0.mlp.hook_post", tl_fill),
                  ("blocks.1.attn.hook_attn_scores", tl_scale_scores)],
    )


def halve_first_head_in_place(act, hook):
    act[:, :, 0] *= 0.5  # [batch, pos, head, d_head]


@pytest.mark.parametrize("point", ["attn_scores", "pattern"])
def test_edits_reaching_masked_keys_are_honoured(pair, point):
    """Setting every score to 0 (or every pattern entry to 1/keys) gives weight
    to later keys, masked until then: the weighted sum uses them, as TL's does."""
    model, tl = pair
    tokens = random_tokens(model, 2, model.cfg.n_ctx, seed=8)  # several query blocks where n_ctx allows
    value = 0.0 if point == "attn_scores" else 1.0 / tokens.shape[1]
    name = tm.get_act_name(point, 1)
    assert_same_run(model, tl, tokens, hooks=[(name, tm.fill(value))],
                    tl_hooks=[(name, lambda act, hook: torch.full_like(act, value))])


def halve_first_half_in_place(act, hook):
    act[..., : act.shape[-1] // 2] *= 0.5


def sharpen_pattern(pattern, hook):
    """A new pattern favouring the first key, scaled by layer (reads hook.layer())."""
    p = pattern.copy()
    p[..., 0] += 0.5 * (hook.layer() + 1)
    return p / p.sum(-1, keepdims=True)


def negate_with_offset(act, hook):
    assert hook.name == "blocks.1.hook_mlp_out"
    return -act + 0.1


def test_python_hook_functions(pair):
    model, tl = pair
    tokens = random_tokens(model, 2, 8, seed=10)
    fns = [("blocks.0.attn.hook_q", halve_first_head_in_place),
           ("blocks.1.attn.hook_pattern", sharpen_pattern),
           ("blocks.1.hook_mlp_out", negate_with_offset)]
    assert_same_run(model, tl, tokens, hooks=fns, tl_hooks=[(n, as_tl_hook(f)) for n, f in fns])
    assert rel_err(model.run_with_hooks(tokens, fwd_hooks=fns),
                   tl_run_with_hooks(tl, tokens, [(n, as_tl_hook(f)) for n, f in fns])) <= TOL


def test_steered_generation_matches_tl(pair):
    model, tl = pair
    prompt = random_tokens(model, 2, 4, seed=11)
    n_new = min(10, model.cfg.n_ctx - 4)
    vec = np.random.default_rng(12).normal(size=model.cfg.d_model).astype(np.float32)
    tl_vec = torch.from_numpy(vec)
    hooks = [("blocks.1.hook_resid_pre", tm.add(vec, coeff=0.5)),
             ("blocks.0.attn.hook_z", tm.zero_ablate(heads=[1])),
             ("blocks.0.mlp.hook_post", halve_first_half_in_place)]

    def tl_zero(z, hook):
        z[:, :, 1] = 0.0
        return z

    tl_hooks = [("blocks.1.hook_resid_pre", lambda r, hook: r + 0.5 * tl_vec),
                ("blocks.0.attn.hook_z", tl_zero),
                ("blocks.0.mlp.hook_post", as_tl_hook(halve_first_half_in_place))]
    steered = model.generate(prompt, max_new_tokens=n_new, stop_at_eos=False, hooks=hooks)
    np.testing.assert_array_equal(steered, tl_greedy_cached(tl, prompt, n_new, tl_hooks))
    assert not np.array_equal(steered, model.generate(prompt, max_new_tokens=n_new, stop_at_eos=False))


def test_interventions_at_later_positions_apply_in_cached_generation(pair):
    """Interventions at absolute positions, some beyond the prompt: cached
    decoding (generate, and forward step by step) equals rerunning the whole
    sequence with the same hooks."""
    model, _ = pair
    P, n_new = 4, min(10, model.cfg.n_ctx - 4)
    prompt = random_tokens(model, 2, P, seed=13)
    vec = np.random.default_rng(14).normal(size=model.cfg.d_model).astype(np.float32)
    _, source = model.run_with_cache(random_tokens(model, 2, P, seed=15),
                                     names_filter=["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"])
    hooks = [("blocks.1.hook_resid_pre", tm.add(vec, coeff=2.0, positions=[1, P + 1, P + 4])),
             ("blocks.1.attn.hook_z", tm.zero_ablate(heads=[0], positions=[P + 2])),
             ("blocks.0.hook_resid_post", tm.patch(source["resid_post", 0], positions=[2])),
             ("blocks.1.attn.hook_pattern", tm.patch(source["pattern", 1], heads=[1]))]  # prompt positions only

    tokens = prompt
    for _ in range(n_new):  # uncached: the whole sequence each step
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        tokens = np.concatenate([tokens, logits[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(model.generate(prompt, max_new_tokens=n_new, stop_at_eos=False, hooks=hooks),
                                  tokens)

    full = model.run_with_hooks(tokens, fwd_hooks=hooks)
    cache = model.new_cache(2)
    steps = [model.forward(tokens[:, :P], cache=cache, hooks=hooks)]
    steps += [model.forward(tokens[:, t : t + 1], cache=cache, hooks=hooks) for t in range(P, tokens.shape[1])]
    assert rel_err(np.concatenate(steps, axis=1), full) <= TOL
    assert rel_err(full, model(tokens)) > 1e-3


def scale_unembed_in(x, hook):
    assert hook.name == "unembed.hook_in"
    return x * 1.5


def shift_logits(logits, hook):
    assert hook.name == "unembed.hook_out"
    out = logits.copy()
    out[..., :7] += 3.0
    return out


def test_hooks_at_the_unembedding_edit_the_logits(pair):
    model, tl = pair
    tokens = random_tokens(model, 2, 5, seed=13)
    fns = [("unembed.hook_in", scale_unembed_in), ("unembed.hook_out", shift_logits)]
    tl_fns = [(n, as_tl_hook(f)) for n, f in fns]
    assert_same_run(model, tl, tokens, hooks=fns, tl_hooks=tl_fns)
    want = tl_run_with_hooks(tl, tokens, tl_fns)
    assert rel_err(model.run_with_hooks(tokens, fwd_hooks=fns), want) <= TOL
    steered = model.generate(tokens, max_new_tokens=3, stop_at_eos=False, hooks=[("unembed.hook_out", tm.add(
        np.eye(model.cfg.d_vocab, dtype=np.float32)[5] * 1e4))])
    assert (steered[:, 5:] == 5).all()  # generation reads the edited logits


def test_add_hook_and_reset_hooks_as_transformerlens(pair):
    model, tl = pair
    tokens = random_tokens(model, 2, 6, seed=14)
    tl.reset_hooks(including_permanent=True)
    try:
        for m, hook in ((model, negate_with_offset), (tl, as_tl_hook(negate_with_offset))):
            m.add_hook("blocks.1.hook_mlp_out", hook)
        hooked = model(tokens)
        assert rel_err(hooked, tl(torch.from_numpy(tokens)).detach().numpy()) <= TOL
        _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_mlp_out")
        _, tl_cache = tl_run_with_cache(tl, tokens)
        assert act_err(cache["blocks.1.hook_mlp_out"], tl_cache["blocks.1.hook_mlp_out"]) <= TOL
        model.add_hook("blocks.0.attn.hook_q", halve_first_head_in_place, is_permanent=True)
        tl.add_hook("blocks.0.attn.hook_q", as_tl_hook(halve_first_head_in_place), is_permanent=True)
        model.reset_hooks()
        tl.reset_hooks()
        assert rel_err(model(tokens), tl(torch.from_numpy(tokens)).detach().numpy()) <= TOL  # the permanent stays
        assert rel_err(model(tokens), hooked) > TOL
        model.reset_hooks(including_permanent=True)
        tl.reset_hooks(including_permanent=True)
        assert rel_err(model(tokens), tl(torch.from_numpy(tokens)).detach().numpy()) <= TOL
    finally:
        model.reset_hooks(including_permanent=True)
        tl.reset_hooks(including_permanent=True)
