"""Weight processing (fold_ln, center_writing_weights, center_unembed,
fold_value_biases) against TransformerLens's on the same weights."""
import numpy as np
import pytest

import tinymech as tm
from model_factory import rel_err
from tl_reference import TL_PROCESSING, act_err, hooked_transformer, tl_run_with_cache

TOL = 1e-4
FLAGS = list(TL_PROCESSING)


def assert_hooks_match(model, tl, tokens):
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: True)
    tl_logits, tl_cache = tl_run_with_cache(tl, tokens)
    for name in model.hook_names():
        assert act_err(cache[name], tl_cache[name]) <= TOL, name
    assert rel_err(logits, tl_logits) <= TOL


@pytest.mark.parametrize("shape", ["small", "odd"])
@pytest.mark.parametrize("batch,length", [(3, 1), (2, "n_ctx")])
def test_every_hook_matches_tl_from_pretrained_defaults(gpt2, tl_gpt2, shape, batch, length):
    hf, _, path = gpt2(shape)
    model = tm.load(path, **TL_PROCESSING)
    length = model.cfg.n_ctx if length == "n_ctx" else length
    tokens = np.random.default_rng(0).integers(0, model.cfg.d_vocab, (batch, length))
    assert_hooks_match(model, tl_gpt2(hf, processed=True), tokens)


@pytest.mark.parametrize("flags", [[f] for f in FLAGS] + [["fold_ln", "center_writing_weights"]],
                         ids=lambda flags: "+".join(flags))
def test_each_step_matches_tl(gpt2, flags):
    hf, _, path = gpt2("odd")
    processing = {f: True for f in flags}
    tokens = np.random.default_rng(1).integers(0, 301, (2, 11))
    assert_hooks_match(tm.load(path, **processing), hooked_transformer(hf, **processing), tokens)


@pytest.mark.parametrize("shape", ["odd", "small"])
def test_processing_keeps_the_distribution(gpt2, shape):
    _, raw, path = gpt2(shape)
    tokens = np.random.default_rng(2).integers(0, raw.cfg.d_vocab, (2, 12))
    ref = raw(tokens)
    uncentered = tm.load(path, fold_ln=True, center_writing_weights=True, fold_value_biases=True)
    assert rel_err(uncentered(tokens), ref) <= TOL
    shift = tm.load(path, **TL_PROCESSING)(tokens) - ref  # one constant per position
    assert np.abs(shift - shift.mean(-1, keepdims=True)).max() <= TOL * np.abs(ref).max()
    assert rel_err(tm.load(path, **TL_PROCESSING)(tokens, return_type="loss"), raw(tokens, return_type="loss")) <= TOL


def test_processed_weights_are_new_float32_arrays(gpt2):
    _, raw, path = gpt2("odd")
    before = raw(np.arange(10)[None])
    model = tm.load(path, **TL_PROCESSING)
    w = model._weights
    processed = [w["wte"], w["wpe"], w["lnf_w"], w["lnf_b"], w["unembed"], w["unembed_b"]]
    processed += [a for layer in w["layers"] for a in layer.values()]
    for arr in processed:
        assert arr.dtype == np.float32 and arr.flags.c_contiguous and arr.flags.writeable
    for name in ("ln1_w", "ln2_w"):
        np.testing.assert_array_equal(w["layers"][1][name], 1.0)
    np.testing.assert_array_equal(w["lnf_w"], 1.0)
    np.testing.assert_array_equal(w["lnf_b"], 0.0)
    np.testing.assert_array_equal(w["layers"][0]["qkv_b"][2 * model.cfg.d_model :], 0.0)  # b_V folded
    assert w["unembed_b"].shape == (model.cfg.d_vocab,)
    assert model.cfg.normalization_type == "LNPre" and raw.cfg.normalization_type == "LN"
    np.testing.assert_array_equal(raw(np.arange(10)[None]), before)  # the raw model is untouched


