"""tinymech's SAEs against SAELens: checkpoints made and saved by SAELens's own
classes, loaded by tinymech; encodings, reconstructions, spliced logits and
caches compared with SAELens's HookedSAETransformer on the same weights."""
import json

import numpy as np
import pytest
import torch

from model_factory import rel_err
from numpy_checkpoints import fake_hub_cache
from sae_factory import lens_run, lens_sae, save_lens, tl_model
from tinymech.sae.sae import SAE, run_with_cache_with_saes, run_with_saes
from tinymech.errors import SAELoadError, SAENotFoundError

TOL = 1e-4
D_IN, D_SAE = 60, 150  # the "odd" model's d_model; d_sae not a multiple of 16

ENCODER_CASES = [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("standard", {"normalize_activations": "constant_norm_rescale"}),
    ("standard", {"normalize_activations": "layer_norm"}),
    ("jumprelu", {}),
    ("topk", {"k": 7}),
    ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}),
    ("transcoder", {}),
    ("skip_transcoder", {}),
    ("jumprelu_transcoder", {"normalize_activations": "layer_norm"}),
    ("gated", {}),
    ("gated", {"apply_b_dec_to_input": False}),
    ("gated", {"normalize_activations": "layer_norm"}),
    ("abstopk", {"k": 7}),
    ("abstopk", {"k": 5, "rescale_acts_by_decoder_norm": True}),
]


@pytest.mark.parametrize("arch,cfg", ENCODER_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", [(1, 1), (3, 7)])
def test_encode_and_reconstruct_match_saelens(tmp_path, arch, cfg, shape):
    d_out, hook_out = (44, "blocks.0.hook_mlp_out") if "transcoder" in arch else (None, None)
    lens = lens_sae(arch, D_IN, D_SAE, hook="blocks.0.hook_resid_pre", hook_out=hook_out, d_out=d_out, **cfg)
    ours = SAE.load(save_lens(lens, tmp_path))
    x = (np.random.default_rng(1).standard_normal(shape + (D_IN,)) * 2 + 0.5).astype(np.float32)
    feats, recons = lens_run(lens, x)
    got = ours.encode(x)
    assert got.shape == shape + (D_SAE,) and got.dtype == np.float32
    assert rel_err(got, feats) <= TOL
    assert rel_err(ours.forward(x), recons) <= TOL
    if "skip" not in arch:  # SAELens's decode leaves the skip term to forward
        assert rel_err(ours.decode(got, acts=x), recons) <= TOL
        idx, val = ours.encode_sparse(x)
        assert rel_err(ours.decode((idx, val), acts=x), recons) <= TOL
    assert (got != 0).sum(-1).max() <= (cfg.get("k") or D_SAE)
    if arch == "abstopk":  # exactly k, signed
        assert (got != 0).sum(-1).min() == cfg["k"] and (got < 0).any()


@pytest.mark.parametrize("arch,cfg", [("gated", {}), ("abstopk", {"k": 4})])
def test_saved_folders_load_in_saelens(tmp_path, arch, cfg):
    """What SAE.save writes, SAELens loads (gated: b_gate, r_mag, b_mag) and encodes alike."""
    from sae_lens import SAE as LensSAE

    ours = SAE.load(save_lens(lens_sae(arch, D_IN, D_SAE, **cfg), tmp_path / "lens"))
    back = LensSAE.load_from_disk(ours.save(tmp_path / "ours"))
    assert type(back).__name__ == {"gated": "GatedSAE", "abstopk": "AbsTopKSAE"}[arch]
    x = np.random.default_rng(7).standard_normal((4, D_IN)).astype(np.float32)
    feats, recons = lens_run(back, x)
    assert rel_err(ours.encode(x), feats) <= TOL and rel_err(ours.forward(x), recons) <= TOL


def test_pre_6_config_keys(tmp_path):
    """An old flat config (hook_point, activation_fn_str topk, k in activation_fn_kwargs,
    no apply_b_dec_to_input) loads as SAELens loads it."""
    from sae_lens import SAE as LensSAE

    save_lens(lens_sae("topk", D_IN, D_SAE, k=6), tmp_path)
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "hook_point": "blocks.1.hook_resid_pre",
           "hook_point_layer": 1, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 6},
           "model_name": "test", "normalize_activations": False}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    ours = SAE.load(tmp_path)
    assert ours.cfg.architecture == "topk" and ours.cfg.k == 6 and ours.cfg.apply_b_dec_to_input
    assert ours.hook_name == "blocks.1.hook_resid_pre"
    lens = LensSAE.load_from_disk(tmp_path)
    x = np.random.default_rng(2).standard_normal((4, D_IN)).astype(np.float32)
    feats, recons = lens_run(lens, x)
    assert rel_err(ours.encode(x), feats) <= TOL and rel_err(ours.forward(x), recons) <= TOL


def test_expected_average_only_in_needs_the_scale(tmp_path):
    lens = lens_sae("standard", D_IN, D_SAE, normalize_activations="expected_average_only_in")
    save_lens(lens, tmp_path)
    with pytest.raises(SAELoadError, match="norm_scaling_factor"):
        SAE.load(tmp_path)
    ours = SAE.load(tmp_path, norm_scaling_factor=2.5)
    lens.fold_activation_norm_scaling_factor(2.5)
    x = np.random.default_rng(3).standard_normal((5, D_IN)).astype(np.float32)
    feats, recons = lens_run(lens, x)
    assert rel_err(ours.encode(x), feats) <= TOL and rel_err(ours.forward(x), recons) <= TOL


