"""Attribution patching without torch: each value is the target run's metric plus the
directional derivative of the metric along (source - target) at that index, checked by central
differences of tinymech's own forward; the result has activation patching's shapes for every kind
and tracks its values; hostile input gets precise errors."""
from __future__ import annotations

import numpy as np
import pytest

import tinymech as tm
from tinymech import analysis
from tinymech.errors import AnalysisError
from tinymech.analysis.attribution_patching import KINDS, layout_of
from tinymech.analysis.patching import ACTIVATIONS

CLEAN = "Mr Bingley walked in. Mr Darcy walked"
CORRUPTED = "Mr Bingley walked in. Mr Bennet walked"
ANSWERS = (" in", " out")


@pytest.fixture(scope="module")
def demo():
    return tm.load()


def logit_diff64(logits, good, bad) -> float:
    last = np.asarray(logits, dtype=np.float64)[:, -1]
    rows = np.arange(last.shape[0])
    return float((last[rows, good] - last[rows, bad]).mean())


def _index_slice(activation_layout, axes, index):
    """The part of an activation [batch, ...] one patch covers."""
    at = dict(zip(axes[1:], index[1:]))
    return (slice(None),) + tuple(at.get(axis, slice(None)) for axis in activation_layout)


def _directional_derivative(model, target, source_act, target_act, name, where, good, bad, eps=0.2):
    """d metric / dt of the target run with target + t (source - target) at `where`, at t = 0:
    central differences at eps and eps / 2, extrapolated (Richardson), since float32 rounding
    rules out a small eps and a whole patch's curvature a large one."""

    def run(t):
        def shift(act, hook):
            act = act.copy()
            act[where] += t * (source_act[where] - target_act[where])
            return act

        return logit_diff64(model.run_with_hooks(target, fwd_hooks=[(name, shift)]), good, bad)

    def central(h):
        return (run(h) - run(-h)) / (2 * h)

    return (4 * central(eps / 2) - central(eps)) / 3


def _runs(demo, mode):
    """Batch 2, corrupted differently in each sequence: (source, target, metric, good, bad)."""
    clean = demo.to_tokens([CLEAN] * 2)
    corrupted = demo.to_tokens([CORRUPTED] * 2)
    corrupted[1, 2] = clean[1, 3]
    good, bad = demo.to_single_token(" in"), demo.to_single_token(" out")
    source, target = (clean, corrupted) if mode == "denoise" else (corrupted, clean)
    return clean, corrupted, source, target, ("logit_diff", good, bad)


