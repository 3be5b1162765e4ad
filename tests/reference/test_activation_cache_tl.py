"""ActivationCache's helpers against TransformerLens's ActivationCache on the
same weights and tokens. (Lookups and sums: tests/unit/test_activation_cache.py.)"""
import numpy as np
import pytest
import torch

import tinymech as tm
from model_factory import rel_err
from tinymech.cache import _pos
from tl_reference import TL_PROCESSING

TOL = 1e-4


@pytest.fixture(scope="module", params=["raw", "processed"])
def caches(request, gpt2, tl_gpt2):
    """(our cache, TL's ActivationCache, tokens) for the odd shape (3 layers)."""
    hf, model, path = gpt2("odd")
    processed = request.param == "processed"
    if processed:
        model = tm.load(path, **TL_PROCESSING)
    tokens = np.random.default_rng(0).integers(0, model.cfg.d_vocab, (3, 10))
    _, ours = model.run_with_cache(tokens)
    with torch.no_grad():
        _, theirs = tl_gpt2(hf, processed=processed).run_with_cache(torch.as_tensor(tokens))
    return ours, theirs, tokens


def assert_same(ours, theirs):
    (a, a_labels), (b, b_labels) = ours, theirs
    assert a_labels == b_labels
    assert a.shape == tuple(b.shape)
    assert rel_err(a, b.detach().numpy()) <= TOL


POS_SLICES = [None, -1, (1, 6), [0, 4, 9]]


@pytest.mark.parametrize("layer,incl_mid,mlp_input", [
    (None, False, False), (None, True, False), (0, False, False), (2, True, False), (3, True, False),
    (0, False, True), (2, True, True),  # mlp_input needs a layer before the unembed
])
@pytest.mark.parametrize("apply_ln", [False, True])
def test_accumulated_resid(caches, layer, incl_mid, mlp_input, apply_ln):
    ours, theirs, _ = caches
    kwargs = dict(layer=layer, incl_mid=incl_mid, mlp_input=mlp_input, apply_ln=apply_ln, return_labels=True)
    assert_same(ours.accumulated_resid(**kwargs), theirs.accumulated_resid(**kwargs))


@pytest.mark.parametrize("pos_slice", POS_SLICES)
def test_accumulated_resid_pos_slice(caches, pos_slice):
    ours, theirs, _ = caches
    for apply_ln in (False, True):
        kwargs = dict(pos_slice=pos_slice, apply_ln=apply_ln, incl_mid=True, return_labels=True)
        assert_same(ours.accumulated_resid(**kwargs), theirs.accumulated_resid(**kwargs))


@pytest.mark.parametrize("layer,mlp_input", [(None, False), (1, False), (1, True), (3, False)])
@pytest.mark.parametrize("mode", ["all", "attn", "mlp"])
def test_decompose_resid(caches, layer, mlp_input, mode):
    ours, theirs, _ = caches
    for apply_ln in (False, True):
        kwargs = dict(layer=layer, mlp_input=mlp_input, mode=mode, apply_ln=apply_ln, return_labels=True)
        assert_same(ours.decompose_resid(**kwargs), theirs.decompose_resid(**kwargs))


@pytest.mark.parametrize("layer", [-1, 1, 3])
@pytest.mark.parametrize("pos_slice", [None, -1, [0, 4, 9]])
def test_stack_head_results(caches, layer, pos_slice):
    ours, theirs, _ = caches
    for incl_remainder, apply_ln in [(False, False), (True, False), (False, True)]:
        kwargs = dict(layer=layer, pos_slice=pos_slice, incl_remainder=incl_remainder, apply_ln=apply_ln,
                      return_labels=True)
        assert_same(ours.stack_head_results(**kwargs), theirs.stack_head_results(**kwargs))


