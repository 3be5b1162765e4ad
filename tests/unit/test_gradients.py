"""The backward without torch: gradients against finite differences of tinymech's own forward
(float64 metrics), the built-in metrics' gradients, determinism across thread counts, backward
hooks, and the errors of hostile input."""
from __future__ import annotations

import numpy as np
import pytest

import tinymech as tm
from tinymech.errors import HookError, InvalidInputError
from tinymech.gradients import metric_gradient
from llama_factory import LLAMA_SHAPES
from numpy_checkpoints import write_llama


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tm.load(write_llama(tmp_path_factory.mktemp("grad_llama"), **LLAMA_SHAPES["mqa_llama3"]))


def log_prob(logits: np.ndarray, ids: np.ndarray) -> float:
    x = logits[:, -1].astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return float((x[np.arange(len(ids)), ids] - np.log(np.exp(x).sum(-1))).mean())


def assert_same_bits_on_1_2_3_threads(run) -> None:
    """run() -> (logits, cache) gives the same bits on 1, 2 and 3 threads: logits and every entry."""
    runs = []
    before = tm.get_num_threads()
    try:
        for n in (1, 2, 3):
            tm.set_num_threads(n)
            runs.append(run())
    finally:
        tm.set_num_threads(before)
    for logits, cache in runs[1:]:
        assert np.array_equal(logits, runs[0][0])
        for name in runs[0][1].keys():
            assert np.array_equal(runs[0][1][name], cache[name]), name


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_residual_gradients_match_finite_differences(saved_gpt2, llama, family):
    """d metric / d resid_pre of each block along a random direction, against central
    differences of the forward from that block (start_at_layer)."""
    model = saved_gpt2("odd")[0] if family == "gpt2" else llama
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.cfg.d_vocab, (2, 7))
    ids = np.array([3, 5])
    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=("log_prob", ids),
                                    names_filter=lambda n: n.endswith("hook_resid_pre"))
    for layer in range(model.cfg.n_layers):
        resid = cache[f"blocks.{layer}.hook_resid_pre"].astype(np.float64)
        u = rng.normal(size=resid.shape)
        eps = 2e-3 * np.abs(resid).max() / np.abs(u).max()
        f = [log_prob(model(resid + s * eps * u, start_at_layer=layer), ids) for s in (1, -1)]
        numeric = (f[0] - f[1]) / (2 * eps)
        grad = cache[f"blocks.{layer}.hook_resid_pre_grad"].astype(np.float64)
        analytic = float((grad * u).sum())
        # float32 rounding in the differenced forwards is relative to a typical projection of the
        # gradient, not to this one: a direction nearly orthogonal to it makes the latter tiny
        typical = np.linalg.norm(grad) * np.linalg.norm(u) / np.sqrt(u.size)
        assert analytic == pytest.approx(numeric, rel=2e-3, abs=1e-3 * typical), layer


@pytest.mark.parametrize("metric", ["loss", ("logit_diff", [1, 2], 4), ("log_prob", 7)])
def test_metric_gradients_match_finite_differences(metric):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 11))
    tokens = rng.integers(0, 11, (2, 3))
    _, G = metric_gradient(metric, logits, tokens)
    for _ in range(5):
        i = tuple(rng.integers(0, n) for n in logits.shape)
        up, down = logits.copy(), logits.copy()
        up[i] += 1e-6
        down[i] -= 1e-6
        numeric = (metric_gradient(metric, up, tokens)[0] - metric_gradient(metric, down, tokens)[0]) / 2e-6
        assert G[i] == pytest.approx(numeric, abs=1e-7)


@pytest.mark.parametrize("live_rows", [(), (0,), (1, 4), (0, 2, 3, 5), tuple(range(6))])
def test_unembedding_gradient_with_zero_rows(saved_gpt2, live_rows):
    """The backward skips the unembedding's matmul for rows of grad_logits that are all zero
    (a last-position metric's): rows anywhere, none, all; batch 2."""
    model = saved_gpt2("odd")[0]
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, model.cfg.d_vocab, (2, 3))
    G = np.zeros((6, model.cfg.d_vocab), np.float32)
    G[list(live_rows)] = rng.normal(size=(len(live_rows), model.cfg.d_vocab))
    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, grad_logits=G.reshape(2, 3, -1),
                                    names_filter=lambda n: n in ("unembed.hook_in", "ln_final.hook_normalized"))
    expected = (G.astype(np.float64) @ model.W_U.T.astype(np.float64)).reshape(2, 3, -1)
    got = cache["unembed.hook_in_grad"]
    np.testing.assert_allclose(got, expected, atol=1e-5 * max(1.0, np.abs(expected).max()), rtol=0)
    dead = [r for r in range(6) if r not in live_rows]
    assert not cache["ln_final.hook_normalized_grad"].reshape(6, -1)[dead].any()


