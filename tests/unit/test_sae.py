"""SAE behaviour beyond SAELens parity: sparse forms, splicing in generate and
hook contexts, steering, feature tools, metrics, labels, from_pretrained."""
import json

import numpy as np
import pytest

import tinymech as tm
from model_factory import SHAPES, rel_err, save_tokenizer
from numpy_checkpoints import fake_hub_cache, write_gpt2, write_sae
from tinymech.sae.sae import SAE, run_with_cache_with_saes, run_with_saes
from tinymech.errors import SAENotFoundError
from tinymech.sae.metrics import sae_metrics

TOL = 1e-4
D, D_SAE = 64, 96
HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    write_gpt2(path, **SHAPES["tiny"])
    save_tokenizer(path, SHAPES["tiny"]["vocab_size"])
    return tm.load(path)


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    return write_sae(tmp_path_factory.mktemp("sae"), "standard", D, D_SAE, hook=HOOK, std=0.15)


@pytest.fixture()
def sae(sae_dir):
    return SAE.load(sae_dir)


def tokens(batch=2, pos=9, seed=0):
    return np.random.default_rng(seed).integers(1, SHAPES["tiny"]["vocab_size"], (batch, pos))


def test_sparse_forms(sae):
    x = np.random.default_rng(0).standard_normal((2, 5, D)).astype(np.float32)
    dense = sae.encode(x)
    idx, val = sae.encode_sparse(x)
    n_active = (dense > 0).sum(-1)
    assert idx.shape == val.shape == (2, 5, n_active.max()) and idx.dtype == np.int64
    assert ((idx >= 0).sum(-1) == n_active).all() and (val[idx < 0] == 0).all()
    assert np.all(np.diff(val, axis=-1) <= 0)  # largest first
    np.testing.assert_array_equal(np.take_along_axis(dense, np.maximum(idx, 0), -1) * (idx >= 0), val)
    top_i, top_v = sae.top_features(x, 4)
    np.testing.assert_allclose(top_v, -np.sort(-dense, axis=-1)[..., :4])
    np.testing.assert_array_equal(np.take_along_axis(dense, top_i, -1), top_v)
    k_i, k_v = sae.encode_sparse(x, k=3)
    np.testing.assert_array_equal(k_v, top_v[..., :3])
    full = sae.forward(x)
    assert rel_err(sae.decode((idx, val)), full) <= TOL
    assert rel_err(sae.decode(dense), full) <= TOL
    ref = dense @ sae.W_dec + sae.b_dec
    assert rel_err(full, ref) <= TOL


def test_splice_in_generate_hooks_and_context(model, sae):
    prompt = tokens(1, 4, seed=1)
    spec = sae.as_hook()
    assert spec[0] == HOOK and isinstance(spec[1], tm._core.NativeHook)
    spliced = run_with_saes(model, prompt, [sae])
    assert rel_err(model.run_with_hooks(prompt, fwd_hooks=[spec]), spliced) <= TOL
    with model.hooks([sae.as_hook()]):
        assert rel_err(model(prompt), spliced) <= TOL
    # generation with the splice equals greedy decoding of full spliced forward passes
    out = model.generate(prompt, max_new_tokens=6, stop_at_eos=False, hooks=[sae.as_hook()])
    seq = prompt
    for _ in range(6):
        nxt = run_with_saes(model, seq, sae)[:, -1].argmax(-1)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)
    plain = model.generate(prompt, max_new_tokens=6, stop_at_eos=False)
    kept = model.generate(prompt, max_new_tokens=6, stop_at_eos=False, hooks=[sae.as_hook(keep_error=True)])
    np.testing.assert_array_equal(kept, plain)


