"""HookedTransformer's helpers on a Model, without torch: what they return and the
precise errors hostile arguments get. (Their values against TransformerLens:
tests/reference/test_model_helpers_tl.py.)"""
import numpy as np
import pytest

import tinymech as tm
from llama_factory import LLAMA_SHAPES
from numpy_checkpoints import write_llama
from tinymech import utils
from tinymech.factored_matrix import FactoredMatrix


@pytest.fixture(scope="module")
def demo():
    return tm.load()


# ---- the module tree ---------------------------------------------------------------------------------

def test_module_tree_reads_the_models_weights(saved_gpt2):
    model, _ = saved_gpt2("odd")
    block = model.blocks[-1]
    np.testing.assert_array_equal(block.attn.W_Q, model.W_Q[-1])
    np.testing.assert_array_equal(block.mlp.W_out, model.W_out[-1])
    np.testing.assert_array_equal(model.embed.W_E, model.W_E)
    np.testing.assert_array_equal(model.unembed.W_U, model.W_U)
    assert np.shares_memory(model.blocks[0].mlp.W_in, model._weights["layers"][0]["fc_w"])  # a view, not a copy
    assert model.blocks[0].ln1.w.shape == model.blocks[0].ln1.b.shape == (model.cfg.d_model,)
    assert len(model.blocks) == model.cfg.n_layers and model.cfg.device == "cpu"
    for missing in [lambda: model.blocks[0].mlp.W_gate, lambda: model.blocks[0].attn._W_K]:
        with pytest.raises(AttributeError):
            missing()
    with pytest.raises(IndexError):
        model.blocks[model.cfg.n_layers]
    assert "W_Q" in repr(block.attn)


def test_assigning_a_weight_is_refused_not_ignored(saved_gpt2, tmp_path):
    # regression: model.W_Q = x read back as x while every run kept the loaded W_Q, and
    # model.blocks[0].attn.W_Q = x landed on a throwaway module
    model, _ = saved_gpt2("odd")
    toks = np.array([[1, 2, 3]])
    before, W_Q = model(toks), np.asarray(model.W_Q)
    grouped = tm.load(write_llama(tmp_path, **LLAMA_SHAPES["gqa"]))
    for target, name in ((model, "W_Q"), (model, "b_in"), (model.blocks[0].attn, "W_Q"),
                         (model.blocks[1].mlp, "W_out"), (grouped.blocks[0].attn, "_W_K")):
        with pytest.raises(tm.ReadOnlyError, match=f"{name} cannot be assigned.*hooks") as raised:
            setattr(target, name, 0)
        assert isinstance(raised.value, AttributeError)
    with pytest.raises(tm.ReadOnlyError, match="load the model again"):
        model.cfg = model.cfg  # the core would go on running the config it was built from
    # regression: properties without a setter raised Python's bare "has no setter"
    for target, name in ((model, "W_U"), (model, "W_E"), (model, "W_pos"), (model, "b_U"), (model, "ln_final_w"),
                         (model, "W_gate"), (model, "blocks"), (model, "OV"), (model.embed, "W_E"),
                         (model.unembed, "b_U"), (model.blocks[0].ln1, "w"), (model.blocks[0].attn, "OV")):
        with pytest.raises(tm.ReadOnlyError, match=f"{name} cannot be assigned.*hooks"):
            setattr(target, name, 0)
    for name, hint in (("acts_to_saes", "add_sae"), ("context_hooks", "model.hooks"), ("hook_dict", "add_hook")):
        with pytest.raises(tm.ReadOnlyError, match=f"model.{name} cannot be assigned.*{hint}"):
            setattr(model, name, {})
    attn = model.blocks[0].attn
    attn.note = model.note = "mine"  # other attributes are the caller's
    del model.note, attn.note
    # regression: deleting one raised a bare AttributeError ("__delete__", "has no deleter")
    for target, name in ((model, "W_U"), (model, "W_Q"), (model.blocks[0].attn, "W_Q"), (model.blocks[0].ln1, "w"),
                         (model, "cfg")):
        with pytest.raises(tm.ReadOnlyError, match=f"{name} cannot be"):
            delattr(target, name)
    np.testing.assert_array_equal(model.W_Q, W_Q)
    np.testing.assert_array_equal(model(toks), before)