def test_centering(gpt2):
    _, raw, path = gpt2("odd")
    model = tm.load(path, center_writing_weights=True)
    np.testing.assert_allclose(model.W_E.mean(-1), 0.0, atol=1e-6)
    np.testing.assert_array_equal(model.W_U, raw.W_U)  # tied: the unembedding is not a writing weight
    _, cache = model.run_with_cache(np.arange(12)[None], names_filter=lambda n: "resid" in n)
    for name, act in cache.items():
        assert np.abs(act.mean(-1)).max() <= 1e-5 * np.abs(act).max(), name
    unembed_centered = tm.load(path, center_unembed=True)
    np.testing.assert_allclose(unembed_centered.W_U.mean(-1), 0.0, atol=1e-6)
    assert unembed_centered._weights["unembed_b"] is None


def test_untied_unembedding(gpt2):
    hf, _, path = gpt2("tiny", tie_word_embeddings=False)
    tokens = np.random.default_rng(3).integers(0, 257, (2, 9))
    assert_hooks_match(tm.load(path, **TL_PROCESSING), hooked_transformer(hf, **TL_PROCESSING), tokens)


def test_processed_generation_is_unchanged(gpt2):
    _, raw, path = gpt2("odd")
    prompt = np.random.default_rng(4).integers(1, raw.cfg.d_vocab, (2, 5))
    processed = tm.load(path, **TL_PROCESSING)
    np.testing.assert_array_equal(processed.generate(prompt, max_new_tokens=12, stop_at_eos=False),
                                  raw.generate(prompt, max_new_tokens=12, stop_at_eos=False))


# Hook points whose values depend on the factorization chosen: single SVD directions may differ in
# sign between LAPACKs (torch's and numpy's), so they are compared through what they compute.
FACTOR_DEPENDENT = ("hook_q", "hook_k", "hook_v", "hook_z")


@pytest.mark.parametrize("others", [{}, TL_PROCESSING], ids=["alone", "with_defaults"])
def test_refactor_factored_attn_matrices_matches_tl(gpt2, others):
    hf, _, path = gpt2("odd")
    flags = dict(others, refactor_factored_attn_matrices=True)
    model = tm.load(path, **flags)
    tl = hooked_transformer(hf, **flags)
    tokens = np.random.default_rng(3).integers(0, 301, (2, 11))
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: True)
    tl_logits, tl_cache = tl_run_with_cache(tl, tokens)
    assert rel_err(logits, tl_logits) <= TOL
    for name in model.hook_names():
        if not name.endswith(FACTOR_DEPENDENT):
            assert act_err(cache[name], tl_cache[name]) <= TOL, name
    for layer in range(model.cfg.n_layers):
        tl_attn = tl.blocks[layer].attn
        for mine, theirs in [(model.QK[layer].AB, (tl_attn.W_Q @ tl_attn.W_K.transpose(-1, -2))),
                             (model.OV[layer].AB, tl_attn.W_V @ tl_attn.W_O),
                             (model.b_O[layer], tl_attn.b_O),
                             (model.b_V[layer], tl_attn.b_V),
                             (np.abs(model.W_Q[layer]), tl_attn.W_Q.abs()),
                             (np.abs(model.b_Q[layer]), tl_attn.b_Q.abs())]:
            assert act_err(mine, theirs.detach().numpy()) <= TOL
        # W_O is orthonormal per head; q·k and z·W_O are what TransformerLens computes
        W_O = model.W_O[layer]
        assert np.allclose(W_O @ W_O.transpose(0, 2, 1), np.eye(model.cfg.d_head), atol=1e-4)
    assert np.abs(cache["blocks.1.attn.hook_z"]).max() > 0


def test_refactor_refuses_rotary_models(tmp_path):
    from llama_factory import LLAMA_SHAPES, make_hf_llama

    make_hf_llama(tmp_path, **LLAMA_SHAPES["mqa_llama3"])
    with pytest.raises(tm.UnsupportedArchitectureError, match="rotary"):
        tm.load(tmp_path, refactor_factored_attn_matrices=True)
