"""Matching-pursuit and temporal SAEs, covariance whitening, single-head SAEs in a splice and
hook_z decoding against SAELens 6.54: folders written by SAELens's own classes, loaded by
tinymech; encodings, reconstructions, spliced logits and caches compared on the same weights
(odd sizes, batch > 1, one token)."""
import json
import warnings

import numpy as np
import pytest
import torch

from model_factory import rel_err
from sae_factory import lens_run, lens_sae, save_lens, tl_model
from tinymech.errors import HookError, SAEInputError, SAELoadError
from tinymech.sae.sae import SAE, run_with_cache_with_saes, run_with_saes

TOL = 1e-4
D_IN, D_SAE = 60, 150  # the "odd" model's d_model (3 heads of 20); d_sae not a multiple of 16
HOOK = "blocks.1.hook_resid_pre"

CASES = [
    ("matching_pursuit", {}),
    ("matching_pursuit", {"apply_b_dec_to_input": False, "max_iterations": 5}),
    ("matching_pursuit", {"stop_on_duplicate_support": False, "residual_threshold": 3.0}),
    ("matching_pursuit", {"residual_threshold": 0.0, "max_iterations": 200}),
    ("matching_pursuit", {"normalize_activations": "layer_norm"}),
    ("temporal", {"n_heads": 3, "bottleneck_factor": 5, "kval_topk": 7}),
    ("temporal", {"n_heads": 2, "bottleneck_factor": 3, "sae_diff_type": "relu", "n_attn_layers": 2,
                  "tied_weights": False}),
    ("temporal", {"n_heads": 1, "bottleneck_factor": 2, "normalize_activations": "constant_scalar_rescale",
                  "activation_normalization_factor": 0.7, "kval_topk": 4, "apply_b_dec_to_input": False}),
    ("temporal", {"n_heads": 5, "bottleneck_factor": 1, "n_attn_layers": 0, "normalize_activations": "layer_norm"}),
]


def made(tmp_path, arch, cfg, hook=HOOK, d_in=D_IN, seed=0, std=0.3):
    lens = lens_sae(arch, d_in, D_SAE, hook=hook, seed=seed, std=std, **cfg)
    return lens, SAE.load(save_lens(lens, tmp_path / "lens"))


def inputs(shape, d=D_IN, seed=1):
    return (np.random.default_rng(seed).standard_normal(shape + (d,)) * 2 + 0.5).astype(np.float32)


@pytest.mark.parametrize("arch,cfg", CASES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7)])
def test_encode_decode_forward_match_saelens(tmp_path, arch, cfg, shape):
    lens, ours = made(tmp_path, arch, cfg)
    x = inputs(shape)
    feats, recons = lens_run(lens, x)
    with torch.no_grad(), warnings.catch_warnings():  # a layer_norm SAE's decode undoes its last encode
        warnings.simplefilter("ignore")
        decoded = lens.decode(lens.encode(torch.as_tensor(x))).numpy()
    got = ours.encode(x)
    assert got.shape == shape + (D_SAE,) and rel_err(got, feats) <= TOL
    assert ((got != 0) == (feats != 0)).all()  # the same features picked
    assert rel_err(ours.forward(x), recons) <= TOL
    assert rel_err(ours.decode(got, acts=x), decoded) <= TOL
    idx, val = ours.encode_sparse(x)
    assert rel_err(ours.decode((idx, val), acts=x), decoded) <= TOL


def test_temporal_codes_come_from_the_context(tmp_path):
    """The predicted codes matter: forward is not decode(encode), and position t's codes
    depend on positions before it only (and on nothing of another batch row)."""
    lens, ours = made(tmp_path, "temporal", {"n_heads": 3, "bottleneck_factor": 5, "kval_topk": 9})
    x = inputs((2, 6))
    novel, predicted = ours.encode_with_predictions(x)
    with torch.no_grad():
        ref_novel, ref_pred = (t.numpy() for t in lens.encode_with_predictions(torch.as_tensor(x)))
    assert rel_err(novel, ref_novel) <= TOL and rel_err(predicted, ref_pred) <= TOL
    assert np.abs(predicted[:, 1:]).max() > 1e-2
    assert rel_err(ours.forward(x), ours.decode(novel)) > 1e-3
    changed = x.copy()
    changed[0, 3] += 1.0
    after = ours.encode(changed)
    assert np.array_equal(after[:, :3], ours.encode(x)[:, :3]) and np.array_equal(after[1], ours.encode(x)[1])
    assert not np.array_equal(after[0, 4:], ours.encode(x)[0, 4:])
    with pytest.raises(SAEInputError, match=r"\[batch, pos, d_in\]"):
        ours.encode(x[0])
    with pytest.raises(SAEInputError, match="predicts no codes"):
        made(tmp_path / "mp", "matching_pursuit", {})[1].encode_with_predictions(x)


