"""Bad SAE files, configs and inputs raise precise tinymech exceptions."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import tinymech as tm
from sae_factory import lens_sae, save_lens
from tinymech.sae import SAE, run_with_cache_with_saes, run_with_saes
from tinymech.sae_errors import FeatureIndexError, SAEInputError, SAELoadError, SAENotFoundError

D, D_SAE = 64, 40


@pytest.fixture(scope="module")
def model(gpt2):
    return gpt2("tiny")[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Directories of SAELens-saved SAEs, copied per test before being damaged."""
    root = tmp_path_factory.mktemp("saes")
    return {arch: save_lens(lens_sae(arch, D, D_SAE, hook="blocks.0.hook_resid_post"), root / arch)
            for arch in ("standard", "jumprelu")}


def copy(saved, arch, tmp_path):
    return shutil.copytree(saved[arch], tmp_path / arch)


def edit_cfg(path, **changes):
    cfg = json.loads((path / "cfg.json").read_text())
    meta = cfg["metadata"]
    for k, v in changes.items():
        (meta if k in meta else cfg)[k] = v
    (path / "cfg.json").write_text(json.dumps(cfg))


def edit_weights(path, **changes):
    w = load_file(path / "sae_weights.safetensors")
    for k, v in changes.items():
        if v is None:
            del w[k]
        else:
            w[k] = v
    save_file(w, path / "sae_weights.safetensors")


def test_hook_problems(model, saved, tmp_path):
    toks = np.arange(1, 6)[None]
    wide = copy(saved, "standard", tmp_path)
    edit_cfg(wide, hook_name="blocks.0.mlp.hook_post")  # 256 wide, the SAE reads 64
    with pytest.raises(tm.HookError, match="d_in is 64 but blocks.0.mlp.hook_post has width 256"):
        run_with_saes(model, toks, SAE.load(wide))
    with pytest.raises(tm.HookError, match="d_in is 64"):  # checked by the core when used as a raw hook
        model.run_with_hooks(toks, fwd_hooks=[SAE.load(wide).as_hook()])
    for hook, match in (("blocks.7.hook_resid_pre", "unknown hook point"),
                        ("blocks.0.attn.hook_pattern", "attention")):
        edit_cfg(wide, hook_name=hook)
        with pytest.raises(tm.HookError, match=match):
            run_with_saes(model, toks, SAE.load(wide))
    with pytest.raises(tm.HookError, match="unknown hook point"):
        edit_cfg(wide, hook_name="blocks.7.hook_resid_pre")
        model.generate(toks, max_new_tokens=2, hooks=[SAE.load(wide).as_hook()])
    with pytest.raises(tm.HookError, match="SAE objects"):
        run_with_saes(model, toks, ["not an sae"])
    sae = SAE.load(saved["standard"])
    for run in (run_with_saes, run_with_cache_with_saes):
        with pytest.raises(tm.HookError, match=f"two SAEs write {sae.cfg.output_hook}: splice one SAE per hook"):
            run(model, toks, [sae, sae])


@pytest.mark.parametrize("damage,error,match", [
    (lambda p: edit_weights(p, threshold=None), SAELoadError, "threshold"),
    (lambda p: edit_weights(p, W_enc=np.full((D, D_SAE), np.nan, np.float32)), SAELoadError, "NaN or infinite"),
    (lambda p: edit_weights(p, b_dec=np.full(D, np.inf, np.float32)), SAELoadError, "NaN or infinite"),
    (lambda p: edit_weights(p, W_dec=np.zeros((D_SAE, D + 1), np.float32)), SAELoadError, "W_dec.*shape"),
    (lambda p: edit_weights(p, b_enc=None), SAELoadError, "lacks b_enc"),
    (lambda p: edit_cfg(p, d_sae=D_SAE + 1), SAELoadError, "shape"),
    (lambda p: edit_cfg(p, d_in="64"), SAELoadError, "d_in"),
    (lambda p: edit_cfg(p, architecture="gated"), SAELoadError, "architecture 'gated'"),
    (lambda p: edit_cfg(p, architecture="transcoder", apply_b_dec_to_input=False), SAELoadError, "d_out"),
    (lambda p: edit_cfg(p, normalize_activations="whiten"), SAELoadError, "normalize_activations"),
    (lambda p: (p / "cfg.json").write_text("{oops"), SAELoadError, "not valid JSON"),
    (lambda p: (p / "sae_weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}"), SAELoadError,
     "corrupt safetensors"),
    (lambda p: (p / "sae_weights.safetensors").unlink(), SAENotFoundError, "sae_weights.safetensors"),
    (lambda p: (p / "cfg.json").unlink(), SAENotFoundError, "cfg.json"),
])
def test_bad_files(saved, tmp_path, damage, error, match):
    path = copy(saved, "jumprelu", tmp_path)
    damage(path)
    with pytest.raises(error, match=match):
        SAE.load(path)


def test_missing_directory(tmp_path):
    with pytest.raises(SAENotFoundError, match="no SAE directory"):
        SAE.load(tmp_path / "nowhere")


def test_bad_inputs(model, saved, tmp_path):
    sae = SAE.load(saved["standard"])
    with pytest.raises(SAEInputError, match=r"shape \[2, 63\]"):
        sae.encode(np.zeros((2, 63)))
    with pytest.raises(SAEInputError, match="numeric"):
        sae.encode(np.array([["a"] * D]))
    with pytest.raises(SAEInputError, match=f"last axis of {D_SAE}"):
        sae.decode(np.zeros((2, D)))
    with pytest.raises(FeatureIndexError):
        sae.decode((np.array([[D_SAE]]), np.array([[1.0]])))
    with pytest.raises(SAEInputError, match="rows"):
        sae.decode(np.zeros((2, D_SAE), np.float32), acts=np.zeros((3, D), np.float32))
    with pytest.raises(SAEInputError, match="k must be"):
        sae.top_features(np.zeros((1, D)), -1)
    for bad in (D_SAE, -1, 2.0):
        with pytest.raises(FeatureIndexError):
            sae.logit_effects(model, bad)
        with pytest.raises(FeatureIndexError):
            sae.steer(bad, 1.0)
    ln = SAE.load(save_lens(lens_sae("standard", D, D_SAE, normalize_activations="layer_norm"), tmp_path))
    with pytest.raises(SAEInputError, match="layer_norm"):
        ln.decode(np.zeros((1, D_SAE), np.float32))


def test_sae_from_arrays():
    from tinymech.sae_loading import parse_config

    cfg = parse_config({"d_in": 4, "d_sae": 6, "hook_name": "blocks.0.hook_resid_pre"})
    rng = np.random.default_rng(0)
    good = {"W_enc": rng.normal(size=(4, 6)), "b_enc": np.zeros(6), "W_dec": rng.normal(size=(6, 4)),
            "b_dec": np.zeros(4)}
    x = rng.normal(size=(3, 4))
    np.testing.assert_allclose(SAE(cfg, good).encode(x), np.maximum(x @ good["W_enc"], 0), rtol=1e-5, atol=1e-6)
    with pytest.raises(SAELoadError, match=r"'W_enc' has shape \[4, 5\] but the config needs \[4, 6\]"):
        SAE(cfg, dict(good, W_enc=np.zeros((4, 5))))
    with pytest.raises(SAELoadError, match="lack W_dec"):
        SAE(cfg, dict(good, W_dec=None))
