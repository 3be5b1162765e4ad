"""tinymech.patching (TransformerLens's transformer_lens.patching under its names) without
the reference libraries: each patch equals the same patch made by a Python hook, the
functions agree with tinymech.analysis's patching, and hostile arguments get AnalysisError."""
import numpy as np
import pytest

import tinymech as tm
from model_factory import SHAPES
from numpy_checkpoints import write_gpt2
from tinymech import analysis
from tinymech.analysis import AnalysisError


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tl_patching")
    write_gpt2(path, std=0.3, **SHAPES["odd"])  # 3 layers, 3 heads, d_head 20, 301 tokens
    return tm.load(path)


@pytest.fixture(scope="module")
def runs(model):
    """Clean and corrupted tokens [2, 4] and the clean run's cache."""
    rng = np.random.default_rng(4)
    clean = rng.integers(0, model.cfg.d_vocab, (2, 4))
    corrupted = clean.copy()
    corrupted[:, 1] = rng.integers(0, model.cfg.d_vocab, 2)
    _, cache = model.run_with_cache(clean)
    return clean, corrupted, cache


def metric(logits):
    return float((logits[:, -1, 3] - logits[:, -1, 7]).mean() + 0.1 * logits[:, :, 5].mean())


def hooked(model, corrupted, cache, name, where):
    """The metric with cache[name][where] patched in by a Python hook."""
    def hook(activation, hook):
        activation[where] = cache[name][where]
        return activation
    return metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)]))


def test_imports_as_transformer_lens_s_module():
    import tinymech.patching as imported

    assert tm.patching is imported
    assert imported.get_act_patch_resid_pre.__name__ == "get_act_patch_resid_pre"
    assert "[layer, pos, head]" in imported.get_act_patch_attn_head_out_by_pos.__doc__


@pytest.mark.parametrize("name,hook,where", [
    ("get_act_patch_resid_pre", "blocks.{0}.hook_resid_pre", lambda l, p: (slice(None), p)),
    ("get_act_patch_resid_mid", "blocks.{0}.hook_resid_mid", lambda l, p: (slice(None), p)),
    ("get_act_patch_attn_head_q_by_pos", "blocks.{0}.attn.hook_q", lambda l, p, h: (slice(None), p, h)),
    ("get_act_patch_attn_head_v_all_pos", "blocks.{0}.attn.hook_v", lambda l, h: (slice(None), slice(None), h)),
    ("get_act_patch_attn_head_pattern_by_pos", "blocks.{0}.attn.hook_pattern", lambda l, h, d: (slice(None), h, d)),
    ("get_act_patch_attn_head_pattern_dest_src_pos", "blocks.{0}.attn.hook_pattern",
     lambda l, h, d, s: (slice(None), h, d, s)),
])
def test_each_patch_equals_a_python_hook(model, runs, name, hook, where):
    clean, corrupted, cache = runs
    values = getattr(tm.patching, name)(model, corrupted, cache, metric)
    assert values.shape[0] == model.cfg.n_layers
    for index in [(0,) + (0,) * (values.ndim - 1), tuple(n - 1 for n in values.shape), (1,) + (1,) * (values.ndim - 1)]:
        expected = hooked(model, corrupted, cache, hook.format(index[0]), where(*index))
        assert values[index] == pytest.approx(expected, rel=1e-5, abs=1e-5), index
    assert np.ptp(values) > 1e-3


def test_axis_orders_are_transformer_lens_s(model, runs):
    clean, corrupted, cache = runs
    by_pos = tm.patching.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, metric)
    ours = analysis.patch_head_z_by_pos(model, clean, corrupted, metric)  # [layer, head, pos]
    np.testing.assert_allclose(by_pos, ours.values.transpose(0, 2, 1), rtol=1e-6, atol=1e-6)
    assert by_pos.shape == (3, 4, 3)
    patterns = tm.patching.get_act_patch_attn_head_pattern_by_pos(model, corrupted, cache, metric)
    every = tm.patching.get_act_patch_attn_head_by_pos_every(model, corrupted, cache, metric)
    assert every.shape == (5, 3, 4, 3)
    np.testing.assert_array_equal(every[0], by_pos)
    np.testing.assert_array_equal(every[4], patterns.transpose(0, 2, 1))
    blocks = tm.patching.get_act_patch_block_every(model, corrupted, cache, metric)
    np.testing.assert_array_equal(blocks[2], tm.patching.get_act_patch_mlp_out(model, corrupted, cache, metric))
    assert tm.patching.get_act_patch_attn_head_all_pos_every(model, corrupted, cache, metric).shape == (5, 3, 3)