def test_weights_an_edit_would_not_reach_are_read_only(saved_gpt2, tmp_path):
    # regression: with folded norms the float32 arrays are writable copies, but a bf16 model
    # runs its own bfloat16 copies, so an edit read back and never ran
    _, path = saved_gpt2("odd")
    toks = np.array([[1, 2, 3]])
    bf16 = tm.load(path, fold_ln=True, dtype="bf16")
    before = bf16(toks)
    for edit in (lambda: bf16.blocks[0].attn.W_Q.__setitem__(..., 0), lambda: bf16.W_U.__setitem__(..., 0)):
        with pytest.raises(ValueError, match="read-only"):
            edit()
    np.testing.assert_array_equal(bf16(toks), before)
    gqa = tm.load(write_llama(tmp_path, **LLAMA_SHAPES["gqa"]), fold_ln=True)
    for made_up in (gqa.blocks[0].attn.W_K, gqa.blocks[0].attn.b_Q, gqa.b_U):  # repeated heads, absent biases
        with pytest.raises(ValueError, match="read-only"):
            made_up[...] = 1
    f32 = tm.load(path, fold_ln=True)  # float32: the core computes with these very arrays
    before = f32(toks)
    f32.blocks[0].attn.W_Q[...] = 0
    assert not np.allclose(f32(toks), before)


def test_folded_norms_have_no_parameters(saved_gpt2):
    _, path = saved_gpt2("odd")
    model = tm.load(path, fold_ln=True)
    assert not hasattr(model.blocks[0].ln1, "w") and not hasattr(model.ln_final, "b")
    assert not any(".ln" in name for name, _ in model.named_parameters())


def test_grouped_query_attention_keeps_each_key_head_once(tmp_path):
    model = tm.load(write_llama(tmp_path, **LLAMA_SHAPES["gqa"]))
    attn = model.blocks[1].attn
    assert attn.W_K.shape == (4, 80, 20) and attn._W_K.shape == (2, 80, 20)
    np.testing.assert_array_equal(attn._W_V, attn.W_V[::2])
    names = [name for name, _ in model.named_parameters()]
    assert "blocks.0.attn._W_K" in names and "blocks.0.mlp.W_gate" in names and "blocks.0.ln1.b" not in names
    assert not any(name.startswith("pos_embed") for name in names)
    with pytest.raises(AttributeError, match="rotary"):
        model.pos_embed


def test_state_dict_and_hook_dict(saved_gpt2):
    model, _ = saved_gpt2("tiny")
    state = model.state_dict()
    assert list(state)[:2] == ["embed.W_E", "pos_embed.W_pos"] and list(state)[-2:] == ["unembed.W_U", "unembed.b_U"]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert len(list(model.parameters())) == len(state)
    assert list(model.hook_dict) == model.hook_names()
    assert model.hook_dict["blocks.1.attn.hook_z"].layer() == 1


# ---- FactoredMatrix ------------------------------------------------------------------------------------

def test_factored_matrix_refuses_what_does_not_fit():
    a, b = np.ones((3, 2), np.float32), np.ones((2, 4), np.float32)
    fm = FactoredMatrix(a, b)
    bad = [
        lambda: FactoredMatrix(a, a),                       # inner dimensions differ
        lambda: FactoredMatrix(np.ones(3), b),              # not a matrix
        lambda: FactoredMatrix(np.ones((2, 3, 2)), np.ones((3, 2, 4))),  # leading axes that do not broadcast
        lambda: FactoredMatrix(np.array([["a"]]), np.array([["b"]])),
        lambda: FactoredMatrix([[1, 2], [3]], b),           # ragged
        lambda: fm @ np.ones((3, 3)),
        lambda: fm @ np.ones(3),
        lambda: fm @ np.float32(2.0),
        lambda: np.ones((2, 2)) @ fm,
        lambda: np.ones((2, 5, 3)) @ FactoredMatrix(np.ones((3, 3, 2)), np.ones((2, 4))),  # leading axes 2 vs 3
        lambda: fm * np.ones(2),
        lambda: fm * "x",
        lambda: fm.BA,                                      # not square
        lambda: fm[0, 0, 0],
        lambda: utils.composition_scores(fm, a),
        lambda: utils.composition_scores(fm, fm),           # left.rdim != right.ldim
    ]
    for access in bad:
        with pytest.raises(tm.InvalidInputError):
            access()


