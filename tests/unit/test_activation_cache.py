"""ActivationCache's lookups, and its decompositions summing to what they
decompose, on a random GPT-2 (3 layers), raw and with TransformerLens's weight
processing. (Agreement with TransformerLens: tests/reference/test_activation_cache_tl.py.)"""
import numpy as np
import pytest

import tinymech as tm
from model_factory import rel_err
from tl_reference import TL_PROCESSING

TOL = 1e-4


@pytest.fixture(scope="module", params=["raw", "processed"])
def caches(request, saved_gpt2):
    """(our cache, tokens) for the odd shape (3 layers)."""
    model, path = saved_gpt2("odd")
    if request.param == "processed":
        model = tm.load(path, **TL_PROCESSING)
    tokens = np.random.default_rng(0).integers(0, model.cfg.d_vocab, (3, 10))
    _, ours = model.run_with_cache(tokens)
    return ours, tokens


def test_lookup_forms(caches):
    ours, _ = caches
    assert ours["pattern", 1] is ours["blocks.1.attn.hook_pattern"]
    assert ours["resid_post", -1] is ours["blocks.2.hook_resid_post"]
    assert ours["k2"] is ours["blocks.2.attn.hook_k"]
    assert ours["scale", 0, "ln2"] is ours["blocks.0.ln2.hook_scale"]
    assert ours["normalized"] is ours["ln_final.hook_normalized"]
    assert ("z", 1) in ours and "blocks.0.attn.hook_result" not in ours and "bogus" not in ours
    with pytest.raises(KeyError, match="not cached"):
        ours["result", 0]
    for key, match in [(("resid_post", 3), "layer 3 is out of range for a model with 3 layers"),
                       (("resid_post", -4), "layer -4 is out of range"), (("pattern", 1.0), "whole number"),
                       (5, "a cache key is a hook name")]:
        with pytest.raises(KeyError, match=match):
            ours[key]
        assert key not in ours
    with pytest.raises(tm.InvalidInputError, match="layer 4 is out of range: 0..3"):
        ours.accumulated_resid(layer=4)
    with pytest.raises(tm.InvalidInputError, match="mode must be"):
        ours.decompose_resid(mode="heads")


@pytest.mark.parametrize("layer", [None, 0, 1, 3])
def test_decompose_resid_sums_to_the_residual_stream(caches, layer):
    ours, _ = caches
    stop = 3 if layer is None else layer
    target = ours["resid_post", 2] if stop == 3 else ours["resid_pre", stop]
    assert rel_err(ours.decompose_resid(layer=layer).sum(0), target) <= TOL
    if stop < 3:
        assert rel_err(ours.decompose_resid(layer=layer, mlp_input=True).sum(0), ours["resid_mid", stop]) <= TOL
    parts, labels = ours.decompose_resid(layer=layer, pos_slice=(2, 5), return_labels=True)
    assert len(labels) == 2 + 2 * stop and parts.shape == (2 + 2 * stop, 3, 3, ours.model.cfg.d_model)


def test_head_results_sum_to_attn_out(caches):
    ours, _ = caches
    model = ours.model
    stack, labels = ours.stack_head_results(layer=-1, return_labels=True)
    H = model.cfg.n_heads
    assert labels[:H + 1] == [f"L0H{h}" for h in range(H)] + ["L1H0"]
    for layer in range(model.cfg.n_layers):
        heads = stack[layer * H:(layer + 1) * H].sum(0) + model._weights["layers"][layer]["out_b"]
        assert rel_err(heads, ours["attn_out", layer]) <= TOL
    _, captured = model.run_with_cache(caches[1], names_filter="blocks.1.attn.hook_result")
    assert rel_err(ours.head_results(1), captured["result", 1]) <= TOL


def test_stack_neuron_results_sum_to_mlp_out(caches):
    ours, _ = caches
    stack, labels = ours.stack_neuron_results(1, return_labels=True)  # layer 0's neurons
    d_mlp = ours.model.cfg.d_mlp
    assert labels[:2] == ["L0N0", "L0N1"] and len(labels) == d_mlp
    np.testing.assert_allclose(stack.sum(0) + ours.model.b_out[0], ours["mlp_out", 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer,mlp_input,resid", [(None, False, "blocks.2.hook_resid_post"),
                                                   (1, False, "blocks.1.hook_resid_pre"),
                                                   (1, True, "blocks.1.hook_resid_mid")])
def test_full_resid_decomposition_sums_to_the_residual_stream(caches, layer, mlp_input, resid):
    ours, _ = caches
    full = ours.get_full_resid_decomposition(layer, mlp_input=mlp_input)
    np.testing.assert_allclose(full.sum(0), ours[resid], rtol=1e-4, atol=1e-4)


def test_remove_batch_dim_needs_one_sequence(caches):
    ours, _ = caches
    with pytest.raises(tm.InvalidInputError, match="one sequence, not 3"):
        tm.ActivationCache(dict(ours.items()), ours.model).remove_batch_dim()


def test_run_with_cache_refuses_a_pos_slice_or_batch_removal_that_does_not_fit():
    model = tm.load()
    tokens = np.zeros((2, 5), np.int64)
    with pytest.raises(tm.InvalidInputError, match="pos_slice"):
        model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_z"], pos_slice=[7])
    with pytest.raises(tm.InvalidInputError, match="one sequence"):
        model.run_with_cache(tokens, names_filter=["hook_embed"], remove_batch_dim=True)
    _, cache = model.run_with_cache(tokens[:1], names_filter=["blocks.0.attn.hook_z", "blocks.0.attn.hook_pattern"],
                                    pos_slice=(1, 3), remove_batch_dim=True)
    assert cache["blocks.0.attn.hook_z"].shape == (2, model.cfg.n_heads, model.cfg.d_head)
    assert cache["blocks.0.attn.hook_pattern"].shape == (model.cfg.n_heads, 2, 5)  # query positions sliced
