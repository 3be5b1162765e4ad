"""The bf16 weight mode: matrices read as bfloat16, sums in float32.

Exactness: a bf16 model must equal a float32 model whose matrices were
rounded to bfloat16 beforehand (the only difference is where the widening
happens), on every kernel variant, except where a variant has bfloat16 dot
products (AVX512-BF16): there, matmuls of more than small_rows() rows also
round their activations to bfloat16, which the kernel test checks exactly
and the model tests bound; so does the prefill's attention, on bfloat16 copies
of the keys and values. The error against the float32 model is bounded.
Here: the kernels, the conversions and the demo model; the random models'
checks are in tests/slow/test_bf16_models.py, the rounding against torch's in
tests/reference/test_bf16_torch.py.
"""
import numpy as np
import pytest

import tinymech as tm
from tinymech import _core
from tinymech.arch.bf16 import from_bf16, to_bf16

K = _core.kernels


def rounded_if_dot(A: np.ndarray) -> np.ndarray:
    """A as a bf16-weight matmul uses it: rounded to bfloat16 where the variant has dot products."""
    if K.bf16_dot_products() and A.shape[0] > K.small_rows():
        return from_bf16(to_bf16(A))
    return A


@pytest.mark.parametrize("M,Kd,N", [(1, 1, 1), (1, 129, 70), (3, 1000, 2100), (4, 33, 17), (5, 300, 513),
                                    (77, 257, 130), (12, 512, 64), (13, 2, 33), (25, 1, 31), (40, 3, 100),
                                    (203, 771, 97), (8, 43, 2048), (16, 35, 100)])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_reads_bf16_weights(variant, M, Kd, N, transposed, threads):
    rng = np.random.default_rng(M + Kd)
    A = rng.standard_normal((M, Kd), dtype=np.float32)
    B16 = to_bf16(rng.standard_normal((Kd, N), dtype=np.float32))
    bias = rng.standard_normal(N, dtype=np.float32)
    ref = rounded_if_dot(A).astype(np.float64) @ from_bf16(B16) + bias
    before = _core.get_num_threads()
    _core.set_num_threads(threads)
    try:
        out = K.matmul(A, np.ascontiguousarray(B16.T) if transposed else B16, bias, transposed)
    finally:
        _core.set_num_threads(before)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_dot_product_rounding_is_to_nearest_even(variant):
    """With one k, C = round(A) · B exactly: the kernel's rounding of A, ties included, is to_bf16's."""
    ties = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 1.0 + 2**-8 + 2**-20, 3.0 - 2**-8,
                     65504.0, 1e-30, -2.5e30, 0.0, -0.0], np.float32)
    A = np.concatenate([ties, np.random.default_rng(0).standard_normal(29).astype(np.float32)])[:, None]
    B16 = to_bf16(np.array([[1.0, -2.0, 0.5]], np.float32))
    out = K.matmul(A, B16)
    np.testing.assert_array_equal(out, rounded_if_dot(A) * from_bf16(B16))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_to_bf16_transposed_over_threads(threads):
    """The loader's conversion: any shape, transposed or not, over any number
    of threads, the same bits as element-wise rounding."""
    rng = np.random.default_rng(5)
    before = _core.get_num_threads()
    _core.set_num_threads(threads)
    try:
        for shape in ((1, 1), (1, 5), (37, 29), (17, 16), (300, 70), (3, 1000)):
            x = rng.standard_normal(shape, dtype=np.float32)
            x[0, 0] = np.nan
            np.testing.assert_array_equal(to_bf16(x, transpose=True), to_bf16(x).T)
        x = rng.standard_normal((2, 3, 70000), dtype=np.float32)  # several chunks per thread
        np.testing.assert_array_equal(to_bf16(x).reshape(-1), to_bf16(x.reshape(-1)))
        assert to_bf16(np.zeros((0, 4), np.float32), transpose=True).shape == (4, 0)
    finally:
        _core.set_num_threads(before)
    with pytest.raises(ValueError, match="2-D"):
        to_bf16(np.ones(3, np.float32), transpose=True)


def test_round_bf16_kernel_matches_to_bf16(variant):
    """The core's float32 -> bfloat16 rounding (attention's keys and values in a
    bf16 prefill) is to_bf16's, body and tail; AVX512-BF16 flushes subnormals to zero."""
    rng = np.random.default_rng(4)
    special = np.array([1e-40, -1e-40, 1e-45, 1.17e-38, np.nan, np.inf, -np.inf, 1 + 2**-8, 3.4e38, -0.0], np.float32)
    for n in (1, 15, 16, 33, 1000):
        x = np.concatenate([special, (rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20, n)).astype(np.float32)])
        x = np.concatenate([x, special])  # in the vector body and in the tail
        expected = x
        if K.bf16_dot_products():
            expected = np.where(np.abs(x) < np.finfo(np.float32).tiny, np.copysign(np.float32(0), x), x)
        np.testing.assert_array_equal(K.round_bf16(x), to_bf16(expected))


def test_demo_model_bf16_predicts_like_float32():
    f32, bf16 = tm.load(), tm.load(dtype="bf16")
    tokens = f32.to_tokens("It is a truth universally acknowledged, that a single man in possession of a good fortune")
    ours, ref = bf16(tokens)[0], f32(tokens)[0]
    assert np.abs(ours - ref).max() <= 0.01 * np.abs(ref).max()
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.9  # near-ties may flip


@pytest.mark.parametrize("bad", ["float16", "int8", "", None])
def test_unknown_dtype_is_refused(bad, tmp_path):
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'bf16'"):
        tm.load(dtype=bad)
