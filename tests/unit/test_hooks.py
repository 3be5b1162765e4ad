"""Hook behaviour: name resolution, bad input, failing hook functions, the
hooks() context manager, names_filter forms, and the empty plan."""
import numpy as np
import pytest

import tinymech as tm
from model_factory import rel_err

TOL = 1e-4


@pytest.fixture(scope="module")
def model(saved_gpt2):
    return saved_gpt2("tiny")[0]


@pytest.fixture(scope="module")
def tokens(model):
    return np.random.default_rng(0).integers(0, model.cfg.d_vocab, (2, 9))


def test_hook_names_are_transformerlens_names(model):
    names = model.hook_names()
    assert names[:3] == ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre"]
    assert names[-4:] == ["ln_final.hook_scale", "ln_final.hook_normalized", "unembed.hook_in", "unembed.hook_out"]
    assert len(names) == 6 + 18 * model.cfg.n_layers
    assert tm.get_act_name("pattern", 1) in names and tm.get_act_name("k1") == "blocks.1.attn.hook_k"
    assert tm.get_act_name("normalized", 0, "ln2") == "blocks.0.ln2.hook_normalized"


def test_unknown_hook_name_suggests_the_closest(model, tokens):
    with pytest.raises(tm.HookError, match="did you mean 'blocks.0.attn.hook_pattern'"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_patern", tm.zero_ablate())])
    with pytest.raises(tm.HookError, match="did you mean 'blocks.1.hook_resid_post'"):
        model.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_pots"])
    with pytest.raises(tm.HookError, match="unknown hook point"):
        with model.hooks([("nothing.like.it", tm.zero_ablate())]):
            pass
    with pytest.raises(tm.HookError):
        model.generate(tokens, max_new_tokens=2, hooks=[("blocks.9.hook_resid_pre", tm.zero_ablate())])
    for neither in (3, None, b"hook_embed"):  # not a name, a list or a predicate: list(3) was a TypeError
        with pytest.raises(tm.HookError, match="a name, a list of names or a predicate"):
            model.add_hook(neither, tm.zero_ablate())
        with pytest.raises(tm.HookError, match="a name, a list of names or a predicate"):
            model.run_with_cache(tokens, names_filter=neither if neither is not None else 3)


@pytest.mark.parametrize("heads,positions", [(True, None), ([1.7], None), (-1, None), (None, [-1]), (None, [2**63]),
                                             ("0", None)])
def test_heads_and_positions_are_whole_numbers(heads, positions):
    with pytest.raises(tm.HookError, match="heads|positions"):
        tm.zero_ablate(heads=heads, positions=positions)


@pytest.mark.parametrize("hook", [
    ("blocks.0.hook_resid_pre", tm.add(np.ones(5))),                          # wrong width
    ("blocks.0.attn.hook_z", tm.mean_ablate(np.ones((3, 16)))),               # wrong head count
    ("blocks.0.attn.hook_z", tm.patch(np.ones((2, 9, 4, 15)))),               # wrong d_head
    ("blocks.0.attn.hook_pattern", tm.patch(np.ones((3, 4, 9, 9)))),          # wrong batch
    ("blocks.0.attn.hook_pattern", tm.patch(np.ones((2, 4, 9, 5)))),          # fewer keys than queries
    ("blocks.0.attn.hook_z", tm.zero_ablate(heads=[4])),                      # no such head
    ("blocks.0.hook_resid_pre", tm.zero_ablate(heads=[0])),                   # no head axis
    ("blocks.0.hook_resid_pre", tm.hooks.Intervention("fill", positions=(-1,))),  # the core checks too
    ("blocks.0.hook_resid_pre", "not an action"),
], ids=["width", "heads", "d_head", "batch", "keys", "head-range", "no-head-axis", "negative-pos", "action"])
def test_bad_interventions_raise_hook_error(model, tokens, hook):
    with pytest.raises(tm.HookError):
        model.run_with_hooks(tokens, fwd_hooks=[hook])
    np.testing.assert_array_equal(model.run_with_hooks(tokens), model(tokens))


@pytest.mark.parametrize("values", [np.array(["a", "b"]), np.ones(64, dtype=bool), np.ones(64, dtype=complex),
                                    np.array([None] * 64), np.full(64, np.nan)])
def test_intervention_values_must_be_finite_numbers(values):
    with pytest.raises(tm.HookError):
        tm.add(values)


@pytest.mark.parametrize("make", [lambda: tm.add(np.ones(64), coeff=np.nan), lambda: tm.scale(np.inf),
                                  lambda: tm.fill(np.nan), lambda: tm.fill(np.inf), lambda: tm.add(np.full(64, -np.inf)),
                                  lambda: tm.patch(np.full((1, 2, 64), np.nan))])
def test_intervention_numbers_must_be_finite(make):
    with pytest.raises(tm.HookError, match="finite|NaN or infinity"):
        make()


def test_a_vector_of_the_wrong_shape_says_what_fits(model, tokens):
    d = model.cfg.d_model
    whole = np.ones((1, tokens.shape[1], d), np.float32)
    with pytest.raises(tm.HookError, match=rf"fill and add take one vector, broadcast over batch and positions: \[{d}\] "
                                            r"\(tm.patch replaces with a whole activation\)"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", tm.add(whole))])
    heads, d_head = model.cfg.n_heads, model.cfg.d_head
    with pytest.raises(tm.HookError, match=rf"\[{heads}, {d_head}\] or one head's \[{d_head}\]"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", tm.add(np.ones(d_head + 1)))])


def test_cached_attention_scores_patch_back(model, tokens):
    """A cache's attention scores hold -inf where a query may not look: patching
    them back (or filling -inf) is allowed, and the patch reproduces the run."""
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_attn_scores")
    scores = cache["blocks.1.attn.hook_attn_scores"]
    assert np.isneginf(scores).any()
    patched = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_attn_scores", tm.patch(scores))])
    np.testing.assert_array_equal(patched, model(tokens))
    tm.fill(-np.inf)  # a mask


def test_hook_function_that_raises(model, tokens):
    def broken(act, hook):
        raise KeyError("boom")

    plain = model(tokens)
    with pytest.raises(tm.HookError, match=r"blocks\.1\.mlp\.hook_post.*KeyError") as info:
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.mlp.hook_post", broken)])
    assert isinstance(info.value.__cause__, KeyError)
    np.testing.assert_array_equal(model(tokens), plain)

    # a KV cache in use keeps its length and stays usable
    cache = model.new_cache(2)
    model.forward(tokens[:, :5], cache=cache)
    with pytest.raises(tm.HookError):
        model.forward(tokens[:, 5:], cache=cache, hooks=[("blocks.0.hook_resid_mid", broken)])
    assert cache.n_past == 5
    rest = model.forward(tokens[:, 5:], cache=cache)
    assert rel_err(rest, plain[:, 5:]) <= TOL
    with pytest.raises(tm.HookError):
        model.generate(tokens, max_new_tokens=3, hooks=[("blocks.0.attn.hook_pattern", broken)])


@pytest.mark.parametrize("bad_return", [
    lambda act, hook: act[:, :1],
    lambda act, hook: act.astype(np.int32),
    lambda act, hook: "no",
], ids=["shape", "dtype", "type"])
def test_hook_function_with_a_bad_return_value(model, tokens, bad_return):
    with pytest.raises(tm.HookError, match="blocks.0.hook_attn_out"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_out", bad_return)])


def test_hook_function_sees_transformerlens_shapes(model, tokens):
    seen = {}

    def record(act, hook):
        seen[hook.name] = (act.shape, act.dtype, hook.layer())

    names = ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_q", "blocks.1.ln2.hook_scale"]
    model.run_with_hooks(tokens, fwd_hooks=[(n, record) for n in names])
    c = model.cfg
    assert seen == {
        "blocks.1.attn.hook_pattern": ((2, c.n_heads, 9, 9), np.float32, 1),
        "blocks.1.attn.hook_q": ((2, 9, c.n_heads, c.d_head), np.float32, 1),
        "blocks.1.ln2.hook_scale": ((2, 9, 1), np.float32, 1),
    }


def test_hooks_context_manager(model, tokens):
    plain = model(tokens)
    prompt = tokens[:1, :4]
    plain_generation = model.generate(prompt, max_new_tokens=6, stop_at_eos=False)
    plain_resid = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")[1]["resid_post", 0]
    hooks = [("blocks.0.hook_resid_post", tm.scale(-1.0))]
    steered = model.run_with_hooks(tokens, fwd_hooks=hooks)
    with model.hooks(hooks):
        assert rel_err(model(tokens), steered) <= 1e-6
        assert rel_err(model.forward(tokens), steered) <= 1e-6
        logits, cache = model.run_with_cache(tokens)
        assert rel_err(logits, steered) <= 1e-6
        np.testing.assert_array_equal(cache["resid_post", 0], -plain_resid)
        generated = model.generate(prompt, max_new_tokens=6, stop_at_eos=False)
    np.testing.assert_array_equal(generated, model.generate(prompt, max_new_tokens=6, stop_at_eos=False, hooks=hooks))
    assert not np.array_equal(generated, plain_generation)
    np.testing.assert_array_equal(model(tokens), plain)
    with pytest.raises(RuntimeError):
        with model.hooks(hooks):
            raise RuntimeError("leaving the block early")
    np.testing.assert_array_equal(model(tokens), plain)


def test_names_filter_forms(model, tokens):
    every = model.hook_names()
    _, cache = model.run_with_cache(tokens)
    assert list(cache) == [n for n in every if not n.endswith("attn.hook_result")]
    _, one = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_result")
    assert list(one) == ["blocks.1.attn.hook_result"]
    _, some = model.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_post", "hook_embed"])
    assert list(some) == ["hook_embed", "blocks.1.hook_resid_post"]
    _, matched = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_scale"))
    assert list(matched) == [n for n in every if n.endswith("hook_scale")]
    for nothing in ([], lambda n: False):  # an empty cache, and the plain logits, as in TransformerLens
        logits, empty = model.run_with_cache(tokens, names_filter=nothing)
        assert list(empty) == []
        np.testing.assert_array_equal(logits, model(tokens))
    for name in some:
        np.testing.assert_array_equal(some[name], cache[name])
    head_sum = one["blocks.1.attn.hook_result"].sum(2) + model._weights["layers"][1]["out_b"]
    assert rel_err(head_sum, cache["attn_out", 1]) <= TOL


def test_no_hooks_is_the_plain_forward(model, tokens):
    plain = model(tokens)
    empty_plan = tm._core.HookPlan(model.cfg.n_layers)
    np.testing.assert_array_equal(model._core.forward(model._core.new_cache(2), tokens.astype(np.int32), empty_plan, "all"), plain)
    np.testing.assert_array_equal(model.run_with_hooks(tokens, fwd_hooks=[]), plain)
    np.testing.assert_array_equal(model.run_with_cache(tokens)[0], plain)


def test_captures_see_earlier_edits(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_z",
                                    hooks=[("blocks.0.attn.hook_z", tm.zero_ablate(heads=[2], positions=[3]))])
    z = cache["z", 0]
    np.testing.assert_array_equal(z[:, 3, 2], 0.0)
    assert np.abs(z[:, 3, 1]).max() > 0 and np.abs(z[:, 4, 2]).max() > 0


def test_every_hook_runs_without_logits(model, tokens):
    seen = []
    model.forward(tokens, logits="none", hooks=[(lambda n: True, lambda act, hook: seen.append(hook.name))])
    assert seen == model.hook_names()


def test_set_use_attn_result_makes_the_default_cache_keep_each_heads_output(model, tokens):
    _, plain = model.run_with_cache(tokens)
    assert not any(n.endswith("attn.hook_result") for n in plain)
    model.set_use_attn_result(True)
    try:
        _, cache = model.run_with_cache(tokens)
    finally:
        model.set_use_attn_result(False)
    result = cache["blocks.1.attn.hook_result"]
    assert result.shape == (*tokens.shape, model.cfg.n_heads, model.cfg.d_model)
    np.testing.assert_allclose(result.sum(2) + model.b_O[1], cache["blocks.1.hook_attn_out"], rtol=1e-4, atol=1e-4)
    with pytest.raises(tm.InvalidInputError, match="use_attn_result must be True or False"):
        model.set_use_attn_result("no")  # was read as True
    assert not any(n.endswith("attn.hook_result") for n in model.run_with_cache(tokens)[1])


def test_run_with_hooks_takes_transformerlens_reset_hooks_end_and_bwd_hooks_need_a_metric(model, tokens):
    """Both were swallowed: reset_hooks_end=False dropped the hooks, bwd_hooks ran nothing, silently.
    bwd_hooks now run a backward (tests/unit/test_gradients.py), of a metric the call must name."""
    clean = model(tokens)
    hooked = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_mlp_out", tm.zero_ablate())], reset_hooks_end=False)
    try:
        np.testing.assert_array_equal(model(tokens), hooked)  # the hook stayed on
        assert not np.allclose(hooked, clean)
    finally:
        model.reset_hooks()
    np.testing.assert_array_equal(model(tokens), clean)
    with pytest.raises(tm.InvalidInputError, match="needs a metric"):
        model.run_with_hooks(tokens, bwd_hooks=[("hook_embed", lambda grad, hook: grad)])
    with pytest.raises(tm.InvalidInputError, match="reset_hooks_end must be True or False"):
        model.run_with_hooks(tokens, reset_hooks_end="no")


def test_add_hook_checks_now_and_reset_hooks_keeps_the_permanent(model, tokens):
    with pytest.raises(tm.HookError):
        model.add_hook("blocks.99.hook_resid_pre", tm.zero_ablate())
    with pytest.raises(tm.HookError, match="dir must be"):
        model.add_hook("hook_embed", tm.zero_ablate(), dir="backward")
    clean = model(tokens)
    model.add_hook("hook_embed", tm.scale(0.5), is_permanent=True)
    model.add_hook("blocks.0.hook_mlp_out", tm.zero_ablate())
    try:
        both = model(tokens)
        model.reset_hooks(direction="bwd")  # as TransformerLens's: the forward hooks stay
        np.testing.assert_array_equal(model(tokens), both)
        with pytest.raises(tm.HookError, match="direction must be"):
            model.reset_hooks(direction="sideways")
        model.reset_hooks()
        permanent = model(tokens)
        assert not np.allclose(both, permanent) and not np.allclose(permanent, clean)
        model.reset_hooks(including_permanent=True)
        np.testing.assert_array_equal(model(tokens), clean)
    finally:
        model.reset_hooks(including_permanent=True)