def test_cache_default_and_text_input(model, sae):
    logits, cache = run_with_cache_with_saes(model, "the cat sat", [sae])
    acts = cache[f"{HOOK}.hook_sae_acts_post"]
    assert acts.shape == cache[HOOK].shape[:-1] + (D_SAE,)
    np.testing.assert_allclose(acts, sae.encode(cache[f"{HOOK}.hook_sae_input"]), atol=1e-5)
    # the hook itself holds the spliced activation, what the rest of the model saw
    assert rel_err(cache[HOOK], cache[f"{HOOK}.hook_sae_output"]) <= TOL
    assert "blocks.0.hook_resid_pre" in cache and f"{HOOK}.hook_sae_error" not in cache


def test_skip_transcoder_splice_adds_skip(tmp_path, model):
    hook_in, hook_out = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
    tc = SAE.load(write_sae(tmp_path, "skip_transcoder", D, D_SAE, hook=hook_in, hook_out=hook_out, std=0.1))
    assert tc.as_hook()[0] == [hook_in, hook_out]
    toks = tokens(seed=2)
    _, cache = model.run_with_cache(toks, names_filter=[hook_in])
    want = tc.forward(cache[hook_in])

    def replace(act, hook):
        return want

    assert rel_err(run_with_saes(model, toks, tc), model.run_with_hooks(toks, fwd_hooks=[(hook_out, replace)])) <= TOL
    # in generation the splice sees the input hook, then the output hook, at every step
    prompt = toks[:1, :3]
    out = model.generate(prompt, max_new_tokens=4, stop_at_eos=False, hooks=[tc.as_hook()])
    for t in range(3, 7):
        assert out[0, t] == run_with_saes(model, out[:, :t], tc)[0, -1].argmax()


def test_steering(model, sae):
    toks = tokens(1, 8, seed=3)
    f = 5
    added = model.run_with_hooks(toks, fwd_hooks=[sae.steer(f, 4.0, positions=[2, 3])])
    ref = model.run_with_hooks(toks, fwd_hooks=[(HOOK, tm.add(sae.W_dec[f], 4.0, positions=[2, 3]))])
    assert rel_err(added, ref) <= TOL

    def clamp(value, positions=None):
        def hook(act, hook):
            feats = sae.encode(act)
            chosen = [p for p in positions if p < act.shape[1]] if positions is not None else slice(None)
            feats[:, chosen, f] = value
            return act + (sae.decode(feats) - sae.forward(act))

        return hook

    clamped = model.run_with_hooks(toks, fwd_hooks=[sae.steer(f, 3.0, mode="clamp")])
    ref = model.run_with_hooks(toks, fwd_hooks=[(HOOK, clamp(3.0))])
    assert rel_err(clamped, ref) <= TOL and rel_err(clamped, model(toks)) > 1e-4
    some = model.run_with_hooks(toks, fwd_hooks=[sae.steer(f, 3.0, mode="clamp", positions=[2, 5])])
    assert rel_err(some, model.run_with_hooks(toks, fwd_hooks=[(HOOK, clamp(3.0, [2, 5]))])) <= TOL
    # a clamp at a position the prompt does not reach takes effect once generation gets there
    gen = model.generate(toks[:, :3], max_new_tokens=4, stop_at_eos=False,
                         hooks=[sae.steer(f, 30.0, mode="clamp", positions=[4])])
    for t in range(3, 7):
        ref = model.run_with_hooks(gen[:, :t], fwd_hooks=[(HOOK, clamp(30.0, [4]))])
        assert gen[0, t] == ref[0, -1].argmax()
    with pytest.raises(tm.HookError, match="mode"):
        sae.steer(f, 1.0, mode="scale")


def test_feature_activations_and_logit_effects(model, sae):
    toks = tokens(seed=4)
    _, cache = model.run_with_cache(toks, names_filter=HOOK)
    got = sae.feature_activations(model, toks, 7)
    assert got.shape == toks.shape
    np.testing.assert_allclose(got, sae.encode(cache[HOOK])[..., 7], atol=1e-6)
    eff = sae.logit_effects(model, 7, k=5)
    full = sae.W_dec[7] @ model.W_U
    np.testing.assert_array_equal(eff.promoted, np.argsort(-full, kind="stable")[:5])
    np.testing.assert_allclose(eff.promoted_values, np.sort(full)[::-1][:5], rtol=1e-6)
    np.testing.assert_allclose(eff.suppressed_values, np.sort(full)[:5], rtol=1e-6)


