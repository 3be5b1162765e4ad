"""HookedTransformer's helpers against TransformerLens on the same weights: the
module tree (model.blocks[l].attn.W_Q, ...), named_parameters / state_dict with
TransformerLens's names, hook_dict, cfg.device, OV / QK and FactoredMatrix,
composition scores, to_single_token, get_token_position,
tokens_to_residual_directions, loss_fn and tinymech.utils. (Hostile arguments:
tests/unit/test_model_helpers.py.)"""
import contextlib
import io
import re

import numpy as np
import pytest
import torch
from transformer_lens import FactoredMatrix as TLFactoredMatrix
from transformer_lens import utils as tl_utils

import tinymech as tm
from llama_factory import LLAMA_SHAPES, make_hf_llama
from tinymech import utils
from tinymech.factored_matrix import FactoredMatrix
from tl_reference import TL_PROCESSING, act_err, demo_pair, tl_llama

TOL = 2e-5
# TransformerLens's hook_dict lists these always; tinymech's while their set_use_* mode is on
MODE_POINTS = {"hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in"}


@pytest.fixture(scope="module")
def llama_gqa(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_gqa")
    hf = make_hf_llama(path, **LLAMA_SHAPES["gqa"])
    return tm.load(path), tl_llama(hf)


@pytest.fixture(scope="module", params=["raw", "processed", "llama"])
def models(request, gpt2, tl_gpt2, llama_gqa):
    """(tinymech Model, HookedTransformer): GPT-2 without and with TransformerLens's processing, a grouped-query Llama."""
    if request.param == "llama":
        return llama_gqa
    hf, model, path = gpt2("odd")
    processed = request.param == "processed"
    return (tm.load(path, **TL_PROCESSING) if processed else model), tl_gpt2(hf, processed=processed)


@pytest.fixture(scope="module")
def demo():
    """The demo model in both libraries, with its tokenizer."""
    return demo_pair()


def numpy(x) -> np.ndarray:
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def attribute(root, path: str):
    """root.a.b.c, where a number is an index (blocks.1.attn)."""
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


# ---- the module tree and its parameters ----------------------------------------------------------

def test_named_parameters_and_state_dict_match_tl(models):
    model, tl = models
    ours, ref = list(model.named_parameters()), list(tl.named_parameters())
    assert [name for name, _ in ours] == [name for name, _ in ref]  # the same names, in the same order
    for (name, value), (_, expected) in zip(ours, ref):
        assert isinstance(value, np.ndarray) and value.dtype == np.float32, name
        assert act_err(value, numpy(expected)) <= TOL, name
    state = model.state_dict()
    buffers = {name for name in tl.state_dict() if name.rsplit(".", 1)[-1] in ("mask", "IGNORE", "rotary_sin", "rotary_cos")}
    assert list(state) == [name for name in tl.state_dict() if name not in buffers]
    assert [np.shape(p) for p in model.parameters()] == [tuple(p.shape) for p in tl.parameters()]


def test_module_tree_matches_tl(models):
    model, tl = models
    for name, expected in tl.named_parameters():
        assert act_err(attribute(model, name), numpy(expected)) <= TOL, name
    grouped = model.cfg.n_key_value_heads is not None
    for layer in (0, -1):  # the repeated key/value heads too, and a layer counted from the end
        ours, ref = model.blocks[layer].attn, tl.blocks[layer].attn
        for name in ["W_K", "W_V", "b_K", "b_V"]:
            assert act_err(getattr(ours, name), numpy(getattr(ref, name))) <= TOL, name
        for circuit in ["OV", "QK"]:
            assert act_err(getattr(ours, circuit).AB, numpy(getattr(ref, circuit).AB)) <= TOL, circuit
        assert hasattr(ours, "_W_K") == hasattr(ref, "_W_K") == grouped
        assert hasattr(model.blocks[layer].mlp, "W_gate") == hasattr(tl.blocks[layer].mlp, "W_gate")
        for norm in ["ln1", "ln2"]:
            for p in ["w", "b"]:
                assert hasattr(getattr(model.blocks[layer], norm), p) == hasattr(getattr(tl.blocks[layer], norm), p)
    assert len(model.blocks) == len(tl.blocks)
    assert hasattr(model, "pos_embed") == hasattr(tl, "pos_embed")
    assert model.cfg.device == tl.cfg.device == "cpu"
    for name in ("n_params", "attn_only", "parallel_attn_mlp", "attention_dir", "default_prepend_bos"):
        assert getattr(model.cfg, name) == getattr(tl.cfg, name), name  # TransformerLens's config fields


def test_hook_dict_names_tl_hook_points(models):
    model, tl = models
    ours = model.hook_dict
    assert list(ours) == model.hook_names()
    assert all(isinstance(point, tm.HookPoint) and point.name == name for name, point in ours.items())
    assert set(ours) <= set(tl.hook_dict)
    missing = set(tl.hook_dict) - set(ours)
    assert missing == {f"blocks.{layer}.{name}" for layer in range(model.cfg.n_layers) for name in MODE_POINTS}


# ---- OV, QK, composition scores ---------------------------------------------------------------------

def test_ov_and_qk_circuits_match_tl(models):
    model, tl = models
    for circuit in ["OV", "QK"]:
        ours, ref = getattr(model, circuit), getattr(tl, circuit)
        assert ours.shape == tuple(ref.shape) and (ours.ldim, ours.mdim, ours.rdim) == (ref.ldim, ref.mdim, ref.rdim)
        assert act_err(ours.AB, numpy(ref.AB)) <= TOL
        assert act_err(ours.S, numpy(ref.S)) <= 1e-4
        assert act_err(ours.norm(), numpy(ref.norm())) <= 1e-4
        assert act_err(np.sort_complex(ours.eigenvalues.reshape(-1)),
                       np.sort_complex(numpy(ref.eigenvalues).reshape(-1))) <= 1e-3
        assert ours.eigenvalues.dtype == np.complex64
        assert act_err(ours.get_corner(2), numpy(ref.get_corner(2))) <= TOL
        assert act_err(ours[1, 0].AB, numpy(ref[1, 0].AB)) <= TOL
    # Main_Demo's full OV circuit: W_E @ OV @ W_U, and a head of it
    full = model.embed.W_E @ model.OV @ model.unembed.W_U
    ref = tl.embed.W_E @ tl.OV @ tl.unembed.W_U
    assert isinstance(full, FactoredMatrix) and full.shape == tuple(ref.shape)
    assert act_err(full[1, 0].AB, numpy(ref[1, 0].AB)) <= 1e-4


@pytest.mark.parametrize("mode", ["Q", "K", "V"])
def test_all_composition_scores_match_tl(models, mode):
    model, tl = models
    ours = model.all_composition_scores(mode)
    assert ours.shape == (model.cfg.n_layers, model.cfg.n_heads) * 2
    assert act_err(ours, numpy(tl.all_composition_scores(mode))) <= 1e-4
    assert model.all_head_labels() == tl.all_head_labels()


def test_composition_scores_without_broadcast_match_tl(models):
    model, tl = models
    ours = utils.composition_scores(model.OV[0], model.QK[1], broadcast_dims=False)
    ref = tl_utils.composition_scores(tl.OV[0], tl.QK[1], broadcast_dims=False)
    assert act_err(ours, numpy(ref)) <= 1e-4


# ---- FactoredMatrix on its own -------------------------------------------------------------------------

def pair_of(a, b):
    return FactoredMatrix(a, b), TLFactoredMatrix(torch.from_numpy(a), torch.from_numpy(b))


SHAPES = [((5, 2), (2, 5)), ((3, 6, 4), (4, 6)), ((2, 1, 4, 3), (3, 3, 5)), ((1, 1), (1, 1)), ((4, 7), (7, 4))]


@pytest.mark.parametrize("a_shape,b_shape", SHAPES)
def test_factored_matrix_matches_tl(a_shape, b_shape):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(s).astype(np.float32) for s in (a_shape, b_shape))
    ours, ref = pair_of(a, b)
    assert ours.shape == tuple(ref.shape) and ours.ndim == ref.ndim
    assert (ours.ldim, ours.mdim, ours.rdim, ours.has_leading_dims) == (ref.ldim, ref.mdim, ref.rdim, ref.has_leading_dims)
    assert repr(ours) == repr(ref).replace(f"torch.Size({list(ref.shape)})", str(tuple(ref.shape)))
    for name in ["AB", "S"]:
        assert act_err(getattr(ours, name), numpy(getattr(ref, name))) <= 1e-5, name
    for pa, pb in zip(ours.pair, ref.pair):
        np.testing.assert_array_equal(pa, numpy(pb))
    U, S, V = ours.svd()
    assert act_err(U * S[..., None, :] @ np.swapaxes(V, -1, -2), ours.AB) <= 1e-5  # V, not its transpose
    np.testing.assert_array_equal(ours.Vh, V)
    assert act_err(ours.norm(), numpy(ref.norm())) <= 1e-5
    assert act_err(ours.T.AB, numpy(ref.T.AB)) <= 1e-6
    assert act_err(ours.make_even().AB, numpy(ref.make_even().AB)) <= 1e-5
    # singular vectors are defined up to sign: compare what does not depend on it
    for name in ["collapse_l", "collapse_r"]:
        mine, theirs = getattr(ours, name)(), numpy(getattr(ref, name)())
        gram = (lambda x: np.swapaxes(x, -1, -2) @ x) if name == "collapse_l" else (lambda x: x @ np.swapaxes(x, -1, -2))
        assert act_err(gram(mine), gram(theirs)) <= 1e-4, name
    assert act_err((ours * 2.5).AB, numpy((ref * 2.5).AB)) <= 1e-6
    assert act_err((2.5 * ours).AB, numpy((2.5 * ref).AB)) <= 1e-6
    assert act_err(ours.unsqueeze(0).AB, numpy(ref.unsqueeze(0).AB)) <= 1e-6
    assert act_err(ours.get_corner(2), numpy(ref.get_corner(2))) <= 1e-6
    if ours.ldim == ours.rdim:
        assert act_err(ours.BA, numpy(ref.BA)) <= 1e-5
        assert act_err(np.sort_complex(ours.eigenvalues.reshape(-1)),
                       np.sort_complex(numpy(ref.eigenvalues).reshape(-1))) <= 1e-4


