"""The screened SAE encoders (csrc/sae/screen.hpp): batches are screened in
bfloat16 or in int16 and the survivors recomputed in float32 (by default where
the CPU has bfloat16 dot products, resp. on AVX2; here both forced on every
kernel variant, where the bfloat16 screen's matmul widens the rounded
weights and the int16 one runs plain loops instead). Its codes must be the
float32 encoder's: checked against the float32 path and float64 numpy, and on
features placed just above and just below their thresholds (or, for TopK,
just either side of the k-th largest), which a screen without its error bound
would get wrong."""
import numpy as np
import pytest

import tinymech as tm
from tinymech.sae.sae import SAE, SAEConfig

core = tm._core


SCREEN = {"mode": "always"}


@pytest.fixture(autouse=True, params=["bf16", "int16"])
def screened(variant, request):
    """Every test on every kernel variant, with each screen on for any rows."""
    SCREEN["mode"] = request.param
    core.set_sae_screen(request.param)
    yield variant
    core.set_sae_screen("auto")


def make_sae(d_in, d_sae, activation="relu", norm="none", apply_b_dec=True, l0=8, seed=0, rescale=False) -> SAE:
    """Random weights; biases (and thresholds) set so that about l0 features fire on
    unit-normal inputs (TopK: k = l0)."""
    rng = np.random.default_rng(seed)
    arch = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}[activation]
    cfg = SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, d_out=d_in, hook_name="blocks.0.hook_resid_pre",
                    apply_b_dec_to_input=apply_b_dec, normalize_activations=norm,
                    k=l0 if activation == "topk" else None, rescale_acts_by_decoder_norm=rescale)
    W_enc = rng.normal(0, d_in**-0.5, (d_in, d_sae)).astype(np.float32)
    quantile = np.quantile(rng.standard_normal(100_000), 1 - l0 / d_sae)
    weights = {"W_enc": W_enc, "b_enc": np.full(d_sae, -quantile * 0.7, np.float32),
               "W_dec": rng.normal(0, d_in**-0.5, (d_sae, d_in)).astype(np.float32),
               "b_dec": rng.normal(0, 0.1, d_in).astype(np.float32)}
    if activation == "jumprelu":
        weights["threshold"] = np.full(d_sae, quantile * 0.3, np.float32)
    return SAE(cfg, weights)


def reference(sae: SAE, x: np.ndarray) -> np.ndarray:
    """Pre-activations in float64 (no input normalization)."""
    shift = sae.b_dec if sae.cfg.apply_b_dec_to_input else 0
    return (x.astype(np.float64) - shift) @ sae.W_enc + sae.b_enc


def float32_path(fn):
    core.set_sae_screen("never")
    try:
        return fn()
    finally:
        core.set_sae_screen(SCREEN["mode"])


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
@pytest.mark.parametrize("norm,apply_b_dec", [("none", True), ("none", False), ("constant_norm_rescale", True),
                                              ("layer_norm", False)])
@pytest.mark.parametrize("d_in,d_sae,rows", [(77, 1000, 3), (64, 300, 37), (130, 129, 1030)])
def test_screened_codes_equal_float32(activation, norm, apply_b_dec, d_in, d_sae, rows):
    sae = make_sae(d_in, d_sae, activation, norm, apply_b_dec)
    x = np.random.default_rng(rows).standard_normal((rows, d_in), dtype=np.float32)
    ours, (idx, val), out = sae.encode(x), sae.encode_sparse(x), sae.forward(x)
    ref, (ref_idx, ref_val), ref_out = float32_path(lambda: (sae.encode(x), sae.encode_sparse(x), sae.forward(x)))
    scale = np.abs(ref).max()
    assert 1 <= (ref > 0).sum(-1).mean() <= 0.2 * d_sae  # sparse, not empty
    assert np.abs(ours - ref).max() <= 1e-5 * scale
    np.testing.assert_array_equal(ours > 0, ref > 0)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5, atol=1e-6 * scale)
    assert np.abs(out - ref_out).max() <= 1e-5 * np.abs(ref_out).max()
    if norm == "none" and activation != "topk":
        pre = reference(sae, x)
        fired = pre > (sae.threshold if activation == "jumprelu" else 0)
        assert np.abs(ours - np.where(fired, pre, 0)).max() <= 1e-5 * scale


