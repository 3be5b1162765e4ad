"""tinymech.analysis on small random models built in memory: each result is
checked against a direct numpy computation or an invariant (the last logit
lens row is the model's output, attributions sum to the logit, a patch of an
activation that does not differ changes nothing, ...)."""
import io as text_io

import numpy as np
import pytest

import tinymech as tm
from tinymech import analysis
from tinymech import progress
from tinymech.analysis import AnalysisError
from tinymech.analysis.tokens import is_single_token
from tinymech.arch.config import Config
from tinymech.io.sources import default_model_dir
from tinymech.io.tokenizer import Tokenizer

TOKENIZER = Tokenizer.from_dir(default_model_dir(), None, None)  # the demo model's byte-level BPE, 8192 tokens


def random_model(n_layers=2, d_model=64, n_heads=4, d_vocab=8192, n_ctx=48, seed=0, tokenizer=True,
                 tied=True, unembed_bias=False, ln_final_weight=True) -> tm.Model:
    """A GPT-2-shaped model with random weights, large enough that attention is not uniform."""
    rng = np.random.default_rng(seed)
    d_head, d_mlp = d_model // n_heads, 4 * d_model

    def rand(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    layers = [
        dict(ln1_w=1 + rand(d_model), ln1_b=rand(d_model), qkv_w=rand(d_model, 3 * d_model, scale=0.6),
             qkv_b=rand(3 * d_model), out_w=rand(d_model, d_model), out_b=rand(d_model),
             ln2_w=1 + rand(d_model), ln2_b=rand(d_model), fc_w=rand(d_model, d_mlp), fc_b=rand(d_mlp),
             proj_w=rand(d_mlp, d_model), proj_b=rand(d_model))
        for _ in range(n_layers)
    ]
    wte = rand(d_vocab, d_model)
    weights = dict(
        wte=wte, wpe=rand(n_ctx, d_model),
        lnf_w=1 + rand(d_model) if ln_final_weight else np.ones(d_model, np.float32), lnf_b=rand(d_model),
        unembed=wte if tied else rand(d_vocab, d_model), unembed_b=rand(d_vocab) if unembed_bias else None,
        layers=layers,
    )
    cfg = Config(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp, d_vocab=d_vocab,
                 n_ctx=n_ctx, attn_scale=float(np.sqrt(d_head)), bos_token_id=0, eos_token_id=0)
    return tm.Model(cfg, weights, TOKENIZER if tokenizer else None)


@pytest.fixture(scope="module")
def model():
    return random_model()


@pytest.fixture(scope="module")
def odd_model():
    """d_head 20, untied unembedding with a bias, no tokenizer."""
    return random_model(n_layers=3, d_model=60, n_heads=3, d_vocab=300, seed=1, tokenizer=False, tied=False,
                        unembed_bias=True)


def softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def lens_reference(model, resid, scale=None):
    """ln_final (own or given scale) and the unembedding, in float64."""
    w = model._weights
    x = resid.astype(np.float64) - resid.mean(-1, keepdims=True)
    if scale is None:
        scale = np.sqrt((x ** 2).mean(-1, keepdims=True) + model.cfg.eps)
    logits = (x / scale * w["lnf_w"] + w["lnf_b"]) @ w["unembed"].T.astype(np.float64)
    return logits if w["unembed_b"] is None else logits + w["unembed_b"]


# ---- logit lens ------------------------------------------------------------------------------

def test_logit_lens_last_row_is_the_model_output(model):
    text = "When Mary and John went to the park, John gave a key to"
    res = analysis.logit_lens(model, text, answers=[" Mary", " John"], k=5)
    tokens = model.to_tokens(text)
    probs = softmax(model(tokens)[0])  # [pos, vocab]
    # each distinct residual point once: "1_pre" would repeat "0_post"
    assert res.labels == ["0_pre", "0_mid", "0_post", "1_mid", "1_post"]
    assert res.top_ids.shape == res.top_probs.shape == (5, tokens.shape[1], 5)
    expected_ids = np.argsort(-probs, axis=-1, kind="stable")[:, :5]
    np.testing.assert_array_equal(res.top_ids[-1], expected_ids)
    np.testing.assert_allclose(res.top_probs[-1], np.take_along_axis(probs, expected_ids, -1), rtol=1e-4, atol=1e-7)
    answer_ids = [model.to_tokens(" Mary", prepend_bos=False)[0, 0], model.to_tokens(" John", prepend_bos=False)[0, 0]]
    np.testing.assert_allclose(res.answer_probs[-1], probs[:, answer_ids], rtol=1e-4, atol=1e-8)
    ranks = 1 + (probs[:, None, :] > probs[:, answer_ids, None]).sum(-1)
    np.testing.assert_array_equal(res.answer_ranks[-1], ranks)
    assert res.top_probs.dtype == np.float32 and res.top_ids.dtype == np.int64


@pytest.mark.parametrize("ln", ["recompute", "frozen"])
def test_logit_lens_every_row_matches_numpy(odd_model, ln):
    tokens = np.random.default_rng(3).integers(0, odd_model.cfg.d_vocab, size=(2, 7))
    res = analysis.logit_lens(odd_model, tokens, answers=[5, 17, 250], k=3, ln=ln)
    assert res.top_ids.shape == (7, 2, 7, 3) and res.answer_probs.shape == (7, 2, 7, 3)
    _, cache = odd_model.run_with_cache(tokens)
    scale = cache["ln_final.hook_scale"] if ln == "frozen" else None
    for row, label in enumerate(res.labels):
        layer, where = label.split("_")
        probs = softmax(lens_reference(odd_model, cache[f"blocks.{layer}.hook_resid_{where}"], scale))
        top = np.take_along_axis(probs, res.top_ids[row], -1)
        np.testing.assert_allclose(res.top_probs[row], top, rtol=1e-4, atol=1e-7)
        assert np.all(top[..., :1] >= probs.max(-1, keepdims=True) * (1 - 1e-5))  # the first is the maximum
        np.testing.assert_allclose(res.answer_probs[row], probs[..., [5, 17, 250]], rtol=1e-4, atol=1e-8)
    # with the final scale frozen the last row is still exactly the output
    np.testing.assert_allclose(res.top_probs[-1], np.take_along_axis(softmax(odd_model(tokens)), res.top_ids[-1], -1),
                               rtol=1e-4, atol=1e-7)


def test_logit_lens_one_token_and_table(model):
    res = analysis.logit_lens(model, [0], k=2)
    assert res.top_ids.shape == (5, 1, 2) and res.answer_probs is None
    text = str(analysis.logit_lens(model, "The king said", answers=[" the"]))
    assert "1_post" in text and "·the p (rank)" in text and "position 3" in text
    # a row per distinct residual point: "1_pre" would repeat "0_post"
    assert [line.split()[0] for line in text.splitlines()[3:]] == ["0_pre", "0_mid", "0_post", "1_mid", "1_post"]


@pytest.mark.parametrize("ln", ["recompute", "frozen"])
def test_logit_lens_at_some_positions_and_from_a_cache(odd_model, ln):
    tokens = np.random.default_rng(4).integers(0, odd_model.cfg.d_vocab, size=(2, 7))
    full = analysis.logit_lens(odd_model, tokens, answers=[5, 250], k=3, ln=ln)
    _, cache = odd_model.run_with_cache(tokens, names_filter=analysis.lens_hook_names(odd_model.cfg.n_layers))
    for positions, columns in [([6, 0], [6, 0]), (-2, [5]), ([-1, 3], [6, 3])]:
        for kw in ({}, {"cache": cache}):
            some = analysis.logit_lens(odd_model, tokens, answers=[5, 250], k=3, ln=ln, positions=positions, **kw)
            assert some.positions == columns and some.top_ids.shape == (7, 2, len(columns), 3)
            np.testing.assert_array_equal(some.top_ids, full.top_ids[:, :, columns])
            np.testing.assert_allclose(some.top_probs, full.top_probs[:, :, columns], rtol=1e-5, atol=1e-8)
            np.testing.assert_array_equal(some.answer_ranks, full.answer_ranks[:, :, columns])
    one = analysis.logit_lens(odd_model, tokens[:1], k=2, ln=ln, positions=[2, 4])
    assert one.table(pos=4) == analysis.logit_lens(odd_model, tokens[:1], k=2, ln=ln).table(pos=4)
    with pytest.raises(AnalysisError, match="not at 3"):
        one.table(pos=3)


def test_logit_lens_rejects_bad_arguments(model):
    tokens = model.to_tokens("The king said")
    with pytest.raises(AnalysisError, match="outside the input's 4 tokens"):
        analysis.logit_lens(model, tokens, positions=[4])
    with pytest.raises(AnalysisError, match="positions must be"):
        analysis.logit_lens(model, tokens, positions=[])
    with pytest.raises(AnalysisError, match="positions must be"):
        analysis.logit_lens(model, tokens, positions=[1.5])
    _, other = model.run_with_cache("The king", names_filter=analysis.lens_hook_names(model.cfg.n_layers))
    with pytest.raises(AnalysisError, match="not of the input's"):
        analysis.logit_lens(model, tokens, cache=other)
    _, patterns = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    with pytest.raises(AnalysisError, match="has no blocks.0.hook_resid_pre: capture analysis.lens_hook_names"):
        analysis.logit_lens(model, tokens, cache=patterns)
    with pytest.raises(tm.InvalidTokensError, match="not one") as error:
        analysis.logit_lens(model, "The king", answers=["The king"])
    assert "did you mean" not in str(error.value)
    # a word without its leading space, where the spaced word is one token: a hint
    word = next(w for w in ("king", "Darcy", "Lord", "house")
                if is_single_token(model, " " + w) and not is_single_token(model, w))
    with pytest.raises(tm.InvalidTokensError, match=f"did you mean ' {word}', with its leading space"):
        analysis.logit_lens(model, "The king", answers=[word])
    with pytest.raises(AnalysisError, match="ln must be"):
        analysis.logit_lens(model, "The king", ln="fresh")
    with pytest.raises(AnalysisError, match="k must be"):
        analysis.logit_lens(model, "The king", k=0)


# ---- direct logit attribution ------------------------------------------------------------------

@pytest.mark.parametrize("incorrect", [None, " a"])
def test_logit_attribution_parts_sum_to_the_logit(model, incorrect):
    text = "When Mary and John went to the park, John gave a key to"
    res = analysis.logit_attribution(model, text, " Mary", incorrect)
    logits = model(text)[0, -1]
    good = model.to_tokens(" Mary", prepend_bos=False)[0, 0]
    expected = logits[good] - (0 if incorrect is None else logits[model.to_tokens(incorrect, prepend_bos=False)[0, 0]])
    assert res.values.shape == (2 + 2 * (4 + 2) + 1,)
    assert res.labels[:3] == ["embed", "pos_embed", "L0H0"] and res.labels[-1] == "ln_final_bias"
    assert res.head_values.shape == (2, 4) and res.mlp_values.shape == (2,)
    np.testing.assert_allclose(res.values.sum(), expected, rtol=1e-4, atol=1e-4 * np.abs(res.values).max())
    np.testing.assert_allclose(res.logit, expected, rtol=1e-5, atol=1e-5)
    assert "real logit" in str(res)


def test_logit_attribution_batch_per_sequence_tokens_and_bias(odd_model):
    tokens = np.random.default_rng(4).integers(0, odd_model.cfg.d_vocab, size=(3, 6))
    good, bad = [7, 8, 9], [1, 2, 3]
    res = analysis.logit_attribution(odd_model, tokens, good, bad, position=2)
    logits = odd_model(tokens)[:, 2]
    expected = logits[np.arange(3), good] - logits[np.arange(3), bad]
    assert res.values.shape == (2 + 3 * (3 + 2) + 1, 3) and res.head_values.shape == (3, 3, 3)
    scale = np.abs(res.values).max()
    np.testing.assert_allclose(res.values.sum(0), expected, rtol=1e-4, atol=1e-4 * scale)
    # the constant is ln_final's bias and b_U through the unembedding, the same for every input
    w = odd_model._weights
    constant = [w["lnf_b"] @ (w["unembed"][g] - w["unembed"][b]) + w["unembed_b"][g] - w["unembed_b"][b]
                for g, b in zip(good, bad)]
    np.testing.assert_allclose(res["ln_final_bias"], constant, rtol=1e-5, atol=1e-6)


def test_logit_attribution_matches_activation_cache_logit_attrs():
    """With ln_final's weight 1, each head's part is TransformerLens-style
    cache.logit_attrs of stack_head_results (a separate code path)."""
    model = random_model(seed=5, ln_final_weight=False)
    tokens = np.random.default_rng(5).integers(0, 8192, size=(1, 9))
    res = analysis.logit_attribution(model, tokens, 11, 12)
    _, cache = model.run_with_cache(tokens)
    stack = cache.stack_head_results(pos_slice=-1)  # [head, batch, d_model]
    attrs = cache.logit_attrs(stack, tokens=np.array([[11]]), incorrect_tokens=np.array([[12]]), pos_slice=-1)
    np.testing.assert_allclose(res.head_values.reshape(-1), attrs[:, 0], rtol=1e-4, atol=1e-5)


def test_logit_attribution_rejects_bad_arguments(model):
    with pytest.raises(AnalysisError, match="position"):
        analysis.logit_attribution(model, "The king", " the", position=5)
    with pytest.raises(AnalysisError, match="one per sequence"):
        analysis.logit_attribution(model, np.zeros((2, 3), np.int64), [1, 2, 3])


# ---- head detectors ------------------------------------------------------------------------

def test_detection_patterns():
    tokens = np.array([0, 5, 6, 5, 6, 7])
    np.testing.assert_array_equal(analysis.previous_token_pattern(tokens), np.eye(6, k=-1))
    duplicate = np.zeros((6, 6))
    duplicate[3, 1] = duplicate[4, 2] = 1
    np.testing.assert_array_equal(analysis.duplicate_token_pattern(tokens), duplicate)
    induction = np.zeros((6, 6))
    induction[3, 2] = induction[4, 3] = 1
    np.testing.assert_array_equal(analysis.induction_pattern(tokens), induction)


def test_pattern_similarity_measures():
    pattern = np.array([[1.0, 0, 0], [0.25, 0.75, 0], [0.5, 0.25, 0.25]])
    detection = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    assert analysis.pattern_similarity(pattern, detection) == pytest.approx(0.5 / 3)
    assert analysis.pattern_similarity(pattern, detection, exclude_bos=True) == pytest.approx(0.25 / 1.25)
    assert analysis.pattern_similarity(pattern, detection, exclude_current_token=True) == pytest.approx(0.5 / 1.0)
    raw = (1 + 0.75 + 0.75 + 0.5 + 0.75 + 0.25) / 9 * 3
    assert analysis.pattern_similarity(pattern, detection, error_measure="abs") == pytest.approx(1 - round(raw, 3))


def test_detect_head_options(model):
    text = "When Mary and John went to the park, Mary and John sat"
    full = analysis.detect_head(model, text, "induction_head")
    assert full.shape == (2, 4) and full.dtype == np.float32
    _, cache = model.run_with_cache(text)
    np.testing.assert_array_equal(analysis.detect_head(model, text, "induction_head", cache=cache), full)
    tokens = model.to_tokens(text)[0]
    np.testing.assert_allclose(analysis.detect_head(model, text, analysis.induction_pattern(tokens)), full)
    partial = analysis.detect_head(model, text, "induction_head", heads=[(1, 2), (0, 0)])
    assert (partial == -1).sum() == 6 and partial[1, 2] == full[1, 2] and partial[0, 0] == full[0, 0]
    np.testing.assert_array_equal(analysis.detect_head(model, text, "induction_head", heads={1: [2], 0: [0]}), partial)
    pattern = cache["pattern", 1][0, 3]
    expected = analysis.pattern_similarity(pattern, analysis.induction_pattern(tokens), True, True, "abs")
    got = analysis.detect_head(model, text, "induction_head", exclude_bos=True, exclude_current_token=True,
                               error_measure="abs")
    assert got[1, 3] == pytest.approx(expected, abs=1e-6)
    texts = [text, "The king said that the king"]
    np.testing.assert_allclose(analysis.detect_head(model, texts, "duplicate_token_head"),
                               np.mean([analysis.detect_head(model, t, "duplicate_token_head") for t in texts], 0),
                               rtol=1e-6)


def test_detect_head_prints_a_table_and_computes_as_an_array(model):
    scores = analysis.detect_head(model, "When Mary and John went to the park, Mary and John sat", "induction_head",
                                  heads=[(1, 2)])
    lines = str(scores).splitlines()
    assert lines[0] == "detect_head: induction_head (mul)" and lines[1].split() == ["H0", "H1", "H2", "H3"]
    assert lines[3].split() == ["L0"] + ["-1.000"] * 4
    assert lines[4].split()[0] == "L1" and lines[4].split()[3] == f"{scores[1, 2]:.3f}"
    # what is computed from the scores is a plain array (no table for a slice or a comparison)
    for derived in (scores[1], scores > 0, scores * 2, np.maximum(scores, 0), scores.max(axis=1), np.asarray(scores)):
        assert type(derived) is np.ndarray
    assert isinstance(scores.max(), np.float32) and isinstance(scores, np.ndarray)
    np.testing.assert_array_equal(np.asarray(scores), scores)


def test_detect_head_rejects_bad_arguments(model):
    with pytest.raises(AnalysisError, match="detection_pattern"):
        analysis.detect_head(model, "The king said", "copy_head")
    with pytest.raises(AnalysisError, match="lower-triangular"):
        analysis.detect_head(model, "The king said", np.ones((4, 4)))
    with pytest.raises(AnalysisError, match="lower-triangular"):
        analysis.detect_head(model, "The king said", np.eye(3))
    with pytest.raises(AnalysisError, match="error_measure"):
        analysis.detect_head(model, "The king said", "induction_head", error_measure="sq")
    with pytest.raises(AnalysisError, match="no head L2H0"):
        analysis.detect_head(model, "The king said", "induction_head", heads=[(2, 0)])
    _, cache = model.run_with_cache("The king said")
    with pytest.raises(AnalysisError, match="one sequence"):
        analysis.detect_head(model, ["The king", "The queen"], "induction_head", cache=cache)
    with pytest.raises(AnalysisError, match="not of this input"):
        analysis.detect_head(model, "The king said it", "induction_head", cache=cache)
    with pytest.raises(tm.InvalidTokensError, match="two tokens"):
        analysis.detect_head(model, [5], "induction_head")


def test_head_scores_equal_detect_head(model):
    text = "When Mary and John went to the park, Mary and John sat"
    scores = analysis.head_scores(model, text)
    assert set(scores) == {"previous_token", "duplicate_token", "induction"}
    for name, pattern in analysis.heads.SCORE_PATTERNS.items():
        np.testing.assert_allclose(scores[name], analysis.detect_head(model, text, pattern), rtol=1e-6)
    _, cache = model.run_with_cache(text)
    np.testing.assert_array_equal(analysis.head_scores(model, text, cache=cache)["induction"], scores["induction"])


def test_repeated_tokens_induction_scores_and_loss(model):
    tokens = analysis.repeated_tokens(model, seq_len=10, batch=3, seed=2)
    assert tokens.shape == (3, 21) and (tokens[:, 0] == 0).all()
    np.testing.assert_array_equal(tokens[:, 1:11], tokens[:, 11:])
    assert not (tokens[:, 1:] == 0).any()
    scores = analysis.induction_scores(model, seq_len=10, batch=3, seed=2)
    per_sequence = [analysis.detect_head(model, row, "induction_head") for row in tokens]
    np.testing.assert_allclose(scores, np.mean(per_sequence, 0), rtol=1e-5)
    loss = analysis.repeated_sequence_loss(model, seq_len=10, batch=3, seed=2)
    per_token = model(tokens, return_type="loss", loss_per_token=True)  # [batch, 20]
    np.testing.assert_allclose(loss.per_position, per_token.mean(0), rtol=1e-6)
    assert loss.first_half == pytest.approx(per_token[:, :10].mean(), rel=1e-5)
    assert loss.second_half == pytest.approx(per_token[:, 10:].mean(), rel=1e-5)
    with pytest.raises(tm.ContextLengthError):
        analysis.repeated_tokens(model, seq_len=24)


def test_head_summary(model):
    summary = analysis.head_summary(model, seq_len=10, batch=2, top=3)
    scores = analysis.head_scores(model, analysis.repeated_tokens(model, 10, 2))
    for name in scores:
        np.testing.assert_allclose(summary.scores[name], scores[name], rtol=1e-6)
    layer, head, value = summary.top_heads("induction")[0]
    assert value == pytest.approx(scores["induction"].max())
    assert scores["induction"][layer, head] == scores["induction"].max()
    text = str(summary)
    assert "induction" in text and "second copy" in text and f"L{layer}H{head}" in text
    assert analysis.head_summary(model, "The king said the king", seq_len=10, batch=2).source == "the given input"


# ---- activation patching -----------------------------------------------------------------

def python_patch(model, target, source_cache, name, head=None, pos=None):
    """The same patch as a Python hook function."""
    def hook(activation, hook):
        index = (slice(None), slice(None) if pos is None else pos) + (() if head is None else (head,))
        activation[index] = source_cache[name][index]
    return model.run_with_hooks(target, fwd_hooks=[(name, hook)])


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(6)
    clean = rng.integers(1, 8192, size=(2, 7))
    corrupted = clean.copy()
    corrupted[:, 3] = rng.integers(1, 8192, size=2)
    return clean, corrupted, [(11, 12), (13, 14)]


@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_head_patching_equals_python_hook_patch(model, pair, mode):
    clean, corrupted, answers = pair
    metric = analysis.logit_diff_metric(model, answers)
    source, target = (clean, corrupted) if mode == "denoise" else (corrupted, clean)
    _, cache = model.run_with_cache(source)
    by_head = analysis.patch_head_z(model, clean, corrupted, answers=answers, mode=mode)
    by_pos = analysis.patch_head_z_by_pos(model, clean, corrupted, metric, mode=mode)
    assert by_head.values.shape == (2, 4) and by_pos.values.shape == (2, 4, 7)
    for layer, head in [(0, 1), (1, 3)]:
        name = f"blocks.{layer}.attn.hook_z"
        assert by_head.values[layer, head] == pytest.approx(metric(python_patch(model, target, cache, name, head)),
                                                            rel=1e-5, abs=1e-5)
        for pos in (2, 3, 6):
            expected = metric(python_patch(model, target, cache, name, head, pos))
            assert by_pos.values[layer, head, pos] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    clean_score, corrupted_score = metric(model(clean)), metric(model(corrupted))
    assert by_head.clean == pytest.approx(clean_score, rel=1e-6)
    assert by_head.corrupted == pytest.approx(corrupted_score, rel=1e-6)
    np.testing.assert_allclose(by_head.normalized, (by_head.values - corrupted_score) / (clean_score - corrupted_score),
                               rtol=1e-5)
    assert "L1" in str(by_head) and "3:" in str(by_pos)


def test_residual_patching_localizes_the_changed_position(model, pair):
    clean, corrupted, answers = pair
    res = analysis.patch_resid_pre(model, clean, corrupted, answers=answers)
    assert res.values.shape == (2, 7)
    # before layer 0 only position 3 differs: patching it gives the clean run, any other position nothing
    assert res.values[0, 3] == pytest.approx(res.clean, rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(np.delete(res.values[0], 3), res.corrupted, rtol=1e-5, atol=1e-5)
    # positions before 3 are the same in both runs at every layer (causal attention)
    np.testing.assert_allclose(res.values[:, :3], res.corrupted, rtol=1e-5, atol=1e-5)
    for by_position, shape in [(True, (2, 7)), (False, (2,))]:
        for fn in (analysis.patch_attn_out, analysis.patch_mlp_out):
            assert fn(model, clean, corrupted, answers=answers, by_position=by_position).values.shape == shape
    mlp = analysis.patch_mlp_out(model, clean, corrupted, answers=answers, by_position=False)
    name = "blocks.1.hook_mlp_out"
    _, cache = model.run_with_cache(clean, names_filter=name)
    metric = analysis.logit_diff_metric(model, answers)
    assert mlp.values[1] == pytest.approx(metric(python_patch(model, corrupted, cache, name)), rel=1e-5, abs=1e-5)
    assert "L1" in str(mlp)


@pytest.mark.parametrize("activation", ["head_z_by_pos", "resid_mid", "mlp_out_all_pos"])
def test_patches_side_by_side_equal_patches_one_by_one(model, pair, activation, monkeypatch):
    clean, corrupted, answers = pair
    metric = analysis.logit_diff_metric(model, answers)
    together = analysis.patch_activations(model, clean, corrupted, activation, metric)
    monkeypatch.setattr(analysis.patching, "_ROWS_PER_RUN", 1)
    alone = analysis.patch_activations(model, clean, corrupted, activation, metric)
    np.testing.assert_allclose(together.values, alone.values, rtol=1e-5, atol=1e-5)
    assert np.ptp(alone.values) > 0.01


def test_patches_per_forward_are_bounded_by_rows_and_logits():
    per_run = analysis.patching._patches_per_run
    assert per_run(8, 50257) == 32  # 256 rows
    assert per_run(8, 8 * 50257) == 32
    assert per_run(8, 8 * 10**6) == 2  # 2 x 8M floats of logits: 64 MB
    assert per_run(300, 1) == 1  # always at least one


def test_patching_under_context_hooks_runs_patches_one_by_one(model, pair):
    """Hooks of model.hooks(...) see the input's own batch, as in any run."""
    clean, corrupted, answers = pair
    batches = set()

    def halve(act, hook):
        batches.add(act.shape[0])
        return act * 0.5

    with model.hooks([("blocks.0.hook_mlp_out", halve)]):
        res = analysis.patch_head_z(model, clean, corrupted, answers=answers)
        _, cache = model.run_with_cache(clean)
        expected = analysis.logit_diff_metric(model, answers)(
            python_patch(model, corrupted, cache, "blocks.1.attn.hook_z", 2))
    assert batches == {clean.shape[0]}
    assert res.values[1, 2] == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("how", ["hooks", "add_hook", "add_sae"])
def test_patching_a_run_with_its_own_activations_under_users_hooks_changes_nothing(how):
    """A hook (or SAE) at blocks.l.hook_resid_pre ran twice when block l was patched: the patched run
    started at block l from a residual cached after it; and add_hook's hooks saw several patches
    stacked in one batch (a hook returning the input's batch was refused)."""
    import contextlib

    model = tm.load()
    tokens = model.to_tokens("Mr Darcy walked in. Mr Bingley")
    v = np.random.default_rng(0).normal(size=model.cfg.d_model).astype(np.float32) * 3
    steer = ("blocks.2.hook_resid_pre", lambda act, hook: act + v)
    one_row = ("blocks.3.hook_mlp_out", lambda act, hook: act[:1] * 0.5)  # the input's batch of 1, only
    block = contextlib.nullcontext()
    if how == "hooks":
        block = model.hooks([steer, one_row])
    elif how == "add_hook":
        model.add_hook(*steer)
        model.add_hook(*one_row)
    else:
        model.add_sae(tm.SAE.load(f"{model.path}/saes/blocks.2.hook_resid_pre"))
    try:
        with block:
            # (resid_pre at an attached SAE's own point is left out: its cache holds the SAE's output,
            # while a hook there edits its input)
            for kind in ("mlp_out", "head_z") if how == "add_sae" else ("mlp_out", "resid_pre", "head_z"):
                res = analysis.patch_activations(model, tokens, tokens, kind, answers=(" in", " out"))
                np.testing.assert_allclose(res.values, res.clean, rtol=1e-5, atol=1e-5)
    finally:
        model.reset_hooks()
        model.reset_saes()


def test_integrated_gradients_under_a_hook_reading_the_batch_do_not_depend_on_batch_size():
    """Its path's points were stacked as rows of one pass, which a hook reading the batch mixed."""
    model = tm.load()
    text = "Mr Darcy walked in. Mr Bingley"

    def mean_ablate(act, hook):
        return np.broadcast_to(act.mean(0, keepdims=True), act.shape).copy()

    with model.hooks([("blocks.3.hook_mlp_out", mean_ablate)]):
        one = analysis.saliency(model, text, method="integrated_gradients", steps=8, batch_size=1)
        many = analysis.saliency(model, text, method="integrated_gradients", steps=8)
    np.testing.assert_allclose(many.scores, one.scores, rtol=1e-5, atol=1e-6)


def test_patching_with_a_custom_metric_and_progress(odd_model):
    rng = np.random.default_rng(7)
    clean = rng.integers(0, 300, size=(1, 5))
    corrupted = rng.integers(0, 300, size=(1, 5))
    calls, shapes = [], set()

    def metric(logits):  # a metric without last_position_only sees every position
        shapes.add(logits.shape)
        return logits[0, -1, 3]

    res = analysis.patch_activations(odd_model, clean, corrupted, "resid_mid", metric=metric,
                                     progress=lambda done, total: calls.append((done, total)))
    # short prompts: one forward per layer carries its five patches side by side
    assert res.values.shape == (3, 5) and calls == [(5, 15), (10, 15), (15, 15)]
    assert shapes == {(1, 5, odd_model.cfg.d_vocab)}
    assert res.values[2, 4] == pytest.approx(res.clean, rel=1e-5)  # the last position's resid after the last attn


@pytest.mark.parametrize("kwargs, match", [
    (dict(activation=["resid_pre"]), "activation must be one of"),  # unhashable: was a TypeError
    (dict(activation="resid"), "activation must be one of"),
    (dict(activation="resid_pre", mode=["noise"]), "mode must be one of"),
    (dict(activation="resid_pre", mode="denoise", corrupted=[[1, 2, 3]]), "same shape"),
])
def test_patching_choices_get_precise_errors(odd_model, kwargs, match):
    args = dict(clean=[[1, 2, 3, 4]], corrupted=[[4, 3, 2, 1]], answers=(1, 2), prepend_bos=False) | kwargs
    with pytest.raises(AnalysisError, match=match):
        analysis.patch_activations(odd_model, **args)


def test_patching_result_heatmap_and_files(odd_model, tmp_path):
    rng = np.random.default_rng(3)
    clean, corrupted = rng.integers(0, 300, size=(2, 1, 5))
    res = analysis.patch_activations(odd_model, clean, corrupted, "head_z", metric=lambda lg: float(lg[0, -1, 3]))
    grid, rows, columns, title = res.labelled_grid()
    np.testing.assert_array_equal(grid, res.normalized)
    picture = res.heatmap().splitlines()
    assert picture[0] == title and picture[1].split() == columns
    assert [line.split()[0] for line in picture[2 : 2 + len(rows)]] == rows

    def cell(r, c):  # each cell is 3 characters wide, after the row label and a space
        start = len(rows[r]) + 1 + 3 * c
        return picture[2 + r][start : start + 3].strip()

    # diverging from 0: the sign picks the ramp, the size the shade; 0 is blank
    assert grid.min() < 0 < grid.max()
    limit = np.abs(grid).max()
    for r, c in np.ndindex(grid.shape):
        level = round(abs(grid[r, c]) / limit * 4)
        shade = ("░▒▓█" if grid[r, c] > 0 else "·-=≡")[level - 1] * 2 if level else ""
        assert cell(r, c) == shade, (r, c)
    res.save(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].split(",") == [""] + columns
    np.testing.assert_array_equal(np.array([line.split(",")[1:] for line in lines[1:]], float), grid)
    res.save(tmp_path / "r.npz")
    saved = np.load(tmp_path / "r.npz")
    np.testing.assert_array_equal(saved["values"], res.values)
    assert tuple(saved["axes"]) == res.axes and float(saved["clean"]) == res.clean and str(saved["mode"]) == res.mode
    with pytest.raises(AnalysisError, match="a .csv or a .npz"):
        res.save(tmp_path / "r.png")


def test_patching_progress_true_writes_a_line_to_stderr(odd_model, capsys):
    rng = np.random.default_rng(7)
    clean, corrupted = rng.integers(0, 300, size=(2, 1, 5))
    res = analysis.patch_activations(odd_model, clean, corrupted, "resid_mid", metric=lambda lg: lg[0, -1, 3],
                                     progress=True)
    err = capsys.readouterr().err.splitlines()  # not a terminal: a line at each tenth done
    assert [line.split()[1] for line in err] == ["5/15", "10/15", "15/15"]
    assert err[-1].startswith("patching 15/15 [" + "#" * progress.BAR_WIDTH + "]") and "0:00 left" in err[-1]
    assert res.values.shape == (3, 5)
    with pytest.raises(tm.InvalidInputError, match="progress must be"):
        analysis.patch_activations(odd_model, clean, corrupted, "resid_mid", metric=lambda lg: 0.0, progress="yes")


def test_progress_line_redraws_in_place_on_a_terminal(monkeypatch):
    class Terminal(text_io.StringIO):
        def isatty(self):
            return True

    clock = iter([0.0, 0.0, 0.05, 1.0, 2.0])  # start, then one reading per report
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = Terminal()
    line = progress.ProgressLine(out)
    for done in (0, 1, 2, 4):
        line(done, 4)
    draws = out.getvalue().split("\r")[1:]
    # 1/4 came 0.05 s after the first draw: skipped; the last draw ends the line
    assert [d.split()[1] for d in draws] == ["0/4", "2/4", "4/4"]
    assert "?" in draws[0] and "0:01 elapsed, 0:01 left" in draws[1] and draws[2].endswith("0:00 left\n")


def test_patching_rejects_bad_arguments(model, pair):
    clean, corrupted, answers = pair
    with pytest.raises(AnalysisError, match="same shape"):
        analysis.patch_head_z(model, clean, corrupted[:, :5], answers=answers)
    with pytest.raises(AnalysisError, match="give a metric"):
        analysis.patch_head_z(model, clean, corrupted)
    with pytest.raises(AnalysisError, match="activation must be"):
        analysis.patch_activations(model, clean, corrupted, "head_q", answers=answers)
    with pytest.raises(AnalysisError, match="mode must be"):
        analysis.patch_head_z(model, clean, corrupted, answers=answers, mode="both")
    with pytest.raises(AnalysisError, match="one per sequence"):
        analysis.patch_head_z(model, clean, corrupted, answers=[(1, 2), (3, 4), (5, 6)])
    same = analysis.patch_head_z(model, clean, clean, answers=answers)
    with pytest.raises(AnalysisError, match="score the same"):
        same.normalized
    assert "clean = corrupted" in str(same)


# ---- IOI -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prompts(model):
    return analysis.make_ioi_prompts(model, n=12, seed=1)


def test_make_ioi_prompts(model, prompts):
    assert len(prompts) == 12 and prompts.kinds[:2] == ["ABBA", "BABA"]
    for clean, corrupted, io, s, kind in zip(prompts.clean, prompts.corrupted, prompts.io_names, prompts.s_names,
                                             prompts.kinds):
        words = clean.replace(",", " ").replace(".", " ").split()
        assert words.count(io) == 1 and words.count(s) == 2
        assert (words.index(io) < words.index(s)) == (kind == "ABBA")
        assert io not in corrupted.split() and s not in corrupted.split()
        assert model.to_tokens(clean).shape == model.to_tokens(corrupted).shape
    for name, token in zip(prompts.io_names, prompts.io_ids):
        assert model.to_tokens(" " + name, prepend_bos=False).tolist() == [[token]]
    assert "ABBA" in str(prompts)
    with pytest.raises(AnalysisError, match="too few single-token"):
        analysis.make_ioi_prompts(model, names=["Mary", "John", "Zzxqjv"])


def test_ioi_logit_diff(model, prompts):
    diffs = analysis.ioi_logit_diff(model, prompts)
    expected = [model(p)[0, -1, io] - model(p)[0, -1, s]
                for p, io, s in zip(prompts.clean, prompts.io_ids, prompts.s_ids)]
    np.testing.assert_allclose(diffs, expected, rtol=1e-4, atol=1e-5)
    corrupted = analysis.ioi_logit_diff(model, prompts, corrupted=True)
    np.testing.assert_allclose(corrupted[0], model(prompts.corrupted[0])[0, -1, prompts.io_ids[0]]
                               - model(prompts.corrupted[0])[0, -1, prompts.s_ids[0]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(activation=["head_z"]), dict(activation="heads"),
                                    dict(method=["attribution"]), dict(method="attribution", activation="resid")])
def test_ioi_patching_choices_get_precise_errors(model, prompts, kwargs):
    """Checked before any prompt is made or run (an unhashable activation was a TypeError)."""
    with pytest.raises(AnalysisError, match="must be one of"):
        analysis.ioi_patching(model, prompts, **kwargs)


def test_ioi_patching_combines_length_groups(model, prompts):
    calls = []
    res = analysis.ioi_patching(model, prompts, activation="head_z", mode="noise",
                                progress=lambda done, total: calls.append((done, total)))
    assert res.values.shape == (2, 4) and res.mode == "noise"
    groups = len({model.to_tokens(p).shape[1] for p in prompts.clean})
    # counted over every group, several patches per forward pass
    done = [d for d, _ in calls]
    assert groups > 1 and {t for _, t in calls} == {8 * groups} and done[-1] == 8 * groups
    assert done == sorted(set(done)) and len(done) < 8 * groups
    np.testing.assert_allclose(res.clean, analysis.ioi_logit_diff(model, prompts).mean(), rtol=1e-4)
    np.testing.assert_allclose(res.corrupted, analysis.ioi_logit_diff(model, prompts, corrupted=True).mean(), rtol=1e-4)
    # one template: one group, the same as patching the batch directly
    one = analysis.make_ioi_prompts(model, n=4, templates=[analysis.ioi.TEMPLATES[0]])
    by_pos = analysis.ioi_patching(model, one, activation="head_z_by_pos")
    direct = analysis.patch_head_z_by_pos(model, one.clean, one.corrupted,
                                          answers=np.stack([one.io_ids, one.s_ids], 1))
    np.testing.assert_allclose(by_pos.values, direct.values, rtol=1e-6)
    with pytest.raises(AnalysisError, match="position axis"):
        analysis.ioi_patching(model, prompts, activation="resid_pre")