def test_loss_metric_is_the_models_loss(saved_gpt2):
    model = saved_gpt2("odd")[0]
    tokens = np.random.default_rng(2).integers(0, model.cfg.d_vocab, (2, 6))
    value, _ = metric_gradient("loss", model(tokens, prepend_bos=False), tokens)
    assert value == pytest.approx(model(tokens, prepend_bos=False, return_type="loss"), rel=1e-5)


@pytest.mark.parametrize("freeze, names", [((), None), ("pattern", None), (("pattern", "scales"), None),
                                           ((), "hook_embed")])  # None: the pattern hooked (its phased path)
@pytest.mark.parametrize("shape", [(3, 9), (1, 2)])  # (1, 2): matmuls of a few rows, which the forward splits over K
def test_same_gradients_for_1_2_3_threads(llama, freeze, names, shape):
    tokens = np.random.default_rng(3).integers(0, llama.cfg.d_vocab, shape)
    assert_same_bits_on_1_2_3_threads(lambda: llama.run_with_cache(
        tokens, prepend_bos=False, incl_bwd=True, metric=("log_prob", 4), freeze=freeze, names_filter=names))


def test_names_filter_and_pos_slice_apply_to_gradients(saved_gpt2):
    model = saved_gpt2("odd")[0]
    tokens = np.random.default_rng(4).integers(0, model.cfg.d_vocab, (1, 5))
    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=("log_prob", 1),
                                    names_filter=["blocks.1.attn.hook_pattern"], pos_slice=-1,
                                    remove_batch_dim=True)
    assert list(cache.keys()) == ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_pattern_grad"]
    assert cache["blocks.1.attn.hook_pattern_grad"].shape == (model.cfg.n_heads, 1, 5)


def test_backward_hooks_read_and_rewrite(saved_gpt2):
    model = saved_gpt2("odd")[0]
    tokens = np.random.default_rng(5).integers(0, model.cfg.d_vocab, (2, 5))
    seen = {}

    def zero(grad, hook):
        seen[hook.name] = grad.copy()
        return np.zeros_like(grad)

    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=("log_prob", 1),
                                    names_filter="hook_embed")
    model.add_hook("blocks.0.hook_resid_pre", zero, dir="bwd")
    try:
        _, zeroed = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=("log_prob", 1),
                                         names_filter="hook_embed")
        model.reset_hooks(direction="fwd")  # leaves the backward hook
        assert not model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=("log_prob", 1),
                                        names_filter="hook_embed")[1]["hook_embed_grad"].any()
    finally:
        model.reset_hooks(direction="bwd")
    assert np.array_equal(seen["blocks.0.hook_resid_pre"], cache["hook_embed_grad"])
    assert not zeroed["hook_embed_grad"].any()
    # interventions apply to gradients too, and run_with_hooks returns the run's output
    logits = model.run_with_hooks(tokens, prepend_bos=False, grad_logits=np.ones((2, 5, model.cfg.d_vocab)),
                                  bwd_hooks=[("hook_embed", tm.zero_ablate())])
    assert logits.shape == (2, 5, model.cfg.d_vocab)


def test_hooks_context_takes_backward_hooks(saved_gpt2):
    model = saved_gpt2("odd")[0]
    calls = []
    with model.hooks(bwd_hooks=[("blocks.0.hook_resid_mid", lambda g, hook: calls.append(hook.name))]):
        model.run_with_cache([[1, 2, 3]], prepend_bos=False, incl_bwd=True, metric=("log_prob", 1),
                             names_filter="hook_embed")
    model.run_with_cache([[1, 2, 3]], prepend_bos=False, incl_bwd=True, metric=("log_prob", 1))
    assert calls == ["blocks.0.hook_resid_mid"]
    with pytest.raises(HookError, match="unknown hook point"):
        with model.hooks(bwd_hooks=[("blocks.0.hook_nope", lambda g, hook: None)]):
            pass