def test_factored_matrix_numbers():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 6, 3)), rng.standard_normal((2, 3, 6))
    fm = FactoredMatrix(a, b)
    np.testing.assert_allclose(fm.norm(), np.linalg.norm(a @ b, axis=(-2, -1)))
    np.testing.assert_allclose(fm.S, np.linalg.svd(a @ b, compute_uv=False)[..., :3], atol=1e-10)
    np.testing.assert_allclose(np.sort_complex(fm.eigenvalues[0]),
                               np.sort_complex(np.linalg.eigvals(b[0] @ a[0])), atol=1e-10)
    np.testing.assert_allclose((fm @ fm).AB, a @ b @ a @ b, atol=1e-10)
    assert (np.ones((4, 6)) @ fm).shape == (2, 4, 6)  # numpy defers to the FactoredMatrix
    np.testing.assert_array_equal(utils.get_corner(fm, 2).AB, (a @ b)[:2, :2, :2])


def test_composition_scores_of_a_model(saved_gpt2):
    model, _ = saved_gpt2("odd")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    scores = model.all_composition_scores("K")
    assert scores.shape == (L, H, L, H) and np.all(scores[1, :, :2] == 0) and np.all(scores[0, :, 1:] > 0)
    with pytest.raises(tm.InvalidInputError, match="mode"):
        model.all_composition_scores("O")
    assert model.OV.shape == (L, H, model.cfg.d_model, model.cfg.d_model) and model.QK.mdim == model.cfg.d_head


# ---- tokens and losses ------------------------------------------------------------------------------------

def test_token_helpers(demo):
    darcy = demo.to_single_token(" Darcy")
    assert isinstance(darcy, int)
    assert demo.get_token_position(" Darcy", "Mr Darcy and Mr Darcy") == 2
    assert demo.get_token_position(darcy, "Mr Darcy and Mr Darcy", mode="last", prepend_bos=None) == 5
    assert demo.get_token_position(np.array([darcy]), "Mr Darcy", prepend_bos=False) == 1
    np.testing.assert_array_equal(demo.tokens_to_residual_directions(darcy), demo.W_U[:, darcy])
    assert demo.tokens_to_residual_directions([[darcy, 3]]).shape == (1, 2, demo.cfg.d_model)


def test_prepend_bos_none_is_the_models_default(demo):
    """As TransformerLens's USE_DEFAULT_VALUE: None was read as False, so runs lost their BOS."""
    text = "Mr Darcy walked"
    with_bos = demo.to_tokens(text)
    np.testing.assert_array_equal(demo.to_tokens(text, prepend_bos=None), with_bos)
    assert demo.to_str_tokens(text, prepend_bos=None)[0] == demo.to_str_tokens(text)[0] == "<|endoftext|>"
    np.testing.assert_array_equal(demo(text, prepend_bos=None), demo(with_bos))
    np.testing.assert_array_equal(demo.run_with_cache(text, prepend_bos=None)[0], demo(with_bos))
    cache = demo.new_cache(1)
    demo.forward(text, cache=cache, prepend_bos=None)
    demo.forward(" in", cache=cache, prepend_bos=None)  # a continuation gets no BOS
    assert cache.n_past == with_bos.shape[1] + 1


