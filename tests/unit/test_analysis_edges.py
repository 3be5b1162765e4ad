"""Edges of the analysis toolkit on the demo model: where a patching result is saved, index_df rows
refused before any forward pass, one prepend_bos convention per call (the demo tokenizer's pad is its
BOS, so left padding reads a BOS as padding under the other convention), and patching at an attached
SAE's own point."""

import numpy as np
import pytest

import tinymech as tm
from tinymech import analysis
from tinymech.analysis import AnalysisError, PatchingResult

TEXT = "Mr Darcy walked in. Mr Bingley"
ANSWERS = (" in", " out")


@pytest.fixture
def demo():
    return tm.load()


@pytest.fixture
def left_padded():
    """The demo model padding on the left with default_prepend_bos=False: token ids starting with
    BOS (its pad token) read it as padding unless a run is told the BOS was prepended."""
    model = tm.load(default_padding_side="left")
    model.cfg.default_prepend_bos = False
    return model


def log_probs(logits):
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def logit_diff(model, logits):
    good, bad = (model.to_single_token(a) for a in ANSWERS)
    return float(logits[0, -1, good] - logits[0, -1, bad])


# ---- PatchingResult.save --------------------------------------------------------------------


def small_result():
    return PatchingResult(
        values=np.arange(6.0).reshape(2, 3),
        axes=("layer", "pos"),
        activation="resid_pre",
        mode="denoise",
        clean=5.0,
        corrupted=0.0,
    )


@pytest.mark.parametrize("name", ["result.csv", "result.npz"])
def test_save_makes_missing_folders_as_sae_save_does(tmp_path, name):
    path = tmp_path / "not" / "yet" / name
    small_result().save(path)
    if name.endswith(".npz"):
        np.testing.assert_array_equal(np.load(path)["values"], small_result().values)
    else:
        assert path.read_text().splitlines()[0] == ",0,1,2"


@pytest.mark.parametrize("where", ["under_a_file", "onto_a_folder"])
def test_save_that_cannot_write_names_the_path(tmp_path, where):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "folder.csv").mkdir()
    path = tmp_path / "a_file" / "result.csv" if where == "under_a_file" else tmp_path / "folder.csv"
    with pytest.raises(AnalysisError, match="cannot write") as raised:
        small_result().save(path)
    assert str(path) in str(raised.value)
    assert isinstance(raised.value, tm.TinymechError)


# ---- index_df rows, checked before any forward pass --------------------------------------------


@pytest.mark.parametrize(
    "rows,match",
    [
        ([[0, 1], [1, 2], [3, 99]], r"index \(3, 99\): pos 99 is outside the activation's 8 \(from -8 to 7\)"),
        ([[0, 1, 2], [1, 2, 0]], r"this patch setter takes an index \(layer, pos\), not \(0, 1, 2\)"),
    ],
)
def test_a_bad_index_df_row_is_refused_before_any_forward_pass(demo, monkeypatch, rows, match):
    tokens = demo.to_tokens(TEXT)
    _, cache = demo.run_with_cache(tokens)
    runs = []
    forward = tm.Model._core_forward
    monkeypatch.setattr(tm.Model, "_core_forward", lambda self, *a, **kw: runs.append(1) or forward(self, *a, **kw))
    with pytest.raises(AnalysisError, match=match):
        tm.patching.generic_activation_patch(
            demo,
            tokens,
            cache,
            lambda logits: 0.0,
            tm.patching.layer_pos_patch_setter,
            "resid_pre",
            index_df=np.array(rows),
        )
    assert runs == []
    # the setter says the same of that index when a sweep reaches it
    act = np.zeros((1, 8, 4), dtype=np.float32)
    with pytest.raises(AnalysisError, match=match):
        tm.patching.layer_pos_patch_setter(act, rows[-1] if len(rows[0]) == 2 else rows[0], act)


def test_good_index_df_rows_still_run(demo):
    tokens = demo.to_tokens(TEXT)
    _, cache = demo.run_with_cache(tokens)
    metric = analysis.logit_diff_metric(demo, ANSWERS)
    rows = np.array([[0, -1], [3, 7]])  # negative positions count from the end, as the setter reads them
    values = tm.patching.generic_activation_patch(
        demo, tokens, cache, metric, tm.patching.layer_pos_patch_setter, "resid_pre", index_df=rows
    )
    np.testing.assert_allclose(values, metric(demo(tokens)), rtol=1e-5, atol=1e-5)


