"""TransformerLens's per-head input modes without torch: set_use_split_qkv_input (hook_q_input,
hook_k_input, hook_v_input), set_use_attn_in (hook_attn_in), set_use_hook_mlp_in (hook_mlp_in).
Their values against TransformerLens: tests/reference/test_split_inputs_tl.py."""
import copy
import pickle

import numpy as np
import pytest

import tinymech as tm
from llama_factory import LLAMA_SHAPES
from numpy_checkpoints import write_llama, write_sae

TOL = 1e-4
SPLIT = ("hook_q_input", "hook_k_input", "hook_v_input")


@pytest.fixture(scope="module")
def gpt2_path(saved_gpt2):
    return saved_gpt2("tiny")[1]


@pytest.fixture
def gpt2(gpt2_path):
    return tm.load(gpt2_path)  # its own copy: the tests switch modes on


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_split_inputs")
    write_llama(path, **LLAMA_SHAPES["gqa"])
    return path


@pytest.fixture
def llama(llama_path):
    return tm.load(llama_path)


def tokens(model, batch=2, pos=7, seed=0):
    return np.random.default_rng(seed).integers(0, model.cfg.d_vocab, (batch, pos))


def block_names(model, layer=0):
    prefix = f"blocks.{layer}."
    return [n[len(prefix):] for n in model.hook_names() if n.startswith(prefix)]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_modes_without_edits_give_the_same_logits(arch, gpt2, llama):
    model = gpt2 if arch == "gpt2" else llama
    toks = tokens(model)
    plain = model(toks)
    modes = [model.set_use_split_qkv_input, model.set_use_hook_mlp_in]
    if arch == "gpt2":  # grouped-query attention has no hook_attn_in
        modes.append(lambda on: (model.set_use_split_qkv_input(False), model.set_use_attn_in(on)))
    for setter in modes:
        setter(True)
        logits, cache = model.run_with_cache(toks)  # every point captured: the per-head path runs
        np.testing.assert_allclose(logits, plain, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(model.run_with_hooks(toks, fwd_hooks=[(lambda n: True, tm.scale(1.0))]), plain,
                                   rtol=TOL, atol=TOL)
        assert list(cache) == [n for n in model.hook_names() if not n.endswith("attn.hook_result")]


def test_each_mode_adds_its_points_after_resid_pre_and_resid_mid(gpt2):
    plain = block_names(gpt2)
    assert not {"hook_attn_in", "hook_mlp_in", *SPLIT} & set(plain)
    gpt2.set_use_split_qkv_input(True)
    assert block_names(gpt2)[:6] == ["hook_resid_pre", *SPLIT, "ln1.hook_scale", "ln1.hook_normalized"]
    gpt2.set_use_split_qkv_input(False)
    gpt2.set_use_attn_in(True)
    gpt2.set_use_hook_mlp_in(True)
    names = block_names(gpt2)
    assert names[:2] == ["hook_resid_pre", "hook_attn_in"]
    assert names[names.index("hook_resid_mid") + 1] == "hook_mlp_in"
    assert list(gpt2.hook_dict) == gpt2.hook_names() and "blocks.1.hook_attn_in" in gpt2.hook_dict
    gpt2.set_use_attn_in(False)
    gpt2.set_use_hook_mlp_in(False)
    assert block_names(gpt2) == plain


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_shapes_and_values_of_the_split_points(arch, gpt2, llama):
    model = gpt2 if arch == "gpt2" else llama
    c = model.cfg
    kv = c.n_key_value_heads or c.n_heads
    toks = tokens(model, 2, 5)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    _, cache = model.run_with_cache(toks)
    resid = cache["blocks.1.hook_resid_pre"]
    for name, heads in zip(SPLIT, (c.n_heads, kv, kv)):
        act = cache[f"blocks.1.{name}"]
        assert act.shape == (2, 5, heads, c.d_model), name
        np.testing.assert_array_equal(act, np.repeat(resid[:, :, None], heads, axis=2))
    # ln1 runs once per input; the cache keeps the last call's (the values', as TransformerLens's)
    assert cache["blocks.1.ln1.hook_scale"].shape == (2, 5, kv, 1)
    assert cache["blocks.1.ln1.hook_normalized"].shape == (2, 5, kv, c.d_model)
    np.testing.assert_array_equal(cache["blocks.1.hook_mlp_in"], cache["blocks.1.hook_resid_mid"])


def test_an_edit_at_one_heads_input_changes_that_head_only(llama):
    toks = tokens(llama, 1, 6)
    _, plain = llama.run_with_cache(toks, names_filter=["blocks.0.attn.hook_q", "blocks.0.attn.hook_k"])
    llama.set_use_split_qkv_input(True)
    hooks = [("blocks.0.hook_q_input", tm.scale(2.0, heads=[3])), ("blocks.0.hook_k_input", tm.zero_ablate(heads=[0]))]
    _, edited = llama.run_with_cache(toks, hooks=hooks, names_filter=["blocks.0.attn.hook_q", "blocks.0.attn.hook_k"])
    q, k = edited["blocks.0.attn.hook_q"], edited["blocks.0.attn.hook_k"]
    np.testing.assert_allclose(q[:, :, :3], plain["blocks.0.attn.hook_q"][:, :, :3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(k[:, :, 1:], plain["blocks.0.attn.hook_k"][:, :, 1:], rtol=1e-5, atol=1e-5)
    assert not np.allclose(q[:, :, 3], plain["blocks.0.attn.hook_q"][:, :, 3])
    np.testing.assert_array_equal(k[:, :, 0], 0.0)  # RMSNorm of zeros, no bias: zero keys


def test_hook_mlp_in_edits_reach_the_mlp_not_the_residual(gpt2):
    toks = tokens(gpt2)
    gpt2.set_use_hook_mlp_in(True)
    _, plain = gpt2.run_with_cache(toks)
    _, cache = gpt2.run_with_cache(toks, hooks=[("blocks.0.hook_mlp_in", tm.zero_ablate())])
    np.testing.assert_array_equal(cache["blocks.0.hook_resid_mid"], plain["blocks.0.hook_resid_mid"])
    np.testing.assert_array_equal(cache["blocks.0.hook_mlp_in"], 0.0)
    assert not np.allclose(cache["blocks.0.hook_mlp_out"], plain["blocks.0.hook_mlp_out"])
    np.testing.assert_allclose(cache["blocks.0.hook_resid_post"],
                               cache["blocks.0.hook_resid_mid"] + cache["blocks.0.hook_mlp_out"], rtol=1e-5, atol=1e-5)


def test_generation_with_split_inputs_matches_a_full_rerun(llama):
    llama.set_use_split_qkv_input(True)
    hooks = [("blocks.1.hook_v_input", tm.scale(0.5, heads=[1]))]
    prompt = tokens(llama, 2, 4, seed=3)
    cached = llama.generate(prompt, max_new_tokens=5, hooks=hooks)
    rerun = llama.generate(prompt, max_new_tokens=5, hooks=hooks, use_past_kv_cache=False)
    np.testing.assert_array_equal(cached, rerun)
    logits = llama.run_with_hooks(cached[:, :-1], fwd_hooks=hooks)
    np.testing.assert_array_equal(logits[:, 3:].argmax(-1), cached[:, 4:])


def test_bf16_weights_take_the_per_head_path_too(gpt2_path):
    model = tm.load(gpt2_path, dtype="bf16")
    toks = tokens(model)
    plain = model(toks)
    model.set_use_split_qkv_input(True)
    np.testing.assert_allclose(model.run_with_cache(toks)[0], plain, rtol=1e-3, atol=1e-3)


def test_a_transcoder_reads_hook_mlp_in_once_the_mode_is_on(gpt2, tmp_path):
    d = gpt2.cfg.d_model
    tc = tm.SAE.load(write_sae(tmp_path / "tc", "transcoder", d, 24, hook="blocks.0.hook_mlp_in",
                               hook_out="blocks.0.hook_mlp_out"))
    toks = tokens(gpt2)
    gpt2.set_use_hook_mlp_in(True)
    _, cache = gpt2.run_with_cache(toks, names_filter="blocks.0.hook_mlp_in")
    want = tc.forward(cache["blocks.0.hook_mlp_in"])
    np.testing.assert_allclose(gpt2.run_with_saes(toks, saes=[tc]),
                               gpt2.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, hook: want)]),
                               rtol=TOL, atol=TOL)