@pytest.mark.parametrize("layer,mlp_input", [(None, False), (0, False), (1, True)])
@pytest.mark.parametrize("batch_slice", [None, 1, [0, 2]])
def test_apply_ln_to_stack(caches, layer, mlp_input, batch_slice):
    ours, theirs, _ = caches
    stack = ours.decompose_resid(layer=layer, mlp_input=mlp_input)
    ref = theirs.apply_ln_to_stack(torch.as_tensor(stack), layer, mlp_input=mlp_input, batch_slice=batch_slice)
    assert rel_err(ours.apply_ln_to_stack(stack, layer, mlp_input, batch_slice=batch_slice), ref.detach().numpy()) <= TOL


def test_logit_attrs(caches):
    ours, theirs, tokens = caches
    stack = ours.accumulated_resid(pos_slice=-1)  # [component, batch, d_model]
    answer, wrong = torch.as_tensor(tokens[:, -1]), torch.as_tensor(tokens[:, 0])
    ref = theirs.logit_attrs(torch.as_tensor(stack), answer, wrong, pos_slice=-1)
    assert rel_err(ours.logit_attrs(stack, tokens[:, -1], tokens[:, 0], pos_slice=-1), ref.detach().numpy()) <= TOL

    per_position = ours.decompose_resid()  # every position, next-token directions
    ref = theirs.logit_attrs(torch.as_tensor(per_position), torch.as_tensor(tokens))
    assert rel_err(ours.logit_attrs(per_position, tokens), ref.detach().numpy()) <= TOL


@pytest.mark.parametrize("name,layer,sublayer", [("resid_pre", -1, None), ("pattern", 2, None), ("scale", 3, "ln2"),
                                                 ("post", 1, None)])
def test_stack_activation(caches, name, layer, sublayer):
    ours, theirs, _ = caches
    got, want = ours.stack_activation(name, layer, sublayer), theirs.stack_activation(name, layer, sublayer)
    assert got.shape == tuple(want.shape) and rel_err(got, want.detach().numpy()) <= TOL


@pytest.mark.parametrize("neuron_slice,pos_slice", [(None, None), ((2, 9), -1), ([0, 5, 7], [1, 3]), (4, (0, 5))])
def test_get_neuron_results(caches, neuron_slice, pos_slice):
    ours, theirs, _ = caches
    got, want = ours.get_neuron_results(1, neuron_slice, pos_slice), theirs.get_neuron_results(1, neuron_slice, pos_slice)
    assert got.shape == tuple(want.shape) and rel_err(got, want.detach().numpy()) <= TOL


@pytest.mark.parametrize("layer", [-1, 2, 0])
@pytest.mark.parametrize("pos_slice,neuron_slice", [(None, None), (-1, (0, 6)), ([0, 4, 9], [1, 2])])
@pytest.mark.parametrize("incl_remainder,apply_ln", [(False, False), (True, False), (True, True)])
def test_stack_neuron_results(caches, layer, pos_slice, neuron_slice, incl_remainder, apply_ln):
    ours, theirs, _ = caches
    kwargs = dict(pos_slice=pos_slice, neuron_slice=neuron_slice, return_labels=True, incl_remainder=incl_remainder,
                  apply_ln=apply_ln)
    if layer == 0:  # no neurons; the remainder is all of resid_pre 0 (TransformerLens wraps to the last layer's)
        stack, labels = ours.stack_neuron_results(layer, **kwargs)
        assert labels == (["remainder"] if incl_remainder else []) and stack.shape[0] == len(labels)
        if incl_remainder and not apply_ln:
            np.testing.assert_array_equal(stack[0], _pos(ours["resid_pre", 0], pos_slice))
        return
    assert_same(ours.stack_neuron_results(layer, **kwargs), theirs.stack_neuron_results(layer, **kwargs))


@pytest.mark.parametrize("layer,mlp_input", [(None, False), (2, False), (1, True), (0, False), (0, True)])
@pytest.mark.parametrize("expand_neurons", [True, False])
@pytest.mark.parametrize("apply_ln,pos_slice", [(False, None), (True, -1)])
def test_get_full_resid_decomposition(caches, layer, mlp_input, expand_neurons, apply_ln, pos_slice):
    ours, theirs, _ = caches
    kwargs = dict(layer=layer, mlp_input=mlp_input, expand_neurons=expand_neurons, apply_ln=apply_ln,
                  pos_slice=pos_slice, return_labels=True)
    assert_same(ours.get_full_resid_decomposition(**kwargs), theirs.get_full_resid_decomposition(**kwargs))


