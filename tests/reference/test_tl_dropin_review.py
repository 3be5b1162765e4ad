"""TransformerLens habits a review found missing, against TransformerLens on the demo model's
weights: logit_attrs of string tokens, get_act_name's whole alias table, HookPoint.ctx's life,
to_tokens(truncate=True), return_type="both"'s Output, W_E_pos, cfg's constant fields and
to_str_tokens of one id. (Errors and tinymech's own choices: tests/unit/test_tl_dropin_review.py.)"""
import itertools

import numpy as np
import pytest
import torch

import tinymech as tm
from tl_reference import demo_pair

PROMPT = "Mr Darcy walked in. Mr Darcy walked"


@pytest.fixture(scope="module")
def pair():
    return demo_pair()


@pytest.fixture(scope="module")
def caches(pair):
    model, ref = pair
    with torch.no_grad():
        return model.run_with_cache(PROMPT)[1], ref.run_with_cache(PROMPT)[1]


@pytest.mark.parametrize("tokens,incorrect", [(" Darcy", " in"), (" Darcy", None), (1508, 1642),
                                               ("array", "array")])
def test_logit_attrs_of_strings_ids_and_arrays(pair, caches, tokens, incorrect):
    model, _ = pair
    ours, theirs = caches
    if tokens == "array":  # one token per sequence of the batch
        tokens, incorrect = np.array([1508]), np.array([1642])
        tl_tokens, tl_incorrect = torch.tensor([1508]), torch.tensor([1642])
    else:
        tl_tokens, tl_incorrect = tokens, incorrect
    with torch.no_grad():
        expected = theirs.logit_attrs(theirs.accumulated_resid(pos_slice=-1), tl_tokens,
                                      incorrect_tokens=tl_incorrect, pos_slice=-1).numpy()
    got = ours.logit_attrs(ours.accumulated_resid(pos_slice=-1), tokens, incorrect_tokens=incorrect, pos_slice=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def _act_name_cases():
    """TransformerLens's get_act_name's names and aliases, with and without layers and layer types."""
    names = ["embed", "pos_embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v",
             "z", "rot_q", "rot_k", "result", "pattern", "attn", "attn_scores", "attn_logits", "key", "query",
             "value", "pre", "post", "mid", "mlp_pre", "mlp_mid", "mlp_post", "pre_linear", "scale", "normalized",
             "attn_in", "q_input", "k_input", "v_input", "mlp_in"]
    layer_types = [None, "a", "attn", "attention", "m", "mlp", "b", "block", "blocks", "ln1", "ln2"]
    cases = [(name, layer, layer_type) for name, layer, layer_type
             in itertools.product(names, [None, 0, 3], layer_types)]
    compact = [(f"{name}{layer}{layer_type or ''}", None, None) for name, layer, layer_type
               in itertools.product(["k", "q", "v", "z", "pattern", "pre", "post", "scale", "normalized", "key",
                                     "attn", "resid", "mlp"], [1, 12], [None, "a", "m", "ln1", "ln2", "b"])]
    return cases + compact


def test_get_act_name_matches_transformer_lens(pair):
    from transformer_lens.utils import get_act_name as tl_get_act_name

    _, ref = pair
    points = set(ref.hook_dict) | {n.replace("blocks.0.", "blocks.3.") for n in ref.hook_dict}
    points |= {n.replace("blocks.0.", "blocks.12.") for n in ref.hook_dict}
    points |= {f"blocks.{layer}.{name}" for layer in (0, 1, 3, 12)
               for name in ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in",
                            "mlp.hook_pre_linear", "mlp.hook_mid", "attn.hook_rot_q", "attn.hook_rot_k")}
    named = 0
    for name, layer, layer_type in _act_name_cases():
        expected = tl_get_act_name(name, layer, layer_type)
        try:
            got = tm.get_act_name(name, layer, layer_type)
        except tm.HookError:  # refused only where TransformerLens's name is no point of a model
            assert expected not in points, (name, layer, layer_type, expected)
            continue
        if expected in points:  # where TransformerLens names a point, tinymech names the same one
            assert got == expected, (name, layer, layer_type)
            named += 1
        else:  # TransformerLens's name is no point (a layer_type that does not apply): tinymech's is one
            assert got in points, (name, layer, layer_type, got)
    assert named > 300


def _count(act, hook):
    hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1


