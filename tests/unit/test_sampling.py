"""Drawing the next token in the core: the token a given uniform number picks
against a float64 reference of the same rule, the frequencies of many draws,
and bad logits."""
import numpy as np
import pytest

from tinymech import _core
from tinymech.ops import sample_next


def reference_draw(z, temperature, top_k, top_p, u):
    """The kept tokens (most probable first when filtered, else in index order) and the one u picks."""
    w = np.exp((z.astype(np.float64) - z.max()) / temperature)
    if not top_k and top_p >= 1:
        order = np.arange(z.size)
    else:
        order = np.argsort(-z, kind="stable")[: top_k or z.size]
        if top_p < 1:
            cum = np.cumsum(w[order]) / w[order].sum()
            order = order[: int(np.searchsorted(cum, top_p)) + 1]
    cdf = np.cumsum(w[order])
    return order[int(np.searchsorted(cdf, u * cdf[-1], side="right"))]


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 1.0), (0, 0.5), (0, 0.97), (40, 0.8), (1000, 1.0)])
@pytest.mark.parametrize("n", [7, 300, 1000])
def test_each_uniform_number_picks_the_reference_token(n, top_k, top_p):
    rng = np.random.default_rng(n + top_k)
    z = (rng.standard_normal((16, n)) * 2).astype(np.float32)
    z[:, 3] = -np.inf  # a masked token is never drawn
    u = np.linspace(0.0, 0.999, 16)
    got = _core.sample(z, 0.8, top_k, top_p, u)
    want = [reference_draw(z[r], 0.8, min(top_k, n) if top_k < n else 0, top_p, u[r]) for r in range(16)]
    np.testing.assert_array_equal(got, want)
    assert 3 not in got


def test_draw_frequencies_follow_the_kept_distribution():
    z = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], np.float32))
    rng = np.random.default_rng(0)
    for kwargs, probs in [(dict(top_k=None, top_p=None), [0.5, 0.2, 0.15, 0.1, 0.05]),
                          (dict(top_k=2, top_p=None), [5 / 7, 2 / 7, 0, 0, 0]),
                          (dict(top_k=None, top_p=0.8), [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0])]:
        draws = np.array([sample_next(z, 1.0, rng=rng, **kwargs)[0] for _ in range(20000)])
        np.testing.assert_allclose(np.bincount(draws, minlength=5) / draws.size, probs, atol=0.015)


def test_bad_logits_and_parameters_are_refused():
    u = np.zeros(1)
    for z in ([[np.nan, 1.0]], [[np.inf, 1.0]], [[-np.inf, -np.inf]]):
        with pytest.raises(ValueError, match="cannot sample"):
            _core.sample(np.array(z, np.float32), 1.0, 0, 1.0, u)
    z = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match="temperature"):
        _core.sample(z, 0.0, 0, 1.0, u)
    with pytest.raises(ValueError, match="top_p"):
        _core.sample(z, 1.0, 0, 1.5, u)
    with pytest.raises(ValueError, match="one uniform number per row"):
        _core.sample(z, 1.0, 0, 1.0, np.zeros(2))


@pytest.mark.parametrize("temperature", [1e-40, 1e-45, 2e-39])
@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (3, 1.0), (0, 0.5)])
def test_a_temperature_whose_inverse_overflows_picks_the_top_token(temperature, top_k, top_p):
    """1 / T is +inf in float32 below ~3e-39: only the most probable token (the
    first of equal ones, as argmax) can come out, never an index outside the vocabulary."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal((8, 50)).astype(np.float32)
    z[1, 7] = z[1, 30] = z[1].max() + 1  # a tie: the first wins
    got = _core.sample(z, temperature, top_k, top_p, np.linspace(0, 0.999, 8))
    np.testing.assert_array_equal(got, z.argmax(-1))