def test_matching_pursuit_top_features_and_config_fields(tmp_path):
    lens, ours = made(tmp_path, "matching_pursuit", {"max_iterations": 9})
    x = inputs((2, 5))
    feats, _ = lens_run(lens, x)
    idx, val = ours.top_features(x, 4)
    ref = torch.topk(torch.as_tensor(feats), 4)
    assert np.array_equal(idx, ref.indices.numpy()) and rel_err(val, ref.values.numpy()) <= TOL
    assert (ours.cfg.residual_threshold, ours.cfg.max_iterations, ours.cfg.stop_on_duplicate_support) == (
        1e-2, 9, True)
    assert np.array_equal(ours.W_enc, ours.W_dec.T) and not ours.b_enc.any()


@pytest.mark.parametrize("arch,cfg", [CASES[1], CASES[6]], ids=str)
def test_saved_folders_load_in_saelens(tmp_path, arch, cfg):
    """What SAE.save writes (W_dec and b_dec only for a tied SAE; a temporal SAE's attention
    layers under SAELens's names; the architecture's fields at the top of cfg.json), SAELens loads."""
    from sae_lens import SAE as LensSAE

    _, ours = made(tmp_path, arch, cfg)
    folder = ours.save(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "cfg.json").read_text())
    assert {k: saved[k] for k in cfg} == cfg
    back = LensSAE.load_from_disk(folder)
    x = inputs((2, 4), seed=7)
    feats, recons = lens_run(back, x)
    assert rel_err(ours.encode(x), feats) <= TOL and rel_err(ours.forward(x), recons) <= TOL
    again = SAE.load(folder)
    assert again.cfg.options == ours.cfg.options and np.array_equal(again.encode(x), ours.encode(x))


def test_matching_pursuit_folds_a_dataset_scale_as_saelens(tmp_path):
    lens = lens_sae("matching_pursuit", D_IN, D_SAE, normalize_activations="expected_average_only_in")
    save_lens(lens, tmp_path)
    ours = SAE.load(tmp_path, norm_scaling_factor=2.5)
    lens.fold_activation_norm_scaling_factor(2.5)
    x = inputs((4,), seed=3)
    feats, recons = lens_run(lens, x)
    assert ours.cfg.residual_threshold == lens.cfg.residual_threshold
    assert rel_err(ours.encode(x), feats) <= TOL and rel_err(ours.forward(x), recons) <= TOL


def test_temporal_cannot_fold_a_dataset_scale(tmp_path):
    save_lens(lens_sae("temporal", D_IN, D_SAE, n_heads=3, bottleneck_factor=5,
                       normalize_activations="expected_average_only_in"), tmp_path)
    with pytest.raises(SAELoadError, match="cannot fold"):
        SAE.load(tmp_path, norm_scaling_factor=2.0)


# ---- covariance whitening ---------------------------------------------------------------------

def whitened_checkpoint(tmp_path, arch, cfg, d_in=D_IN, seed=0):
    """A SAELens SAE of normalize_activations covariance_whitening saved as its trainer saves a
    checkpoint: the SAE, and beside it activation_scaler.json and activation_whitening.safetensors
    estimated by SAELens's ActivationScaler; and the statistics."""
    from sae_lens.training.activation_scaler import ActivationScaler

    lens = lens_sae(arch, d_in, D_SAE, hook=HOOK, seed=seed, normalize_activations="covariance_whitening",
                    **({"d_out": d_in} if "transcoder" in arch else {}), **cfg)
    rng = np.random.default_rng(seed + 1)
    mix = rng.standard_normal((d_in, d_in)).astype(np.float32)
    batches = iter([torch.as_tensor(rng.standard_normal((256, d_in)).astype(np.float32) @ mix + 0.7)
                    for _ in range(4)])
    scaler = ActivationScaler()
    scaler.estimate_whitening(d_in, batches, n_batches_for_norm_estimate=4)
    save_lens(lens, tmp_path)
    scaler.save(str(tmp_path / "activation_scaler.json"))
    return lens, scaler.whitening