def _ctx_steps(model, point):
    """The ctx of `point` after each of a series of TransformerLens habits, in either library."""
    seen = []
    model.reset_hooks()
    for run in range(2):
        model.run_with_hooks(PROMPT, fwd_hooks=[(point, _count)])
    seen.append(dict(model.hook_dict[point].ctx))
    model.reset_hooks(clear_contexts=False)
    seen.append(dict(model.hook_dict[point].ctx))
    with model.hooks(fwd_hooks=[(point, _count)]):
        model(PROMPT)
    seen.append(dict(model.hook_dict[point].ctx))
    with model.hooks(fwd_hooks=[(point, _count)], clear_contexts=True):
        model(PROMPT)
    seen.append(dict(model.hook_dict[point].ctx))
    with model.hooks(fwd_hooks=[(point, _count)], reset_hooks_end=False):
        model(PROMPT)
    model(PROMPT)
    seen.append(dict(model.hook_dict[point].ctx))
    model.run_with_hooks(PROMPT, fwd_hooks=[(point, _count)], clear_contexts=True)
    seen.append(dict(model.hook_dict[point].ctx))
    model.reset_hooks()
    seen.append(dict(model.hook_dict[point].ctx))
    # a ctx a hook kept through a clearing keeps what it held; the point's is a new one
    kept = []
    model.run_with_hooks(PROMPT, fwd_hooks=[(point, _count), (point, lambda act, hook: kept.append(hook.ctx))])
    model.run_with_cache(PROMPT, names_filter=point, clear_contexts=True)
    seen += [dict(kept[0]), dict(model.hook_dict[point].ctx)]
    return seen


def test_hook_ctx_lives_as_in_transformer_lens(pair):
    model, ref = pair
    with torch.no_grad():
        expected = _ctx_steps(ref, "blocks.1.hook_resid_pre")
    assert _ctx_steps(model, "blocks.1.hook_resid_pre") == expected


def test_to_tokens_truncate(pair):
    model, ref = pair
    long = " ".join(["word"] * (model.cfg.n_ctx + 40))
    for texts, side in [(long, None), ([long, "Mr Darcy"], "left"), ([long, "Mr Darcy"], "right")]:
        expected = ref.to_tokens(texts, padding_side=side, truncate=True, move_to_device=False).numpy()
        np.testing.assert_array_equal(model.to_tokens(texts, padding_side=side, truncate=True, move_to_device=False),
                                      expected)
        with torch.no_grad():
            expected_logits = ref(texts, padding_side=side).numpy()  # TransformerLens cuts the text itself
        np.testing.assert_allclose(model(model.to_tokens(texts, padding_side=side, truncate=True), padding_side=side),
                                   expected_logits, rtol=1e-4, atol=1e-4)


def test_return_type_both(pair):
    model, ref = pair
    with torch.no_grad():
        expected = ref(PROMPT, return_type="both")
    got = model(PROMPT, return_type="both")
    assert got.loss == pytest.approx(expected.loss.item(), rel=1e-5)
    np.testing.assert_allclose(got.logits, expected.logits.numpy(), rtol=1e-4, atol=1e-4)
    logits, loss = got
    assert loss == got.loss
    with tm.array_type("torch"):  # tensors, as TransformerLens's Output holds (it was a plain pair there)
        out = model(PROMPT, return_type="both")
    assert isinstance(out.logits, torch.Tensor) and isinstance(out.loss, torch.Tensor)
    np.testing.assert_allclose(out.logits.numpy(), got.logits)


def test_w_e_pos(pair):
    model, ref = pair
    np.testing.assert_allclose(model.W_E_pos, ref.W_E_pos.detach().numpy(), rtol=1e-6)


def test_cfg_fields_transformer_lens_users_read(pair):
    model, ref = pair
    for name in ["use_attn_scale", "use_local_attn", "window_size", "attn_types", "rotary_adjacent_pairs",
                 "use_hook_tokens", "post_embedding_ln", "use_normalization_before_and_after", "use_qk_norm",
                 "attn_scores_soft_cap", "output_logits_soft_cap", "num_experts", "experts_per_token",
                 "ungroup_grouped_query_attention", "n_devices", "load_in_4bit", "trust_remote_code",
                 "from_checkpoint", "checkpoint_index", "checkpoint_label_type", "checkpoint_value", "final_rms",
                 "uses_rms_norm"]:
        assert getattr(model.cfg, name) == getattr(ref.cfg, name), name
    assert model.cfg.dtype == str(ref.cfg.dtype).removeprefix("torch.")


def test_to_str_tokens_of_one_id(pair):
    model, ref = pair
    assert model.to_str_tokens(np.array(1508)) == ref.to_str_tokens(torch.tensor(1508))
    assert model.to_str_tokens(np.array([1508])) == ref.to_str_tokens(torch.tensor([1508]))


def test_a_metric_written_with_torch_autograd(pair):
    # its value, a tensor still holding autograd history, escaped as torch's RuntimeError
    model, _ = pair

    def with_torch(logits):
        t = torch.tensor(logits, requires_grad=True)
        value = t[..., 7].sum()
        value.backward()
        return value, t.grad.numpy()

    def with_numpy(logits):
        grad = np.zeros_like(logits)
        grad[..., 7] = 1
        return float(logits[..., 7].sum()), grad

    names = "blocks.1.hook_resid_pre"
    _, a = model.run_with_cache(PROMPT, names_filter=names, incl_bwd=True, metric=with_torch)
    _, b = model.run_with_cache(PROMPT, names_filter=names, incl_bwd=True, metric=with_numpy)
    np.testing.assert_allclose(a[names + "_grad"], b[names + "_grad"], rtol=1e-6)
