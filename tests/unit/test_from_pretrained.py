"""tm.from_pretrained / HookedTransformer.from_pretrained: TransformerLens's entry point, its
weight processing on by default (tm.load leaves it off), the CPU only."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import tinymech as tm

PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)


def test_from_pretrained_processes_as_transformerlens_by_default():
    tokens = np.arange(1, 9)[None]
    processed = tm.load(None, **PROCESSING)
    for model in (tm.from_pretrained(), tm.HookedTransformer.from_pretrained(None)):
        assert model.cfg.normalization_type == "LNPre"
        _, a = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_mid")
        _, b = processed.run_with_cache(tokens, names_filter="blocks.1.hook_resid_mid")
        np.testing.assert_array_equal(a["blocks.1.hook_resid_mid"], b["blocks.1.hook_resid_mid"])
    raw = tm.HookedTransformer.from_pretrained_no_processing(None)
    assert raw.cfg.normalization_type == "LN"
    np.testing.assert_array_equal(raw(tokens), tm.load()(tokens))


def test_from_pretrained_takes_transformerlens_keywords_and_runs_on_the_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tm.from_pretrained(None, device="cpu", move_to_device=True, default_prepend_bos=True, dtype="float32")
    with pytest.warns(UserWarning, match="CPU"):
        tm.from_pretrained(None, device="cuda")
    assert tm.from_pretrained(None, dtype="bfloat16").dtype == "bf16"
    assert tm.from_pretrained(None, dtype="torch.float32").dtype == "float32"  # str(torch.float32)
    for load in (tm.from_pretrained, tm.HookedTransformer.from_pretrained_no_processing, tm.load):
        with pytest.raises(tm.InvalidInputError, match="dtype must be 'float32' or 'bf16'"):
            load(None, dtype="float16")  # was a plain ValueError
    refactored = tm.from_pretrained(None, refactor_factored_attn_matrices=True)  # was refused
    tokens = refactored.to_tokens("Mr Darcy walked in")
    assert np.allclose(refactored(tokens), tm.from_pretrained(None)(tokens), atol=1e-4)
    W_O = refactored.W_O[0]
    assert np.allclose(W_O @ W_O.transpose(0, 2, 1), np.eye(refactored.cfg.d_head), atol=1e-4)
    with pytest.raises(tm.InvalidInputError, match="n_devices"):
        tm.from_pretrained(None, n_devices=2)
    with pytest.raises(tm.InvalidInputError, match="unexpected keyword 'fold_lnn'"):
        tm.from_pretrained(None, fold_lnn=True)
    with pytest.raises(tm.InvalidInputError, match="padding_side"):
        tm.from_pretrained(None, default_padding_side="middle")
