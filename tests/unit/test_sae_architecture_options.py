"""Matching-pursuit and temporal SAEs, covariance whitening, single-head SAEs and hook_z
decoding without the reference libraries: loading, saving, hostile config values and files
(each a precise SAELoadError), matching pursuit's stopping rules and ties against a plain
numpy transcription of SAELens's loop. Numbers against SAELens:
tests/reference/test_sae_architectures_more.py."""
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

import tinymech as tm
from model_factory import rel_err
from numpy_checkpoints import write_sae
from tinymech.errors import HookError, SAEInputError, SAELoadError
from tinymech.sae.sae import SAE, run_with_saes

TOL = 1e-5
D, D_SAE = 24, 40
HOOK = "blocks.0.hook_resid_pre"
TEMPORAL = dict(n_heads=2, bottleneck_factor=4, kval_topk=5)


def mp_reference(sae_in, W_dec, threshold, max_iterations, stop_on_duplicate_support):
    """SAELens 6.54's _encode_matching_pursuit, transcribed to numpy (float64), batched as it is."""
    residual = sae_in.astype(np.float64).copy()
    acts = np.zeros((len(residual), len(W_dec)))
    prev = np.zeros_like(acts, bool)
    done = np.zeros(len(residual), bool)
    for _ in range(max_iterations):
        scores = np.maximum(residual @ W_dec.T, 0)
        idx = scores.argmax(1)  # the first of equal values
        dec = W_dec[idx]
        values = np.maximum((residual * dec).sum(1), 0) * ~done
        np.add.at(acts, (np.arange(len(acts)), idx), values)
        residual -= values[:, None] * dec
        if stop_on_duplicate_support or threshold > 0:
            support = acts != 0
            if stop_on_duplicate_support:
                done |= (support == prev).all(1)
                prev = support
            if threshold > 0:
                done |= np.linalg.norm(residual, axis=1) < threshold
            if done.all():
                break
    return acts


def mp_sae(tmp_path, W_dec=None, b_dec=None, **cfg):
    path = write_sae(tmp_path / "mp", "matching_pursuit", D, D_SAE, hook=HOOK, **cfg)
    if W_dec is not None:
        save_file({"W_dec": W_dec.astype(np.float32), "b_dec": b_dec.astype(np.float32)},
                  str(path / "sae_weights.safetensors"))
    return SAE.load(path)


@pytest.mark.parametrize("cfg", [{}, {"max_iterations": 3}, {"residual_threshold": 2.5},
                                 {"stop_on_duplicate_support": False, "residual_threshold": 0.0, "max_iterations": 30},
                                 {"stop_on_duplicate_support": False, "apply_b_dec_to_input": False}], ids=str)
def test_matching_pursuit_follows_saelens_loop(tmp_path, cfg):
    sae = mp_sae(tmp_path, **cfg)
    x = np.random.default_rng(2).standard_normal((9, D)).astype(np.float32) * 2
    sae_in = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
    ref = mp_reference(sae_in, sae.W_dec.astype(np.float64), sae.cfg.residual_threshold,
                       sae.cfg.max_iterations or D, sae.cfg.stop_on_duplicate_support)
    got = sae.encode(x)
    assert ((got != 0) == (ref != 0)).all() and rel_err(got, ref) <= TOL
    bias = sae.b_dec if sae.cfg.apply_b_dec_to_input else 0  # a tied SAE adds b_dec only if it subtracted it
    assert rel_err(sae.forward(x), ref @ sae.W_dec + bias) <= TOL


def test_matching_pursuit_ties_and_stops(tmp_path):
    """Equal decoder rows: the first is picked; picking an active feature again adds to it and
    stops (its support did not grow); an input orthogonal to every row stops with no feature."""
    W = np.zeros((D_SAE, D))
    W[3, 0] = W[7, 0] = 1.0  # rows 3 and 7 equal
    W[5, :2] = [0.6, 0.8]
    sae = mp_sae(tmp_path, W, np.zeros(D), residual_threshold=0.0)
    x = np.zeros((3, D), np.float32)
    x[0, 0] = 2.0          # row 3 takes it all; the next pick (row 3 or 7, zero value) changes nothing
    x[1, :2] = [3.0, 4.0]  # row 5 first (5.0), then nothing left
    x[2, 5] = 1.0          # no row sees it
    got = sae.encode(x)
    assert got[0, 3] == 2.0 and (got[0] != 0).sum() == 1
    assert got[1, 5] == pytest.approx(5.0) and (got[1] != 0).sum() == 1
    assert not got[2].any()
    ref = mp_reference(x, W, 0.0, D, True)
    assert np.array_equal(got != 0, ref != 0)
    zero = mp_sae(tmp_path / "z", W, np.zeros(D), max_iterations=0)
    assert not zero.encode(x).any()