# ---- spliced into a model --------------------------------------------------------------

@pytest.fixture(scope="module")
def models(gpt2):
    hf, model, _ = gpt2("odd")  # d_model 60, 3 heads of 20, 3 layers
    return model, tl_model(hf)


SPLICE_CASES = [
    ("standard", "blocks.1.hook_resid_pre", None, {}),
    ("jumprelu", "blocks.0.hook_mlp_out", None, {}),
    ("topk", "blocks.2.hook_attn_out", None, {"k": 9}),
    ("standard", "blocks.1.attn.hook_z", None, {"reshape_activations": "hook_z"}),
    ("standard", "blocks.2.hook_resid_post", None, {"normalize_activations": "layer_norm"}),
    ("transcoder", "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", {}),
    ("jumprelu_transcoder", "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", {}),
    ("gated", "blocks.1.hook_resid_pre", None, {}),
    ("abstopk", "blocks.2.hook_attn_out", None, {"k": 9}),
]


@pytest.mark.parametrize("arch,hook,hook_out,cfg", SPLICE_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("keep_error", [False, True])
def test_spliced_logits_and_cache_match_hooked_sae_transformer(tmp_path, models, arch, hook, hook_out, cfg,
                                                               keep_error):
    model, tl = models
    lens = lens_sae(arch, D_IN, D_SAE, hook=hook, hook_out=hook_out, std=0.2, **cfg)
    ours = SAE.load(save_lens(lens, tmp_path))
    tokens = np.random.default_rng(4).integers(0, model.cfg.d_vocab, (2, 11))
    t = torch.as_tensor(tokens)
    with torch.no_grad():
        ref = tl.run_with_saes(t, saes=[lens], use_error_term=keep_error).numpy()
        ref_logits, ref_cache = tl.run_with_cache_with_saes(t, saes=[lens], use_error_term=keep_error)
    got = run_with_saes(model, tokens, [ours], keep_error=keep_error)
    assert rel_err(got, ref) <= TOL
    if keep_error:
        assert rel_err(got, model(tokens)) <= TOL
    else:
        assert rel_err(got, model(tokens)) > 1e-3  # the splice did change something

    logits, cache = run_with_cache_with_saes(model, tokens, [ours], keep_error=keep_error)
    assert rel_err(logits, ref_logits.numpy()) <= TOL
    sae_keys = [k for k in ref_cache.keys() if ".hook_sae_" in k]
    assert sorted(sae_keys) == sorted(k for k in cache.keys() if ".hook_sae_" in k)
    for key in sae_keys:
        ref_act = ref_cache[key].numpy()
        assert cache[key].shape == ref_act.shape, key
        assert rel_err(cache[key], ref_act) <= TOL, key


def test_two_saes_and_names_filter(tmp_path, models):
    model, tl = models
    a = lens_sae("standard", D_IN, D_SAE, hook="blocks.0.hook_resid_post", seed=1, std=0.2)
    b = lens_sae("topk", D_IN, D_SAE, hook="blocks.2.hook_resid_pre", seed=2, std=0.2, k=4)
    ours = [SAE.load(save_lens(s, tmp_path / str(i))) for i, s in enumerate((a, b))]
    tokens = np.random.default_rng(5).integers(0, model.cfg.d_vocab, (3, 1))  # one token
    with torch.no_grad():
        ref_logits, ref_cache = tl.run_with_cache_with_saes(torch.as_tensor(tokens), saes=[a, b])
    want = ["blocks.2.hook_resid_pre.hook_sae_acts_post", "blocks.1.hook_mlp_out"]
    logits, cache = run_with_cache_with_saes(model, tokens, ours, names_filter=want)
    assert rel_err(logits, ref_logits.numpy()) <= TOL
    assert list(cache.keys()) == ["blocks.1.hook_mlp_out", "blocks.2.hook_resid_pre.hook_sae_acts_post"]
    for key in want:
        assert rel_err(cache[key], ref_cache[key].numpy()) <= TOL


def test_from_pretrained_resolves_release_names_through_saelens_registry(tmp_path, monkeypatch):
    """A SAELens release name resolves through its registry to repo and folder, with config overrides."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sae_dir = save_lens(lens_sae("standard", D_IN, D_SAE, hook="blocks.3.hook_resid_pre"), tmp_path / "sae")
    fake_hub_cache(tmp_path, "jbloom/GPT2-Small-SAEs-Reformatted", "blocks.3.hook_resid_pre", sae_dir)
    s = SAE.from_pretrained("gpt2-small-res-jb", "blocks.3.hook_resid_pre")
    assert s.cfg.model_from_pretrained_kwargs == {"center_writing_weights": True}
    assert s.cfg.neuronpedia_id == "gpt2-small/3-res-jb"
    with pytest.raises(SAENotFoundError, match="has no SAE"):
        SAE.from_pretrained("gpt2-small-res-jb", "blocks.99.hook_resid_pre")
    with pytest.raises(SAELoadError, match="format"):
        SAE.from_pretrained("gemma-scope-2b-pt-res-canonical", "layer_0/width_16k/canonical")
