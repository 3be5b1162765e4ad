"""Every SIMD kernel variant built into the extension against numpy."""
import numpy as np
import pytest

from tinymech import _core
from tinymech.arch.bf16 import from_bf16

K = _core.kernels
VARIANTS = K.available()




def test_best_variant_is_default():
    assert K.variant() == VARIANTS[0]
    assert "scalar" in VARIANTS
    with pytest.raises(ValueError, match="not available"):
        K.select("sse1")


# Up to stream_rows_kn rows (16 on AVX-512), a [K, N] B is streamed, four rows
# of A at a time over 16 rows of B (a tail of K left over), or 8 rows of B
# where they lie a multiple of 4 KiB apart (N = 1024, 2048); more rows pack it.
@pytest.mark.parametrize("M,Kd,N", [(1, 1, 1), (1, 768, 2304), (2, 33, 65), (4, 100, 7), (5, 64, 64),
                                    (7, 300, 97), (12, 513, 200), (13, 257, 130), (16, 43, 1024),
                                    (9, 21, 2048), (17, 20, 33), (77, 300, 513)])
@pytest.mark.parametrize("transposed", [False, True])
def test_matmul(variant, M, Kd, N, transposed):
    rng = np.random.default_rng(M * 1000 + N)
    A = rng.standard_normal((M, Kd), dtype=np.float32)
    B = rng.standard_normal((Kd, N), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32)
    ref = A.astype(np.float64) @ B + bias
    out = K.matmul(A, np.ascontiguousarray(B.T) if transposed else B, bias, transposed)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("M,Kd,N", [(1, 129, 70), (2, 1000, 2100), (4, 3071, 65), (11, 300, 1024), (16, 200, 33)])
def test_matmul_few_rows_split_over_threads(variant, threads, M, Kd, N):
    """Decode-shaped products: with several threads the rows of B are split
    between them and the partial sums added, with or without a bias."""
    rng = np.random.default_rng(Kd)
    A = rng.standard_normal((M, Kd), dtype=np.float32)
    B = rng.standard_normal((Kd, N), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32)
    before = _core.get_num_threads()
    _core.set_num_threads(threads)
    try:
        for b in (bias, None):
            ref = A.astype(np.float64) @ B + (0 if b is None else b)
            out = K.matmul(A, B, b, False)
            assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    finally:
        _core.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("bf16", [False, True])
def test_streamed_rows_are_repeatable_and_batch_invariant(variant, threads, bf16):
    """A streamed matmul gives the same bits on every call (however the pool's
    threads take its blocks of K) and gives each row of a batch the bits it
    gets alone: a batch of prompts, or a rerun, is not a different model."""
    rng = np.random.default_rng(7)
    A = rng.standard_normal((13, 1000), dtype=np.float32)
    B = rng.standard_normal((1000, 300), dtype=np.float32)
    if bf16:
        B = K.round_bf16(B)
    before = _core.get_num_threads()
    _core.set_num_threads(threads)
    try:
        first = K.matmul(A, B, None, False)
        for _ in range(20):
            np.testing.assert_array_equal(K.matmul(A, B, None, False), first)
        rows = K.stream_rows_kn() if not (bf16 and K.bf16_dot_products()) else K.small_rows()
        alone = np.concatenate([K.matmul(A[i:i + 1], B, None, False) for i in range(rows)])
        np.testing.assert_array_equal(K.matmul(A[:rows], B, None, False), alone)
    finally:
        _core.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("M,N", [(1, 50), (1, 1000), (3, 613), (4, 97)])
