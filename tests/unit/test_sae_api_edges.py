"""The SAE object's public edges, each a regression of a review finding: SAE(cfg, weights)
and SAE.from_dict give a config and weights the checks SAE.load gives a folder (a config
that would not load back, a weight the architecture lacks, NaN), sae.save makes and checks
every file before it writes one (an SAE already in the folder survives a refused save),
and SAE.to, SAE.load's norm_scaling_factor, del, the memory check and the model arguments
refuse or take what they are given precisely."""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import tinymech.errors
import tinymech.runtime
from numpy_checkpoints import write_sae
from tinymech.errors import InvalidInputError, ReadOnlyError, SAEInputError, SAELoadError
from tinymech.sae.loading import SAEConfig, parse_config
from tinymech.sae.sae import SAE

D, D_SAE = 8, 16
HOOK = "blocks.0.hook_resid_pre"
RNG = np.random.default_rng(0)
W = {"W_enc": RNG.normal(size=(D, D_SAE)).astype(np.float32), "b_enc": np.zeros(D_SAE, np.float32),
     "W_dec": RNG.normal(size=(D_SAE, D)).astype(np.float32), "b_dec": np.zeros(D, np.float32)}
X = RNG.normal(size=(3, D)).astype(np.float32)
TRANSCODER = dict(architecture="transcoder", hook_name="blocks.0.ln2.hook_normalized",
                  hook_name_out="blocks.0.hook_mlp_out")
# SAELens 6.54's StandardSAEConfig(d_in=8, d_sae=16, metadata=SAEMetadata(hook_name=HOOK)).to_dict()
SAE_LENS_DICT = {"d_in": D, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
                 "normalize_activations": "none", "reshape_activations": "none",
                 "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12", "hook_name": HOOK},
                 "architecture": "standard"}


def config(**changes) -> SAEConfig:
    return SAEConfig(**{**dict(architecture="standard", d_in=D, d_sae=D_SAE, d_out=D, hook_name=HOOK), **changes})


def saved(tmp_path, name="sae") -> str:
    """The folder of a saved standard SAE (W's weights)."""
    return SAE(config(), W).save(tmp_path / name)


# ---- 1. SAE(cfg, weights) gives the config the checks a cfg.json gets ---------------------------------------

def test_a_dict_config_is_read_as_cfg_json():
    # was AttributeError: 'dict' object has no attribute 'normalize_activations'
    sae = SAE(dict(architecture="standard", d_in=D, d_sae=D_SAE, hook_name=HOOK), W)
    assert sae.cfg == parse_config(dict(architecture="standard", d_in=D, d_sae=D_SAE, hook_name=HOOK))
    np.testing.assert_allclose(sae.encode(X), SAE(config(), W).encode(X))


def test_sae_lens_config_is_read_through_its_to_dict():
    # was KeyError: SAELens's config object has to_dict(), which gives cfg.json's dict
    class SAELensConfig:
        def to_dict(self):
            return json.loads(json.dumps(SAE_LENS_DICT))

    sae = SAE(SAELensConfig(), W)
    assert (sae.cfg.architecture, sae.cfg.hook_name, sae.cfg.apply_b_dec_to_input) == ("standard", HOOK, True)
    np.testing.assert_allclose(sae.forward(X), SAE(config(), W).forward(X))

    class Broken:
        def to_dict(self):
            raise RuntimeError("no")

    with pytest.raises(SAEInputError, match=r"to_dict\(\) failed"):
        SAE(Broken(), W)


@pytest.mark.parametrize("cfg", [None, 5, "cfg.json", [("d_in", 8)]], ids=repr)
def test_what_is_not_a_config_is_refused(cfg):
    # was AttributeError (None), and worse for the others
    with pytest.raises(SAEInputError, match="cfg must be an SAEConfig, a dict"):
        SAE(cfg, W)