def test_matching_pursuit_loads_and_saves_tied(tmp_path):
    sae = mp_sae(tmp_path, residual_threshold=0.5, max_iterations=7)
    assert sae.cfg.architecture == "matching_pursuit" and sae.cfg.options == {
        "residual_threshold": 0.5, "max_iterations": 7, "stop_on_duplicate_support": True}
    assert np.array_equal(sae.W_enc, sae.W_dec.T) and not sae.b_enc.any()
    folder = tmp_path / "saved"
    sae.save(folder)
    from safetensors.numpy import load_file

    assert sorted(load_file(str(folder / "sae_weights.safetensors"))) == ["W_dec", "b_dec"]
    cfg = json.loads((folder / "cfg.json").read_text())
    assert (cfg["residual_threshold"], cfg["max_iterations"]) == (0.5, 7) and "residual_threshold" not in cfg["metadata"]
    x = np.random.default_rng(0).standard_normal((2, D)).astype(np.float32)
    assert np.array_equal(SAE.load(folder).encode(x), sae.encode(x))
    assert "acts_pre" not in " ".join(tm.sae.splice.sae_point_names(sae))


def temporal_sae(tmp_path, **cfg):
    return SAE.load(write_sae(tmp_path / "t", "temporal", D, D_SAE, hook=HOOK, std=0.2, **{**TEMPORAL, **cfg}))


def test_temporal_reads_whole_sequences(tmp_path):
    sae = temporal_sae(tmp_path)
    x = np.random.default_rng(1).standard_normal((2, 5, D)).astype(np.float32)
    feats = sae.encode(x)
    assert feats.shape == (2, 5, D_SAE) and ((feats != 0).sum(-1) <= 5).all()
    # position t sees positions up to t: the first three of a longer sequence are the same
    longer = np.concatenate([x, x[:, :2]], axis=1)
    assert rel_err(sae.encode(longer)[:, :5], feats) <= TOL
    novel, predicted = sae.encode_with_predictions(x)
    assert np.array_equal(novel, feats) and rel_err(sae.forward(x), sae.decode(novel + predicted)) <= TOL
    assert sae.encode(x[:, :0]).shape == (2, 0, D_SAE)
    idx, val = sae.top_features(x, 3)
    assert np.array_equal(np.take_along_axis(feats, idx, -1), val) and (val[..., :-1] >= val[..., 1:]).all()
    scaled = temporal_sae(tmp_path / "s", normalize_activations="constant_scalar_rescale",
                          activation_normalization_factor=0.5)
    codes = scaled.encode(x)  # a constant scale is undone without the input
    assert rel_err(scaled.decode(codes), scaled.decode(codes, acts=x)) <= TOL
    assert rel_err(scaled.decode(codes), sae.decode(codes) * 2) <= TOL  # the same weights: (z W_dec + b_dec) / 0.5
    for bad in (x[0], x[:, :, None]):
        with pytest.raises(SAEInputError, match="attends over the positions"):
            sae.encode(bad)
    x[1, 2, 0] = np.nan  # a NaN spoils its position and the later ones of its sequence
    spoiled = np.isnan(sae.encode(x)).all(-1)
    assert spoiled.tolist() == [[False] * 5, [False, False, True, True, True]]