def test_setters_take_true_or_false(gpt2):
    for setter in (gpt2.set_use_split_qkv_input, gpt2.set_use_attn_in, gpt2.set_use_hook_mlp_in):
        for bad in ("yes", 1, None, "False"):
            with pytest.raises(tm.InvalidInputError, match="must be True or False"):
                setter(bad)
        setter(np.bool_(True))
        setter(False)
    assert gpt2.hook_names() == tm.load(gpt2.path).hook_names()


def test_split_qkv_input_and_attn_in_are_exclusive(gpt2, llama):
    gpt2.set_use_split_qkv_input(True)
    with pytest.raises(tm.HookError, match="exclusive.*set_use_split_qkv_input.False. first"):
        gpt2.set_use_attn_in(True)
    gpt2.set_use_split_qkv_input(False)
    gpt2.set_use_attn_in(True)
    with pytest.raises(tm.HookError, match="exclusive.*set_use_attn_in.False. first"):
        gpt2.set_use_split_qkv_input(True)
    with pytest.raises(tm.HookError, match="grouped-query attention.*set_use_split_qkv_input"):
        llama.set_use_attn_in(True)
    assert "blocks.0.hook_attn_in" not in llama.hook_names()


def test_a_point_of_a_mode_that_is_off_names_its_setter(gpt2):
    toks = tokens(gpt2)
    for name, setter in [("blocks.0.hook_q_input", "set_use_split_qkv_input"), ("blocks.1.hook_attn_in",
                         "set_use_attn_in"), ("blocks.0.hook_mlp_in", "set_use_hook_mlp_in")]:
        with pytest.raises(tm.HookError, match=f"only after model.{setter}.True."):
            gpt2.run_with_hooks(toks, fwd_hooks=[(name, tm.zero_ablate())])
        with pytest.raises(tm.HookError, match=setter):
            gpt2.run_with_cache(toks, names_filter=[name])
        with pytest.raises(tm.HookError, match=setter):
            gpt2.add_hook(name, tm.zero_ablate())
    seen = []
    gpt2.run_with_hooks(toks, fwd_hooks=[(lambda n: n.endswith(("_input", "attn_in", "mlp_in")), lambda a, hook: seen.append(1))])
    assert seen == []  # a predicate matches the points the modes visit only