HOSTILE_CONFIGS = [
    (dict(architecture="foo"), "architecture 'foo' is not supported"),  # was KeyError
    (dict(architecture=["topk"]), "architecture \\['topk'\\] is not supported"),
    (dict(architecture="topk", k=2.5), "'k' must be a positive integer"),  # was pybind's RuntimeError
    (dict(d_in="8"), "'d_in' must be a positive integer"),
    (dict(apply_b_dec_to_input="no"), "apply_b_dec_to_input must be True or False"),
    (dict(prepend_bos="no"), "prepend_bos must be True or False"),
    (dict(reshape_activations="foo"), "reshape_activations 'foo' is not supported"),  # was accepted, then not loaded
    (dict(architecture="transcoder", hook_name="blocks.1.hook_resid_pre", hook_name_out=HOOK,
          apply_b_dec_to_input=False), "comes before it"),  # was accepted, then not loaded
    (dict(hook_name=5), "hook_name must be a string"),
    (dict(hook_head_index="x"), "hook_head_index='x' would not survive saving"),  # cfg.json reads it as null
    (dict(model_name=3), "model_name=3 would not survive saving"),  # cfg.json reads it as "3"
    (dict(options={"zzz": 1}), r"options are \[\], not \['zzz'\]"),
    (dict(k=5), "cfg.k=5 would not survive saving"),  # a standard SAE has no k: lost on saving
    (dict(normalize_activations=False), "would not survive saving"),
    (dict(metadata={"note": object()}), "cfg.json cannot hold cfg.metadata.note"),
    (dict(metadata={"note": float("nan")}), "cfg.json cannot hold cfg.metadata.note"),
]


@pytest.mark.parametrize("changes,match", HOSTILE_CONFIGS, ids=str)
def test_the_constructor_gives_a_config_the_checks_cfg_json_gets(changes, match):
    weights = dict(W)
    with pytest.raises(SAEInputError, match=match):
        SAE(config(**changes), weights)


def test_a_transcoder_with_sae_config_s_default_apply_b_dec_is_refused():
    # was silently wrong: SAEConfig's default apply_b_dec_to_input=True subtracted b_dec from a transcoder's
    # input (SAE.load and SAELens's TranscoderConfig refuse it)
    b_dec = dict(W, b_dec=np.full(D, 3.0, np.float32))
    with pytest.raises(SAEInputError, match="apply_b_dec_to_input cannot be used by a transcoder"):
        SAE(config(**TRANSCODER), b_dec)
    SAE(config(**TRANSCODER, apply_b_dec_to_input=False), b_dec)


def test_config_metadata_and_options_are_dicts():
    # was TypeError from dict([1])
    for name in ("metadata", "options"):
        with pytest.raises(SAEInputError, match=f"{name} is a dict, not list"):
            config(**{name: [1]})


def test_numpy_numbers_in_a_config_are_taken(tmp_path):
    cfg = config(architecture="topk", k=np.int64(3), context_size=np.int64(128), prepend_bos=np.bool_(False))
    sae = SAE(cfg, W)
    back = SAE.load(sae.save(tmp_path / "s"))
    assert (back.cfg.k, back.cfg.context_size, back.cfg.prepend_bos) == (3, 128, False)
    np.testing.assert_array_equal(back.encode(X), sae.encode(X))