def test_a_callable_metric(saved_gpt2):
    model = saved_gpt2("odd")[0]
    tokens = np.random.default_rng(6).integers(0, model.cfg.d_vocab, (2, 4))
    G = np.random.default_rng(7).normal(size=(2, 4, model.cfg.d_vocab)).astype(np.float32)
    _, a = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, grad_logits=G, names_filter="hook_embed")
    _, b = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, names_filter="hook_embed",
                                metric=lambda logits: (float((logits * G).sum()), G))
    assert np.array_equal(a["hook_embed_grad"], b["hook_embed_grad"])


def test_a_backward_stops_at_the_lowest_block_asked_for(saved_gpt2):
    model = saved_gpt2("odd")[0]
    tokens = np.random.default_rng(8).integers(0, model.cfg.d_vocab, (1, 4))
    calls = []
    _, cache = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=("log_prob", 2),
                                    names_filter="blocks.2.hook_resid_pre")
    assert set(cache.keys()) == {"blocks.2.hook_resid_pre", "blocks.2.hook_resid_pre_grad"}
    model.run_with_hooks(tokens, prepend_bos=False, metric=("log_prob", 2),
                         bwd_hooks=[("blocks.1.hook_mlp_out", lambda g, hook: calls.append(hook.name))])
    assert calls == ["blocks.1.hook_mlp_out"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(grad_logits=np.zeros((1, 4, 3))), "logits' shape"),
    (dict(grad_logits=np.full((1, 4, 301), np.nan)), "NaN"),
    (dict(grad_logits=np.zeros((1, 4, 301), dtype=bool)), "floats"),
    (dict(metric="accuracy"), "unknown metric"),
    (dict(metric=("logit_diff", 1)), "takes 2"),
    (dict(metric=("log_prob", 301)), "vocabulary"),
    (dict(metric=("log_prob", [1, 2, 3])), "one per sequence"),
    (dict(metric=("log_prob", 1.5)), "token ids"),
    (dict(metric="loss", grad_logits=np.zeros((1, 4, 301))), "exactly one"),
    (dict(), "needs a metric"),
    (dict(metric=("log_prob", 1), freeze="weights"), "freeze"),
    (dict(metric=("log_prob", 1), stop_at_layer=1), "stop_at_layer"),
    (dict(metric=lambda logits: 3.0), "returns \\(value, grad_logits\\)"),
    (dict(metric=lambda logits: 1 / 0), "raised ZeroDivisionError"),
    # a value that is no number was accepted (saliency checked it; run_with_cache did not)
    (dict(metric=lambda logits: ("x", np.zeros_like(logits))), "metric function's value must be one number"),
    (dict(metric=lambda logits: ([1.0, 2.0], np.zeros_like(logits))), "metric function's value must be one number"),
    (dict(metric=lambda logits: (True, np.zeros_like(logits))), "metric function's value must be one number"),
    (dict(metric=("log_prob", 1), freeze=3), "freeze"),
])
def test_hostile_input_gets_precise_errors(saved_gpt2, kwargs, match):
    model = saved_gpt2("odd")[0]
    with pytest.raises(InvalidInputError, match=match):
        model.run_with_cache(np.arange(4)[None], prepend_bos=False, incl_bwd=True, **kwargs)


def test_loss_of_one_position_is_refused(saved_gpt2):
    with pytest.raises(InvalidInputError, match="2 positions"):
        saved_gpt2("odd")[0].run_with_cache([[1]], prepend_bos=False, incl_bwd=True, metric="loss")


def test_hook_errors(saved_gpt2):
    model = saved_gpt2("odd")[0]
    with pytest.raises(HookError, match="dir must be"):
        model.add_hook("hook_embed", lambda g, hook: None, dir="sideways")
    with pytest.raises(HookError, match="unknown hook point"):
        model.add_hook("blocks.0.hook_nope", lambda g, hook: None, dir="bwd")
    with pytest.raises(HookError, match="returned shape"):
        model.run_with_hooks([[1, 2]], prepend_bos=False, metric=("log_prob", 1),
                             bwd_hooks=[("hook_embed", lambda g, hook: g[:, :1])])
    with pytest.raises(HookError, match="raised ZeroDivisionError"):
        model.run_with_hooks([[1, 2]], prepend_bos=False, metric=("log_prob", 1),
                             bwd_hooks=[("hook_embed", lambda g, hook: 1 / 0)])


