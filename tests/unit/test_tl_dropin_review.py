"""TransformerLens habits a review found missing or failing with foreign exceptions: bad caller
input raises tinymech's errors (naming what to change), get_act_name's aliases, HookPoint.ctx,
to_tokens' truncate and move_to_device, return_type="both"'s Output, W_E_pos, cfg's constant
fields, cache.cache_dict, generate's keyword-only sampling arguments and a temperature that
float32 rounds to 0. (Against TransformerLens itself: tests/reference/test_tl_dropin_review.py.)"""
import numpy as np
import pytest

import tinymech as tm


@pytest.fixture(scope="module")
def demo():
    """The bundled demo model: it has a tokenizer."""
    return tm.load()


@pytest.fixture(scope="module")
def run(demo):
    tokens = demo.to_tokens("Mr Darcy walked in.")
    return tokens, demo.run_with_cache(tokens)[1]


# ---- 5. bad input raises tinymech's errors ----

def test_bad_return_type_and_logits_are_tinymech_errors(demo, run):
    tokens, _ = run
    for call in [lambda: demo(tokens, return_type="logit"), lambda: demo.run_with_cache(tokens, return_type="logit"),
                 lambda: demo.run_with_hooks(tokens, return_type="logit"), lambda: demo(tokens, return_type=["loss"]),
                 lambda: demo.forward(tokens, logits="x"), lambda: demo.forward(tokens, logits=None)]:
        with pytest.raises(tm.InvalidInputError, match="must be"):
            call()


@pytest.mark.parametrize("call", [
    lambda c: c.stack_head_results(pos_slice=99),
    lambda c: c.accumulated_resid(pos_slice=99),
    lambda c: c.decompose_resid(pos_slice=99),
    lambda c: c.get_full_resid_decomposition(pos_slice=99),
    lambda c: c.stack_neuron_results(1, pos_slice=99),
    lambda c: c.stack_neuron_results(1, neuron_slice=[5000]),
    lambda c: c.stack_neuron_results(1, neuron_slice=5000),
    lambda c: c.get_neuron_results(0, neuron_slice=(0, 2, 0)),
    lambda c: c.get_neuron_results(9),
    lambda c: c.head_results(-9),
    lambda c: c.apply_ln_to_stack(c.accumulated_resid(), pos_slice=99),
    lambda c: c.apply_ln_to_stack(c.accumulated_resid(), batch_slice=5),
    lambda c: c.apply_ln_to_stack(c.accumulated_resid(pos_slice=[0, 1, 2]), pos_slice=[0, 1]),
], ids=["heads-pos", "accumulated-pos", "decompose-pos", "full-pos", "neurons-pos", "neurons-list", "neurons-int",
        "neuron-step-0", "neuron-layer", "head-layer", "ln-pos", "ln-batch", "ln-shape"])
def test_cache_slices_and_layers_out_of_range_are_tinymech_errors(run, call):
    _, cache = run
    with pytest.raises(tm.InvalidInputError):
        call(cache)


def test_an_out_of_range_index_is_still_an_index_error(run, demo):
    _, cache = run
    for call in [lambda: cache.accumulated_resid(pos_slice=99), lambda: demo.OV[9], lambda: demo.W_Q[9]]:
        with pytest.raises(IndexError):  # what numpy, torch and TransformerLens raise there
            call()


@pytest.mark.parametrize("index", [9, (0, 9), "a", (0, 0, 5000), (0, 0, 0, 5000), (0, 0, 0, 0, 0)])
def test_factored_matrix_indexes_that_do_not_fit(demo, index):
    with pytest.raises(tm.InvalidInputError):
        demo.OV[index]


@pytest.mark.parametrize("text", [5, None, [1, 2], ["a", 3], {"a", "b"}, b"ab", bytearray(b"ab"), []])
def test_to_tokens_of_what_is_not_text(demo, text):
    with pytest.raises(tm.InvalidTokensError, match="string or a list of strings"):
        demo.to_tokens(text)


def test_apply_ln_to_stack_refuses_a_layer_out_of_range(run, demo):
    _, cache = run
    stack = cache.accumulated_resid()
    with pytest.raises(tm.InvalidInputError, match="out of range"):
        cache.apply_ln_to_stack(stack, layer=77)
    n = demo.cfg.n_layers
    np.testing.assert_array_equal(cache.apply_ln_to_stack(stack, layer=-1), cache.apply_ln_to_stack(stack, layer=n))


# ---- 1. logit_attrs' tokens ----

