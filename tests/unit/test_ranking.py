"""tinymech.ranking: the core's top-k and log-sum-exp along the last axis,
against numpy's stable sort and float64 arithmetic."""
import numpy as np
import pytest

import tinymech as tm
from tinymech.ops import log_sum_exp, top_k


def reference_top_k(x, k):
    order = np.argsort(-np.where(np.isnan(x), -np.inf, x.astype(np.float64)), axis=-1, kind="stable")[..., :k]
    return order, np.take_along_axis(x, order, -1)


@pytest.mark.parametrize("shape,k", [((7,), 3), ((4, 50), 1), ((3, 5, 1000), 10), ((2, 40), 40), ((6, 33), 5),
                                     ((1, 1), 1), ((300, 257), 16)])
@pytest.mark.parametrize("threads", [1, 3])
def test_top_k_matches_a_stable_descending_sort(shape, k, threads):
    """k small against the row (one pass) and large (a partial sort); ties by index; rows over threads."""
    rng = np.random.default_rng(k)
    x = rng.integers(-20, 20, size=shape).astype(np.float32)  # many ties
    x.reshape(-1)[:: 7] = rng.standard_normal(x.size // 7 + (x.size % 7 > 0))
    tm.set_num_threads(threads)
    try:
        ids, values = top_k(x, k)
    finally:
        tm.set_num_threads(0)
    want_ids, want_values = reference_top_k(x, k)
    assert ids.shape == values.shape == shape[:-1] + (k,) and ids.dtype == np.int64 and values.dtype == np.float32
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(values, want_values)


def test_top_k_ranks_nan_as_minus_infinity():
    x = np.array([[np.nan, 1.0, -np.inf, np.nan, 2.0] + [-5.0] * 20], np.float32)
    for k in (2, 4, 6, 25):
        ids, values = top_k(x, k)
        np.testing.assert_array_equal(ids, reference_top_k(x, k)[0])
    ids, values = top_k(x, 25)
    assert list(ids[0, :2]) == [4, 1] and np.isnan(values[0, -1])


def test_top_k_edge_sizes_and_bad_k():
    assert top_k(np.ones((3, 4), np.float32), 0)[0].shape == (3, 0)
    assert top_k(np.ones((0, 4), np.float32), 2)[0].shape == (0, 2)
    with pytest.raises(ValueError, match="0 <= k <= 4"):
        top_k(np.ones((3, 4), np.float32), 5)
    with pytest.raises(ValueError, match="0 <= k"):
        top_k(np.ones(4, np.float32), -1)


def test_log_sum_exp(variant):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 4, 1001)) * 10).astype(np.float32)
    x[0, 0, 5] = 80.0
    want = np.log(np.exp(x.astype(np.float64) - 80.0).sum(-1)) + 80.0
    got = log_sum_exp(x)
    assert got.shape == (3, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.isnan(log_sum_exp(np.array([1.0, np.nan], np.float32)))
    assert log_sum_exp(np.array([-np.inf, 0.0], np.float32)) == 0.0
    with pytest.raises(ValueError, match="non-empty last axis"):
        log_sum_exp(np.zeros((2, 0), np.float32))