def test_forward_edits_of_a_norms_scale_are_refused(saved_gpt2):
    model = saved_gpt2("odd")[0]
    with pytest.raises(HookError, match="blocks.1.ln2.hook_scale is not supported yet"):
        model.run_with_cache([[1, 2]], prepend_bos=False, incl_bwd=True, metric=("log_prob", 1),
                             hooks=[("blocks.1.ln2.hook_scale", tm.scale(2.0))])
    # reading it is fine, and so is an edit below the lowest block a backward reaches
    model.run_with_cache([[1, 2]], prepend_bos=False, incl_bwd=True, metric=("log_prob", 1),
                         names_filter=["blocks.1.ln2.hook_scale", "blocks.2.hook_resid_pre"],
                         hooks=[("blocks.0.ln1.hook_normalized", tm.scale(2.0))])


def test_core_refuses_a_tape_with_a_kv_cache(saved_gpt2, tmp_path):
    model, path = saved_gpt2("odd")
    tokens = np.array([[1, 2]], dtype=np.int32)
    with pytest.raises(ValueError, match="KV cache"):
        model._core.forward(model.new_cache(1)._core, tokens, None, "all", tape=tm._core.Tape(0))
    tape = tm._core.Tape(0)
    with pytest.raises(ValueError, match="not recorded"):
        model._core.backward(tape, np.zeros((1, 2, model.cfg.d_vocab), np.float32))
    # bf16 weights are differentiated (tests/slow/test_bf16_models.py): a backward runs
    tm.load(path, dtype="bf16").run_with_cache(tokens, incl_bwd=True, metric=("log_prob", 1))
    model._core.forward(None, tokens, None, "all", tape=tape)
    with pytest.raises(ValueError, match="grad_logits must be"):
        model._core.backward(tape, np.zeros((1, 3, model.cfg.d_vocab), np.float32))


def test_a_backward_refuses_the_per_head_modes(saved_gpt2):
    """Merged beside the split-input modes: the backward does not cover them yet and says so
    (it would otherwise differentiate the shared ln1 path). Padded batches are covered
    (tests/unit/test_padding.py): texts of different lengths pad as a forward's do."""
    model = saved_gpt2("odd")[0]
    grad = dict(incl_bwd=True, metric=("log_prob", 1))
    demo = tm.load()  # with a tokenizer
    texts = ["Mr Darcy", "Mr Darcy walked in"]
    _, cache = demo.run_with_cache(texts, names_filter="hook_embed", **grad)
    assert cache["hook_embed_grad"].shape[:2] == demo.to_tokens(texts).shape
    model.set_use_split_qkv_input(True)
    try:
        with pytest.raises(tm.TinymechError, match="per-head attention inputs"):
            model.run_with_cache([[1, 2]], prepend_bos=False, **grad)
    finally:
        model.set_use_split_qkv_input(False)
    model.set_use_hook_mlp_in(True)
    try:
        with pytest.raises(InvalidInputError, match="set_use_hook_mlp_in"):
            model.run_with_cache([[1, 2]], prepend_bos=False, names_filter=["blocks.0.hook_mlp_in"], **grad)
        with pytest.raises(InvalidInputError, match="set_use_hook_mlp_in"):
            model.run_with_hooks([[1, 2]], prepend_bos=False, bwd_hooks=[("hook_embed", lambda g, hook: g)],
                                 metric=("log_prob", 1))
    finally:
        model.set_use_hook_mlp_in(False)


def test_metric_tokens_as_strings():
    """("logit_diff", " to", " and") reads as analysis's answers do: strings of exactly one token."""
    demo = tm.load()
    prompt = "Mr Darcy bowed to Elizabeth. Mr Darcy bowed"
    to, and_ = demo.to_single_token(" to"), demo.to_single_token(" and")
    for metric, same in [(("logit_diff", " to", " and"), ("logit_diff", to, and_)),
                         (("log_prob", [" to"]), ("log_prob", [to]))]:
        _, by_text = demo.run_with_cache(prompt, incl_bwd=True, metric=metric, names_filter="hook_embed")
        _, by_id = demo.run_with_cache(prompt, incl_bwd=True, metric=same, names_filter="hook_embed")
        np.testing.assert_array_equal(by_text["hook_embed_grad"], by_id["hook_embed_grad"])
    with pytest.raises(tm.InvalidTokensError, match="2 tokens"):
        demo.run_with_cache(prompt, incl_bwd=True, metric=("logit_diff", " Elizabeth Darcy", " and"))