# ---- one prepend_bos convention per call -----------------------------------------------------------


def test_saliency_reads_the_bos_the_input_has(demo):
    """Its runs were told prepend_bos=False: under left padding the BOS of the model's own default
    became padding, and the metric was not the model's."""
    model = tm.load(default_padding_side="left")
    result = analysis.saliency(model, TEXT)
    expected = log_probs(model(TEXT))[0, -1, result.target[0]]
    assert result.metric_value[0] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("given", ["text", "tokens"])
def test_analyses_follow_the_prepend_bos_they_were_given(left_padded, given):
    model = left_padded
    expected = model(TEXT, prepend_bos=True)  # BOS first, not read as padding
    input = TEXT if given == "text" else model.to_tokens(TEXT, prepend_bos=True)
    ids_by_default = model(model.to_tokens(TEXT, prepend_bos=True))  # the BOS read as padding: other numbers
    assert logit_diff(model, ids_by_default) != pytest.approx(logit_diff(model, expected), abs=1e-3)

    good = model.to_single_token(" in")
    lens = analysis.logit_lens(model, input, answers=[" in"], prepend_bos=True)
    assert lens.answer_probs[-1, -1, 0] == pytest.approx(np.exp(log_probs(expected)[0, -1, good]), rel=1e-4)
    attribution = analysis.logit_attribution(model, input, " in", prepend_bos=True)
    assert attribution.logit == pytest.approx(expected[0, -1, good], abs=1e-4)
    result = analysis.patch_resid_pre(model, input, input, answers=ANSWERS, prepend_bos=True)
    assert result.clean == pytest.approx(logit_diff(model, expected), abs=1e-4)
    assert result.corrupted == pytest.approx(result.clean, abs=1e-5)
    np.testing.assert_allclose(result.values, result.clean, atol=1e-4)
    sal = analysis.saliency(model, input, prepend_bos=True)
    assert sal.metric_value[0] == pytest.approx(log_probs(expected)[0, -1, sal.target[0]], abs=1e-4)
    _, cache = model.run_with_cache(TEXT, prepend_bos=True)
    scores = analysis.head_scores(model, input, prepend_bos=True)
    for name, values in analysis.head_scores(model, input, cache=cache, prepend_bos=True).items():
        np.testing.assert_allclose(scores[name], values, atol=1e-6)


def test_patching_token_ids_with_their_own_activations_changes_nothing(left_padded):
    """Token ids and the model's default (no BOS prepended): the source run masked the leading BOS
    as padding and the patched runs did not, so a patch of a run by itself moved the metric."""
    tokens = left_padded.to_tokens(TEXT, prepend_bos=True)
    result = analysis.patch_resid_pre(left_padded, tokens, tokens, answers=ANSWERS)
    assert result.clean == pytest.approx(logit_diff(left_padded, left_padded(tokens)), abs=1e-4)
    np.testing.assert_allclose(result.values, result.clean, atol=1e-4)
    _, cache = left_padded.run_with_cache(tokens)
    metric = analysis.logit_diff_metric(left_padded, ANSWERS)
    values = tm.patching.get_act_patch_resid_pre(left_padded, tokens, cache, metric)
    np.testing.assert_allclose(values, result.clean, atol=1e-4)


def test_a_default_changed_during_a_call_does_not_mix_two_conventions(left_padded):
    model = left_padded
    model.cfg.default_prepend_bos = True
    tokens = model.to_tokens(TEXT)
    good, bad = (model.to_single_token(a) for a in ANSWERS)

    def flipping(logits):
        """The logit difference, and its gradient; flips the model's default as it is first called."""
        model.cfg.default_prepend_bos = False
        grad = np.zeros(np.shape(logits), dtype=np.float32)
        grad[:, -1, good], grad[:, -1, bad] = 1.0, -1.0
        return float(np.mean(logits[:, -1, good] - logits[:, -1, bad])), grad

    result = analysis.attribution_patch(model, tokens, tokens, metric=flipping, over="resid_pre")
    assert result.corrupted == pytest.approx(result.clean, abs=1e-5)


# ---- patching at an attached SAE's own point ------------------------------------------------------

