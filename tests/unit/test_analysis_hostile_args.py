"""Hostile arguments to tinymech.analysis and tinymech.patching get tinymech's errors with
precise messages (not numpy's or Python's from deep inside), and what is shown is what was
computed: out-of-range table positions are refused, titles name every sequence's token,
a metric's None is refused, and the user's own functions' errors are wrapped alike."""
from __future__ import annotations

import numpy as np
import pytest

import tinymech as tm
from tinymech import analysis, patching
from tinymech.errors import AnalysisError, TinymechError

TEXT = "Mr Darcy walked in. Mr Bingley"  # 8 tokens with BOS
OTHER = "Mr Bingley walked in. Mr Darcy"
ANSWERS = (" in", " out")


@pytest.fixture(scope="module")
def demo():
    return tm.load()


@pytest.fixture(scope="module")
def clean(demo):
    """(corrupted tokens, the clean run's cache) for tinymech.patching."""
    _, cache = demo.run_with_cache(demo.to_tokens(OTHER))
    return demo.to_tokens(TEXT), cache


def last_logit(logits):
    return float(np.asarray(logits)[:, -1, 5].mean())


# ---- foreign exceptions become tinymech's, each naming what to give ----

@pytest.mark.parametrize("call, match", [
    (lambda m: analysis.logit_lens(m, TEXT, answers=[]), "non-empty list of tokens"),
    (lambda m: analysis.logit_lens(m, TEXT, cache=5), "cache is the input's run_with_cache cache"),
    (lambda m: analysis.detect_head(m, TEXT, "induction_head", heads=[(0,)]), r"\(0,\) is not a \(layer, head\)"),
    (lambda m: analysis.detect_head(m, TEXT, "induction_head", heads={0: 5}), r"heads is \[\(layer, head\)"),
    (lambda m: analysis.detect_head(m, TEXT, "induction_head", heads=[(0.5, 1)]), "layer must be a whole number"),
    (lambda m: analysis.detect_head(m, TEXT, "induction_head", cache={}), "cache has no blocks.0.attn.hook_pattern"),
    (lambda m: analysis.detect_head(m, TEXT, "induction_head", cache=5), "cache is the input's run_with_cache"),
    (lambda m: analysis.detect_head(m, TEXT, np.array([["a"]])), "detection pattern array holds numbers"),
    (lambda m: analysis.repeated_tokens(m, 1.5), "seq_len must be a whole number"),
    (lambda m: analysis.repeated_tokens(m, 3, 2, seed=-1), "seed must be >= 0"),
    (lambda m: analysis.patch_resid_pre(m, TEXT, OTHER, metric=5), "a metric is a function, not int"),
    (lambda m: analysis.saliency(m, TEXT, method="integrated_gradients", baseline=[[1], [2, 3]]),
     "baseline array is rectangular"),
    (lambda m: analysis.make_ioi_prompts(m, n=2.5), "n must be a whole number"),
    (lambda m: analysis.make_ioi_prompts(m, n=2, templates=["{X} went to"]), r"'\{X\} went to' does not format"),
    (lambda m: analysis.make_ioi_prompts(m, n=2, templates="When {A} and {B} went"), "give \\[template\\] for one"),
    (lambda m: analysis.head_summary(m, seq_len=5, batch=1).top_heads("foo"), "not 'foo'"),
    (lambda m: analysis.logit_attribution(m, TEXT, " in")["nope"], "no component 'nope'"),
])
def test_hostile_arguments_get_tinymech_errors(demo, call, match):
    with pytest.raises(TinymechError, match=match):
        call(demo)


def test_index_df_outside_the_activation_is_refused(demo, clean):
    tokens, cache = clean
    with pytest.raises(AnalysisError, match=r"pos 99 is outside the activation's 8"):
        patching.generic_activation_patch(demo, tokens, cache, last_logit, patching.layer_pos_patch_setter,
                                          "resid_pre", index_df=np.array([[0, 99]]))
    # a negative position counts from the end, as numpy's, torch's and TransformerLens's indexing
    back = patching.generic_activation_patch(demo, tokens, cache, last_logit, patching.layer_pos_patch_setter,
                                             "resid_pre", index_df=np.array([[0, -1]]))
    ahead = patching.generic_activation_patch(demo, tokens, cache, last_logit, patching.layer_pos_patch_setter,
                                              "resid_pre", index_df=np.array([[0, 7]]))
    np.testing.assert_array_equal(back, ahead)