WHITENED = [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("jumprelu", {"apply_b_dec_to_input": False}),
    ("topk", {"k": 6, "rescale_acts_by_decoder_norm": True}),
    ("gated", {"apply_b_dec_to_input": False}),
    ("abstopk", {"k": 5}),
    ("transcoder", {}),
]


@pytest.mark.parametrize("arch,cfg", WHITENED, ids=str)
def test_a_whitened_checkpoint_loads_folded_as_saelens_folds_it(tmp_path, arch, cfg):
    lens, w = whitened_checkpoint(tmp_path, arch, cfg)
    ours = SAE.load(tmp_path)
    lens.fold_activation_whitening(w.mean, w.matrix, w.inverse_matrix)
    assert ours.cfg.normalize_activations == lens.cfg.normalize_activations == "none"
    assert ours.cfg.rescale_acts_by_decoder_norm is False
    x = inputs((3, 5), seed=9) * 3
    feats, recons = lens_run(lens, x)
    assert rel_err(ours.encode(x), feats) <= TOL and rel_err(ours.forward(x), recons) <= TOL
    saved = SAE.load(ours.save(tmp_path / "saved"))  # the folded form, as SAELens saves it after training
    assert saved.cfg.normalize_activations == "none" and rel_err(saved.forward(x), recons) <= TOL


def test_whitening_without_its_statistics_runs_as_saelens_runs_it(tmp_path):
    from sae_lens import SAE as LensSAE

    whitened_checkpoint(tmp_path, "standard", {})
    (tmp_path / "activation_whitening.safetensors").unlink()
    with pytest.warns(UserWarning, match="no activation_whitening.safetensors"):
        ours = SAE.load(tmp_path)
    lens = LensSAE.load_from_disk(tmp_path)
    x = inputs((2, 3), seed=5)
    feats, recons = lens_run(lens, x)
    assert rel_err(ours.encode(x), feats) <= TOL and rel_err(ours.forward(x), recons) <= TOL
    assert ours.cfg.normalize_activations == "covariance_whitening"
    assert rel_err(ours.decode(ours.encode(x)), recons) <= TOL  # nothing to undo: no acts needed


def test_whitening_cannot_fold_into_a_tied_encoder(tmp_path):
    whitened_checkpoint(tmp_path, "matching_pursuit", {})
    with pytest.raises(SAELoadError, match="tied encoder"):
        SAE.load(tmp_path)


# ---- spliced into a model --------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(gpt2):
    hf, model, _ = gpt2("odd")  # d_model 60, 3 heads of 20, 3 layers
    return model, tl_model(hf)


SPLICE_CASES = [
    ("matching_pursuit", HOOK, {}, D_IN),
    ("matching_pursuit", "blocks.2.hook_mlp_out", {"apply_b_dec_to_input": False}, D_IN),
    ("temporal", HOOK, {"n_heads": 3, "bottleneck_factor": 5, "kval_topk": 11}, D_IN),
    ("temporal", "blocks.0.attn.hook_z", {"n_heads": 2, "bottleneck_factor": 3, "sae_diff_type": "relu",
                                          "reshape_activations": "hook_z"}, D_IN),
    ("standard", "blocks.1.attn.hook_z", {"metadata": {"hook_head_index": 1}}, 20),
    ("topk", "blocks.2.attn.hook_q", {"k": 5, "metadata": {"hook_head_index": 0}}, 20),
    ("jumprelu", "blocks.0.attn.hook_v", {"metadata": {"hook_head_index": 2}}, 20),
]