def test_factored_matrix_products_and_indexing_match_tl():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 6, 2)).astype(np.float32), rng.standard_normal((3, 2, 5)).astype(np.float32)
    ours, ref = pair_of(a, b)
    right = rng.standard_normal((5, 4)).astype(np.float32)
    wide = rng.standard_normal((5, 9)).astype(np.float32)  # rdim > mdim: the product stays factored on the left
    left = rng.standard_normal((7, 6)).astype(np.float32)
    vec_r, vec_l = rng.standard_normal(5).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    T = torch.from_numpy
    for mine, theirs in [(ours @ right, ref @ T(right)), (ours @ wide, ref @ T(wide)), (left @ ours, T(left) @ ref),
                         (ours @ ours.T, ref @ ref.T), (ours.T @ ours, ref.T @ ref)]:
        assert isinstance(mine, FactoredMatrix) and mine.shape == tuple(theirs.shape)
        assert act_err(mine.AB, numpy(theirs.AB)) <= 1e-5
    assert act_err(ours @ vec_r, numpy(ref @ T(vec_r))) <= 1e-5
    assert act_err(vec_l @ ours, numpy(T(vec_l) @ ref)) <= 1e-5
    for index in [0, -1, (1,), (slice(0, 2),), (0, 2), (0, -1), (1, slice(1, 4)), (2, 3, 1), (0, -1, -1),
                  (slice(None), slice(0, 3), slice(1, 3)), (None, 0)]:
        mine, theirs = ours[index], ref[index]
        assert mine.shape == tuple(theirs.shape), index
        assert act_err(mine.AB, numpy(theirs.AB)) <= 1e-6, index
    assert act_err(utils.get_corner(ours, 2).AB, numpy(tl_utils.get_corner(ref, 2).AB)) <= 1e-6