def test_logit_attrs_takes_strings_ids_and_arrays(run, demo):
    _, cache = run
    stack = cache.accumulated_resid(pos_slice=-1)
    darcy, walked = demo.to_single_token(" Darcy"), demo.to_single_token(" walked")
    by_id = cache.logit_attrs(stack, darcy, incorrect_tokens=walked, pos_slice=-1)
    np.testing.assert_array_equal(cache.logit_attrs(stack, " Darcy", incorrect_tokens=" walked", pos_slice=-1), by_id)
    np.testing.assert_array_equal(cache.logit_attrs(stack, np.array([darcy]), np.array([walked]), pos_slice=-1), by_id)
    assert by_id.shape == stack.shape[:2]


@pytest.mark.parametrize("tokens,incorrect,error", [
    (99999, None, tm.InvalidTokensError), (" Darcy walked", None, tm.InvalidTokensError),
    (2.5, None, tm.InvalidTokensError), (None, None, tm.InvalidTokensError),
    (np.array([1]), np.array([1, 2]), tm.InvalidInputError), (" Darcy", np.array([1]), tm.InvalidInputError),
    (np.array([[1, 2, 3]] * 2), None, tm.InvalidInputError)])
def test_logit_attrs_refuses_tokens_that_do_not_fit(run, tokens, incorrect, error):
    _, cache = run
    with pytest.raises(error):
        cache.logit_attrs(cache.accumulated_resid(pos_slice=-1), tokens, incorrect_tokens=incorrect, pos_slice=-1)


# ---- 3. get_act_name ----

@pytest.mark.parametrize("args,name", [
    (("key", 1), "blocks.1.attn.hook_k"), (("query", 1), "blocks.1.attn.hook_q"),
    (("value", 1), "blocks.1.attn.hook_v"), (("attn_logits", 2), "blocks.2.attn.hook_attn_scores"),
    (("scale4ln1",), "blocks.4.ln1.hook_scale"), (("normalized3ln2",), "blocks.3.ln2.hook_normalized"),
    (("scale", 4, "a"), "blocks.4.ln1.hook_scale"), (("key3",), "blocks.3.attn.hook_k"),
    (("k6a",), "blocks.6.attn.hook_k"), (("mlp_pre", 2), "blocks.2.mlp.hook_pre"),
    (("resid_pre", 1, "b"), "blocks.1.hook_resid_pre"), (("pattern", "2"), "blocks.2.attn.hook_pattern"),
    (("scale",), "ln_final.hook_scale")])
def test_get_act_name_aliases(args, name):
    assert tm.get_act_name(*args) == name


def test_cache_keys_take_the_aliases(run):
    _, cache = run
    assert cache["key", 1] is cache["blocks.1.attn.hook_k"]
    assert cache["scale1ln1"] is cache["blocks.1.ln1.hook_scale"]
    assert cache["attn_logits", 0] is cache["blocks.0.attn.hook_attn_scores"]


@pytest.mark.parametrize("args", [("keys", 1), ("scale", 1), ("scale", 1, "ln3"), ("k", None), ("k", 1.5), (3,)])
def test_get_act_name_refuses_what_it_cannot_name(args):
    with pytest.raises(tm.HookError):
        tm.get_act_name(*args)


# ---- 4. HookPoint.ctx ----

def _counter(act, hook):
    hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1


def test_hook_ctx_persists_until_reset_hooks(demo, run):
    tokens, _ = run
    name = "blocks.0.hook_resid_pre"
    demo.reset_hooks()
    for _ in range(2):
        demo.run_with_hooks(tokens, fwd_hooks=[(name, _counter)])
    point = demo.hook_dict[name]
    assert point.ctx == {"calls": 2}
    demo.run_with_hooks(tokens, fwd_hooks=[(name, _counter)], clear_contexts=True)
    assert point.ctx == {}
    demo.run_with_hooks(tokens, fwd_hooks=[(name, _counter)])
    demo.reset_hooks(clear_contexts=False)
    assert demo.hook_dict[name].ctx == {"calls": 1}
    demo.reset_hooks()  # TransformerLens's default clears them
    assert point.ctx == {} and demo.hook_dict[name].ctx == {}
    point.ctx["x"] = 1
    point.clear_context()
    assert demo.hook_dict[name].ctx == {}


def test_hook_ctx_on_an_attached_saes_points_persists_too(demo, run):
    # a hook on an SAE's point (spliced by Python) got a new, empty ctx in every run
    tokens, _ = run
    sae = tm.SAE.load(f"{demo.path}/saes/blocks.2.hook_resid_pre")
    name = "blocks.2.hook_resid_pre.hook_sae_acts_post"
    demo.reset_hooks()
    demo.add_sae(sae)
    try:
        for _ in range(2):
            demo.run_with_hooks(tokens, fwd_hooks=[(name, _counter)])
        assert demo._hook_contexts.get(name) == {"calls": 2}
        demo.reset_hooks()
        assert demo._hook_contexts.get(name, {}) == {}
    finally:
        demo.reset_saes()


