"""Running some of the blocks: the pieces of a split run against the whole run,
the early stop of runs that return no logits, and bad arguments. (Against
TransformerLens: tests/reference/test_block_span_tl.py.)"""
import numpy as np
import pytest

import tinymech as tm
from llama_factory import LLAMA_SHAPES
from numpy_checkpoints import write_llama
from numpy_models import random_tokens


@pytest.fixture(scope="module", params=["small", "odd"])
def model(request, saved_gpt2):
    return saved_gpt2(request.param)[0]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_span")
    write_llama(path, **LLAMA_SHAPES["gqa"])
    return tm.load(path)


@pytest.mark.parametrize("layer", [1, "last"])
def test_split_run_gives_the_whole_run(model, layer):
    """Blocks [0, l) then [l, n) give the bits one run gives, hooks included."""
    layer = model.cfg.n_layers - 1 if layer == "last" else layer
    tokens = random_tokens(model, 3, 11, seed=layer)
    resid = model(tokens, stop_at_layer=layer)
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.hook_resid_pre")
    np.testing.assert_array_equal(resid, cache[f"blocks.{layer}.hook_resid_pre"])
    np.testing.assert_array_equal(model(resid, start_at_layer=layer), model(tokens))
    # an intervention at the first block run applies, and losses take the tokens
    hooks = [(f"blocks.{layer}.attn.hook_z", tm.zero_ablate(heads=[0]))]
    whole = model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="both", loss_per_token=True)
    part = model.run_with_hooks(resid, fwd_hooks=hooks, return_type="both", loss_per_token=True,
                                start_at_layer=layer, tokens=tokens)
    np.testing.assert_array_equal(part[0], whole[0])
    np.testing.assert_array_equal(part[1], whole[1])


def test_split_run_on_a_rotary_model(llama):
    tokens = random_tokens(llama, 2, 10, seed=4)
    for layer in range(llama.cfg.n_layers + 1):
        resid = llama(tokens, stop_at_layer=layer)
        np.testing.assert_array_equal(llama(resid, start_at_layer=layer), llama(tokens))


def test_run_with_cache_over_some_blocks(model):
    tokens = random_tokens(model, 2, 6, seed=5)
    _, full = model.run_with_cache(tokens)
    resid, first = model.run_with_cache(tokens, stop_at_layer=1)
    np.testing.assert_array_equal(resid, full["blocks.0.hook_resid_post"])
    assert "blocks.0.hook_resid_post" in first and "blocks.1.hook_resid_pre" not in first
    logits, rest = model.run_with_cache(resid, start_at_layer=1)
    assert "hook_embed" not in rest and "blocks.0.hook_resid_post" not in rest
    for name in rest:
        np.testing.assert_array_equal(rest[name], full[name], err_msg=name)
    np.testing.assert_array_equal(logits, model(tokens))


@pytest.mark.parametrize("names", [["hook_embed"], ["blocks.0.attn.hook_pattern"], ["blocks.1.mlp.hook_post"],
                                   ["blocks.0.hook_resid_pre", "ln_final.hook_scale"]])
def test_runs_without_logits_capture_the_same(model, names):
    """return_type None stops after the last captured block: the captures are those of a full run."""
    tokens = random_tokens(model, 2, 8, seed=6)
    _, full = model.run_with_cache(tokens, names_filter=names)
    out, early = model.run_with_cache(tokens, names_filter=names, return_type=None)
    assert out is None and list(early) == list(full)
    for name in names:
        np.testing.assert_array_equal(early[name], full[name], err_msg=name)
    assert model(tokens, return_type=None) is None
    assert model.forward(tokens, logits="none") is None


def test_python_hooks_run_in_runs_without_logits(model):
    seen = []
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    model.run_with_hooks(random_tokens(model, 1, 4), return_type=None,
                         fwd_hooks=[(last, lambda x, hook: seen.append(hook.name))])
    assert seen == [last]


def test_bad_spans_are_refused(model):
    n, d = model.cfg.n_layers, model.cfg.d_model
    tokens = random_tokens(model, 1, 5)
    resid = np.zeros((1, 5, d), np.float32)
    with pytest.raises(tm.InvalidInputError, match="outside the model's"):
        model(tokens, stop_at_layer=n + 1)
    with pytest.raises(tm.InvalidInputError, match="outside the model's"):
        model(resid, start_at_layer=-n - 1)
    with pytest.raises(tm.InvalidInputError, match="comes before"):
        model(resid, start_at_layer=2, stop_at_layer=1)
    with pytest.raises(tm.InvalidInputError, match="must be an int"):
        model(tokens, stop_at_layer=1.0)
    with pytest.raises(tm.InvalidInputError, match=rf"\[batch, pos, {d}\]"):
        model(resid[0], start_at_layer=1)
    with pytest.raises(tm.InvalidInputError, match=rf"\[batch, pos, {d}\]"):
        model(np.zeros((1, 5, d + 1), np.float32), start_at_layer=1)
    with pytest.raises(tm.InvalidInputError, match="not dtype"):
        model(np.array([[["a"] * d]]), start_at_layer=1)
    with pytest.raises(tm.ContextLengthError):
        model(np.zeros((1, model.cfg.n_ctx + 1, d), np.float32), start_at_layer=1)
    with pytest.raises(tm.InvalidInputError, match="needs the tokens"):
        model(resid, start_at_layer=1, return_type="loss")
    with pytest.raises(tm.InvalidInputError, match="do not match"):
        model(resid, start_at_layer=1, return_type="loss", tokens=tokens[:, :4])
    with pytest.raises(ValueError, match="return_type"):
        model(tokens, return_type="logit")


def test_core_refuses_spans_it_cannot_run(model):
    """The binding's own checks keep memory safe whatever Python passes."""
    core, n, d = model._core, model.cfg.n_layers, model.cfg.d_model
    tokens = np.zeros((1, 4), np.int32)
    resid = np.zeros((1, 4, d), np.float32)
    with pytest.raises(ValueError, match="needs the residual"):
        core.forward(None, tokens, None, "all", 1)
    with pytest.raises(ValueError, match="not a range"):
        core.forward(None, tokens, None, "all", 0, n + 1)
    with pytest.raises(ValueError, match="not a range"):
        core.forward(None, None, None, "all", 2, 1, resid)
    with pytest.raises(ValueError, match="KV cache"):
        core.forward(core.new_cache(1), None, None, "all", 1, -1, resid)
    with pytest.raises(ValueError, match="KV cache"):
        core.forward(core.new_cache(1), tokens, None, "all", 0, 1)
    with pytest.raises(ValueError, match="d_model"):
        core.forward(None, None, None, "all", 1, -1, np.zeros((1, 4, d + 1), np.float32))
    with pytest.raises(ValueError, match="different"):
        core.forward(None, np.zeros((1, 3), np.int32), None, "all", 1, -1, resid)
    with pytest.raises(ValueError, match="tokens or a residual"):
        core.forward(None, None, None, "all")
