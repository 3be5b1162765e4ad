"""tinymech.patching against transformer_lens.patching on the same random weights: every
get_act_patch_* function, the generic patch with a setter and an index table, at batch 1
and batch > 1, one token and several, on GPT-2 (d_head 20) and on a Llama with grouped-query
attention (keys and values by key-value head)."""
import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens import patching as theirs

import tinymech as tm
from llama_factory import LLAMA_SHAPES, make_hf_llama
from tinymech import patching as ours
from tl_reference import tl_llama

SWEEPS = sorted(name for name in vars(theirs) if name.startswith("get_act_patch_") and not name.endswith("_every"))
EVERY = ["get_act_patch_block_every", "get_act_patch_attn_head_all_pos_every", "get_act_patch_attn_head_by_pos_every"]
# one patched run per entry in TransformerLens: many runs at any length
HEAVY = {"get_act_patch_attn_head_pattern_dest_src_pos", "get_act_patch_attn_head_out_by_pos"}


def metric(logits):
    """Works on numpy and torch logits alike; reads every position, so each patch counts."""
    return (logits[:, -1, 3] - logits[:, -1, 7]).mean() + 0.1 * logits[:, :, 5].mean()


def inputs(model, batch, length, seed=0):
    """Clean tokens and a corruption of one position in each row (the last)."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, model.cfg.d_vocab, (batch, length))
    corrupted = clean.copy()
    corrupted[:, -1] = (clean[:, -1] + 1 + rng.integers(0, model.cfg.d_vocab - 1, batch)) % model.cfg.d_vocab
    if length > 1:
        corrupted[:, length // 2] = rng.integers(0, model.cfg.d_vocab, batch)
    return clean, corrupted


def compare(pair, name, batch, length, **kw):
    model, tl = pair
    clean, corrupted = inputs(model, batch, length)
    _, cache = model.run_with_cache(clean)
    got = getattr(ours, name)(model, corrupted, cache, metric, **kw)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.as_tensor(clean))
        expected = getattr(theirs, name)(tl, torch.as_tensor(corrupted), tl_cache, metric, **kw)
    return got, expected


def assert_equal(got, expected, patches_differ=True):
    expected = expected.numpy()
    assert isinstance(got, np.ndarray) and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    if patches_differ:  # the comparison is not vacuous
        assert np.ptp(expected) > 1e-3


@pytest.fixture(scope="module")
def gpt2_pair(gpt2, tl_gpt2):
    hf, _, path = gpt2("odd")
    return tm.load(path), tl_gpt2(hf)


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_patching")
    hf = make_hf_llama(path, **LLAMA_SHAPES["gqa"])
    return tm.load(path), tl_llama(hf)


def test_the_names_are_transformer_lens_s():
    public = {name for name in vars(theirs) if name.startswith("get_act_patch_") or name.endswith("_patch_setter")}
    public.add("generic_activation_patch")
    assert public <= set(ours.__all__)
    assert all(callable(getattr(ours, name)) for name in public)


@pytest.mark.parametrize("batch,length", [(1, 3), (2, 2)])
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in SWEEPS])
def test_sweeps_equal_transformer_lens(gpt2_pair, name, batch, length):
    assert_equal(*compare(gpt2_pair, name, batch, length))


# one token: patching the residual's only position gives the clean run's score at every
# layer, and a one-key pattern is 1 whatever is patched
@pytest.mark.parametrize("name,patches_differ", [
    ("get_act_patch_resid_pre", False), ("get_act_patch_attn_head_out_by_pos", True),
    ("get_act_patch_attn_head_v_all_pos", True), ("get_act_patch_attn_head_pattern_dest_src_pos", False)])
def test_one_token_equals_transformer_lens(gpt2_pair, name, patches_differ):
    assert_equal(*compare(gpt2_pair, name, batch=3, length=1), patches_differ=patches_differ)


@pytest.mark.slow
@pytest.mark.parametrize("name", EVERY)
def test_every_equals_transformer_lens(gpt2_pair, name):
    assert_equal(*compare(gpt2_pair, name, batch=2, length=2))


@pytest.mark.parametrize("name", ["get_act_patch_attn_head_k_all_pos", "get_act_patch_attn_head_v_by_pos",
                                  "get_act_patch_attn_head_q_by_pos", "get_act_patch_attn_head_all_pos_every"])
def test_grouped_query_attention_equals_transformer_lens(llama_pair, name):
    got, expected = compare(llama_pair, name, batch=2, length=3)
    assert_equal(got, expected)
    if "_k_" in name or "_v_" in name:
        assert got.shape[-1] == llama_pair[0].cfg.n_key_value_heads


def test_generic_patch_with_a_setter_and_an_index_table_equals_transformer_lens(gpt2_pair):
    def setter(activation, index, clean):  # a notebook's own setter: half the clean value at one position
        activation[:, index[1]] = 0.5 * (activation[:, index[1]] + clean[:, index[1]])
        return activation

    index_df = pd.DataFrame({"layer": [2, 0, 1, 0], "pos": [1, 2, 0, 1]})
    (got, got_df), (expected, expected_df) = compare(
        gpt2_pair, "generic_activation_patch", 2, 3, patch_setter=setter, activation_name="resid_mid",
        index_df=index_df, return_index_df=True)
    assert_equal(got, expected)
    assert got_df is index_df and expected_df is index_df


def test_generic_patch_by_axis_names_returns_transformer_lens_s_index_table(gpt2_pair):
    (got, got_df), (expected, expected_df) = compare(
        gpt2_pair, "generic_activation_patch", 1, 3, patch_setter=ours.layer_head_pos_pattern_patch_setter,
        activation_name="pattern", index_axis_names=("layer", "head_index", "dest_pos"), return_index_df=True)
    assert_equal(got, expected)
    pd.testing.assert_frame_equal(got_df, expected_df)
