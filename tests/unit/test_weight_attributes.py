"""Per-layer weights read as stacked parameters (model.W_out[1], model.W_Q[1, h]):
layer access that copies no other layer, the whole stack only as an explicit
copy, and layers out of range. (Their values against TransformerLens:
tests/reference/test_weight_attributes_tl.py.)"""
import numpy as np
import pytest

import tinymech as tm


def test_layer_index_out_of_range(saved_gpt2):
    model, _ = saved_gpt2("odd")
    n = model.cfg.n_layers
    for access in [lambda: model.W_out[n], lambda: model.W_out[-n - 1], lambda: model.W_Q[n, 0],
                   lambda: model.b_O(n)]:
        with pytest.raises(IndexError, match=f"out of range for a model with {n} layers"):
            access()
    for access in [lambda: model.W_out("1"), lambda: model.W_Q["a"], lambda: model.W_Q[0, 99],
                   lambda: model.W_Q[1:, 99], lambda: model.W_Q[[0, 9]]]:
        with pytest.raises(tm.InvalidInputError):  # not a layer, or a head out of range: numpy's errors escaped
            access()


def test_layer_access_copies_no_other_layer(saved_gpt2, monkeypatch):
    _, path = saved_gpt2("small")
    model = tm.load(path)
    stored = [layer["proj_w"] for layer in model._weights["layers"]]
    w = model.W_out[1]
    assert np.shares_memory(w, stored[1]) and not w.flags.owndata  # a view of the stored weights
    assert np.shares_memory(model.W_O[-1, 3], model._weights["layers"][-1]["out_w"])
    assert np.shares_memory(model.W_Q(0), model._weights["layers"][0]["qkv_w"])

    requested = []
    in_out = model._in_out
    monkeypatch.setattr(model, "_in_out", lambda layer, name: requested.append(layer) or in_out(layer, name))
    for access, layers in [(lambda: model.W_out[1], [1]), (lambda: model.W_Q[-1, 2], [1]),
                           (lambda: model.W_in(0), [0]), (lambda: model.W_O[1:], [1]),
                           (lambda: model.W_out.shape, [0])]:
        requested.clear()
        access()
        assert requested == layers


def test_whole_stack_is_an_explicit_copy(saved_gpt2):
    model, _ = saved_gpt2("odd")
    stacked = np.asarray(model.W_out, dtype=np.float64)
    assert stacked.dtype == np.float64 and stacked.shape == model.W_out.shape
    with pytest.raises(ValueError, match="copy"):
        np.asarray(model.W_out, copy=False)
    assert "W_out" in repr(model.W_out) and str(model.W_out.shape) in repr(model.W_out)
