"""Bad SAE files, configs and inputs raise precise tinymech exceptions."""
import json
import shutil
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import tinymech as tm
from fresh_process import run_python
from numpy_checkpoints import write_sae
from tinymech.sae.loading import SAEConfig
from tinymech.sae.sae import SAE, run_with_cache_with_saes, run_with_saes
from tinymech.errors import FeatureIndexError, SAEInputError, SAELoadError, SAENotFoundError

D, D_SAE = 64, 40


@pytest.fixture(scope="module")
def model(saved_gpt2):
    return saved_gpt2("tiny")[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Directories of SAEs in SAELens's format, copied per test before being damaged."""
    root = tmp_path_factory.mktemp("saes")
    return {arch: write_sae(root / arch, arch, D, D_SAE, hook="blocks.0.hook_resid_post")
            for arch in ("standard", "jumprelu", "gated")}


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
    (lambda p: edit_cfg(p, architecture="matryoshka"), SAELoadError, "architecture 'matryoshka'"),
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


@pytest.mark.parametrize("damage,match", [
    (lambda p: edit_weights(p, b_gate=None), "lacks b_gate"),
    (lambda p: edit_weights(p, r_mag=None), "r_mag"),
    (lambda p: edit_weights(p, b_mag=np.zeros(D_SAE + 1, np.float32)), "b_mag.*shape"),
    (lambda p: edit_weights(p, r_mag=np.full(D_SAE, np.nan, np.float32)), "NaN or infinite"),
    (lambda p: edit_weights(p, r_mag=np.full(D_SAE, 100, np.float32)), "r_mag.*no finite exp"),
])
def test_bad_gated_files(saved, tmp_path, damage, match):
    path = copy(saved, "gated", tmp_path)
    damage(path)
    with pytest.raises(SAELoadError, match=match):
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
    ln = SAE.load(write_sae(tmp_path, "standard", D, D_SAE, normalize_activations="layer_norm"))
    with pytest.raises(SAEInputError, match="layer_norm"):
        ln.decode(np.zeros((1, D_SAE), np.float32))


def test_sae_from_arrays():
    from tinymech.sae.loading import parse_config

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


@pytest.fixture(scope="module")
def transcoder_dir(tmp_path_factory):
    return write_sae(tmp_path_factory.mktemp("transcoder"), "transcoder", D, D_SAE, hook="blocks.0.hook_resid_pre",
                     hook_out="blocks.1.hook_resid_post")


def transcoder_with(transcoder_dir, tmp_path, **cfg):
    path = shutil.copytree(transcoder_dir, tmp_path / "tc")
    edit_cfg(path, **cfg)
    return path


@pytest.mark.parametrize("hook_in,hook_out", [
    ("blocks.1.hook_resid_post", "blocks.0.hook_resid_pre"),  # the names swapped
    ("blocks.1.ln2.hook_normalized", "blocks.0.hook_mlp_out"),  # an earlier block
    ("blocks.0.hook_mlp_out", "blocks.0.ln2.hook_normalized"),  # earlier in the same block
    ("ln_final.hook_normalized", "blocks.1.hook_resid_post"),
    ("blocks.0.hook_resid_pre", "hook_embed"),
    ("blocks.3.hook_mlp_in", "blocks.2.hook_mlp_out"),  # blocks ordered where a name is not tinymech's
])
def test_a_transcoder_writing_before_it_reads_is_refused(transcoder_dir, tmp_path, hook_in, hook_out):
    path = transcoder_with(transcoder_dir, tmp_path, hook_name=hook_in, hook_name_out=hook_out)
    with pytest.raises(SAELoadError, match=f"reads {hook_in} but writes {hook_out}, which comes before it"):
        SAE.load(path)


def test_tensor_names_in_load_errors_cannot_drive_the_terminal(saved, tmp_path):
    # the "(has ...)" list of a weights file lacking W_enc joined its tensor names raw
    path = copy(saved, "standard", tmp_path)
    edit_weights(path, W_enc=None, **{"x\x1b]52;c;cHduZWQ=\x07\u202e": np.zeros(1, np.float32)})
    with pytest.raises(SAELoadError, match="lacks W_enc") as e:
        SAE.load(path)
    assert "x␛]52;c;cHduZWQ=␇\ufffd" in str(e.value)
    assert not any(c in str(e.value) for c in "\x1b\x07\u202e")


def test_hook_names_in_load_errors_cannot_drive_the_terminal(transcoder_dir, tmp_path):
    # both messages quoted cfg.json's names raw: an escape sequence there retitled the terminal
    hostile = "blocks.1.hook_resid_post\x1b]0;pwned\x07\u202e"
    path = transcoder_with(transcoder_dir, tmp_path, hook_name=hostile, hook_name_out="blocks.0.hook_resid_pre")
    with pytest.raises(SAELoadError, match="reads blocks.1.hook_resid_post␛]0;pwned␇\ufffd but writes") as e:
        SAE.load(path)
    assert not any(c in str(e.value) for c in "\x1b\x07\u202e")
    narrow = write_sae(tmp_path / "n", "transcoder", D, D_SAE, hook=hostile, d_out=D // 2)
    with pytest.raises(SAELoadError, match="reads and writes blocks.1.hook_resid_post␛]0;pwned␇\ufffd but") as e:
        SAE.load(narrow)
    assert not any(c in str(e.value) for c in "\x1b\x07\u202e")


def test_a_transcoder_reading_and_writing_one_hook(model, transcoder_dir, tmp_path):
    toks = np.arange(1, 6)[None]
    narrow = write_sae(tmp_path / "n", "transcoder", D, D_SAE, hook="blocks.0.hook_resid_pre", d_out=D // 2)
    for hook_out in (None, "blocks.0.hook_resid_pre"):  # no hook_name_out: it writes hook_name
        edit_cfg(narrow, hook_name_out=hook_out)
        with pytest.raises(SAELoadError, match=r"reads and writes blocks.0.hook_resid_pre but d_in=64 != d_out=32"):
            SAE.load(narrow)
    # with d_in == d_out it replaces the activation by its output, as SAELens splices it
    same = SAE.load(transcoder_with(transcoder_dir, tmp_path, hook_name_out="blocks.0.hook_resid_pre"))
    assert same.as_hook()[0] == "blocks.0.hook_resid_pre"
    _, cache = model.run_with_cache(toks, names_filter="blocks.0.hook_resid_pre")
    want = same.forward(cache["blocks.0.hook_resid_pre"])
    np.testing.assert_allclose(run_with_saes(model, toks, same),
                               model.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, hook: want)]),
                               rtol=1e-4, atol=1e-4)
    # an SAE naming another output hook is spliced as SAELens splices it, and checked the same way
    sae = write_sae(tmp_path / "s", "standard", D, D_SAE, hook="blocks.1.hook_resid_pre")
    edit_cfg(sae, hook_name_out="blocks.0.hook_resid_post")
    with pytest.raises(SAELoadError, match="reads blocks.1.hook_resid_pre but writes blocks.0.hook_resid_post"):
        SAE.load(sae)
    edit_cfg(sae, hook_name_out=7)
    with pytest.raises(SAELoadError, match="hook_name_out must be a string, got 7"):
        SAE.load(sae)