def read_only(array: np.ndarray) -> np.ndarray:
    """A copy in memory no one can write, as SAE.load maps a file."""
    return np.frombuffer(array.tobytes(), array.dtype).reshape(array.shape)


@pytest.mark.parametrize("activation,rescale", [("relu", False), ("jumprelu", False), ("topk", False), ("topk", True)])
@pytest.mark.parametrize("d_in,d_sae,rows", [(77, 1000, 3), (130, 129, 1030)])
def test_an_encoder_kept_transposed_gives_the_same_codes(activation, rescale, d_in, d_sae, rows):
    # an SAE whose W_enc cannot change keeps it transposed for the screen, rather than transposing each chunk
    sae = make_sae(d_in, d_sae, activation, rescale=rescale)
    kept = SAE(sae.cfg, {k: read_only(v) if k == "W_enc" else v for k, v in sae._weights_now().items()})
    x = np.random.default_rng(rows).standard_normal((rows, d_in), dtype=np.float32)
    np.testing.assert_array_equal(kept.encode(x), sae.encode(x))
    np.testing.assert_array_equal(kept.forward(x), sae.forward(x))
    assert kept._core.keeps_transposed_encoder and not sae._core.keeps_transposed_encoder
    sae.W_enc[:, :7] *= -1  # writable: an edit in place reaches the screen (no copy kept)
    np.testing.assert_array_equal(sae.encode(x), SAE(sae.cfg, {k: np.array(v) for k, v in
                                                             sae._weights_now().items()}).encode(x))
    kept.W_enc = sae.W_enc[:, ::-1]  # assigned: a new core, of writable memory: no copy
    np.testing.assert_array_equal(kept.encode(x), SAE(kept.cfg, kept._weights_now()).encode(x))
    assert not kept._core.keeps_transposed_encoder


def test_an_encoder_copy_is_kept_only_of_memory_nothing_can_write(tmp_path):
    # regression (review): a read-only memoryview over writable memory passed as unchanging, and the copy went
    # stale; the copy was made when the screen then declined (a TopK batch with a NaN row)
    from tinymech.sae.sae import _unchanging

    writable, data = np.arange(6, dtype=np.float32), bytearray(24)
    flagged = np.arange(6, dtype=np.float32)
    flagged.flags.writeable = False
    np.save(tmp_path / "a.npy", writable)
    for array, unchanging in ((read_only(writable), True), (np.load(tmp_path / "a.npy", mmap_mode="r"), True),
                              (np.frombuffer(memoryview(data).toreadonly(), np.float32), False),
                              (np.frombuffer(memoryview(writable).toreadonly(), np.float32), False),
                              (np.load(tmp_path / "a.npy", mmap_mode="r+"), False), (writable, False),
                              (flagged, False), (flagged[1:], False)):
        assert _unchanging(array) is unchanging, array
    sae = make_sae(40, 300, "topk")
    kept = SAE(sae.cfg, {k: read_only(v) if k == "W_enc" else v for k, v in sae._weights_now().items()})
    x = np.random.default_rng(0).standard_normal((600, 40), dtype=np.float32)
    x[3, 5] = np.nan
    kept.encode(x)
    assert not kept._core.keeps_transposed_encoder  # the screen declined: no copy made for it


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_features_just_above_their_threshold_survive_the_screen(activation):
    """Row 0's pre-activations sit 1e-3 above or below each feature's threshold:
    far inside bfloat16's rounding error (~1e-1 here), far outside float32's.
    Exactly those above fire, with their float32 values."""
    d_in, d_sae, rows = 256, 512, 8
    sae = make_sae(d_in, d_sae, activation)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((rows, d_in), dtype=np.float32)
    delta = np.where(np.arange(d_sae) % 2 == 0, 1e-3, -1e-3)
    thr = sae.threshold if activation == "jumprelu" else np.zeros(d_sae)
    dots = (x[0].astype(np.float64) - sae.b_dec) @ sae.W_enc
    sae.b_enc[:] = (thr - dots + delta).astype(np.float32)  # the core reads the arrays in place
    sae = SAE(sae.cfg, {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec,
                        "threshold": sae.threshold})
    acts = sae.encode(x)
    pre = reference(sae, x)[0]
    above = pre > thr
    assert above.sum() == d_sae // 2  # the float64 truth agrees with the construction
    np.testing.assert_array_equal(acts[0] > 0, above)
    np.testing.assert_allclose(acts[0][above], pre[above], atol=2e-4)
    ref = float32_path(lambda: sae.encode(x))
    np.testing.assert_array_equal(acts > 0, ref > 0)
    np.testing.assert_allclose(acts, ref, atol=1e-5)