SAE_CASES = {  # activation kind -> (the point an SAE writes, its write_sae arguments, the index checked)
    "resid_pre": ("blocks.2.hook_resid_pre", None, (2, 3)),  # the demo model's own SAE
    "mlp_out": (
        "blocks.1.hook_mlp_out",
        dict(
            arch="transcoder",
            d_in=256,
            d_sae=512,
            hook="blocks.1.ln2.hook_normalized",
            hook_out="blocks.1.hook_mlp_out",
        ),
        (1, 3),
    ),
    "head_z_by_pos": (
        "blocks.1.attn.hook_z",
        dict(arch="standard", d_in=256, d_sae=512, hook="blocks.1.attn.hook_z", reshape_activations="hook_z"),
        (1, 5, 3),
    ),
}


@pytest.mark.parametrize(
    "activation,use_error_term",
    [("resid_pre", False), ("resid_pre", True), ("mlp_out", False), ("head_z_by_pos", False)],
)
def test_patching_at_an_attached_sae_s_point_patches_what_the_cache_holds(demo, tmp_path, activation, use_error_term):
    """The cache holds the SAE's output there, and a patch hooked on the point edited the SAE's input:
    an SAE then ran on its own output (a run patched with its own activations moved), and a
    transcoder's output replaced the patch (every patch read as the unpatched run)."""
    from numpy_checkpoints import write_sae

    point, made, index = SAE_CASES[activation]
    sae = tm.SAE.load(f"{demo.path}/saes/{point}" if made is None else write_sae(tmp_path / "sae", std=0.05, **made))
    demo.add_sae(sae, use_error_term=use_error_term)
    clean = demo.to_tokens(TEXT)
    corrupted = demo.to_tokens("Mr Bingley walked in. Mr Darcy")
    metric = analysis.logit_diff_metric(demo, ANSWERS)

    itself = analysis.patch_activations(demo, clean, clean, activation, answers=ANSWERS)
    np.testing.assert_allclose(itself.values, itself.clean, rtol=1e-5, atol=1e-5)
    assert itself.clean == pytest.approx(metric(demo(clean)), rel=1e-5, abs=1e-5)
    _, clean_cache = demo.run_with_cache(clean)
    if activation == "resid_pre":
        values = tm.patching.get_act_patch_resid_pre(demo, clean, clean_cache, metric)
        np.testing.assert_allclose(values, itself.clean, rtol=1e-5, atol=1e-5)

    # a patch there sets what the rest of the model reads: the SAE's output
    result = analysis.patch_activations(demo, clean, corrupted, activation, answers=ANSWERS)
    where = (slice(None), index[-1]) + tuple(index[1:-1])  # [batch, pos(, head)]

    def at_output(act, hook):
        act[where] = clean_cache[point][where]
        return act

    expected = metric(demo.run_with_hooks(corrupted, fwd_hooks=[(point + ".hook_sae_output", at_output)]))
    assert result.values[index] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert abs(expected - result.corrupted) > 1e-4  # the patch moves the metric


def test_repeated_tokens_run_with_the_bos_they_start_with(left_padded):
    """repeated_tokens puts a BOS first whatever the default: under default_prepend_bos=False a
    left-padded run read that BOS (the pad token) as padding, and the scores moved with the default."""
    model = left_padded
    loss, induction = analysis.repeated_sequence_loss(model, 8, 2), analysis.induction_scores(model, 8, 2)
    summary = analysis.head_summary(model, seq_len=8, batch=2)
    model.cfg.default_prepend_bos = True
    np.testing.assert_allclose(loss.per_position, analysis.repeated_sequence_loss(model, 8, 2).per_position, atol=1e-5)
    np.testing.assert_allclose(induction, analysis.induction_scores(model, 8, 2), atol=1e-6)
    np.testing.assert_allclose(summary.scores["induction"], induction, atol=1e-6)


def test_ioi_patching_keeps_the_convention_it_started_with(left_padded):
    """The default is read once: a change during the sweep (here by its progress function) leaves the
    length groups after it run as the first (their source runs read the default again, and masked
    their BOS as padding, while the patched runs did not)."""
    model = left_padded
    model.cfg.default_prepend_bos = True
    prompts = analysis.make_ioi_prompts(model, n=6, seed=1)
    expected = analysis.ioi_patching(model, prompts, activation="attn_out_all_pos")

    def flip(done, total):
        model.cfg.default_prepend_bos = False

    got = analysis.ioi_patching(model, prompts, activation="attn_out_all_pos", progress=flip)
    assert len({model.to_tokens(p).shape[1] for p in prompts.clean}) > 1  # several groups
    np.testing.assert_allclose(got.values, expected.values, atol=1e-5)
    assert (got.clean, got.corrupted) == pytest.approx((expected.clean, expected.corrupted), abs=1e-5)