# ---- tokens and losses ----------------------------------------------------------------------------------

TEXT = "Mr Darcy walked in. Mr Darcy walked out again, and Elizabeth smiled."


def test_token_helpers_match_tl(demo):
    model, tl = demo
    for token in [" Darcy", " walked", ".", "Mr"]:
        assert model.to_single_token(token) == tl.to_single_token(token)
        assert model.to_single_str_token(model.to_single_token(token)) == tl.to_single_str_token(tl.to_single_token(token))
    tokens = model.to_tokens(TEXT)
    for token in [" Darcy", " walked", model.to_single_token(" Darcy"), np.int64(model.to_single_token("."))]:
        for mode in ["first", "last"]:
            expected = tl.get_token_position(token, TEXT, mode=mode)
            assert model.get_token_position(token, TEXT, mode=mode) == expected
            assert model.get_token_position(token, tokens, mode=mode) == expected  # [1, pos]
            assert model.get_token_position(token, tokens[0], mode=mode) == expected  # [pos]
            assert (model.get_token_position(token, TEXT, mode=mode, prepend_bos=False)
                    == tl.get_token_position(token, TEXT, mode=mode, prepend_bos=False))
    assert model.get_token_position(" Darcy", TEXT, padding_side="left") == tl.get_token_position(" Darcy", TEXT, padding_side="left")
    np.testing.assert_array_equal(model.to_tokens(TEXT, prepend_bos=None), tl.to_tokens(TEXT, prepend_bos=None).numpy())
    texts = [TEXT, "Hi", "Mr Bingley"]  # a list of texts: one list of strings each (was refused)
    assert model.to_str_tokens(texts) == tl.to_str_tokens(texts)
    assert model.to_str_tokens(texts, prepend_bos=False) == tl.to_str_tokens(texts, prepend_bos=False)