def test_non_finite_rows_match_float32():
    sae = make_sae(40, 300)
    x = np.random.default_rng(5).standard_normal((9, 40), dtype=np.float32)
    x[1, 3], x[4, 0], x[6, 39] = np.nan, np.inf, -np.inf
    x[7, 5] = 3.4e38  # bfloat16 rounds it up to infinity; the float32 sums stay finite
    ours, ref = sae.encode(x), float32_path(lambda: sae.encode(x))
    # a row holding NaN or infinity comes out NaN (as a ReLU passes NaN on), by both paths
    assert np.isnan(ours[[1, 4, 6]]).all() and np.isfinite(ours[7]).all() and ours[7].max() > 1e37
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "topk"])
@pytest.mark.parametrize("case", ["outliers", "huge", "tiny", "zeros", "mixed"])
def test_extreme_inputs_match_float32(activation, case):
    """Rows with a few dimensions 50-1000x the rest (as real residual streams
    have), huge and tiny magnitudes, all-zero rows: the codes stay the float32
    path's (the int16 screen scales each row by its largest value)."""
    d_in, d_sae, rows = 96, 700, 40
    sae = make_sae(d_in, d_sae, activation, apply_b_dec=False, l0=12)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((rows, d_in), dtype=np.float32)
    if case == "outliers":
        x[:, [3, 50]] *= 50
        x[::4, 7] = 1000.0
    elif case == "huge":
        x *= 1e30
    elif case == "tiny":
        x *= 1e-30
    elif case == "zeros":
        x[::2] = 0
    else:  # every row a different scale, one of them subnormal
        x *= np.logspace(-38, 30, rows, dtype=np.float64)[:, None].astype(np.float32)
    ours, ref = sae.encode(x), float32_path(lambda: sae.encode(x))
    np.testing.assert_array_equal(ours != 0, ref != 0)
    # values as two float32 sums may differ: by the γ_K Σ|a_i w_i| bound each
    scale = np.abs(x.astype(np.float64)) @ np.abs(sae.W_enc.astype(np.float64))
    if activation == "topk":
        scale = scale * np.linalg.norm(sae.W_dec, axis=1)
    assert (np.abs(ours.astype(np.float64) - ref) <= 4 * d_in * 2.0**-24 * scale + 1e-30).all()


def test_int16_screen_rows_near_threshold_with_outlier_dims():
    """A row whose one dimension is 200x the others, with features 1e-3 either
    side of their threshold: exactly those above fire."""
    d_in, d_sae = 128, 256
    sae = make_sae(d_in, d_sae, "relu", apply_b_dec=False)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((6, d_in), dtype=np.float32)
    x[0, 9] = 200.0
    dots = x[0].astype(np.float64) @ sae.W_enc
    b_enc = (-dots + np.where(np.arange(d_sae) % 2 == 0, 1e-3, -1e-3)).astype(np.float32)
    sae = SAE(sae.cfg, {"W_enc": sae.W_enc, "b_enc": b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec})
    acts = sae.encode(x)
    above = (x[0].astype(np.float64) @ sae.W_enc + b_enc) > 0
    np.testing.assert_array_equal(acts[0] > 0, above)
    np.testing.assert_array_equal(acts > 0, float32_path(lambda: sae.encode(x)) > 0)


def test_screen_counts():
    """The pass-rate counters: every row-feature pair screened, some recomputed."""
    sae = make_sae(64, 300)
    x = np.random.default_rng(13).standard_normal((20, 64), dtype=np.float32)
    core.take_sae_screen_counts()
    fired = (sae.encode(x) > 0).sum()
    screened, recomputed = core.take_sae_screen_counts()
    assert screened == 20 * 300 and fired <= recomputed < screened
    assert core.take_sae_screen_counts() == (0, 0)


