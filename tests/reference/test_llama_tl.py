"""Llama-class hook points against TransformerLens's HookedTransformer on the
same random weights (TL's own Llama weight conversion): names, shapes (K/V
hooks by key/value head), values, and head-selected interventions."""
import numpy as np
import pytest

import tinymech as tm
from llama_factory import LLAMA_SHAPES, make_hf_llama
from model_factory import rel_err
from tl_reference import act_err, tl_llama, tl_run_with_cache, tl_run_with_hooks

TOL = 1e-4


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_tl")
    hf = make_hf_llama(path, **LLAMA_SHAPES["gqa"])
    return tm.load(path), tl_llama(hf)


@pytest.mark.parametrize("batch,length", [(2, 1), (1, 13)])
def test_every_hook_point_matches(pair, batch, length):
    model, tl = pair
    tokens = np.random.default_rng(length).integers(0, model.cfg.d_vocab, (batch, length))
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: True)
    tl_logits, tl_cache = tl_run_with_cache(tl, tokens)
    assert set(model.hook_names()) == set(tl_cache)  # every name TransformerLens has, unembed's included
    for name in model.hook_names():
        assert cache[name].shape == tl_cache[name].shape, name
        assert act_err(cache[name], tl_cache[name]) <= TOL, name
    assert rel_err(logits, tl_logits) <= TOL


@pytest.mark.parametrize("point,heads", [("attn.hook_k", [1]), ("attn.hook_rot_q", [0, 3]), ("attn.hook_z", [2])])
def test_zero_ablating_heads_matches(pair, point, heads):
    import torch

    model, tl = pair
    tokens = np.random.default_rng(1).integers(0, model.cfg.d_vocab, (2, 9))
    name = f"blocks.0.{point}"

    def tl_zero(act, hook):
        act = act.clone()
        act[:, :, heads] = 0.0
        return act

    ours = model.run_with_hooks(tokens, fwd_hooks=[(name, tm.zero_ablate(heads=heads))])
    with torch.no_grad():
        ref = tl_run_with_hooks(tl, tokens, [(name, tl_zero)])
    assert rel_err(ours, ref) <= TOL
    assert rel_err(ours, model(tokens)) > 1e-3  # the ablation did something


@pytest.mark.parametrize("shape", ["gqa", "mha_tied"])  # TransformerLens's conversion drops attention biases
@pytest.mark.parametrize("flags", [
    dict(fold_ln=True), dict(center_unembed=True), dict(fold_value_biases=True),
    dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True),
])
def test_weight_processing_matches_transformerlens(tmp_path, shape, flags):
    """TransformerLens's processing on a Llama-class model (fold_ln folds the RMSNorm weights; it
    skips center_writing_weights there): every activation and the logits as its processed model's."""
    import warnings

    hf = make_hf_llama(tmp_path, **LLAMA_SHAPES[shape])
    model = tm.load(tmp_path, **flags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TransformerLens warns that RMSNorm models cannot center
        tl = tl_llama(hf, **flags)
    tokens = np.random.default_rng(5).integers(0, model.cfg.d_vocab, (2, 9))
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: True)
    tl_logits, tl_cache = tl_run_with_cache(tl, tokens)
    assert set(cache) == set(tl_cache)
    for name in cache:
        assert cache[name].shape == tl_cache[name].shape, name
        assert act_err(cache[name], tl_cache[name]) <= TOL, name
    assert rel_err(logits, tl_logits) <= TOL
    assert model.cfg.normalization_type == ("RMSPre" if flags.get("fold_ln") else "RMS")
