"""Per-layer weights read as TransformerLens's stacked parameters (model.W_out[1],
model.W_Q[1, h], np.asarray(model.W_O)) against TransformerLens on the same
weights: GPT-2 raw and processed, and a grouped-query Llama; the older call
form model.W_out(1); b_U. (Layer access that copies no other layer, and bad
indices: tests/unit/test_weight_attributes.py.)"""
import numpy as np
import pytest

import tinymech as tm
from llama_factory import LLAMA_SHAPES, make_hf_llama
from tinymech.analysis.params import unembed_bias
from tinymech.model import LayerStack
from tl_reference import TL_PROCESSING, act_err, tl_llama

TOL = 1e-5
PER_LAYER = ["W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "W_out", "b_in", "b_out"]
# TL's stacked array indexed with numpy's rules; the layer-first forms must not stack everything
INDICES = [0, 1, -1, (1, 0), (-1, -1), (1, ..., 0), slice(1, 3), slice(None, None, -1), slice(0, 9),
           slice(2, 2), (slice(0, 2), 0), (slice(None), ..., 1), ..., (..., 0), [0, 1]]


def tl_weights(tl, name: str) -> np.ndarray | None:
    w = getattr(tl, name)
    return None if w is None else w.detach().numpy()


def assert_matches_tl(model, tl, name: str, tol: float = TOL):
    ours, ref = getattr(model, name), tl_weights(tl, name)
    assert isinstance(ours, LayerStack)
    assert ours.shape == ref.shape and ours.ndim == ref.ndim and len(ours) == len(ref), name
    assert ours.dtype == np.float32
    assert act_err(np.asarray(ours), ref) <= tol, name
    for layer, weight in enumerate(ours):
        assert act_err(weight, ref[layer]) <= tol, (name, layer)
        assert act_err(ours(layer), ref[layer]) <= tol, (name, layer)  # tinymech's older call form
    for index in INDICES:
        assert act_err(ours[index], ref[index]) <= tol, (name, index)


@pytest.mark.parametrize("shape", ["small", "odd"])
@pytest.mark.parametrize("processed", [False, True], ids=["raw", "processed"])
def test_gpt2_weights_match_tl(gpt2, tl_gpt2, shape, processed):
    hf, model, path = gpt2(shape)
    if processed:
        model = tm.load(path, **TL_PROCESSING)
    tl = tl_gpt2(hf, processed=processed)
    for name in PER_LAYER:
        assert_matches_tl(model, tl, name)
    assert model.W_gate is None and tl.W_gate is None  # an MLP without a gate
    assert model.b_U.shape == (model.cfg.d_vocab,) and model.b_U.dtype == np.float32
    assert act_err(model.b_U, tl_weights(tl, "b_U")) <= TOL


@pytest.fixture(scope="module")
def llama_gqa(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_gqa")
    hf = make_hf_llama(path, **LLAMA_SHAPES["gqa"])
    return tm.load(path), tl_llama(hf)


def test_grouped_query_llama_weights_match_tl(llama_gqa):
    model, tl = llama_gqa
    for name in PER_LAYER + ["W_gate"]:
        assert_matches_tl(model, tl, name)
    np.testing.assert_array_equal(model.b_U, np.zeros(model.cfg.d_vocab, np.float32))
    # TL repeats each key/value head per query head in W_K/W_V; its _W_K/_W_V hold them once
    repeat = model.cfg.n_heads // model.cfg.n_key_value_heads
    for layer in range(model.cfg.n_layers):
        attn = tl.blocks[layer].attn
        np.testing.assert_array_equal(model.W_K[layer][::repeat], attn._W_K.detach().numpy())
        np.testing.assert_array_equal(model.W_V[layer][::repeat], attn._W_V.detach().numpy())


def hf_heads(w, d_head: int, n_heads: int) -> np.ndarray:
    """A Hugging Face projection [heads * d_head, d_model] (or its bias) as
    TransformerLens's [n_heads, d_model, d_head] (or [n_heads, d_head]), each
    head repeated up to n_heads."""
    w = w.detach().numpy()
    heads = np.moveaxis(w.reshape(-1, d_head, *w.shape[1:]), 1, -1)
    return np.repeat(heads, n_heads // len(heads), axis=0)


def test_llama_biases_with_one_key_value_head(tmp_path):
    """TL's Llama conversion drops biases, so they are checked against Hugging
    Face's: key/value heads repeated per query head, as TL does for W_K/W_V."""
    hf = make_hf_llama(tmp_path, **LLAMA_SHAPES["mqa_llama3"])
    model = tm.load(tmp_path)
    c = model.cfg
    for layer, block in enumerate(hf.model.layers):
        attn, mlp = block.self_attn, block.mlp
        for name, proj in [("Q", attn.q_proj), ("K", attn.k_proj), ("V", attn.v_proj)]:
            for kind, hf_weight in [("W_", proj.weight), ("b_", proj.bias)]:
                np.testing.assert_array_equal(getattr(model, kind + name)[layer],
                                              hf_heads(hf_weight, c.d_head, c.n_heads))
        np.testing.assert_array_equal(model.b_O[layer], attn.o_proj.bias.detach().numpy())
        np.testing.assert_array_equal(model.b_in[layer], mlp.up_proj.bias.detach().numpy())
        np.testing.assert_array_equal(model.b_out[layer], mlp.down_proj.bias.detach().numpy())
    assert model.b_K.shape == (c.n_layers, c.n_heads, c.d_head)


def test_unembed_bias_is_none_only_without_one(gpt2, tl_gpt2):
    hf, raw, path = gpt2("odd")
    assert unembed_bias(raw) is None  # b_U is all zeros: nothing to add
    processed = tm.load(path, **TL_PROCESSING)  # fold_ln turns ln_final's bias into b_U
    assert act_err(unembed_bias(processed), tl_weights(tl_gpt2(hf, processed=True), "b_U")) <= TOL