@pytest.mark.parametrize("kw", [dict(index_axis_names="layer"), dict(index_df=np.array([[0, 1, 2]]))])
def test_a_setter_refuses_an_index_of_another_length(demo, clean, kw):
    """zip in the setter dropped what did not pair up: ("layer",) patched the whole layer and a third
    column was ignored; TransformerLens's setters assert the index's length."""
    tokens, cache = clean
    with pytest.raises(AnalysisError, match=r"takes an index \(layer, pos\)"):
        patching.generic_activation_patch(demo, tokens, cache, last_logit, patching.layer_pos_patch_setter,
                                          "resid_pre", **kw)


# ---- what is shown is what was computed ----

def test_lens_table_refuses_positions_outside_the_input(demo):
    result = analysis.logit_lens(demo, TEXT, k=2)
    assert result.tokens.shape == (8,)
    for pos in (99, 8, -9):
        with pytest.raises(AnalysisError, match="pos must be"):
            result.table(pos=pos)
    assert "at position 7 " in result.table(pos=-1).splitlines()[0]
    assert "at position 0 " in result.table(pos=-8).splitlines()[0]
    with pytest.raises(AnalysisError, match="batch must be"):
        analysis.logit_lens(demo, [TEXT, OTHER]).table(batch=5)


def test_attribution_title_names_each_sequences_token(demo):
    result = analysis.logit_attribution(demo, [TEXT, OTHER], list(ANSWERS))
    assert result.token[0] != result.token[1]
    title = result.table(3).splitlines()[0]
    assert "·in, ·out" in title and "mean over 2 sequences" in title
    same = analysis.logit_attribution(demo, [TEXT, OTHER], " in").table(3).splitlines()[0]
    assert "logit(·in) at position" in same


def test_head_summary_top_counts(demo):
    with pytest.raises(AnalysisError, match="top must be >= 0"):
        analysis.head_summary(demo, seq_len=5, batch=1, top=-1)
    summary = analysis.head_summary(demo, seq_len=5, batch=1)
    assert summary.top_heads("induction", top=0) == []
    assert len(summary.top_heads("induction", top=2)) == 2
    assert len(summary.top_heads("induction")) == summary.top
    with pytest.raises(AnalysisError, match="top must be >= 0"):
        summary.top_heads("induction", top=-1)


@pytest.mark.parametrize("value", [None, "x", [1.0, 2.0]])
def test_patching_refuses_a_metric_that_returns_no_number(demo, value):
    with pytest.raises(AnalysisError, match="the metric must return one number"):
        analysis.patch_resid_pre(demo, TEXT, OTHER, metric=lambda logits: value)


# ---- the user's own functions: their errors wrapped alike, the original kept ----

def _boom(*args):
    raise RuntimeError("boom")


@pytest.mark.parametrize("call", [
    lambda m, c: analysis.patch_resid_pre(m, TEXT, OTHER, metric=_boom),
    lambda m, c: patching.get_act_patch_resid_pre(m, c[0], c[1], _boom),
    lambda m, c: patching.generic_activation_patch(m, c[0], c[1], last_logit, _boom, "resid_pre", ["layer", "pos"]),
])
def test_users_functions_errors_are_wrapped(demo, clean, call):
    with pytest.raises(AnalysisError, match="'_boom' raised RuntimeError: boom") as caught:
        call(demo, clean)
    assert isinstance(caught.value.__cause__, RuntimeError)


@pytest.mark.parametrize("call", [
    lambda m: analysis.patch_resid_pre(m, TEXT, OTHER, answers=ANSWERS, progress=_boom),
    lambda m: analysis.ioi_patching(m, n=2, activation="attn_out_all_pos", progress=_boom),
    lambda m: analysis.ioi_patching(m, n=2, activation="attn_out_all_pos", progress=_boom, method="attribution"),
])
def test_a_progress_function_can_stop_a_sweep_with_its_own_exception(demo, call):
    with pytest.raises(RuntimeError, match="boom"):  # as raised: a caller's except catches it
        call(demo)


def test_a_metric_of_one_number_in_a_list_and_the_last_sequence_of_a_lens(demo):
    # a one-element list or tuple was a number before the review; batch=-1 counts from the end as pos does
    one = analysis.patch_resid_pre(demo, TEXT, OTHER, metric=lambda logits: [float(logits[0, -1, 0])])
    again = analysis.patch_resid_pre(demo, TEXT, OTHER, metric=lambda logits: (float(logits[0, -1, 0]),))
    np.testing.assert_array_equal(one.values, again.values)
    lens = analysis.logit_lens(demo, [TEXT, TEXT])
    assert lens.table(batch=-1) == lens.table(batch=1)