def test_temporal_saves_its_attention_layers(tmp_path):
    sae = temporal_sae(tmp_path, n_attn_layers=2, tied_weights=False)
    assert sorted(sae.extra_weights) == sorted(f"attn_layers.{i}.{m}.{p}" for i in range(2)
                                               for m in ("k_ctx", "q_target", "v_ctx", "c_proj")
                                               for p in ("weight", "bias"))
    assert sae.cfg.n_heads == 2 and sae.cfg.tied_weights is False
    again = SAE.load(sae.save(tmp_path / "saved"))
    x = np.random.default_rng(3).standard_normal((1, 4, D)).astype(np.float32)
    assert np.array_equal(again.forward(x), sae.forward(x))
    import pickle

    assert np.array_equal(pickle.loads(pickle.dumps(sae)).forward(x), sae.forward(x))


def edit(path, **changes):
    cfg = json.loads((path / "cfg.json").read_text())
    cfg.update(changes)
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


HOSTILE = [
    ("matching_pursuit", {"residual_threshold": "small"}, "residual_threshold must be a number"),
    ("matching_pursuit", {"residual_threshold": True}, "residual_threshold must be a number"),
    ("matching_pursuit", {"max_iterations": -1}, "max_iterations must be >= 0"),
    ("matching_pursuit", {"max_iterations": 2.5}, "max_iterations must be a whole number"),
    ("matching_pursuit", {"max_iterations": 2**40}, "max_iterations must be <="),
    ("matching_pursuit", {"stop_on_duplicate_support": "yes"}, "stop_on_duplicate_support must be True or False"),
    ("matching_pursuit", {"normalize_activations": "constant_scalar_rescale"}, "normalize_activations"),
    ("temporal", {"n_heads": 0}, "n_heads must be >= 1"),
    ("temporal", {"n_heads": 3}, "multiple of bottleneck_factor x n_heads"),
    ("temporal", {"bottleneck_factor": None}, "bottleneck_factor must be a whole number"),
    ("temporal", {"n_attn_layers": -1}, "n_attn_layers must be >= 0"),
    ("temporal", {"n_attn_layers": 10**6}, "n_attn_layers must be <="),
    ("temporal", {"sae_diff_type": "gelu"}, "sae_diff_type"),
    ("temporal", {"kval_topk": 0}, "kval_topk must be >= 1"),
    ("temporal", {"kval_topk": D_SAE + 1}, "exceeds d_sae"),
    ("temporal", {"tied_weights": "no"}, "tied_weights must be True or False"),
    ("temporal", {"activation_normalization_factor": 0}, "finite and nonzero"),
    ("temporal", {"activation_normalization_factor": "x"}, "must be a number"),
    ("temporal", {"normalize_activations": "covariance_whitening"}, "not supported by a temporal SAE"),
    ("temporal", {"n_attn_layers": 2}, "attn_layers.1.k_ctx.weight"),
    ("temporal", {"tied_weights": False}, "lacks W_enc"),
    ("standard", {"normalize_activations": "constant_scalar_rescale"}, "not supported by a standard SAE"),
    ("standard", {"normalize_activations": ["layer_norm"]}, "normalize_activations"),
]


@pytest.mark.parametrize("arch,changes,match", HOSTILE, ids=str)
def test_hostile_configs_are_refused_precisely(tmp_path, arch, changes, match):
    path = write_sae(tmp_path / "s", arch, D, D_SAE, hook=HOOK, **(TEMPORAL if arch == "temporal" else {}))
    with pytest.raises(SAELoadError, match=match):
        SAE.load(edit(path, **changes))


def test_a_nan_threshold_from_overrides_is_refused():
    from tinymech.sae.loading import parse_config  # a file cannot hold NaN; a release's overrides could

    with pytest.raises(SAELoadError, match="not NaN"):
        parse_config({"architecture": "matching_pursuit", "d_in": 4, "d_sae": 8}, {"residual_threshold": float("nan")})


def test_an_attention_layer_of_the_wrong_shape_is_refused(tmp_path):
    path = write_sae(tmp_path / "t", "temporal", D, D_SAE, hook=HOOK, **TEMPORAL)
    from safetensors.numpy import load_file

    weights = load_file(str(path / "sae_weights.safetensors"))
    weights["attn_layers.0.v_ctx.bias"] = np.zeros(D_SAE + 1, np.float32)
    save_file(weights, str(path / "sae_weights.safetensors"))
    with pytest.raises(SAELoadError, match=r"'attn_layers.0.v_ctx.bias' has shape \[41\]"):
        SAE.load(path)