def test_turning_a_mode_off_refuses_while_hooks_use_its_points(gpt2):
    gpt2.set_use_hook_mlp_in(True)
    gpt2.add_hook("blocks.0.hook_mlp_in", tm.scale(0.5))
    with pytest.raises(tm.HookError, match="set_use_hook_mlp_in.False.*reset_hooks"):
        gpt2.set_use_hook_mlp_in(False)
    assert "blocks.0.hook_mlp_in" in gpt2.hook_names()  # still on, the hook still runs
    gpt2.reset_hooks()
    gpt2.set_use_hook_mlp_in(False)


def _zero_first_head(act, hook):  # module level: a hook pickle can carry
    act[:, :, 0] = 0.0


def test_copies_keep_the_modes_and_their_hooks(gpt2):
    toks = tokens(gpt2)
    gpt2.set_use_split_qkv_input(True)
    gpt2.set_use_hook_mlp_in(True)
    gpt2.add_hook("blocks.0.hook_q_input", _zero_first_head)
    expected = gpt2(toks)
    for c in (pickle.loads(pickle.dumps(gpt2)), copy.deepcopy(gpt2)):
        assert c.hook_names() == gpt2.hook_names()
        np.testing.assert_array_equal(c(toks), expected)


@pytest.mark.parametrize("hook,mode", [("blocks.1.hook_mlp_in", "use_hook_mlp_in"),
                                       ("blocks.0.hook_q_input", "use_split_qkv_input")])
def test_copies_keep_an_sae_at_a_modes_point(gpt2, tmp_path, hook, mode):
    """The copy sets the modes before it attaches the SAEs, which may read the modes' points."""
    toks = tokens(gpt2)
    getattr(gpt2, f"set_{mode}")(True)
    gpt2.add_sae(tm.SAE.load(write_sae(tmp_path / "sae", "standard", gpt2.cfg.d_model, 24, hook=hook)))
    expected = gpt2(toks)
    for c in (pickle.loads(pickle.dumps(gpt2)), copy.deepcopy(gpt2)):
        assert list(c.acts_to_saes) == [hook]
        np.testing.assert_array_equal(c(toks), expected)


def test_get_act_name_knows_the_points():
    assert tm.get_act_name("q_input", 2) == "blocks.2.hook_q_input"
    assert tm.get_act_name("attn_in", 0) == "blocks.0.hook_attn_in"
    assert tm.get_act_name("mlp_in", 1) == "blocks.1.hook_mlp_in"