def test_relu_rescaled_by_decoder_norms_takes_the_float32_path():
    """The screen's thresholds are on pre-activations; an SAE that rescales
    them by its decoder norms first is encoded in float32."""
    sae = make_sae(40, 300, rescale=True)
    x = np.random.default_rng(8).standard_normal((9, 40), dtype=np.float32)
    expected = np.maximum(reference(sae, x) * np.linalg.norm(sae.W_dec, axis=1), 0)
    np.testing.assert_allclose(sae.encode(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("rows", [5, 1100])  # 1100: two blocks of rows
def test_topk_codes_equal_float32(rescale, rows):
    sae = make_sae(70, 700, "topk", l0=16, rescale=rescale)
    x = np.random.default_rng(rows).standard_normal((rows, 70), dtype=np.float32)
    ours, ref = sae.encode(x), float32_path(lambda: sae.encode(x))
    np.testing.assert_array_equal(ours != 0, ref != 0)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    value = reference(sae, x) * (np.linalg.norm(sae.W_dec, axis=1) if rescale else 1)
    top = np.argsort(-value, axis=-1, kind="stable")[:, :16]
    expected = np.zeros_like(value)
    np.put_along_axis(expected, top, np.take_along_axis(value, top, -1), -1)
    np.testing.assert_allclose(ours, np.maximum(expected, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rescale", [False, True])
def test_topk_near_ties_at_the_kth_value(rescale):
    """Row 0's 40 largest values lie 1e-4 apart (bfloat16 cannot tell them
    apart, float32 can), so only the error bound keeps the right 8 in."""
    d_in, d_sae, k = 256, 512, 8
    sae = make_sae(d_in, d_sae, "topk", l0=k, rescale=rescale)
    dn = np.linalg.norm(sae.W_dec.astype(np.float64), axis=1) if rescale else np.ones(d_sae)
    x = np.random.default_rng(4).standard_normal((6, d_in), dtype=np.float32)
    dots = (x[0].astype(np.float64) - sae.b_dec) @ sae.W_enc
    target = np.full(d_sae, -3.0)
    cluster = np.random.default_rng(5).permutation(d_sae)[:40]
    target[cluster] = 1.0 + 1e-4 * np.arange(40)
    weights = {"W_enc": sae.W_enc, "b_enc": (target / dn - dots).astype(np.float32), "W_dec": sae.W_dec,
               "b_dec": sae.b_dec}
    sae = SAE(sae.cfg, weights)
    acts = sae.encode(x)
    np.testing.assert_array_equal(np.flatnonzero(acts[0]), np.sort(cluster[-k:]))
    np.testing.assert_allclose(acts[0][cluster[-k:]], target[cluster[-k:]], atol=1e-5)
    np.testing.assert_allclose(acts, float32_path(lambda: sae.encode(x)), atol=1e-5)


def test_topk_falls_back_where_the_screen_cannot_vouch():
    """k >= d_sae, or a row that is not finite: the float32 path runs, with its results."""
    x = np.random.default_rng(6).standard_normal((7, 30), dtype=np.float32)
    whole = make_sae(30, 8, "topk", l0=8)
    np.testing.assert_array_equal(whole.encode(x), float32_path(lambda: whole.encode(x)))
    sae = make_sae(30, 200, "topk", l0=8)
    x[3, 2] = np.nan
    np.testing.assert_array_equal(sae.encode(x), float32_path(lambda: sae.encode(x)))
    x[3, 2] = 3.4e38  # finite, but bfloat16 rounds it to infinity
    np.testing.assert_allclose(sae.encode(x), float32_path(lambda: sae.encode(x)), rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_heavy_tailed_inputs_match_float32(seed):
    """Residual streams have a few huge dimensions (GPT-2's reach thousands);
    the bound scales with ‖x‖, so the screen must stay exact on them too."""
    rng = np.random.default_rng(seed)
    activation = ("relu", "jumprelu", "topk")[seed % 3]
    d_in = int(rng.integers(20, 200))
    sae = make_sae(d_in, int(rng.integers(100, 1500)), activation, l0=int(rng.integers(1, 40)), seed=seed)
    x = rng.standard_t(2, (int(rng.integers(5, 300)), d_in)).astype(np.float32)
    x[:, rng.integers(0, d_in, 2)] *= 1000
    ours, ref = sae.encode(x), float32_path(lambda: sae.encode(x))
    np.testing.assert_array_equal(ours != 0, ref != 0)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_screen_modes():
    assert core.sae_screen() == SCREEN["mode"]
    with pytest.raises(ValueError, match="'auto', 'always', 'bf16', 'int16' or 'never'"):
        core.set_sae_screen("sometimes")
    assert core.sae_screen() == SCREEN["mode"]