@pytest.mark.parametrize("over", sorted(KINDS))
@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_each_value_is_the_patchs_part_of_the_gradient(demo, over, mode):
    """Every index against its slice of (source - target) * gradient summed by hand, from the
    caches of a plain run of the source and a backward of the target."""
    clean, corrupted, source, target, metric = _runs(demo, mode)
    result = analysis.attribution_patch(demo, clean, corrupted, metric=metric, over=over, mode=mode)
    suffix, axes = KINDS[over]
    assert result.axes == axes and result.method == "attribution"
    names = [f"blocks.{layer}.{suffix}" for layer in range(demo.cfg.n_layers)]
    _, src = demo.run_with_cache(source, names_filter=names)
    logits, tgt = demo.run_with_cache(target, names_filter=names, incl_bwd=True, metric=metric)
    target_score = logit_diff64(logits, metric[1], metric[2])
    assert (result.corrupted if mode == "denoise" else result.clean) == pytest.approx(target_score, abs=1e-5)
    expected = np.zeros(result.values.shape)
    for index in np.ndindex(*result.values.shape):
        name = names[index[0]]
        where = _index_slice(layout_of(suffix), axes, index)
        part = (src[name][where].astype(np.float64) - tgt[name][where]) * tgt[name + "_grad"][where]
        expected[index] = target_score + part.sum()
    np.testing.assert_allclose(result.values, expected, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("over", ["head_z", "head_pattern", "mlp_post", "attn_out_all_pos", "resid_pre"])
@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_each_value_is_the_metric_plus_a_directional_derivative(demo, over, mode):
    """A few indices against central differences of the forward along the patch: the
    gradient is the target run's, with the metric's batch mean."""
    clean, corrupted, source, target, (_, good, bad) = _runs(demo, mode)
    result = analysis.attribution_patch(demo, clean, corrupted, metric=("logit_diff", good, bad), over=over,
                                        mode=mode)
    suffix, axes = KINDS[over]
    target_score = logit_diff64(demo(target), good, bad)
    rng = np.random.default_rng(0)
    for _ in range(3):
        index = tuple(int(rng.integers(n)) for n in result.values.shape)
        name = f"blocks.{index[0]}.{suffix}"
        _, src = demo.run_with_cache(source, names_filter=[name])
        _, tgt = demo.run_with_cache(target, names_filter=[name])
        where = _index_slice(layout_of(suffix), axes, index)
        change = _directional_derivative(demo, target, src[name], tgt[name], name, where, good, bad)
        # float32 forwards: a whole residual's patch is far from small, the differences good to ~1e-3
        assert result.values[index] - target_score == pytest.approx(change, rel=3e-2, abs=3e-4), (over, index)


def test_shapes_equal_activation_patchings_and_the_values_track_them(demo):
    """Every kind activation patching has: one shape, one clean and corrupted score; on a
    one-token corruption the two maps agree closely (their correlation)."""
    for kind in ACTIVATIONS:
        ours = analysis.attribution_patch(demo, CLEAN, CORRUPTED, answers=ANSWERS, over=kind)
        theirs = analysis.patch_activations(demo, CLEAN, CORRUPTED, kind, answers=ANSWERS)
        assert ours.values.shape == theirs.values.shape and ours.axes == theirs.axes, kind
        # the same runs summed in other orders: a taped forward gives the same bits for any
        # thread count, a plain one splits a few rows' matmuls over K by threads (1.7e-5
        # apart on 2.88 with 2 threads on AVX-512)
        assert ours.clean == pytest.approx(theirs.clean, rel=5e-5, abs=1e-5)
        assert ours.corrupted == pytest.approx(theirs.corrupted, rel=5e-5, abs=1e-5)
        assert ours.pos_labels == theirs.pos_labels
        if ours.values.size > 4:
            assert np.corrcoef(ours.values.ravel(), theirs.values.ravel())[0, 1] > 0.9, kind


def test_a_small_patch_approaches_activation_patching(demo):
    """Patching a fraction t of the difference: the error of the first-order estimate falls as t²."""
    clean, corrupted = demo.to_tokens(CLEAN), demo.to_tokens(CORRUPTED)
    metric = analysis.logit_diff_metric(demo, ANSWERS)
    result = analysis.attribution_patch(demo, clean, corrupted, metric, over="head_z")
    name, layer, head = "blocks.2.attn.hook_z", 2, int(np.abs(result.values[2] - result.corrupted).argmax())
    _, src = demo.run_with_cache(clean, names_filter=[name])
    errors = []
    for t in (0.2, 0.02):
        def part(act, hook, t=t):
            act = act.copy()
            act[:, :, head] += t * (src[name][:, :, head] - act[:, :, head])
            return act

        patched = metric(demo.run_with_hooks(corrupted, fwd_hooks=[(name, part)]))
        estimate = result.corrupted + t * (result.values[layer, head] - result.corrupted)
        errors.append(abs(patched - estimate))
    assert errors[1] < 0.05 * errors[0] + 1e-5


def test_metrics_and_the_neuron_grids(demo):
    """answers=, logit_diff_metric, a (value, grad) function and the built-in give one result;
    the per-neuron kinds sum to their all-positions twin and print as grids."""
    good, bad = demo.to_single_token(" in"), demo.to_single_token(" out")

    def by_hand(logits):
        grad = np.zeros(logits.shape, np.float32)
        grad[:, -1, good], grad[:, -1, bad] = 1.0 / len(logits), -1.0 / len(logits)
        return logit_diff64(logits, good, bad), grad

    results = [analysis.attribution_patch(demo, CLEAN, CORRUPTED, metric=m, answers=a, over="head_z")
               for m, a in [(None, ANSWERS), (analysis.logit_diff_metric(demo, ANSWERS), None), (by_hand, None),
                            (("logit_diff", good, bad), None)]]
    for r in results[1:]:
        np.testing.assert_allclose(r.values, results[0].values, atol=1e-5)
    per_pos = analysis.attribution_patch(demo, CLEAN, CORRUPTED, answers=ANSWERS, over="mlp_post")
    all_pos = analysis.attribution_patch(demo, CLEAN, CORRUPTED, answers=ANSWERS, over="mlp_post_all_pos")
    assert per_pos.values.shape == (demo.cfg.n_layers, 9, demo.cfg.d_mlp)
    np.testing.assert_allclose((per_pos.values - per_pos.corrupted).sum(1), all_pos.values - all_pos.corrupted,
                               atol=1e-6)
    grid, rows, columns, title = per_pos.labelled_grid()
    assert grid.shape == (len(rows), len(columns)) == (demo.cfg.n_layers * 9, demo.cfg.d_mlp)
    assert title.startswith("Attribution patching mlp_post") and rows[0].startswith("L0 0:")
    assert all_pos.labelled_grid()[2][:2] == ["N0", "N1"]
    loss = analysis.attribution_patch(demo, CLEAN, CORRUPTED, metric="loss", over="attn_out_all_pos")
    assert loss.clean == pytest.approx(float(demo(CLEAN, return_type="loss")), abs=1e-5)
    assert np.isfinite(loss.values).all()


def test_ioi_attribution_has_ioi_patchings_axes(demo):
    prompts = analysis.make_ioi_prompts(demo, n=4)  # the bundled demo's tokenizer has the names
    ours = analysis.ioi_patching(demo, prompts, "head_z", method="attribution")
    theirs = analysis.ioi_patching(demo, prompts, "head_z")
    assert ours.values.shape == theirs.values.shape and ours.method == "attribution"
    assert ours.clean == pytest.approx(theirs.clean, abs=1e-4)
    with pytest.raises(AnalysisError, match="method must be one of"):
        analysis.ioi_patching(demo, prompts, method="gradients")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(corrupted="Mr Bennet"), AnalysisError, "same shape"),
    (dict(over="head_out"), AnalysisError, "over must be one of"),
    (dict(over=["head_z"]), AnalysisError, "over must be one of"),
    (dict(metric=lambda logits: 1 / 0, answers=None), AnalysisError, "raised ZeroDivisionError"),
    (dict(metric=lambda logits: ("x", np.zeros(logits.shape)), answers=None), AnalysisError, "one number"),
    (dict(mode="both"), AnalysisError, "mode must be one of"),
    (dict(answers=None), AnalysisError, "give a metric, or answers"),
    (dict(answers=(" in",)), AnalysisError, "answers are"),
    (dict(answers=[ANSWERS] * 3), AnalysisError, "one answer pair or one per sequence"),
    (dict(answers=(" in", " Bingley walked")), tm.TinymechError, "single token|one token"),
    (dict(metric=lambda logits: 1.0, answers=None), AnalysisError, "returned float"),
    (dict(metric=("logit_diff", 1), answers=None), tm.InvalidInputError, "takes 2 argument"),
    (dict(metric=("logit_diff", 1, 10**9), answers=None), tm.InvalidInputError, "outside the vocabulary"),
    (dict(metric=3, answers=None), AnalysisError, "a metric is a function"),
    (dict(metric=("logit_diff", 1, 2)), AnalysisError, "not both"),
    (dict(clean=[CLEAN, "Mr Darcy"], corrupted=[CORRUPTED, "Mr Bennet"]), tm.InvalidTokensError,
     "different token lengths"),
])
def test_hostile_input_gets_precise_errors(demo, kwargs, error, match):
    args = dict(clean=CLEAN, corrupted=CORRUPTED, answers=ANSWERS) | kwargs
    with pytest.raises(error, match=match):
        analysis.attribution_patch(demo, **args)