def test_token_helpers_refuse_hostile_arguments(demo):
    errors = [
        (lambda: demo.to_single_token(" Darcy walked"), tm.InvalidTokensError, "2 tokens"),
        (lambda: demo.to_single_token("Darcy"), tm.InvalidTokensError, "leading space"),
        (lambda: demo.to_single_token(""), tm.InvalidTokensError, "0 tokens"),
        (lambda: demo.to_single_token(5), tm.InvalidTokensError, "takes a string"),
        (lambda: demo.to_single_str_token(demo.cfg.d_vocab), tm.InvalidTokensError, "outside"),
        (lambda: demo.to_single_str_token("a"), tm.InvalidTokensError, "takes a token id"),
        (lambda: demo.get_token_position(" Elizabeth", "Mr Darcy"), tm.InvalidInputError, "does not occur"),
        (lambda: demo.get_token_position(" Darcy", "Mr Darcy", mode="middle"), tm.InvalidInputError, "mode"),
        (lambda: demo.get_token_position(" Darcy", "Mr Darcy", padding_side="up"), tm.InvalidInputError, "padding_side"),
        (lambda: demo.get_token_position(" Darcy", np.zeros((2, 3), int)), tm.InvalidTokensError, "one sequence"),
        (lambda: demo.get_token_position(" Darcy", np.zeros(3)), tm.InvalidTokensError, "dtype"),
        (lambda: demo.get_token_position(2.5, "Mr Darcy"), tm.InvalidTokensError, "a token"),
        (lambda: demo.get_token_position(True, "Mr Darcy"), tm.InvalidTokensError, "a token"),
        (lambda: demo.get_token_position(demo.cfg.d_vocab, "Mr Darcy"), tm.InvalidTokensError, "outside"),
        (lambda: demo.tokens_to_residual_directions(-1), tm.InvalidTokensError, "outside"),
        (lambda: demo.tokens_to_residual_directions([1, demo.cfg.d_vocab]), tm.InvalidTokensError, "outside"),
        (lambda: demo.tokens_to_residual_directions([]), tm.InvalidTokensError, "token"),
        (lambda: demo.tokens_to_residual_directions([1.0, 2.0]), tm.InvalidTokensError, "token"),
    ]
    for call, error, message in errors:
        with pytest.raises(error, match=message):
            call()


def test_loss_fn(demo):
    tokens = demo.to_tokens(["Mr Darcy walked in", "Mr Bingley sat down"])
    logits, loss = demo(tokens, return_type="both")
    assert demo.loss_fn(logits, tokens) == pytest.approx(loss, rel=1e-6)
    per_token = demo.loss_fn(logits, tokens, per_token=True)
    assert per_token.shape == (2, tokens.shape[1] - 1)
    mask = np.ones_like(tokens)
    mask[1] = 0  # the second row is all padding: only the first counts
    assert demo.loss_fn(logits, tokens, mask) == pytest.approx(float(per_token[0].mean()), rel=1e-6)
    assert np.isnan(demo.loss_fn(logits[:, :1], tokens[:, :1]))  # one position: nothing to predict
    bad = [
        (lambda: demo.loss_fn(logits, tokens[:, 1:]), tm.InvalidTokensError),
        (lambda: demo.loss_fn(logits, tokens.astype(float)), tm.InvalidTokensError),
        (lambda: demo.loss_fn(logits, tokens + demo.cfg.d_vocab), tm.InvalidTokensError),
        (lambda: demo.loss_fn(logits[0, 0], tokens), tm.InvalidInputError),
        (lambda: demo.loss_fn(tokens, tokens), tm.InvalidInputError),
        (lambda: demo.loss_fn(logits, tokens, mask[:, 1:]), tm.InvalidInputError),
    ]
    for call, error in bad:
        with pytest.raises(error):
            call()


# ---- tinymech.utils ------------------------------------------------------------------------------------------

def test_utils(demo, capsys):
    utils.test_prompt("Mr Darcy walked in. Mr", "Darcy", demo, top_k=2)
    out = capsys.readouterr().out
    assert "Tokenized answer: [' Darcy']" in out and "Top 1th token." in out and "Ranks of the answer tokens:" in out
    for bad in [[], [3], 4, None]:
        with pytest.raises(tm.InvalidInputError, match="answer"):
            utils.test_prompt("Mr", bad, demo)
    for options in [dict(prompt=3), dict(top_k=-1), dict(top_k=2.5)]:
        with pytest.raises(tm.InvalidInputError):
            utils.test_prompt(**dict(dict(prompt="Mr", answer="Darcy", model=demo), **options))
    assert utils.get_act_name("pattern", 1) == "blocks.1.attn.hook_pattern"
    assert utils.to_numpy([1, 2]).tolist() == [1, 2] and utils.to_numpy(2.5).shape == ()
    with pytest.raises(tm.InvalidInputError):
        utils.to_numpy(object())
    assert utils.remove_batch_dim(np.zeros((1, 3))).shape == (3,)