@pytest.mark.parametrize("arch,hook,cfg,d_in", SPLICE_CASES, ids=str)
@pytest.mark.parametrize("keep_error", [False, True])
def test_spliced_logits_and_cache_match_hooked_sae_transformer(tmp_path, models, arch, hook, cfg, d_in, keep_error):
    """SAELens's HookedSAETransformer encodes and decodes (a temporal SAE's novel codes only,
    over the run's positions; a single-head SAE at every head, hook_head_index unread)."""
    model, tl = models
    lens, ours = made(tmp_path, arch, cfg, hook=hook, d_in=d_in, std=0.2)
    tokens = np.random.default_rng(4).integers(0, model.cfg.d_vocab, (2, 9))
    t = torch.as_tensor(tokens)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_logits, ref_cache = tl.run_with_cache_with_saes(t, saes=[lens], use_error_term=keep_error)
    got = run_with_saes(model, tokens, [ours], keep_error=keep_error)
    assert rel_err(got, ref_logits.numpy()) <= TOL
    if keep_error:
        assert rel_err(got, model(tokens)) <= TOL
    else:
        assert rel_err(got, model(tokens)) > 1e-3  # the splice did change something
    logits, cache = run_with_cache_with_saes(model, tokens, [ours], keep_error=keep_error)
    assert rel_err(logits, ref_logits.numpy()) <= TOL
    ref_keys = sorted(k for k in ref_cache.keys() if ".hook_sae_" in k)
    ours_keys = sorted(k for k in cache.keys() if ".hook_sae_" in k)
    if arch == "matching_pursuit":  # SAELens's encode never calls hook_sae_acts_post; tinymech caches the codes
        assert ours_keys == sorted(ref_keys + [f"{hook}.hook_sae_acts_post"])
    else:
        assert ours_keys == ref_keys
    for key in ref_keys:
        ref_act = ref_cache[key].numpy()
        assert cache[key].shape == ref_act.shape, key
        assert rel_err(cache[key], ref_act) <= TOL, key


def test_python_hooks_on_a_temporal_splice(tmp_path, models):
    """A hook function on hook_sae_acts_post runs in the Python splice; with the error term, the
    error is that of decode(encode(x)), the novel codes only, as SAELens's splice computes it."""
    model, tl = models
    lens, ours = made(tmp_path, "temporal", {"n_heads": 3, "bottleneck_factor": 5, "kval_topk": 11}, std=0.2)
    tokens = np.random.default_rng(6).integers(0, model.cfg.d_vocab, (2, 7))

    def halve(acts, hook):
        return acts * 0.5

    model.add_sae(ours, use_error_term=True)
    tl.add_sae(lens, use_error_term=True)
    try:
        got = model.run_with_hooks(tokens, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", halve)])
        with torch.no_grad():
            ref = tl.run_with_hooks(torch.as_tensor(tokens), fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", halve)])
    finally:
        model.reset_saes()
        tl.reset_saes()
    assert rel_err(got, ref.numpy()) <= TOL and rel_err(got, model(tokens)) > 1e-4


def test_a_temporal_sae_cannot_read_one_head(tmp_path, models):
    model, _ = models
    _, ours = made(tmp_path, "temporal", {"n_heads": 1, "bottleneck_factor": 1}, hook="blocks.1.attn.hook_z",
                   d_in=20)
    with pytest.raises(HookError, match="whole positions"):
        run_with_saes(model, np.zeros((1, 3), np.int64), [ours])


# ---- hook_z --------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,cfg", [("standard", {}), ("topk", {"k": 4}), ("matching_pursuit", {}),
                                      ("gated", {})], ids=str)
def test_hook_z_decode_returns_heads_as_saelens(tmp_path, arch, cfg):
    lens, ours = made(tmp_path, arch, dict(cfg, reshape_activations="hook_z"), hook="blocks.1.attn.hook_z")
    x = inputs((2, 5, 3), d=20).reshape(2, 5, 3, 20)
    assert ours.d_head is None
    flat = x.reshape(2, 5, D_IN)
    assert ours.decode(ours.encode(flat)).shape == (2, 5, D_IN)  # d_head not known yet: as it is
    feats, recons = lens_run(lens, x)  # SAELens's first encode sets its d_head
    with torch.no_grad():
        decoded = lens.decode(torch.as_tensor(feats)).numpy()
    got = ours.encode(x)
    assert ours.d_head == 20 and rel_err(got, feats) <= TOL
    assert ours.decode(got).shape == decoded.shape == (2, 5, 3, 20) and rel_err(ours.decode(got), decoded) <= TOL
    assert ours.forward(x).shape == recons.shape and rel_err(ours.forward(x), recons) <= TOL
    idx, val = ours.encode_sparse(x)
    assert rel_err(ours.decode((idx, val)), decoded) <= TOL
    assert ours.decode(got[0, 0]).shape == (3, 20)  # one token's features, as SAELens's decode gives them