# ---- covariance whitening ----------------------------------------------------------------------

def whitening(seed=0, d=D):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = rng.uniform(0.5, 2.0, d)
    return rng.standard_normal(d), q * scales, (q * scales).T @ np.linalg.inv(q * scales @ (q * scales).T)


def whitened(tmp_path, arch="standard", tensors=None, scaler=None, **cfg):
    path = write_sae(tmp_path / "w", arch, D, D_SAE, hook=HOOK, normalize_activations="covariance_whitening", **cfg)
    mean, matrix, inverse = whitening()
    save_file(tensors or {"mean": mean, "matrix": matrix, "inverse_matrix": np.linalg.inv(matrix)},
              str(path / "activation_whitening.safetensors"))
    if scaler is not None:
        (path / "activation_scaler.json").write_text(json.dumps(scaler))
    return path


@pytest.mark.parametrize("cfg", [{}, {"apply_b_dec_to_input": False}], ids=str)
def test_a_folded_whitening_reads_raw_activations_as_the_sae_read_whitened_ones(tmp_path, cfg):
    """The folded SAE on x encodes as the checkpoint's weights on z = (x - mean) @ M, and its
    reconstruction is theirs mapped back (z_hat @ M⁻¹ + mean)."""
    path = whitened(tmp_path, **cfg)
    folded = SAE.load(path)
    assert folded.cfg.normalize_activations == "none"
    (path / "activation_whitening.safetensors").unlink()
    with pytest.warns(UserWarning, match="as SAELens's SAE runs it"):
        raw = SAE.load(path)
    mean, matrix, _ = whitening()
    x = np.random.default_rng(5).standard_normal((6, D)).astype(np.float32)
    z = ((x - mean) @ matrix).astype(np.float32)
    assert rel_err(folded.encode(x), raw.encode(z)) <= 1e-4
    assert rel_err(folded.forward(x), raw.forward(z) @ np.linalg.inv(matrix) + mean) <= 1e-4


@pytest.mark.parametrize("tensors,match", [
    ({"mean": np.zeros(D), "matrix": np.eye(D)}, "'inverse_matrix' must have shape"),
    ({"mean": np.zeros(D + 1), "matrix": np.eye(D), "inverse_matrix": np.eye(D)}, r"'mean' must have shape \[24\]"),
    ({"mean": np.zeros(D), "matrix": np.eye(D)[:-1], "inverse_matrix": np.eye(D)}, "'matrix' must have shape"),
    ({"mean": np.full(D, np.nan), "matrix": np.eye(D), "inverse_matrix": np.eye(D)}, "NaN or infinite"),
    ({"mean": np.zeros(D, np.int32), "matrix": np.eye(D), "inverse_matrix": np.eye(D)}, "not a float type"),
    # finite in float64, but the folded float32 weights were infinite (and encoded every feature to 0)
    ({"mean": np.zeros(D), "matrix": np.eye(D) * 1e200, "inverse_matrix": np.eye(D) * 1e-200},
     "overflows float32 in W_enc"),
], ids=["missing", "mean", "matrix", "nan", "ints", "overflow"])
def test_a_hostile_whitening_file_is_refused(tmp_path, tensors, match):
    with pytest.raises(SAELoadError, match=match):
        SAE.load(whitened(tmp_path, tensors=tensors))


def test_a_scaler_without_whitening_leaves_the_file_unread(tmp_path):
    path = whitened(tmp_path, tensors={"mean": np.zeros(3)}, scaler={"scaling_factor": None, "has_whitening": False})
    with pytest.warns(UserWarning, match="no activation_whitening"):
        assert SAE.load(path).cfg.normalize_activations == "covariance_whitening"


def test_matching_pursuit_refuses_to_fold_a_whitening(tmp_path):
    with pytest.raises(SAELoadError, match="tied encoder"):
        SAE.load(whitened(tmp_path, "matching_pursuit"))


# ---- splices: one head, hook_z, temporal ----------------------------------------------------------