def test_transcoder_hooks_the_model_lacks(model, transcoder_dir, tmp_path):
    toks = np.arange(1, 6)[None]
    for hook_in, hook_out, error in (
            ("blocks.0.hook_resid_pre", "blocks.7.hook_resid_post", "unknown hook point 'blocks.7.hook_resid_post'"),
            # a mode's point while the mode is off
            ("blocks.0.hook_mlp_in", "blocks.0.hook_mlp_out", r"'blocks.0.hook_mlp_in' is computed only after "
                                                              r"model.set_use_hook_mlp_in\(True\)")):
        tc = SAE.load(transcoder_with(transcoder_dir, tmp_path / hook_in, hook_name=hook_in, hook_name_out=hook_out))
        for run in (lambda: run_with_saes(model, toks, tc), lambda: run_with_cache_with_saes(model, toks, tc),
                    lambda: model.run_with_hooks(toks, fwd_hooks=[tc.as_hook()]),
                    lambda: model.generate(toks, max_new_tokens=2, hooks=[tc.as_hook()])):
            with pytest.raises(tm.HookError, match=error):
                run()


def test_a_transcoder_whose_input_hook_a_run_skips(model, transcoder_dir):
    """A run starting after the input hook cannot splice the transcoder: it says so."""
    tc = SAE.load(transcoder_dir)
    toks = np.arange(1, 6)[None]
    _, cache = model.run_with_cache(toks, names_filter="blocks.1.hook_resid_pre")
    resid = cache["blocks.1.hook_resid_pre"]
    with pytest.raises(tm.HookError, match="output hook blocks.1.hook_resid_post ran without its input hook "
                                           "blocks.0.hook_resid_pre"):
        model.run_with_hooks(resid, start_at_layer=1, fwd_hooks=[tc.as_hook()])
    # a transcoder's splice placed at other hooks than its own is refused, not run backwards
    with pytest.raises(tm.HookError, match="runs at blocks.0.hook_resid_pre and blocks.1.hook_resid_post, "
                                           "not blocks.1.hook_resid_pre"):
        model.run_with_hooks(toks, fwd_hooks=[(["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"],
                                               tc.as_hook()[1])])