def test_few_rows_against_out_in_weights_sum_each_column_alone(variant, threads, bf16, M, N):
    """Up to small_rows() rows against B stored [N, K] (an unembedding while
    decoding), each output is one dot product; AVX2 reads several stretches of
    the columns side by side, yet every column's sum runs as it would alone:
    the bits do not depend on the threads or on which columns share a step."""
    rng = np.random.default_rng(N)
    A = rng.standard_normal((M, 203), dtype=np.float32)
    B = rng.standard_normal((N, 203), dtype=np.float32)
    if bf16:
        B = K.round_bf16(B)
    bias = rng.standard_normal(N, dtype=np.float32)
    before = _core.get_num_threads()
    _core.set_num_threads(threads)
    try:
        out = K.matmul(A, B, bias, True)
        for n in (0, 1, N // 3, N - 2, N - 1):
            np.testing.assert_array_equal(K.matmul(A, B[n:n + 1], bias[n:n + 1], True)[:, 0], out[:, n])
    finally:
        _core.set_num_threads(before)
    B32 = from_bf16(B) if bf16 else B
    ref = A.astype(np.float64) @ B32.T.astype(np.float64) + bias
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("bf16", [False, True])
def test_rows_against_out_in_weights_do_not_depend_on_the_batch(variant, bf16):
    """Between small_rows() and 16 rows, B stored [N, K] (a Llama's Linear
    weights, an unembedding) goes through dot-product tiles of 4 rows (16-lane
    variants) or is packed; either way a row's sums run in an order of their
    own, so 5 rows give the bits the same rows give within 16."""
    rng = np.random.default_rng(11)
    A = rng.standard_normal((16, 333), dtype=np.float32)
    B = rng.standard_normal((203, 333), dtype=np.float32)
    if bf16:
        B = K.round_bf16(B)
    bias = rng.standard_normal(203, dtype=np.float32)
    few, many = K.matmul(A[:5], B, bias, True), K.matmul(A, B, bias, True)
    np.testing.assert_array_equal(few, many[:5])
    B32 = from_bf16(B) if bf16 else B
    A_used = from_bf16(K.round_bf16(A)) if bf16 and K.bf16_dot_products() else A
    ref = A_used.astype(np.float64) @ B32.T.astype(np.float64) + bias
    assert np.abs(many - ref).max() <= 1e-5 * np.abs(ref).max()


def test_machine_probes(variant):
    assert 0 < K.fma_peak_gflops(0.05) < 1e6
    bf16_peak = K.bf16_dot_peak_gflops(0.05)
    if K.bf16_dot_products():  # two products per lane and instruction
        assert 0 < bf16_peak < 1e6
    else:
        assert bf16_peak == 0.0
    assert 0 < K.read_bandwidth_gbs(1 << 20, 1) < 1e5
    probes = K.read_bandwidth_probes(1 << 20, 1)
    assert list(probes) == K.read_ways() == ["one_stream", "stretches_2", "stretches_4", "stretches_6",
                                             "stretches_8", "matvec"]
    assert all(0 < gbs < 1e5 for gbs in probes.values())
    assert list(K.read_bandwidth_probes(1 << 20, 2, ["matvec", "stretches_6"], mean=True)) == ["matvec", "stretches_6"]
    with pytest.raises(ValueError, match="no read probe 'four_streams'"):
        K.read_bandwidth_probes(1 << 20, 1, ["four_streams"])
    with pytest.raises(ValueError, match="'matvec' named twice"):
        K.read_bandwidth_probes(1 << 20, 1, ["matvec", "matvec"])
    with pytest.raises(ValueError, match="not one string"):
        K.read_bandwidth_probes(1 << 20, 1, "matvec")
    with pytest.raises(ValueError, match="names"):
        K.read_bandwidth_probes(1 << 20, 1, [1])
    for seconds in (0.0, -1.0, float("nan"), 1e9):
        with pytest.raises(ValueError, match="seconds"):
            K.fma_peak_gflops(seconds)
        with pytest.raises(ValueError, match="seconds"):
            K.bf16_dot_peak_gflops(seconds)
    for bad in ((0, 1), (1 << 20, 0), (-1, 1), (1 << 20, 2**31 - 1), (1 << 50, 1)):
        with pytest.raises(ValueError):
            K.read_bandwidth_gbs(*bad)
        with pytest.raises(ValueError):
            K.read_bandwidth_probes(*bad)


def test_elementwise(variant):
    rng = np.random.default_rng(0)
    for n in (1, 15, 16, 17, 1000):
        x = (rng.standard_normal(n) * 4).astype(np.float32)
        xd = x.astype(np.float64)
        gelu = 0.5 * xd * (1 + np.tanh(np.sqrt(2 / np.pi) * (xd + 0.044715 * xd**3)))
        np.testing.assert_allclose(K.gelu_new(x), gelu, rtol=1e-5, atol=1e-6)
        sm = np.exp(xd - xd.max())
        np.testing.assert_allclose(K.softmax(x), sm / sm.sum(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(K.exp(x), np.exp(xd), rtol=1e-6)
        assert K.dot(x, x) == pytest.approx(float(xd @ xd), rel=1e-5)
    np.testing.assert_array_equal(K.exp(np.array([-np.inf, -100.0], np.float32)), [0.0, 0.0])


def test_softmax_masked_and_max_anywhere(variant):
    """Masked (-inf) entries get 0, an all-masked row all 0; the max may sit in the vector body or the tail."""
    for n, at in ((1, 0), (17, 16), (33, 0), (40, 39), (40, 20)):
        x = np.full(n, -np.inf, np.float32)
        x[: n // 2 + 1] = np.linspace(-3, 1, n // 2 + 1)
        x[at] = 50.0
        finite = np.isfinite(x)
        e = np.where(finite, np.exp(x.astype(np.float64) - 50.0), 0.0)
        np.testing.assert_allclose(K.softmax(x), e / e.sum(), rtol=1e-5, atol=1e-30)
    np.testing.assert_array_equal(K.softmax(np.full(19, -np.inf, np.float32)), np.zeros(19))


def test_layernorm(variant):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((5, 99)) * 3 + 10).astype(np.float32)
    w, b = rng.standard_normal(99, dtype=np.float32), rng.standard_normal(99, dtype=np.float32)
    xd = x.astype(np.float64)
    ref = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(K.layernorm(x, w, b, 1e-5), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 40), (40, 1), (16, 16), (17, 33), (100, 77)])
def test_transpose(variant, rows, cols):
    x = np.random.default_rng(rows * cols).standard_normal((rows, cols), dtype=np.float32)
    np.testing.assert_array_equal(K.transpose(x), x.T)


@pytest.mark.parametrize("n", [1, 7, 16, 17, 40, 129])
def test_screen(variant, n):
    """The indices where x + alpha w <= limit fails (NaN counts as failing) or x is -inf,
    in order, wherever they sit in the vector body or the tail."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n, dtype=np.float32)
    w = rng.random(n, dtype=np.float32)
    limit = (x + 0.5 * w + rng.choice([-1e-3, 1e-3], n)).astype(np.float32)  # close calls both ways
    specials = rng.permutation(n)[: min(n, 4)]
    for at, (xv, wv, lv) in zip(specials, [(np.nan, 1, 0), (-np.inf, 1, 0), (0, np.inf, 0), (-np.inf, 0, -np.inf)]):
        x[at], w[at], limit[at] = xv, wv, lv
    alpha = np.float32(0.5)
    with np.errstate(invalid="ignore"):
        keep = ~((x.astype(np.float64) + alpha * w.astype(np.float64) <= limit) & (x > -np.inf))
    assert K.screen(x, w, alpha, limit) == list(np.flatnonzero(keep))
    assert K.screen(x, w, alpha, np.full(n, np.inf, np.float32)) == list(np.flatnonzero(np.isnan(x) | (x == -np.inf)))


def reference_losses(logits, tokens):
    x = logits.astype(np.float64)[:, :-1]
    mx = x.max(-1, keepdims=True)
    lse = np.log(np.exp(x - mx).sum(-1)) + mx[..., 0]
    return lse - np.take_along_axis(x, tokens[:, 1:, None], axis=-1)[..., 0]


@pytest.mark.parametrize("B,T,V", [(1, 1, 5), (2, 2, 1), (1, 5, 15), (3, 7, 17), (2, 9, 50257)])
def test_token_losses(variant, B, T, V):
    rng = np.random.default_rng(V)
    logits = (rng.standard_normal((B, T, V)) * 8).astype(np.float32)
    logits[..., V // 2] = 40.0  # a confident prediction: the loss is a difference of near-equal numbers
    tokens = rng.integers(0, V, (B, T)).astype(np.int32)
    tokens[:, -1] = V // 2
    got = _core.token_losses(logits, tokens)
    assert got.shape == (B, T - 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference_losses(logits, tokens), rtol=1e-5, atol=2e-5)


def test_token_losses_of_odd_rows(variant):
    """Masked (-inf) logits count for nothing; a NaN or +inf anywhere, in the vector body or the tail, gives NaN."""
    logits = np.zeros((1, 6, 37), np.float32)
    logits[0, 0, 1:] = -np.inf
    logits[0, 1, 30] = np.nan
    logits[0, 2, 3] = np.nan
    logits[0, 3, 36] = np.inf
    logits[0, 4] = np.linspace(-1e30, 3e4, 37, dtype=np.float32)
    tokens = np.zeros((1, 6), np.int32)
    tokens[0, 5] = 36
    got = _core.token_losses(logits, tokens)[0]
    assert got[0] == 0.0 and np.isnan(got[1:4]).all()
    assert got[4] == pytest.approx(0.0, abs=1e-6)


def test_token_losses_refuse_bad_input():
    logits = np.zeros((2, 3, 7), np.float32)
    with pytest.raises(IndexError, match="outside"):
        _core.token_losses(logits, np.full((2, 3), 7, np.int32))
    with pytest.raises(IndexError, match="outside"):
        _core.token_losses(logits, np.full((2, 3), -1, np.int32))
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        _core.token_losses(logits, np.zeros((2, 4), np.int32))
    with pytest.raises(ValueError, match=r"\[batch, pos, d_vocab\]"):
        _core.token_losses(logits[0], np.zeros((2, 3), np.int32))