@pytest.mark.parametrize("ignore", [(), (3, 4)])
def test_metrics_against_numpy(model, sae, ignore):
    toks = tokens(3, 12, seed=5)
    toks[:, 0] = 3  # a BOS-like token to ignore
    m = sae_metrics(model, sae, toks, batch_size=2, ignore_tokens=ignore)
    keep = ~np.isin(toks, ignore)
    _, cache = model.run_with_cache(toks, names_filter=HOOK)
    x = cache[HOOK][keep].astype(np.float64)
    f = sae.encode(cache[HOOK])[keep]
    err = x - sae.forward(cache[HOOK])[keep]
    assert m.n_tokens == keep.sum()
    assert m.l0 == pytest.approx((f > 0).sum(-1).mean(), rel=1e-6)
    assert m.l1 == pytest.approx(np.abs(f).sum(-1).mean(), rel=1e-5)
    assert m.mse == pytest.approx((err**2).sum(-1).mean(), rel=1e-5)
    var = (x**2).sum(-1).mean() - (x.mean(0) ** 2).sum()
    assert m.explained_variance == pytest.approx(1 - (err**2).sum(-1).mean() / var, rel=1e-5)
    density = (f > 0).mean(0)
    np.testing.assert_allclose(m.feature_density, density, rtol=1e-6)
    assert m.dead_features == (density == 0).sum() and m.dense_features == (density > 0.1).sum()

    ce_keep = keep[:, :-1]
    clean = model(toks, return_type="loss", loss_per_token=True)[ce_keep].mean()
    mask = keep[..., None].astype(np.float32)

    def splice(act, hook):
        return act * (1 - mask) + sae.forward(act) * mask

    spliced = model.run_with_hooks(toks, fwd_hooks=[(HOOK, splice)], return_type="loss",
                                   loss_per_token=True)[ce_keep].mean()
    # SAELens zero-ablates every position, ignored ones too (evals.py's standard_zero_ablate_hook);
    # tinymech left the ignored ones (BOS) as they were, and its CE loss recovered differed
    zero = model.run_with_hooks(toks, fwd_hooks=[(HOOK, lambda a, hook: a * 0)],
                                return_type="loss", loss_per_token=True)[ce_keep].mean()
    assert m.ce_clean == pytest.approx(clean, rel=1e-5)
    assert m.ce_sae == pytest.approx(spliced, rel=1e-5)
    assert m.ce_zero_ablation == pytest.approx(zero, rel=1e-5)
    assert m.ce_loss_recovered == pytest.approx((zero - spliced) / (zero - clean), rel=1e-4)
    assert m.delta_lm_loss == pytest.approx(spliced - clean, rel=1e-4, abs=1e-6)
    assert set(m.as_dict()) == {"n_tokens", "l0", "l1", "mse", "explained_variance", "ce_clean", "ce_sae",
                                "ce_zero_ablation", "ce_loss_recovered", "delta_lm_loss", "dead_features",
                                "dense_features"}