def test_hooks_block_takes_reset_hooks_end_and_clear_contexts(demo, run):
    tokens, _ = run
    name = "blocks.1.hook_resid_pre"
    demo.reset_hooks()
    with demo.hooks(fwd_hooks=[(name, _counter)], reset_hooks_end=True, clear_contexts=True):
        demo(tokens)
        assert demo.hook_dict[name].ctx == {"calls": 1}
    assert demo.hook_dict[name].ctx == {}
    with demo.hooks(fwd_hooks=[(name, _counter)], reset_hooks_end=False):
        demo(tokens)
    demo(tokens)  # the hook stayed on
    assert demo.hook_dict[name].ctx == {"calls": 2}
    demo.reset_hooks()
    demo(tokens)
    assert demo.hook_dict[name].ctx == {}
    with pytest.raises(tm.InvalidInputError):
        demo.hooks(fwd_hooks=[], reset_hooks_end="no").__enter__()


# ---- 2. to_tokens' truncate and move_to_device ----

def test_to_tokens_truncate_and_move_to_device(demo):
    n = demo.cfg.n_ctx
    long = " ".join(["word"] * (n + 50))
    full = demo.to_tokens(long)
    assert full.shape[1] > n  # tinymech keeps every token unless asked
    cut = demo.to_tokens(long, truncate=True)
    np.testing.assert_array_equal(cut, full[:, :n])
    assert demo(cut).shape[1] == n
    np.testing.assert_array_equal(demo.to_tokens("Mr Darcy", move_to_device=False), demo.to_tokens("Mr Darcy"))
    # each text is cut before padding: a short one padded on the left keeps its tokens
    both = demo.to_tokens([long, "Mr Darcy"], truncate=True, padding_side="left")
    np.testing.assert_array_equal(both[1, -3:], demo.to_tokens("Mr Darcy")[0])
    assert both.shape == (2, n)
    with pytest.raises(tm.InvalidInputError, match="truncate must be True or False"):
        demo.to_tokens("Mr", truncate="yes")


def test_a_text_too_long_for_a_run_says_how_to_cut_it(demo):
    long = " ".join(["word"] * (demo.cfg.n_ctx + 50))
    for call in [lambda: demo(long), lambda: demo.run_with_cache(long)]:
        with pytest.raises(tm.ContextLengthError, match=r"truncate=True"):
            call()
    with pytest.raises(tm.ContextLengthError) as error:  # token ids: nothing to say about text
        demo(np.zeros((1, demo.cfg.n_ctx + 1), np.int64))
    assert "truncate" not in str(error.value)


# ---- 6. smaller habits ----

def test_return_type_both_is_an_output(demo, run):
    tokens, _ = run
    out = demo(tokens, return_type="both")
    logits, loss = out
    assert out.logits is logits and out.loss == loss == demo(tokens, return_type="loss")
    np.testing.assert_array_equal(logits, demo(tokens))
    assert demo.run_with_hooks(tokens, return_type="both").loss == loss


def test_w_e_pos(demo):
    assert demo.W_E_pos.shape == (demo.cfg.d_vocab + demo.cfg.n_ctx, demo.cfg.d_model)
    np.testing.assert_array_equal(demo.W_E_pos[demo.cfg.d_vocab:], demo.W_pos)


def test_cfg_constant_fields_read_and_refuse_assignment(demo, saved_gpt2):
    cfg = demo.cfg
    assert cfg.dtype == "float32" and cfg.use_attn_scale is True and cfg.n_devices == 1
    assert cfg.final_rms is False and cfg.use_local_attn is False and cfg.output_logits_soft_cap == -1.0
    assert cfg.tokenizer_name == demo.path
    assert saved_gpt2("tiny")[0].cfg.tokenizer_name is None  # written without a tokenizer
    import copy
    assert copy.deepcopy(cfg).tokenizer_name == demo.path  # a copy keeps its model's
    for name in ["dtype", "use_attn_scale", "tokenizer_name", "final_rms"]:
        with pytest.raises(tm.ReadOnlyError):
            setattr(demo.cfg, name, None)


def test_cache_dict_is_the_cache(run):
    _, cache = run
    assert cache.cache_dict is cache._acts and cache.cache_dict["blocks.0.hook_resid_pre"] is cache["resid_pre", 0]