def test_compute_head_results(caches):
    ours, theirs, _ = caches
    ours_copy = tm.ActivationCache(dict(ours.items()), ours.model)
    ours_copy.compute_head_results()
    theirs.compute_head_results()
    for layer in range(ours.model.cfg.n_layers):
        got, want = ours_copy["result", layer], theirs["result", layer]
        assert got.shape == tuple(want.shape) and rel_err(got, want.detach().numpy()) <= TOL


@pytest.fixture(scope="module")
def single(gpt2, tl_gpt2):
    """(our cache, TL's) of one sequence with the batch axis removed, on the odd shape."""
    hf, model, _ = gpt2("odd")
    tokens = np.random.default_rng(4).integers(0, model.cfg.d_vocab, (1, 10))
    _, ours = model.run_with_cache(tokens)
    with torch.no_grad():
        _, theirs = tl_gpt2(hf, processed=False).run_with_cache(torch.as_tensor(tokens))
    assert ours.remove_batch_dim() is ours and ours.remove_batch_dim() is ours  # once, in place
    theirs.remove_batch_dim()
    return ours, theirs, tokens


def test_remove_batch_dim_lookups(single):
    ours, theirs, _ = single
    assert not ours.has_batch_dim and ours["pattern", 1].shape == tuple(theirs["pattern", 1].shape)
    for name in ours:
        assert ours[name].shape == tuple(theirs[name].shape), name
        ref = theirs[name].detach().numpy()  # attention scores hold -inf where masked: allclose keeps them
        np.testing.assert_allclose(ours[name], ref, rtol=0, atol=TOL * np.abs(ref[np.isfinite(ref)]).max(), err_msg=name)


@pytest.mark.parametrize("apply_ln", [False, True])
def test_remove_batch_dim_stacks(single, apply_ln):
    ours, theirs, tokens = single
    for method, kwargs in [("accumulated_resid", dict(layer=None)), ("accumulated_resid", dict(layer=2)),
                           ("decompose_resid", dict(layer=2)), ("stack_head_results", dict(layer=-1)),
                           ("stack_neuron_results", dict(layer=2, pos_slice=-1))]:
        assert_same(getattr(ours, method)(apply_ln=apply_ln, return_labels=True, **kwargs),
                    getattr(theirs, method)(apply_ln=apply_ln, return_labels=True, **kwargs))
    stack = ours.decompose_resid()
    got = ours.logit_attrs(stack, tokens[0], has_batch_dim=False)  # each position's own token
    want = theirs.logit_attrs(torch.as_tensor(stack), torch.as_tensor(tokens[0]), has_batch_dim=False)
    assert got.shape == tuple(want.shape) and rel_err(got, want.detach().numpy()) <= TOL


@pytest.mark.parametrize("pos_slice", [None, 2, -1, (1, 4), [0, 3, 3]])
@pytest.mark.parametrize("remove_batch_dim", [False, True])
def test_run_with_cache_slices_positions_and_the_batch_as_transformerlens(pos_slice, remove_batch_dim, gpt2,
                                                                         tl_gpt2):
    hf, model, _ = gpt2("odd")
    tl = tl_gpt2(hf, processed=False)
    tokens = np.random.default_rng(3).integers(0, model.cfg.d_vocab, (1, 6))
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: True, pos_slice=pos_slice,
                                    remove_batch_dim=remove_batch_dim)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.from_numpy(tokens), names_filter=lambda n: True, pos_slice=pos_slice,
                                        remove_batch_dim=remove_batch_dim)
    assert set(cache) == set(tl_cache)
    for name in tl_cache:
        want = tl_cache[name].numpy()
        assert cache[name].shape == want.shape, name
        np.testing.assert_allclose(cache[name], want, rtol=1e-4, atol=1e-5, err_msg=name)
    assert cache.has_batch_dim != remove_batch_dim