def test_metrics_skip_the_tokens_the_sae_was_trained_without(tmp_path, model, sae_dir):
    import shutil

    d = shutil.copytree(sae_dir, tmp_path / "sae")
    cfg = json.loads((d / "cfg.json").read_text())
    cfg["metadata"]["exclude_special_tokens"] = [3]
    (d / "cfg.json").write_text(json.dumps(cfg))
    toks = tokens(2, 6, seed=6)
    toks[:, 0] = 3
    sae = SAE.load(d)
    assert sae_metrics(model, sae, toks).as_dict() == sae_metrics(model, sae, toks, ignore_tokens=[3]).as_dict()
    assert sae_metrics(model, sae, toks, ignore_tokens=()).n_tokens == toks.size


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
@pytest.mark.parametrize("rows", [2, 9])  # few rows, and enough for the bfloat16 screen
def test_nan_and_inf_rows_come_out_nan(tmp_path, arch, rows):
    """A ReLU passes NaN on (SAELens gives NaN features and a NaN reconstruction):
    a row with NaN or infinity is NaN throughout, the other rows as if alone."""
    k = {"k": 8} if arch == "topk" else {}
    sae = SAE.load(write_sae(tmp_path / arch, arch, D, D_SAE, hook=HOOK, **k))
    x = np.random.default_rng(3).standard_normal((rows, D)).astype(np.float32)
    x[0, 5], x[-1, 0] = np.nan, np.inf
    good = slice(1, rows - 1)
    dense = sae.encode(x)
    assert np.isnan(dense[[0, -1]]).all() and np.isfinite(dense[good]).all()
    np.testing.assert_allclose(dense[good], sae.encode(x[good]), rtol=1e-6, atol=1e-6)
    out = sae.forward(x)
    assert np.isnan(out[[0, -1]]).all()
    np.testing.assert_allclose(out[good], sae.forward(x[good]), rtol=1e-5, atol=1e-5)
    idx, val = sae.encode_sparse(x)
    assert np.isnan(val[[0, -1], 0]).all() and np.isfinite(val[good]).all()
    assert np.isnan(sae.decode((idx, val))[[0, -1]]).all()


def test_a_spliced_sae_passes_nan_on(model, sae):
    """An upstream NaN stays visible with an SAE spliced in (it came out as
    zeros, and the logits finite). One NaN position reaches every position, in
    Hugging Face's model as here: attention multiplies the NaN value by 0."""
    toks = tokens()
    nan_in = [(HOOK, lambda a, hook: np.where(np.arange(a.shape[1])[None, :, None] == 3, np.nan, a))]
    with model.hooks(nan_in):
        logits, cache = run_with_cache_with_saes(model, toks, sae)
        plain = model(toks)
    assert np.isnan(plain).all() and np.isnan(logits).all()
    acts = cache[f"{HOOK}.hook_sae_acts_post"]
    assert np.isnan(acts[:, 3]).all() and np.isfinite(acts[:, :3]).all()


def test_every_kernel_variant(sae):
    x = np.random.default_rng(7).standard_normal((5, D)).astype(np.float32)
    dense = np.maximum((x - sae.b_dec) @ sae.W_enc + sae.b_enc, 0)
    before = tm._core.kernels.variant()
    try:
        for name in tm._core.kernels.available():
            tm._core.kernels.select(name)
            assert rel_err(sae.encode(x), dense) <= TOL, name
            assert rel_err(sae.forward(x), dense @ sae.W_dec + sae.b_dec) <= TOL, name
    finally:
        tm._core.kernels.select(before)


# ---- files --------------------------------------------------------------------------

def test_feature_labels_formats(tmp_path, sae_dir):
    import shutil

    d = tmp_path / "sae"
    shutil.copytree(sae_dir, d)
    demo = {"3": {"label": "token the", "density": 0.1, "top_contexts": []}, "5": {"explanation": "cats"},
            "7": "plain", "x": "not a feature", "9999": "out of range", "8": {"no": "label"}}
    (d / "feature_labels.json").write_text(json.dumps(demo))
    s = SAE.load(d)
    assert s.labels == {3: "token the", 5: "cats", 7: "plain"}
    assert s.label_details[3]["density"] == 0.1
    (d / "feature_labels.json").write_text(json.dumps([{"index": 2, "description": "dogs"}, {"feature": 4}, 5]))
    assert SAE.load(d).labels == {2: "dogs"}
    (d / "feature_labels.json").write_text("{not json")
    with pytest.warns(UserWarning, match="feature_labels.json"):
        assert SAE.load(d).labels == {}