@pytest.mark.parametrize("indices,values,match", [
    ([[2**32 + 5]], [[1.0]], r"feature index 4294967301 is out of range for d_sae=40"),
    ([[2**63 - 1]], [[1.0]], "out of range"),
    (np.array([[2**64 - 1]], np.uint64), [[1.0]], "out of range"),
    ([[2**70]], [[1.0]], "integers"),
    ([[5.7]], [[1.0]], "integers"),
    ([[5.0]], [[1.0]], "integers"),
    ([[True]], [[1.0]], "integers"),
    ([[D_SAE]], [[1.0]], "out of range"),
    ([[-2]], [[1.0]], "out of range"),
    ([[3, -1]], [[1.0, 0.5]], "-1 marks padding"),
    ([[3]], [["x"]], "values"),
    ([[3]], [[1j]], "values"),
])
def test_decode_refuses_feature_indices_it_would_wrap(saved, indices, values, match):
    sae = SAE.load(saved["standard"])
    with pytest.raises((FeatureIndexError, SAEInputError), match=match):
        sae.decode((np.asarray(indices), np.asarray(values)))


def test_decode_bindings_take_no_wrapped_index(saved):
    core = SAE.load(saved["standard"])._core
    offsets, values = np.array([0, 1]), np.ones(1, np.float32)
    with pytest.raises(IndexError, match="4294967301"):
        core.decode_sparse(offsets, np.array([2**32 + 5]), values)
    with pytest.raises(TypeError):  # no silent float -> int cast
        core.decode_sparse(offsets, np.array([5.7]), values)
    with pytest.raises(TypeError):
        core.decode_sparse(np.array([0.0, 1.5]), np.array([5]), values)


def test_ks_and_features_are_whole_numbers_in_range(model, saved):
    sae = SAE.load(saved["standard"])
    x = np.zeros((1, D), np.float32)
    for k in (10**12, D_SAE + 1):
        with pytest.raises(SAEInputError, match=f"k={k} exceeds d_sae={D_SAE}"):
            sae.encode_sparse(x, k=k)
        with pytest.raises(SAEInputError, match=f"k={k} exceeds d_sae={D_SAE}"):
            sae.top_features(x, k)
    for k in (2.0, True, -1, "3"):
        for call in (lambda: sae.encode_sparse(x, k=k), lambda: sae.top_features(x, k),
                     lambda: sae.logit_effects(model, 0, k=k)):
            with pytest.raises(SAEInputError, match="k must be"):
                call()
    for bad in (2**32 + 5, np.uint64(2**64 - 1), np.int64(-1), 5.7, np.float64(3), True, np.bool_(True), "3", None):
        for call in (lambda: sae.steer(bad, 1.0), lambda: sae.steer(bad, 1.0, mode="clamp"),
                     lambda: sae.logit_effects(model, bad), lambda: sae.feature_activations(model, "ab", bad)):
            with pytest.raises(FeatureIndexError):
                call()


def test_an_encoder_copy_that_memory_cannot_hold_falls_back(tmp_path):
    # regression (review): with no memory for the screen's transposed copy of a loaded W_enc, every
    # screened encode raised MemoryError; it now transposes each chunk, as for writable weights
    d_in, d_sae = 1024, 20000  # an 82 MB W_enc, more than the address space left to the child
    rng = np.random.default_rng(0)
    cfg = SAEConfig(architecture="standard", d_in=d_in, d_sae=d_sae, d_out=d_in, hook_name="blocks.0.hook_resid_pre")
    SAE(cfg, {"W_enc": rng.normal(0, d_in**-0.5, (d_in, d_sae)).astype(np.float32),
              "b_enc": np.full(d_sae, -2.0, np.float32), "W_dec": np.zeros((d_sae, d_in), np.float32),
              "b_dec": np.zeros(d_in, np.float32)}).save(tmp_path / "big")
    script = textwrap.dedent(f"""
        import resource, numpy as np, tinymech as tm
        tm._core.set_sae_screen("int16")
        sae = tm.SAE.load({str(tmp_path / "big")!r})
        x = np.random.default_rng(1).standard_normal((64, {d_in}), dtype=np.float32)
        copied = tm.SAE(sae.cfg, {{k: np.array(v) for k, v in sae._weights_now().items()}})
        want = copied.encode(x)  # writable: each chunk transposed, as the fallback does
        del copied
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (64 << 20), resource.RLIM_INFINITY))
        for _ in range(2):
            assert np.array_equal(sae.encode(x), want)
        print("ok", sae._core.keeps_transposed_encoder)
    """)
    out = run_python(script, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["ok", "False"], out.stderr[-2000:]