def test_a_single_head_sae_runs_at_every_head(saved_gpt2, tmp_path):
    """As SAELens's HookedSAETransformer runs it: hook_head_index is not read."""
    model, _ = saved_gpt2("tiny")  # 4 heads of 16
    hook = "blocks.1.attn.hook_z"
    sae = SAE.load(write_sae(tmp_path / "h", "topk", 16, D_SAE, hook=hook, k=3, std=0.2,
                             metadata={"hook_name": hook, "hook_head_index": 2}))
    assert sae.cfg.hook_head_index == 2
    tokens = np.random.default_rng(0).integers(0, model.cfg.d_vocab, (2, 6))
    every = model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda z, hook: sae.forward(z))])
    assert rel_err(run_with_saes(model, tokens, [sae]), every) <= 1e-4
    assert rel_err(run_with_saes(model, tokens, [sae], use_error_term=True), model(tokens)) <= 1e-4
    _, cache = model.run_with_cache_with_saes(tokens, saes=[sae])
    assert cache[hook + ".hook_sae_acts_post"].shape == (2, 6, 4, D_SAE)


def test_hook_z_decode_gives_heads_once_encode_saw_them(tmp_path):
    sae = SAE.load(write_sae(tmp_path / "z", "standard", 48, D_SAE, hook="blocks.0.attn.hook_z",
                             reshape_activations="hook_z"))
    z = np.random.default_rng(0).standard_normal((2, 3, 4, 12)).astype(np.float32)
    feats = sae.encode(z.reshape(2, 3, 48))
    assert sae.d_head is None and sae.decode(feats).shape == (2, 3, 48)
    assert sae.encode(z).shape == (2, 3, D_SAE) and sae.d_head == 12
    assert sae.decode(feats).shape == (2, 3, 4, 12) and sae.forward(z).shape == z.shape
    assert rel_err(sae.decode(feats).reshape(2, 3, 48), sae.forward(z.reshape(2, 3, 48))) <= TOL


def test_a_temporal_sae_splices_and_generates(saved_gpt2, tmp_path):
    model, _ = saved_gpt2("tiny")
    sae = SAE.load(write_sae(tmp_path / "t", "temporal", 64, 64, hook="blocks.1.hook_resid_pre", std=0.1,
                             n_heads=2, bottleneck_factor=2, kval_topk=6))
    tokens = np.random.default_rng(1).integers(0, model.cfg.d_vocab, (2, 5))
    x = model.run_with_cache(tokens, names_filter=[sae.cfg.hook_name])[1][sae.cfg.hook_name]
    manual = model.run_with_hooks(tokens, fwd_hooks=[(sae.cfg.hook_name, lambda a, hook: sae.decode(sae.encode(a)))])
    assert rel_err(run_with_saes(model, tokens, [sae]), manual) <= 1e-4  # the splice decodes the novel codes
    assert sae.encode(x).shape == (2, 5, 64)
    out = model.generate(tokens[:1], max_new_tokens=3, hooks=[sae.as_hook()], do_sample=False, verbose=False)
    assert out.shape[-1] == 8
    wide = SAE.load(write_sae(tmp_path / "w", "temporal", 16, 64, hook="blocks.1.attn.hook_z", std=0.1,
                              n_heads=2, bottleneck_factor=2))
    with pytest.raises(HookError, match="whole positions"):
        run_with_saes(model, tokens, [wide])


def test_a_temporal_sae_dashboards_over_sequences_and_refuses_rows(tmp_path):
    model = tm.load()  # the demo model: dashboards need a tokenizer
    d = model.cfg.d_model
    sae = SAE.load(write_sae(tmp_path / "t", "temporal", d, 64, hook="blocks.1.hook_resid_pre", std=0.1,
                             n_heads=2, bottleneck_factor=2, kval_topk=6))
    texts = ["the cat sat on the mat " * 4, "a dog ran in the park " * 4]
    dash = tm.feature_dashboards(model, sae, texts, n_tokens=40, context=10, batch_size=2, progress=False,
                                 out=tmp_path / "dash")
    assert len(dash) == 64
    with pytest.raises(SAEInputError, match="whole sequences"):
        tm.sae.metrics.reconstruction_metrics(sae, np.zeros((4, d), np.float32))
