"""tinymech.analysis against TransformerLens's own head detector and activation
patching, on the shared random GPT-2 checkpoint (conftest's gpt2 fixture) with
d_head 20, given the demo model's tokenizer on both sides."""
import numpy as np
import pytest
import torch
import transformers
from transformer_lens import head_detector, patching

import tinymech as tm
from tinymech import analysis
from tinymech.io.sources import default_model_dir
from tl_reference import hooked_transformer

N_LAYERS, N_HEADS = 2, 3
SHAPE = dict(n_layer=N_LAYERS, n_embd=60, n_head=N_HEADS, n_positions=40, vocab_size=8192)
TEXT = "When Mary and John went to the park, Mary and John sat down and Mary said"


@pytest.fixture(scope="module")
def models(gpt2):
    """(tinymech Model, HookedTransformer) with the same weights and tokenizer."""
    hf, _, path = gpt2(SHAPE)
    model = tm.load(path)  # our own copy, so the shared one keeps no tokenizer
    model.tokenizer = tm.Tokenizer.from_dir(default_model_dir(), None, None)
    reference = hooked_transformer(hf)
    reference.set_tokenizer(transformers.AutoTokenizer.from_pretrained(default_model_dir()))
    return model, reference


def test_same_tokens_and_logits(models):
    model, reference = models
    tokens = reference.to_tokens(TEXT)
    np.testing.assert_array_equal(model.to_tokens(TEXT), tokens.numpy())
    with torch.no_grad():
        expected = reference(tokens).numpy()
    np.testing.assert_allclose(model(TEXT), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("name", ["previous_token_head", "duplicate_token_head", "induction_head"])
@pytest.mark.parametrize("error_measure", ["mul", "abs"])
@pytest.mark.parametrize("exclude_bos,exclude_current_token", [(False, False), (True, False), (True, True)])
def test_detect_head_equals_transformer_lens(models, name, error_measure, exclude_bos, exclude_current_token):
    model, reference = models
    options = dict(exclude_bos=exclude_bos, exclude_current_token=exclude_current_token, error_measure=error_measure)
    with torch.no_grad():
        expected = head_detector.detect_head(reference, TEXT, name, **options).numpy()
    got = analysis.detect_head(model, TEXT, name, **options)
    assert got.shape == (N_LAYERS, N_HEADS)
    # "abs" scores are rounded to 3 decimals on both sides
    np.testing.assert_allclose(got, expected, atol=1e-4 if error_measure == "mul" else 1.5e-3)
    if error_measure == "mul" and not exclude_bos:
        assert np.ptp(got) > 1e-3  # the heads differ


def test_detect_head_lists_heads_and_arrays_equal_transformer_lens(models):
    model, reference = models
    texts = [TEXT, "The king said that the king was the king"]
    heads = [(0, 1), (1, 2)]
    with torch.no_grad():
        expected = head_detector.detect_head(reference, texts, "induction_head", heads=heads).numpy()
        pattern = head_detector.get_previous_token_head_detection_pattern(reference.to_tokens(TEXT))
        expected_array = head_detector.detect_head(reference, TEXT, pattern).numpy()
    np.testing.assert_allclose(analysis.detect_head(model, texts, "induction_head", heads=heads), expected, atol=1e-4)
    np.testing.assert_allclose(analysis.detect_head(model, TEXT, pattern.numpy()), expected_array, atol=1e-4)


@pytest.fixture(scope="module")
def patching_setup(models):
    """Two IOI prompts of one template, their ABC corruptions, and the
    logit-difference metric on both libraries."""
    model, reference = models
    prompts = analysis.make_ioi_prompts(model, n=2, seed=3, templates=[analysis.ioi.TEMPLATES[0]])
    clean, corrupted = model.to_tokens(prompts.clean), model.to_tokens(prompts.corrupted)
    answers = np.stack([prompts.io_ids, prompts.s_ids], axis=1)

    def reference_metric(logits):
        last = logits[:, -1]
        rows = torch.arange(last.shape[0])
        return (last[rows, answers[:, 0]] - last[rows, answers[:, 1]]).mean()

    with torch.no_grad():
        _, clean_cache = reference.run_with_cache(torch.as_tensor(clean))
    return clean, corrupted, answers, clean_cache, reference_metric


@pytest.mark.parametrize("ours,theirs,transpose", [
    ("patch_resid_pre", "get_act_patch_resid_pre", False),
    ("patch_attn_out", "get_act_patch_attn_out", False),
    ("patch_mlp_out", "get_act_patch_mlp_out", False),
    ("patch_head_z", "get_act_patch_attn_head_out_all_pos", False),
    pytest.param("patch_head_z_by_pos", "get_act_patch_attn_head_out_by_pos", True,  # theirs: [layer, pos, head]
                 marks=pytest.mark.slow),
])
def test_patching_equals_transformer_lens(models, patching_setup, ours, theirs, transpose):
    model, reference = models
    clean, corrupted, answers, clean_cache, reference_metric = patching_setup
    with torch.no_grad():
        expected = getattr(patching, theirs)(reference, torch.as_tensor(corrupted), clean_cache,
                                             reference_metric).numpy()
    if transpose:
        expected = expected.transpose(0, 2, 1)
    got = getattr(analysis, ours)(model, clean, corrupted, answers=answers)
    assert got.values.shape == expected.shape
    np.testing.assert_allclose(got.values, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert np.ptp(got.normalized) > 0.1