@pytest.mark.parametrize("shape", [(1, 1), (2, 5)])  # few rows: the forward splits those matmuls over K
def test_same_gradients_for_1_2_3_threads_through_wide_matmuls(saved_gpt2, shape):
    """The tape's forward too: a d_model 128 GPT-2 (K of 128 and 512), prompts of up to 16 rows."""
    model = saved_gpt2(dict(n_layer=2, n_embd=128, n_head=4, n_positions=16, vocab_size=211))[0]
    tokens = np.random.default_rng(6).integers(0, model.cfg.d_vocab, shape)
    assert_same_bits_on_1_2_3_threads(
        lambda: model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=("log_prob", 4)))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_backward_from_a_blocks_residual(saved_gpt2, llama, family):
    """start_at_layer=L with the residual there: the gradients of blocks >= L equal the whole run's
    (the same forward from L on); a loss needs tokens=; stop_at_layer has no logits to start from."""
    model = saved_gpt2("odd")[0] if family == "gpt2" else llama
    tokens = np.random.default_rng(7).integers(0, model.cfg.d_vocab, (2, 6))
    layer = 1
    names = [n for n in model.hook_names() if n.startswith(tuple(f"blocks.{l}." for l in range(layer, 9)))
             or n.startswith(("ln_final", "unembed"))]
    for metric, kwargs in ((("log_prob", [3, 4]), {}), ("loss", {"tokens": tokens})):
        _, whole = model.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=metric)
        resid = whole[f"blocks.{layer}.hook_resid_pre"]
        logits, part = model.run_with_cache(resid, start_at_layer=layer, incl_bwd=True, metric=metric,
                                            names_filter=names, **kwargs)
        np.testing.assert_allclose(logits, model(tokens, prepend_bos=False), rtol=0, atol=1e-5)
        grads = [k for k in part.keys() if k.endswith("_grad") and k in whole.keys()]  # hook_result: named only
        assert len(grads) > 20 and all(k[:-5] in names for k in grads)
        for key in grads:
            np.testing.assert_allclose(part[key], whole[key], rtol=0, atol=1e-6 * max(1.0, np.abs(whole[key]).max()),
                                       err_msg=key)
    with pytest.raises(InvalidInputError, match="needs the tokens"):
        model.run_with_cache(resid, start_at_layer=layer, incl_bwd=True, return_type="loss")
    with pytest.raises(InvalidInputError, match="stop_at_layer"):
        model.run_with_cache(tokens, stop_at_layer=1, incl_bwd=True, metric=("log_prob", 1))


def test_non_finite_metric_gradient_blames_the_metric_not_grad_logits(llama):
    """A NaN residual input makes NaN logits: the error names the metric's gradient, not a
    grad_logits= the caller never passed."""
    resid = np.full((1, 3, llama.cfg.d_model), np.nan, dtype=np.float32)
    with pytest.raises(InvalidInputError, match="metric's gradient"):
        llama.run_with_cache(resid, start_at_layer=1, incl_bwd=True, metric=("log_prob", 1))
    G = np.zeros((1, 3, llama.cfg.d_vocab))
    G[0, 1, 2] = np.nan
    with pytest.raises(InvalidInputError, match="^grad_logits contains NaN"):
        llama.run_with_cache([[1, 2, 3]], prepend_bos=False, incl_bwd=True, grad_logits=G)


def test_start_at_layer_0_from_a_residual_has_no_embedding_gradients(saved_gpt2):
    """start_at_layer=0 with a residual input never runs the embeddings: as TransformerLens, no
    hook_embed / hook_pos_embed gradient, and their backward hooks are not called."""
    model = saved_gpt2("odd")[0]
    resid = np.random.default_rng(0).normal(size=(1, 3, model.cfg.d_model)).astype(np.float32)
    _, cache = model.run_with_cache(resid, start_at_layer=0, incl_bwd=True, metric=("log_prob", 1))
    assert "hook_embed_grad" not in cache.keys() and "hook_pos_embed_grad" not in cache.keys()
    assert "blocks.0.hook_resid_pre_grad" in cache.keys()
    called = []
    model.run_with_hooks(resid, start_at_layer=0, metric=("log_prob", 1),
                         bwd_hooks=[("hook_embed", lambda g, hook: called.append(hook.name))])
    assert called == []
    _, cache = model.run_with_cache([[1, 2, 3]], prepend_bos=False, incl_bwd=True, metric=("log_prob", 1))
    assert "hook_embed_grad" in cache.keys()