def test_from_pretrained_local_cache(tmp_path, sae_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_hub_cache(tmp_path, "someone/my-saes", "layer1/res", sae_dir)
    s = SAE.from_pretrained("someone/my-saes", "layer1/res")
    assert s.hook_name == HOOK and s.path.endswith("layer1/res")
    # (release names through SAELens's registry: tests/reference/test_sae_reference.py)
    with pytest.raises(SAENotFoundError, match="unknown SAE release"):
        SAE.from_pretrained("no-such-release", "x")
    with pytest.raises(SAENotFoundError, match="could not download"):
        SAE.from_pretrained("someone/missing", "x")


def test_a_gated_sae_saves_pickles_and_splices_with_its_own_tensors(tmp_path, model):
    """Saved under SAELens's names (b_gate, not b_enc); its magnitude weights survive a
    pickle; the splice's recorded pre-activations are the magnitude path's, as SAELens's."""
    import pickle

    from safetensors.numpy import load_file

    sae = SAE.load(write_sae(tmp_path / "in", "gated", D, D_SAE, hook=HOOK, std=0.15))
    x = np.random.default_rng(5).standard_normal((3, D)).astype(np.float32)
    saved = load_file(sae.save(tmp_path / "out") + "/sae_weights.safetensors")
    assert sorted(saved) == ["W_dec", "W_enc", "b_dec", "b_gate", "b_mag", "r_mag"]
    for other in (SAE.load(tmp_path / "out"), pickle.loads(pickle.dumps(sae))):
        assert other.cfg.architecture == "gated" and np.array_equal(other.encode(x), sae.encode(x))
    feats = sae.encode(x)
    sae_in = x - sae.b_dec
    magnitude = sae_in @ (sae.W_enc * np.exp(sae.r_mag)) + sae.b_mag
    expect = np.where(sae_in @ sae.W_enc + sae.b_enc > 0, np.maximum(magnitude, 0), 0)
    assert 0 < (feats > 0).sum() < (magnitude > 0).sum() and rel_err(feats, expect) <= TOL
    _, cache = run_with_cache_with_saes(model, tokens(), [sae])
    acts = model.run_with_cache(tokens(), names_filter=HOOK)[1][HOOK] - sae.b_dec
    pre = acts @ (sae.W_enc * np.exp(sae.r_mag)) + sae.b_mag
    assert rel_err(cache[HOOK + ".hook_sae_acts_pre"], pre) <= TOL


def test_an_abstopk_sae_keeps_the_k_largest_magnitudes_signed(tmp_path):
    sae = SAE.load(write_sae(tmp_path, "abstopk", D, D_SAE, hook=HOOK, k=5))
    x = np.random.default_rng(6).standard_normal((2, 3, D)).astype(np.float32)
    feats = sae.encode(x)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    top = np.argsort(-np.abs(pre), axis=-1)[..., :5]
    expect = np.zeros_like(pre)
    np.put_along_axis(expect, top, np.take_along_axis(pre, top, -1), -1)
    assert rel_err(feats, expect) <= TOL and (feats < 0).any() and ((feats != 0).sum(-1) == 5).all()
    idx, val = sae.encode_sparse(x)
    assert rel_err(sae.decode((idx, val)), sae.decode(feats)) <= TOL
    # L1 sums magnitudes, as SAELens's evals do: the signed sum let positive and negative cancel
    from tinymech.sae.metrics import reconstruction_metrics

    assert reconstruction_metrics(sae, x.reshape(-1, D)).l1 == pytest.approx(np.abs(feats).sum(-1).mean(), rel=1e-5)
    with pytest.raises(tm.SAEInputError, match=r"x must be rows \[n, 64\]"):  # the core's bare ValueError
        reconstruction_metrics(sae, x)
    with pytest.raises(tm.SAELoadError, match="'k' must be a positive integer"):
        SAE.load(write_sae(tmp_path / "nok", "abstopk", D, D_SAE))