def test_a_last_position_metric_and_one_patch_per_run_give_the_same_values(model, runs, monkeypatch):
    clean, corrupted, cache = runs
    last_only = analysis.logit_diff_metric(model, [(3, 7)])  # reads the last position only, as it says
    together = tm.patching.get_act_patch_attn_head_pattern_dest_src_pos(model, corrupted, cache, last_only)
    monkeypatch.setattr(analysis.patching, "_ROWS_PER_RUN", 1)
    alone = tm.patching.get_act_patch_attn_head_pattern_dest_src_pos(model, corrupted, cache,
                                                                     lambda logits: last_only(logits))
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)
    assert np.ptp(alone) > 1e-3


def test_generic_patch_with_an_index_table(model, runs):
    clean, corrupted, cache = runs

    def setter(activation, index, clean_activation):
        assert index == [2, 3] or index == [0, 1]
        activation[:, index[1]] = clean_activation[:, index[1]]
        return activation

    values = tm.patching.generic_activation_patch(model, corrupted, cache, metric, setter, "mlp_out",
                                                  index_df=np.array([[2, 3], [0, 1]]))
    grid = tm.patching.get_act_patch_mlp_out(model, corrupted, cache, metric)
    np.testing.assert_allclose(values, [grid[2, 3], grid[0, 1]], rtol=1e-6)


def wrong_shape_setter(activation, index, clean):
    return activation[:, :1]


@pytest.mark.parametrize("change,message", [
    (dict(clean_cache=42), "clean_cache is the clean run's cache"),
    (dict(patching_metric=lambda logits: logits[:, -1, :2].sum(0)), "one number, not ndarray of shape [2]"),
    (dict(patching_metric=lambda logits: "high"), "one number, not str"),
    (dict(activation_name="resid"), "unknown activation name 'resid'"),
    (dict(activation_name=3), "activation_name is a name"),
    (dict(activation_name="embed"), "no hook point 'hook_embed' in its blocks"),
    (dict(index_axis_names=("pos", "layer")), "start with 'layer'"),
    (dict(index_axis_names=("layer", "neuron")), "start with 'layer'"),
    (dict(index_df=[[0, 1]]), "not both or neither"),
    (dict(index_axis_names=None), "not both or neither"),
    (dict(index_axis_names=None, index_df=[[3, 0]]), "layer 3 is outside the model's 3 layers"),
    (dict(index_axis_names=None, index_df=[[0.5, 1]]), "integer indices"),
    (dict(index_axis_names=None, index_df=[0, 1]), "integer indices"),
    (dict(patch_setter=wrong_shape_setter), "the patch setter returned shape [2, 1, 60]"),
    (dict(patch_setter=None), "are functions"),
])
def test_hostile_arguments_get_analysis_errors(model, runs, change, message):
    clean, corrupted, cache = runs
    args = dict(model=model, corrupted_tokens=corrupted, clean_cache=cache, patching_metric=metric,
                patch_setter=tm.patching.layer_pos_patch_setter, activation_name="resid_pre",
                index_axis_names=("layer", "pos"))
    with pytest.raises(AnalysisError) as raised:
        tm.patching.generic_activation_patch(**dict(args, **change))
    assert message in str(raised.value)
    assert isinstance(raised.value, tm.TinymechError)


def test_a_cache_that_does_not_fit_the_corrupted_run_is_refused(model, runs):
    clean, corrupted, cache = runs
    _, partial = model.run_with_cache(clean, names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(AnalysisError, match="has no 'blocks.0.hook_attn_out'"):
        tm.patching.get_act_patch_attn_out(model, corrupted, partial, metric)
    with pytest.raises(AnalysisError, match=r"is \[2, 4, 60\] where the corrupted run's is \[2, 3, 60\]"):
        tm.patching.get_act_patch_resid_pre(model, corrupted[:, :3], cache, metric)
    with pytest.raises(tm.InvalidTokensError):
        tm.patching.get_act_patch_resid_pre(model, corrupted + model.cfg.d_vocab, cache, metric)