def test_tokens_to_residual_directions_match_tl(demo):
    model, tl = demo
    tokens = model.to_tokens(["Mr Darcy walked", "Mr Bingley ran"])
    for given in [" Darcy", 17, tokens[0, 1], tokens[0, 1:2], tokens[:1, 1:2], tokens[0], tokens]:
        as_tl = torch.as_tensor(given) if isinstance(given, np.ndarray | np.integer) else given
        ours, ref = model.tokens_to_residual_directions(given), numpy(tl.tokens_to_residual_directions(as_tl))
        assert ours.shape == ref.shape and act_err(ours, ref) <= TOL, given


@pytest.mark.parametrize("shape", [(1, 7), (3, 5), (2, 1)], ids=["one", "batch", "length-1"])
def test_loss_fn_matches_tl(demo, shape):
    model, tl = demo
    tokens = np.random.default_rng(0).integers(0, model.cfg.d_vocab, shape)
    logits = model(tokens)
    mask = np.ones(shape, dtype=np.int64)
    mask[0, :2] = 0  # padding on the left of the first row
    T = torch.as_tensor
    for per_token in [False, True]:
        for attention_mask in [None, mask]:
            ref = tl.loss_fn(T(logits), T(tokens), None if attention_mask is None else T(attention_mask),
                             per_token=per_token)
            ours = model.loss_fn(logits, tokens, attention_mask, per_token=per_token)
            if per_token:
                assert ours.shape == tuple(ref.shape) and act_err(ours, numpy(ref)) <= 1e-5
            else:
                assert isinstance(ours, float)
                np.testing.assert_allclose(ours, ref.item(), rtol=1e-5)
    # unbatched, as TransformerLens's function takes it too
    np.testing.assert_allclose(utils.lm_cross_entropy_loss(logits[0], tokens[0], per_token=True),
                               numpy(tl_utils.lm_cross_entropy_loss(T(logits[0]), T(tokens[0]), per_token=True)),
                               rtol=1e-5, atol=1e-6)


# ---- tinymech.utils ------------------------------------------------------------------------------------------

def printed(fn, *args, **kwargs) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fn(*args, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize("answer,options", [
    ("Darcy", {}),                                   # a space prepended
    (" walked out", {"top_k": 3}),                   # two answer tokens
    (["Darcy", "Bingley", " and"], {}),              # alternatives
    ("Darcy", {"print_details": False}),
    ("Darcy", {"prepend_bos": False, "prepend_space_to_answer": True}),
])
def test_test_prompt_prints_what_tl_prints(demo, answer, options):
    model, tl = demo
    prompt = "Mr Darcy walked in. Mr Darcy walked out again. Mr"
    ours = printed(utils.test_prompt, prompt, answer, model, **options)
    ref = printed(tl_utils.test_prompt, prompt, answer, tl, **options)
    # the same lines; a probability's last digit may differ where float32 rounds differently
    def lines(text):
        return [re.sub(r"Prob: *[0-9.]+%", "Prob: _", line) for line in text.splitlines()]

    assert lines(ours) == lines(ref) and ours.count("Prob:") == ref.count("Prob:")


def test_utils_helpers_match_tl():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(utils.get_corner(x, 2), tl_utils.get_corner(torch.from_numpy(x), 2).numpy())
    for value in [x, [1, 2], (1.5, 2.5), 3, 2.5, True, "a", torch.ones(2, 3), torch.ones(2, dtype=torch.bfloat16),
                  torch.nn.Parameter(torch.ones(2))]:
        ours, ref = utils.to_numpy(value), tl_utils.to_numpy(value)
        assert ours.dtype == ref.dtype and ours.shape == ref.shape
        np.testing.assert_array_equal(ours, ref)
    for name, layer, kind in [("pattern", 3, None), ("resid_post", 0, None), ("normalized", 1, "ln2"),
                              ("scale", None, None), ("k6", None, None)]:
        assert utils.get_act_name(name, layer, kind) == tl_utils.get_act_name(name, layer, kind)
    for shape in [(1, 3), (2, 3), (1,)]:
        np.testing.assert_array_equal(utils.remove_batch_dim(np.zeros(shape)),
                                      tl_utils.remove_batch_dim(torch.zeros(shape)).numpy())
