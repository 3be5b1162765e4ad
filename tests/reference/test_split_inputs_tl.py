"""TransformerLens's per-head input modes against its HookedTransformer on the same weights:
set_use_split_qkv_input (hook_q_input, hook_k_input, hook_v_input), set_use_attn_in
(hook_attn_in) and set_use_hook_mlp_in (hook_mlp_in), on GPT-2 and a grouped-query Llama:
the cache's names and values in each mode (ln1's hooks per head), edits at every new point,
interventions on heads, and KV-cached generation. (Torch-free: tests/unit/test_split_inputs.py.)"""
import numpy as np
import pytest

import tinymech as tm
from llama_factory import LLAMA_SHAPES, make_hf_llama
from model_factory import rel_err
from numpy_models import random_tokens
from tl_reference import act_err, as_tl_hook, hooked_transformer, tl_greedy_cached, tl_llama, tl_run_with_cache

TOL = 1e-4
# (architecture, the mode beside use_hook_mlp_in); grouped-query attention has no hook_attn_in
CASES = [("gpt2", "use_split_qkv_input"), ("gpt2", "use_attn_in"), ("llama", "use_split_qkv_input")]
NEW_POINTS = {"use_split_qkv_input": ["hook_q_input", "hook_k_input", "hook_v_input"],
              "use_attn_in": ["hook_attn_in"]}


@pytest.fixture(scope="module")
def checkpoints(gpt2, tmp_path_factory):
    """{arch: (Hugging Face model, checkpoint dir)}; each test builds its own pair from them,
    as the modes change both models."""
    hf_gpt2, _, gpt2_path = gpt2("odd")
    llama_path = tmp_path_factory.mktemp("llama_split_inputs_tl")
    return {"gpt2": (hf_gpt2, gpt2_path), "llama": (make_hf_llama(llama_path, **LLAMA_SHAPES["gqa"]), llama_path)}


def pair_in(checkpoints, arch: str, mode: str):
    """(tinymech model, HookedTransformer) with `mode` and use_hook_mlp_in on (and attn.hook_result)."""
    hf, path = checkpoints[arch]
    model, tl = tm.load(path), (hooked_transformer(hf) if arch == "gpt2" else tl_llama(hf))
    for m in (model, tl):
        getattr(m, f"set_{mode}")(True)
        m.set_use_hook_mlp_in(True)
    model.set_use_attn_result(True)  # as the reference's
    return model, tl


def wobble(act, hook):
    """The same edit of any shape in both libraries (ln1's hooks get three shapes in a pass)."""
    return act * (1.0 + 0.5 * np.sin(np.arange(act.size, dtype=np.float32)).reshape(act.shape))


@pytest.mark.parametrize("arch,mode", CASES)
@pytest.mark.parametrize("batch,length", [(2, 1), (2, 9)])
def test_every_hook_point_matches_in_the_mode(checkpoints, arch, mode, batch, length):
    model, tl = pair_in(checkpoints, arch, mode)
    tokens = random_tokens(model, batch, length)
    logits, cache = model.run_with_cache(tokens)
    tl_logits, tl_cache = tl_run_with_cache(tl, tokens)
    assert set(cache) == set(tl_cache)
    assert {f"blocks.0.{name}" for name in NEW_POINTS[mode] + ["hook_mlp_in"]} <= set(cache)
    for name in cache:
        assert cache[name].shape == tl_cache[name].shape, name
        assert act_err(cache[name], tl_cache[name]) <= TOL, name
    assert rel_err(logits, tl_logits) <= TOL


@pytest.mark.parametrize("arch,mode", CASES)
def test_an_edit_at_each_new_point_matches(checkpoints, arch, mode):
    model, tl = pair_in(checkpoints, arch, mode)
    tokens = random_tokens(model, 2, 7, seed=1)
    plain = model(tokens)
    points = NEW_POINTS[mode] + ["ln1.hook_scale", "ln1.hook_normalized", "hook_mlp_in"]
    for point in points:
        name = f"blocks.1.{point}"
        logits, cache = model.run_with_cache(tokens, hooks=[(name, wobble)])
        with tl.hooks(fwd_hooks=[(name, as_tl_hook(wobble))]):
            tl_logits, tl_cache = tl_run_with_cache(tl, tokens)
        assert rel_err(logits, plain) > 1e-3, point  # the edit matters
        assert rel_err(logits, tl_logits) <= TOL, point
        for n in cache:
            assert act_err(cache[n], tl_cache[n]) <= TOL, (point, n)


@pytest.mark.parametrize("arch,mode", CASES)
def test_interventions_on_heads_of_the_inputs_match(checkpoints, arch, mode):
    model, tl = pair_in(checkpoints, arch, mode)
    tokens = random_tokens(model, 2, 6, seed=2)
    _, other = model.run_with_cache(random_tokens(model, 2, 6, seed=3))
    first = NEW_POINTS[mode][0]
    last = NEW_POINTS[mode][-1]  # hook_v_input (key/value heads) or hook_attn_in
    steer = np.linspace(-1, 1, model.cfg.d_model, dtype=np.float32)
    hooks = [(f"blocks.0.{first}", tm.zero_ablate(heads=[1])),
             (f"blocks.1.{last}", tm.patch(other[f"blocks.1.{last}"], heads=[0], positions=[2, 4])),
             ("blocks.0.hook_mlp_in", tm.add(steer, coeff=2.0, positions=[3]))]

    def zero_head(act, hook):
        act[:, :, 1] = 0.0

    def patch_head(act, hook):
        act[:, [2, 4], 0] = other[f"blocks.1.{last}"][:, [2, 4], 0]

    def add_steer(act, hook):
        act[:, 3] += 2.0 * steer

    tl_hooks = [(f"blocks.0.{first}", as_tl_hook(zero_head)), (f"blocks.1.{last}", as_tl_hook(patch_head)),
                ("blocks.0.hook_mlp_in", as_tl_hook(add_steer))]
    logits, cache = model.run_with_cache(tokens, hooks=hooks)
    with tl.hooks(fwd_hooks=tl_hooks):
        tl_logits, tl_cache = tl_run_with_cache(tl, tokens)
    assert rel_err(logits, tl_logits) <= TOL
    for n in cache:
        assert act_err(cache[n], tl_cache[n]) <= TOL, n


@pytest.mark.parametrize("arch,mode", CASES)
def test_cached_generation_with_an_edited_input_matches(checkpoints, arch, mode):
    model, tl = pair_in(checkpoints, arch, mode)
    prompt = random_tokens(model, 2, 4, seed=4)
    name = f"blocks.0.{NEW_POINTS[mode][-1]}"
    ours = model.generate(prompt, max_new_tokens=6, hooks=[(name, wobble)], stop_at_eos=False)
    theirs = tl_greedy_cached(tl, prompt, 6, fwd_hooks=[(name, as_tl_hook(wobble))])
    np.testing.assert_array_equal(ours, theirs)