@pytest.mark.parametrize("name,value,match", [
    ("W_enc", np.full((D, D_SAE), np.nan, np.float32), "'W_enc' contains NaN"),  # was accepted: codes all zeros
    ("W_enc", W["W_enc"].astype(np.float64) * 1e300, "'W_enc' contains NaN or infinite"),  # inf in float32
    ("W_enc", W["W_enc"] + 1j, "W_enc must be real numbers"),  # was: imaginary part dropped
    ("W_enc", "abc", "W_enc must be real numbers"),  # was numpy's ValueError
    ("b_dec", np.zeros(D + 1, np.float32), r"'b_dec' has shape \[9\] but the config needs \[8\]"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_weights_get_the_checks_a_weights_file_gets(name, value, match):
    with pytest.raises(SAELoadError, match=match):
        SAE(config(), dict(W, **{name: value}))


def test_weights_must_be_a_dict():
    with pytest.raises(SAEInputError, match="weights are a dict of arrays"):
        SAE(config(), [W["W_enc"], W["b_enc"]])


def test_from_dict_builds_an_sae_as_sae_lens_s_does():
    # SAELens has SAE.from_dict(cfg_dict): tinymech had none
    sae = SAE.from_dict(SAE_LENS_DICT, W)
    np.testing.assert_array_equal(sae.encode(X), SAE(config(), W).encode(X))
    fresh = SAE.from_dict(SAE_LENS_DICT)  # new weights, as SAELens initializes them
    np.testing.assert_array_equal(fresh.W_enc, fresh.W_dec.T)
    assert fresh.W_dec.shape == (D_SAE, D) and np.abs(fresh.W_dec).max() <= np.sqrt(6 / D)
    assert not fresh.b_enc.any() and not fresh.b_dec.any() and fresh.threshold is None
    jump = SAE.from_dict(dict(SAE_LENS_DICT, architecture="jumprelu"))
    assert jump.threshold.shape == (D_SAE,) and not jump.threshold.any()
    gated = SAE.from_dict(dict(SAE_LENS_DICT, architecture="gated"))
    assert gated.r_mag.shape == gated.b_mag.shape == (D_SAE,)
    transcoder = SAE.from_dict(dict(SAE_LENS_DICT, architecture="skip_transcoder", d_out=6, apply_b_dec_to_input=False,
                                    metadata={"hook_name": HOOK, "hook_name_out": "blocks.0.hook_mlp_out"}))
    assert transcoder.W_enc.shape == (D, D_SAE) and transcoder.W_skip.shape == (6, D)
    with pytest.raises(SAEInputError, match="cannot make a new temporal SAE's weights"):
        SAE.from_dict(dict(SAE_LENS_DICT, architecture="temporal", d_sae=64, n_heads=1, bottleneck_factor=8))
    with pytest.raises(SAEInputError, match="takes cfg.json's dict"):
        SAE.from_dict(config())


# ---- 2. a weight the architecture lacks -------------------------------------------------------------------------

def test_a_weight_the_architecture_lacks_is_refused(tmp_path):
    # was kept: forward added x @ W_skip.T, save wrote it, and SAE.load of the folder dropped it
    for extra in ({"W_skip": np.eye(D)}, {"threshold": np.full(D_SAE, 100.0)}, {"W_skp": np.eye(D)}):
        with pytest.raises(SAELoadError, match=f"a standard SAE has no {next(iter(extra))}"):
            SAE(config(), dict(W, **extra))
    SAE(config(), dict(W, W_skip=None, threshold=None))  # None: the weight it has not


def test_sae_lens_s_names_for_a_gated_sae_s_encoder_bias(tmp_path):
    gated = SAE.load(write_sae(tmp_path / "g", "gated", D, D_SAE, hook=HOOK))
    weights = gated._weights_now()
    as_sae_lens = {("b_gate" if k == "b_enc" else k): v for k, v in weights.items()}
    np.testing.assert_array_equal(SAE(gated.cfg, as_sae_lens).encode(X), gated.encode(X))
    with pytest.raises(SAELoadError, match="both b_enc and b_gate"):
        SAE(gated.cfg, dict(weights, b_gate=weights["b_enc"]))


def test_a_tied_sae_takes_its_w_enc_only_as_w_dec_s_transpose(tmp_path):
    tied = SAE.load(write_sae(tmp_path / "mp", "matching_pursuit", D, D_SAE, hook=HOOK))
    weights = tied._weights_now()
    np.testing.assert_array_equal(SAE(tied.cfg, weights).encode(X), tied.encode(X))
    with pytest.raises(SAELoadError, match="W_enc is W_dec's transpose"):
        SAE(tied.cfg, dict(weights, W_enc=weights["W_enc"] * 2))
    with pytest.raises(SAELoadError, match="b_enc is zeros"):
        SAE(tied.cfg, dict(weights, b_enc=np.ones(D_SAE)))


# ---- 3. save makes every file before writing one -----------------------------------------------------------------

def test_a_refused_save_leaves_the_sae_in_the_folder(tmp_path):
    # was: the new weights were renamed into place, then cfg.json's json.dumps raised a bare TypeError
    folder = saved(tmp_path)
    other = SAE(parse_config({"d_in": D, "d_sae": 2 * D_SAE, "hook_name": HOOK}),
                {"W_enc": np.ones((D, 2 * D_SAE)), "b_enc": np.zeros(2 * D_SAE), "W_dec": np.ones((2 * D_SAE, D)),
                 "b_dec": np.zeros(D)})
    other.cfg.metadata["note"] = object()  # a caller's key: the config does not own it
    with pytest.raises(SAEInputError, match="cfg.json cannot hold cfg.metadata.note"):
        other.save(folder)
    assert sorted(os.listdir(folder)) == ["cfg.json", "sae_weights.safetensors"]  # no .partial left
    np.testing.assert_array_equal(SAE.load(folder).W_dec, W["W_dec"])


def test_a_folder_in_a_file_s_place_is_found_before_any_file_is_moved(tmp_path):
    folder = saved(tmp_path)
    os.remove(os.path.join(folder, "cfg.json"))
    os.mkdir(os.path.join(folder, "cfg.json"))  # the weights would be moved in, then cfg.json's move fail
    with pytest.raises(SAEInputError, match="cfg.json there is a folder"):
        SAE(config(), dict(W, W_dec=W["W_dec"] * 2)).save(folder)
    assert sorted(os.listdir(folder)) == ["cfg.json", "sae_weights.safetensors"]
    np.testing.assert_array_equal(load_file(os.path.join(folder, "sae_weights.safetensors"))["W_dec"], W["W_dec"])


def test_numpy_scalars_in_the_config_are_written_as_numbers(tmp_path):
    sae = SAE(config(), W)
    sae.cfg = dataclasses.replace(sae.cfg, context_size=np.int64(256))  # was accepted, and save a TypeError
    sae.cfg.metadata["note"] = np.float32(0.5)
    back = SAE.load(sae.save(tmp_path / "s"))
    assert back.cfg.context_size == 256 and back.cfg.metadata["note"] == 0.5


def test_a_config_json_cannot_hold_is_refused_when_assigned():
    sae = SAE(config(), W)
    with pytest.raises(SAEInputError, match="cannot take the new cfg: cfg.json cannot hold cfg.metadata.x"):
        sae.cfg = dataclasses.replace(sae.cfg, metadata={"x": {1, 2}})
    assert "x" not in sae.cfg.metadata


# ---- 4. float16 that cannot hold a weight ------------------------------------------------------------------------

def test_a_weight_beyond_float16_is_refused_before_anything_is_written(tmp_path):
    # was: saved as inf, reported success, and the folder did not load
    folder = saved(tmp_path)
    big = SAE(config(), dict(W, b_dec=np.full(D, 1e5, np.float32)))
    with pytest.raises(SAEInputError, match=r"b_dec holds 100000, beyond float16's largest value \(65504\)"):
        big.save(folder, dtype="float16")
    np.testing.assert_array_equal(SAE.load(folder).b_dec, W["b_dec"])
    SAE.load(big.save(tmp_path / "f32"))  # float32 holds it
    small = SAE(config(), W)
    np.testing.assert_allclose(SAE.load(small.save(tmp_path / "f16", dtype="float16")).W_dec, W["W_dec"], rtol=1e-3)


def test_a_nan_written_in_place_is_refused_on_saving(tmp_path):
    sae = SAE(config(), {k: v.copy() for k, v in W.items()})
    sae.W_dec[0, 0] = np.nan
    with pytest.raises(SAEInputError, match="W_dec contains NaN"):
        sae.save(tmp_path / "s")


@pytest.mark.parametrize("dtype", ["bfloat16", np.float16, ["float16"]], ids=str)
def test_save_names_the_dtypes_it_writes(tmp_path, dtype):
    with pytest.raises(SAEInputError, match="dtype must be 'float32' or 'float16'"):
        SAE(config(), W).save(tmp_path / "s", dtype=dtype)


# ---- 5. save's path --------------------------------------------------------------------------------------------

def test_save_refuses_a_path_that_names_no_folder(tmp_path, monkeypatch):
    # were TypeError, FileExistsError, NotADirectoryError and ValueError; "" saved into the current folder
    sae = SAE(config(), W)
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    for path, match in [(None, "path must be a folder.s path .* not None"), (123, "folder's path"),
                        ("", 'path="" names no folder: give the folder for the SAE$'),
                        (tmp_path / "afile", "is a file"), (tmp_path / "afile" / "sub", "inside .* which is a file"),
                        (str(tmp_path / "a\0b"), "embedded null byte"), (tmp_path / ("x" * 300), "too long")]:
        with pytest.raises(SAEInputError, match=match):
            sae.save(path)
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_a_save_over_an_sae_without_sparsity_drops_the_old_sparsity(tmp_path):
    folder = saved(tmp_path)
    with_sparsity = SAE(config(), W, log_sparsity=np.full(D_SAE, -2.0))
    with_sparsity.save(folder)
    np.testing.assert_array_equal(SAE.load(folder).log_sparsity, np.full(D_SAE, -2.0))
    SAE(config(), W).save(folder)  # its features are not the ones those densities were measured for
    assert SAE.load(folder).log_sparsity is None
    with pytest.raises(SAEInputError, match=r"log_sparsity must have shape \[16\]"):
        SAE(config(), W, log_sparsity=np.zeros(3))


# ---- 16. SAE.to takes SAELens's (torch's) arguments --------------------------------------------------------------

TorchDtype = type("dtype", (), {"__module__": "torch", "__str__": lambda self: "torch.float32"})  # torch.float32


def test_to_takes_sae_lens_s_arguments():
    # to(device="cpu") and to("cpu", torch.float32) were TypeErrors
    sae = SAE(config(), W)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for args, kwargs in [((), {"device": "cpu"}), (("cpu", TorchDtype()), {}), ((TorchDtype(),), {}),
                             (("cpu", "float32"), {}), ((np.float32,), {}), ((np.zeros(2, np.float32),), {}),
                             ((), {"dtype": "float", "non_blocking": True}), (("cpu", None, False), {})]:
            assert sae.to(*args, **kwargs) is sae, (args, kwargs)
    for args, kwargs, said in [(("cuda",), {}, "device='cuda'"), ((), {"dtype": "float16"}, "dtype='float16'"),
                               (("cpu", "half"), {}, "dtype='float16'"), ((np.zeros(2),), {}, "dtype='float64'")]:
        with pytest.warns(UserWarning, match=said):
            assert sae.to(*args, **kwargs) is sae
    with pytest.raises(SAEInputError, match="device must be a string"):
        sae.to(object())
    with pytest.raises(SAEInputError, match="not foo="):
        sae.to(foo=1)


# ---- 20. the core's dense outputs are checked against the memory -------------------------------------------------

def test_outputs_beyond_the_memory_are_refused_before_the_core_runs(monkeypatch):
    # was a bare MemoryError (std::bad_alloc), or the OOM killer
    sae = SAE(config(), W)
    monkeypatch.setattr(tinymech.runtime, "physical_memory", lambda: 1 << 20)
    many = np.broadcast_to(X[0], (20_000, D))  # a free view: the copy would be 640 KB, the codes 1.3 MB
    for call, doing in [(sae.encode, "encoding 20,000 rows into 16 features"), (sae.forward, "reconstructing"),
                        (lambda x: sae.top_features(x, 2), "taking the top 2 features"),
                        (lambda x: sae.decode(np.broadcast_to(np.zeros(D_SAE, np.float32), (x.shape[0], D_SAE))),
                         "decoding 20,000 rows")]:
        with pytest.raises(InvalidInputError, match=doing):
            call(np.broadcast_to(X[0], (40_000, D)) if call is sae.forward else many)
    assert sae.encode(X).shape == (3, D_SAE)  # what fits runs


# ---- 21. norm_scaling_factor is a real number --------------------------------------------------------------------

def test_norm_scaling_factor_takes_numpy_and_0d_numbers(tmp_path):
    # np.float32(2) and a 0-d array were refused as "not a positive number"
    path = write_sae(tmp_path / "s", "standard", D, D_SAE, hook=HOOK, normalize_activations="expected_average_only_in")
    want = SAE.load(path, norm_scaling_factor=2.0).encode(X)
    for factor in (np.float32(2), np.array(2.0), np.int64(2)):
        np.testing.assert_array_equal(SAE.load(path, norm_scaling_factor=factor).encode(X), want)
    for factor in ("2", -1.0, np.nan, True):
        with pytest.raises(SAELoadError, match="norm_scaling_factor must be a"):
            SAE.load(path, norm_scaling_factor=factor)


# ---- 22. del of what the core is built from ----------------------------------------------------------------------

def test_weights_and_cfg_cannot_be_deleted():
    # del sae.W_dec was AttributeError('__delete__'); del sae.cfg succeeded and left a broken SAE
    sae = SAE(config(), W)
    for name in ("W_dec", "W_enc", "threshold", "cfg", "extra_weights"):
        with pytest.raises(ReadOnlyError, match=f"sae.{name} cannot be deleted"):
            delattr(sae, name)
    with pytest.raises(ReadOnlyError, match="sae.d_in cannot be assigned"):
        sae.d_in = 3
    with pytest.raises(ReadOnlyError, match="sae.hook_name cannot be assigned or deleted"):
        del sae.hook_name
    np.testing.assert_array_equal(sae.encode(X), SAE(config(), W).encode(X))
    sae.note = 1  # the caller's own attributes stay the caller's
    del sae.note


# ---- 15. a model argument that is not a model --------------------------------------------------------------------

def test_feature_helpers_name_a_model_argument_that_is_not_one():
    # were AttributeErrors from deep inside
    sae = SAE(config(), W)
    with pytest.raises(InvalidInputError, match="model must be a tinymech model .*not NoneType"):
        sae.logit_effects(None, 5)
    with pytest.raises(InvalidInputError, match="model must be a tinymech model .*not str"):
        sae.feature_activations("Mr Darcy", object(), 5)  # the arguments swapped


def test_a_save_cut_short_between_its_moves_leaves_no_mixed_sae(tmp_path, monkeypatch):
    # regression (review): an interruption after the weights were moved left them under the old cfg.json,
    # which loaded, silently, as an SAE that never existed; the .partial files stayed
    import tinymech.sae.saving as saving

    folder = tmp_path / "sae"
    SAE(config(), W).save(folder)
    moved, real = [], os.replace

    def interrupted(src, dst):
        if moved:
            raise KeyboardInterrupt
        moved.append(dst)
        real(src, dst)

    monkeypatch.setattr(saving.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        SAE(config(), {k: v * 2 for k, v in W.items()}).save(folder)
    monkeypatch.undo()
    assert not list(folder.glob("*.partial"))
    with pytest.raises(tinymech.errors.SAENotFoundError):
        SAE.load(folder)


def test_labels_and_metrics_go_with_the_sae_they_describe(tmp_path):
    # regression (review): saving another SAE into a folder kept the old one's feature_labels.json and
    # metrics.json, and SAE.load attached them to the new SAE
    folder = tmp_path / "sae"
    SAE(config(), W).save(folder)
    (folder / "feature_labels.json").write_text('{"0": "the old SAE\'s feature 0"}')
    (folder / "metrics.json").write_text('{"l0": 3.0}')
    loaded = SAE.load(folder)
    assert loaded.labels == {0: "the old SAE's feature 0"} and loaded.metrics == {"l0": 3.0}
    loaded.save(folder, dtype="float16")  # the same SAE in its own folder: they stay
    assert SAE.load(folder).labels == {0: "the old SAE's feature 0"}
    SAE(config(), W).save(folder)  # another SAE: they go
    again = SAE.load(folder)
    assert again.labels == {} and again.metrics is None


def test_fields_tinymech_only_records_load_as_sae_lens_loads_them(tmp_path):
    # regression (review): cfg.json files that loaded before were refused (128.0, -1 for unset, a number as a name)
    folder = Path(saved(tmp_path))
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(context_size=128.0, hook_head_index=-1, model_name=123)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    loaded = SAE.load(folder)
    assert (loaded.cfg.context_size, loaded.cfg.hook_head_index, loaded.cfg.model_name) == (128, -1, "123")
    cfg.update(context_size="long", neuronpedia_id=["x"])
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="context_size 'long' is not a whole number: read as null"):
        loaded = SAE.load(folder)
    assert loaded.cfg.context_size is None and loaded.cfg.neuronpedia_id is None


def test_load_checks_the_weights_once(tmp_path, monkeypatch):
    # regression (review): SAE.load checked the weights as it read them, then SAE(cfg, weights) again (2x the time)
    import tinymech.sae.sae as sae_module

    folder = saved(tmp_path)
    calls = []
    real = sae_module.given_weights
    monkeypatch.setattr(sae_module, "given_weights", lambda *a, **k: calls.append(1) or real(*a, **k))
    loaded = SAE.load(folder)
    assert calls == [] and np.array_equal(loaded.W_enc, W["W_enc"])
    SAE.load(folder, norm_scaling_factor=2.0)  # a scale folded in after reading: checked again
    assert calls == [1]


def test_to_takes_a_device_index_as_torch_does():
    # regression (review): sae.to(3), torch's cuda:3, was refused as "not a string"
    sae = SAE(config(), W)
    with pytest.warns(UserWarning, match="device='cuda:3' is ignored"):
        assert sae.to(3) is sae
