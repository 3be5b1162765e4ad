"""The bf16 weight mode on whole models (GPT-2 and Llama shapes, every kernel
variant): a bf16 model equals a float32 model whose matrices were rounded to
bfloat16 beforehand, except where a variant has bfloat16 dot products
(AVX512-BF16), whose prefill matmuls and attention round their activations too
(bounded below); the error against the float32 model is bounded. The kernels'
own checks are in tests/unit/test_bf16.py."""
import numpy as np
import pytest

import tinymech as tm
from tinymech import _core
from tinymech.arch.bf16 import bf16_core_weights, from_bf16, matrix_keys
from tinymech.model import Model
from llama_factory import LLAMA_SHAPES
from model_factory import SHAPES, rel_err
from numpy_checkpoints import write_gpt2, write_llama

pytestmark = pytest.mark.slow

K = _core.kernels
TOL = 1e-4
# Prefill matmuls (attention's included) round their inputs to bfloat16 (2^-9
# relative each); random weights amplify that through the layers to ~3e-2 of
# the largest logit (the trained demo model: under 1e-2, checked in tests/unit/test_bf16.py).
DOT_TOL = 0.05


def tolerance(rows: int) -> float:
    """How close a bf16 forward of `rows` rows (batch × positions) must be to the rounded twin."""
    return DOT_TOL if K.bf16_dot_products() and rows > K.small_rows() else TOL


def rounded_twin(model: Model) -> Model:
    """A float32 model whose matrices hold exactly the bf16 model's values."""
    core = bf16_core_weights(model._weights, matrix_keys(model.cfg.core_dict()))
    widened = {k: (from_bf16(v) if isinstance(v, np.ndarray) and v.dtype == np.uint16 else v)
               for k, v in core.items() if k != "layers"}
    widened["layers"] = [{k: (from_bf16(v) if isinstance(v, np.ndarray) and v.dtype == np.uint16 else v)
                          for k, v in layer.items()} for layer in core["layers"]]
    return Model(model.cfg, widened, model.tokenizer)


def build(kind: str, path):
    if kind in SHAPES:
        write_gpt2(path, **SHAPES[kind])
    elif kind == "gpt2_untied":
        write_gpt2(path, tie_word_embeddings=False, **SHAPES["odd"])
    else:
        write_llama(path, **LLAMA_SHAPES[kind])
    return tm.load(path, dtype="bf16"), tm.load(path)


@pytest.fixture(scope="module", params=["small", "odd", "gpt2_untied", "gqa", "mha_tied"])
def models(request, tmp_path_factory):
    bf16, f32 = build(request.param, tmp_path_factory.mktemp(request.param))
    return bf16, f32, rounded_twin(f32)


def test_bf16_equals_float32_on_rounded_weights(models, variant):
    bf16, _, twin = models
    rng = np.random.default_rng(1)
    for batch, length in ((1, 1), (2, 2), (2, 7), (1, bf16.cfg.n_ctx)):
        tokens = rng.integers(0, bf16.cfg.d_vocab, (batch, length))
        assert rel_err(bf16(tokens), twin(tokens)) <= tolerance(batch * length), (batch, length)


def test_bf16_cached_decode_and_hooks(models, variant):
    bf16, _, twin = models
    tokens = np.random.default_rng(2).integers(0, bf16.cfg.d_vocab, (2, 12))
    cache = bf16.new_cache(batch=2)
    bf16.forward(tokens[:, :1], cache=cache)  # two rows: decoded like the steps, on every variant
    steps = [bf16.forward(tokens[:, t : t + 1], cache=cache, logits="last") for t in range(1, 12)]
    assert rel_err(np.stack(steps, axis=1), twin(tokens)[:, 1:]) <= TOL
    names = ["blocks.0.attn.hook_pattern", "blocks.1.hook_mlp_out", "ln_final.hook_normalized"]
    _, ours = bf16.run_with_cache(tokens, names_filter=names)
    _, ref = twin.run_with_cache(tokens, names_filter=names)
    for name in names:
        assert rel_err(ours[name], ref[name]) <= tolerance(tokens.size), name


def test_kernel_variant_without_dot_products_keeps_float32_arithmetic(models):
    """The documented switch: a variant without bf16 dot products makes a bf16
    prefill equal the rounded twin; an unknown variant is refused by name."""
    bf16, _, twin = models
    before = tm.kernel_variant()
    assert before == tm.kernel_variants()[0]
    plain = [v for v in tm.kernel_variants() if v != "avx512_bf16"][0]
    tokens = np.random.default_rng(5).integers(0, bf16.cfg.d_vocab, (2, 9))
    try:
        tm.set_kernel_variant(plain)
        assert tm.kernel_variant() == plain and not K.bf16_dot_products()
        assert rel_err(bf16(tokens), twin(tokens)) <= TOL
    finally:
        tm.set_kernel_variant(before)
    with pytest.raises(ValueError, match="'sse9' is not available"):
        tm.set_kernel_variant("sse9")
    assert tm.kernel_variant() == before


def test_bf16_error_against_float32_is_bounded(models):
    """Only the weights are rounded (8-bit mantissa, relative error ≤ 2^-9 each),
    so logits move by a small fraction of their range (random weights
    amplify it more than trained ones; the demo model is checked in tests/unit/test_bf16.py)."""
    bf16, f32, _ = models
    tokens = np.random.default_rng(3).integers(0, bf16.cfg.d_vocab, (2, bf16.cfg.n_ctx))
    ours, ref = bf16(tokens), f32(tokens)
    assert 0 < np.abs(ours - ref).max() <= 0.05 * np.abs(ref).max()
    assert bf16.dtype == "bf16" and f32.dtype == "float32" and "bf16" in repr(bf16)
    assert bf16.W_U.dtype == np.float32  # the Python side keeps float32 weights


def test_bf16_gradients_equal_the_rounded_twins(models, variant):
    """A backward of a bf16 model: the gradients of the float32 model on its rounded weights (the
    backward's matmuls read the same bfloat16 matrices the forward does), at every hook point."""
    bf16, _, twin = models
    rng = np.random.default_rng(2)
    for batch, length in ((1, 1), (2, 7)):
        tokens = rng.integers(0, bf16.cfg.d_vocab, (batch, length))
        metric = ("log_prob", rng.integers(0, bf16.cfg.d_vocab, batch))
        _, ours = bf16.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=metric)
        _, ref = twin.run_with_cache(tokens, prepend_bos=False, incl_bwd=True, metric=metric)
        for name in ref.keys():
            if name.endswith("_grad"):
                assert rel_err(ours[name], ref[name]) <= 2 * tolerance(batch * length), (name, batch, length)