def test_to_str_tokens_of_one_id(demo):
    assert demo.to_str_tokens(np.array(5)) == demo.to_str_tokens([5]) == demo.to_str_tokens(np.int64(5))


def test_generate_takes_its_sampling_arguments_by_keyword_only(demo):
    with pytest.raises(TypeError):  # generate(p, 5, False) meant temperature=False (TransformerLens: stop_at_eos)
        demo.generate("Mr Darcy", 5, False)
    assert demo.generate("Mr Darcy", 3, temperature=0) == demo.generate("Mr Darcy", max_new_tokens=3)


# ---- 7. a temperature float32 rounds to 0 ----

def test_a_temperature_that_rounds_to_zero_in_float32(demo):
    for temperature in [1e-300, float(np.finfo(np.float32).smallest_subnormal) / 2]:
        with pytest.raises(tm.InvalidInputError, match="rounds to 0 in float32.*at least 1.4e-45"):
            demo.generate("Mr Darcy", max_new_tokens=2, temperature=temperature)
    demo.generate("Mr Darcy", max_new_tokens=2, temperature=1.4e-45, seed=0)  # the smallest usable


def test_to_tokens_of_any_iterable_of_texts(demo):
    # a dataset's column, a pandas Series or a generator was refused after the checks for non-text
    texts = ["Mr Darcy", "Elizabeth walked"]
    want = demo.to_tokens(texts)
    for given in (tuple(texts), iter(texts), (t for t in texts), {t: 0 for t in texts}.keys(), np.array(texts)):
        np.testing.assert_array_equal(demo.to_tokens(given), want)
    np.testing.assert_array_equal(demo.to_tokens(np.array("Mr Darcy")), demo.to_tokens("Mr Darcy"))


def test_logit_attrs_of_ragged_tokens_or_no_stack_say_so(run):
    # a ragged list escaped as numpy's ValueError; no stack was reported as a shape mismatch
    _, cache = run
    stack = cache.accumulated_resid(pos_slice=-1)
    with pytest.raises(tm.InvalidTokensError, match="tokens must be an array of numbers"):
        cache.logit_attrs(stack, [[1, 2], [3]], pos_slice=-1)
    with pytest.raises(tm.InvalidInputError, match="residual_stack must be an array of numbers"):
        cache.logit_attrs(None, 5, pos_slice=-1)


def test_a_failed_run_still_clears_the_contexts_it_was_asked_to(demo, run):
    tokens, _ = run
    name = "blocks.0.hook_resid_pre"

    def failing(act, hook):
        hook.ctx["x"] = 1
        raise RuntimeError("boom")

    demo.reset_hooks()
    for call in (lambda: demo.run_with_hooks(tokens, fwd_hooks=[(name, failing)], clear_contexts=True),
                 lambda: demo.run_with_cache(tokens, hooks=[(name, failing)], clear_contexts=True)):
        with pytest.raises(tm.HookError, match="boom"):
            call()
        assert demo.hook_dict[name].ctx == {}


def test_a_kept_hook_on_an_sae_point_waits_while_the_sae_is_detached(demo, run):
    # with reset_hooks_end=False it stayed on, and every run after the SAE left raised HookError
    tokens, _ = run
    sae = tm.SAE.load(f"{demo.path}/saes/blocks.2.hook_resid_pre")
    name = "blocks.2.hook_resid_pre.hook_sae_acts_post"
    calls = []
    demo.reset_hooks()
    try:
        demo.run_with_cache_with_saes(tokens, saes=[sae], hooks=[(name, lambda act, hook: calls.append(1))],
                                      reset_hooks_end=False)
        assert len(calls) == 1
        np.testing.assert_array_equal(demo(tokens), demo.run_with_hooks(tokens))  # no SAE: the hook waits
        demo.run_with_saes(tokens, saes=[sae])
        assert len(calls) == 2  # attached again, it runs again
    finally:
        demo.reset_hooks()


def test_a_hook_point_copies_with_its_own_ctx_only(demo, run):
    # it carried the model's whole table: pickling one point failed on another point's lambda
    import copy
    import pickle

    tokens, _ = run
    demo.reset_hooks()
    demo.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: hook.ctx.update(f=lambda: 0)),
                                           ("blocks.1.hook_resid_pre", _counter)])
    point = demo.hook_dict["blocks.1.hook_resid_pre"]
    for again in (pickle.loads(pickle.dumps(point)), copy.deepcopy(point)):
        assert again == point and again.ctx == {"calls": 1} and again.contexts.keys() == {point.name}
    demo.reset_hooks()
