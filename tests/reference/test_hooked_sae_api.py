"""SAELens 6's SAE config access and HookedSAETransformer's stateful API (add_sae,
reset_saes, saes(), run_with_saes, run_with_cache_with_saes,
run_with_hooks_with_saes editing the latents) against SAELens on the same weights."""
import numpy as np
import pytest
import torch

from model_factory import rel_err
from sae_factory import lens_sae, save_lens, tl_model
from tinymech.sae.sae import SAE

TOL = 1e-4
D_IN, D_SAE = 60, 150


@pytest.fixture(scope="module")
def models(gpt2):
    hf, model, path = gpt2("odd")  # d_model 60, 3 heads of 20, 3 layers
    return model, tl_model(hf)


def test_config_reads_as_saelens_writes_it(tmp_path):
    from sae_lens import SAE as LensSAE

    lens = lens_sae("topk", D_IN, D_SAE, hook="blocks.1.hook_resid_pre", k=5)
    lens.cfg.metadata.context_size, lens.cfg.metadata.dataset_path = 128, "some/dataset"
    lens.cfg.metadata.prepend_bos = False
    save_lens(lens, tmp_path)
    ref = LensSAE.load_from_disk(tmp_path, device="cpu")
    ours = SAE.load_from_disk(tmp_path, device="cpu")
    for key, value in ref.cfg.metadata.items():
        assert getattr(ours.cfg.metadata, key) == value, key
        assert ours.cfg.metadata[key] == value, key
    assert ours.cfg.metadata.not_a_field is None and ref.cfg.metadata.not_a_field is None
    for field in ("d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                  "reshape_activations"):
        assert getattr(ours.cfg, field) == getattr(ref.cfg, field), field


CASES = [
    ("standard", "blocks.1.hook_resid_pre", None, {}),
    ("topk", "blocks.2.hook_attn_out", None, {"k": 9}),
    ("standard", "blocks.1.attn.hook_z", None, {"reshape_activations": "hook_z"}),
    ("transcoder", "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", {}),
]


def _pair(tmp_path, arch, hook, hook_out, cfg, seed=0):
    lens = lens_sae(arch, D_IN, D_SAE, hook=hook, hook_out=hook_out, std=0.2, seed=seed, **cfg)
    return lens, SAE.load(save_lens(lens, tmp_path))


def _edit_latents(acts, hook):
    """Zero the first latents and double one: works on torch tensors and numpy arrays alike."""
    acts[..., :20] = 0
    acts[..., 30] = acts[..., 30] * 2 + 0.5
    return acts


@pytest.mark.parametrize("arch,hook,hook_out,cfg", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("use_error_term", [False, True])
@pytest.mark.parametrize("shape", [(2, 11), (1, 1)])
def test_stateful_api_matches_hooked_sae_transformer(tmp_path, models, arch, hook, hook_out, cfg,
                                                     use_error_term, shape):
    model, tl = models
    lens, ours = _pair(tmp_path, arch, hook, hook_out, cfg)
    tokens = np.random.default_rng(4).integers(0, model.cfg.d_vocab, shape)
    t = torch.as_tensor(tokens)
    latents = f"{lens.cfg.metadata.hook_name_out or hook}.hook_sae_acts_post"
    try:
        with torch.no_grad():
            tl.add_sae(lens, use_error_term=use_error_term)
            ref_logits = tl(t).numpy()
            _, ref_cache = tl.run_with_cache(t)
            ref_edited = tl.run_with_hooks(t, fwd_hooks=[(latents, _edit_latents)]).numpy()
        model.add_sae(ours, use_error_term=use_error_term)
        assert list(model.acts_to_saes) == list(tl.acts_to_saes) == [hook]
        assert model.acts_to_saes[hook] is ours
        assert rel_err(model(tokens), ref_logits) <= TOL
        _, cache = model.run_with_cache(tokens)
        sae_keys = sorted(k for k in ref_cache.keys() if ".hook_sae_" in k)
        assert sae_keys == sorted(k for k in cache.keys() if ".hook_sae_" in k)
        for key in sae_keys:
            assert cache[key].shape == tuple(ref_cache[key].shape), key
            assert rel_err(cache[key], ref_cache[key].numpy()) <= TOL, key
        edited = model.run_with_hooks(tokens, fwd_hooks=[(latents, _edit_latents)])
        assert rel_err(edited, ref_edited) <= TOL
        assert rel_err(edited, model(tokens)) > 1e-4  # the edit did something
    finally:
        tl.reset_saes()
        model.reset_saes()
    assert model.acts_to_saes == {} and rel_err(model(tokens), tl(t).detach().numpy()) <= TOL


@pytest.mark.parametrize("arch,hook,hook_out,cfg", CASES, ids=lambda v: str(v))
def test_one_run_calls_match(tmp_path, models, arch, hook, hook_out, cfg):
    model, tl = models
    lens, ours = _pair(tmp_path, arch, hook, hook_out, cfg)
    tokens = np.random.default_rng(5).integers(0, model.cfg.d_vocab, (3, 7))
    t = torch.as_tensor(tokens)
    latents = f"{lens.cfg.metadata.hook_name_out or hook}.hook_sae_acts_post"
    with torch.no_grad():
        for use_error_term in (False, True):
            ref = tl.run_with_saes(t, saes=[lens], use_error_term=use_error_term).numpy()
            got = model.run_with_saes(tokens, saes=[ours], use_error_term=use_error_term)
            assert rel_err(got, ref) <= TOL
        ref = tl.run_with_hooks_with_saes(t, saes=[lens], fwd_hooks=[(latents, _edit_latents)]).numpy()
        got = model.run_with_hooks_with_saes(tokens, saes=[ours], fwd_hooks=[(latents, _edit_latents)])
        assert rel_err(got, ref) <= TOL
        lens.use_error_term, ours.use_error_term = True, True  # the SAE's own setting when none is given
        ref_logits, ref_cache = tl.run_with_cache_with_saes(t, saes=lens, names_filter=[latents])
        logits, cache = model.run_with_cache_with_saes(tokens, saes=ours, names_filter=[latents])
        assert rel_err(logits, ref_logits.numpy()) <= TOL and rel_err(logits, model(tokens)) <= TOL
        assert list(cache.keys()) == list(ref_cache.keys()) == [latents]
        assert rel_err(cache[latents], ref_cache[latents].numpy()) <= TOL
    assert model.acts_to_saes == {} and tl.acts_to_saes == {}


def test_saes_context_restores_what_was_attached(tmp_path, models):
    model, tl = models
    (lens_a, a), (lens_b, b) = (_pair(tmp_path / s, "standard", "blocks.1.hook_resid_pre", None, {}, seed)
                                for s, seed in (("a", 0), ("b", 1)))
    tokens = np.random.default_rng(6).integers(0, model.cfg.d_vocab, (2, 5))
    t = torch.as_tensor(tokens)
    try:
        with torch.no_grad():
            tl.add_sae(lens_a)
            model.add_sae(a)
            with tl.saes(saes=[lens_b], use_error_term=False), model.saes(saes=[b]):
                assert model.acts_to_saes["blocks.1.hook_resid_pre"] is b
                assert rel_err(model(tokens), tl(t).numpy()) <= TOL
            assert model.acts_to_saes["blocks.1.hook_resid_pre"] is a
            assert rel_err(model(tokens), tl(t).numpy()) <= TOL
    finally:
        tl.reset_saes()
        model.reset_saes()


def _scale(factor):
    def edit(x, hook):
        return x * factor
    return edit


@pytest.mark.parametrize("point", ["hook_sae_input", "hook_sae_recons", "hook_sae_error", "hook_sae_output"])
@pytest.mark.parametrize("arch,hook,hook_out,cfg", CASES[::3], ids=lambda v: str(v))
def test_hooks_on_the_other_sae_points(tmp_path, models, point, arch, hook, hook_out, cfg):
    """A hook function on any editable SAE point, with the error term kept; the cache
    then holds what the hooks made."""
    model, tl = models
    lens, ours = _pair(tmp_path, arch, hook, hook_out, cfg)
    tokens = np.random.default_rng(7).integers(0, model.cfg.d_vocab, (2, 6))
    t = torch.as_tensor(tokens)
    name = f"{lens.cfg.metadata.hook_name_out or hook}.{point}"
    try:
        with torch.no_grad():
            tl.add_sae(lens, use_error_term=True)
            ref = tl.run_with_hooks(t, fwd_hooks=[(name, _scale(0.5))]).numpy()
            with tl.hooks(fwd_hooks=[(name, _scale(0.5))]):
                _, ref_cache = tl.run_with_cache(t, names_filter=lambda n: ".hook_sae_" in n)
        model.add_sae(ours, use_error_term=True)
        got = model.run_with_hooks(tokens, fwd_hooks=[(name, _scale(0.5))])
        assert rel_err(got, ref) <= TOL and rel_err(got, model(tokens)) > 1e-4
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: ".hook_sae_" in n,
                                        hooks=[(name, _scale(0.5))])
        for key in ref_cache.keys():
            if not key.endswith("acts_pre"):  # not computed by a Python splice
                assert rel_err(cache[key], ref_cache[key].numpy()) <= TOL, key
    finally:
        tl.reset_saes()
        model.reset_saes()
