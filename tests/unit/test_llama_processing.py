"""TransformerLens's weight processing on Llama-class models with attention and MLP biases and
grouped queries (TransformerLens's own conversion drops those biases, so it cannot be the
reference here; tests/reference/test_llama_tl.py compares the bias-free shapes with it): the
processing must not change what the model computes, and must do what each flag says."""
from __future__ import annotations

import numpy as np
import pytest

import tinymech as tm
from llama_factory import LLAMA_SHAPES
from numpy_checkpoints import write_llama

FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_llama(tmp_path_factory.mktemp("llama"), **LLAMA_SHAPES["mqa_llama3"])


def log_probs(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@pytest.mark.parametrize("flag", FLAGS + ("all",))
def test_processing_keeps_what_the_model_computes(path, flag):
    raw = tm.load(path)
    model = tm.load(path, **({f: True for f in FLAGS} if flag == "all" else {flag: True}))
    tokens = np.random.default_rng(1).integers(0, raw.cfg.d_vocab, (2, 7))
    np.testing.assert_allclose(log_probs(model(tokens)), log_probs(raw(tokens)), atol=2e-5)
    _, a = raw.run_with_cache(tokens)
    _, b = model.run_with_cache(tokens)
    np.testing.assert_allclose(b["blocks.1.hook_resid_post"], a["blocks.1.hook_resid_post"], rtol=1e-4, atol=1e-5)
    if flag in ("fold_ln", "all"):
        assert model.cfg.normalization_type == "RMSPre"
        np.testing.assert_array_equal(model.ln_final_w, 1.0)
    if flag in ("center_unembed", "all"):
        np.testing.assert_allclose(model.W_U.mean(-1), 0.0, atol=1e-6)
    if flag in ("fold_value_biases", "all"):
        np.testing.assert_array_equal(model.b_V, 0.0)
        assert not np.allclose(model.b_O, raw.b_O)
