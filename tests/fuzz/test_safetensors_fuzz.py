"""Fuzzing a safetensors model's files: any corruption of a safetensors
header or its data must end in ModelLoadError (or a clean load), never a crash
or a bad read; any change to config.json, tokenizer.json, the shard index or
an SAE's cfg.json in a TinymechError or a model that runs."""
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinymech as tm
from tinymech.errors import ModelLoadError
from tinymech.io.safetensors import SafetensorsFile


def valid_file(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "t.safetensors"
    save_file({"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, dtype=np.float16)}, path)
    return path


def read_all(path):
    try:
        sf = SafetensorsFile(path)
        for name in sf.keys():
            t = sf.tensor(name)
            assert t.nbytes <= path.stat().st_size
            t.sum()
    except ModelLoadError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["dtype", "shape", "data_offsets"]), value=json_values,
       name=st.sampled_from(["a", "b"]))
def test_corrupted_header_fields(tmp_path, field, name, value):
    path = valid_file(tmp_path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header[name][field] = value
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    read_all(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_byte_damage(tmp_path, data):
    path = valid_file(tmp_path)
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    path.write_bytes(bytes(raw[:cut]))
    read_all(path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=64))
def test_arbitrary_bytes(tmp_path, blob):
    path = tmp_path / "x.safetensors"
    path.write_bytes(blob)
    read_all(path)


# ---- the JSON files beside the weights: config.json, tokenizer.json, the shard index, an SAE's cfg.json ----

finite_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(["llama", "gpt2", "linear", "llama3", "default", "../x", "/etc"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
FILES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A GPT-2 with a tokenizer, and a Llama in a few shards: the files fuzzed below come from them."""
    from llama_factory import LLAMA_SHAPES, make_hf_llama
    from model_factory import SHAPES, make_hf_gpt2, save_tokenizer

    gpt2 = tmp_path_factory.mktemp("gpt2")
    make_hf_gpt2(gpt2, **SHAPES["tiny"])
    save_tokenizer(gpt2, SHAPES["tiny"]["vocab_size"])
    llama = tmp_path_factory.mktemp("llama")
    make_hf_llama(llama, max_shard_size="100KB", **LLAMA_SHAPES["mqa_llama3"])
    return {"gpt2": gpt2, "llama": llama}


def with_file(src, tmp_path, name, content: bytes):
    """A fresh model directory: src's files linked, `name` written with content."""
    d = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    for f in src.iterdir():
        if f.name != name:
            (d / f.name).symlink_to(f)
    (d / name).write_bytes(content)
    return d


def load_and_run(path):
    """tm.load's whole path, then the tokenizer and one forward pass."""
    try:
        model = tm.load(path)
        tokens = model.to_tokens("The cat sat. 12 3") if model.tokenizer else np.arange(3)[None]
        model.to_string(tokens[0])
        model(tokens[:, : model.cfg.n_ctx])
    except tm.TinymechError:
        pass


@FILES
@given(model=st.sampled_from(["gpt2", "llama"]), data=st.data())
def test_config_fields(model_dirs, tmp_path, model, data):
    src = model_dirs[model]
    config = json.loads((src / "config.json").read_text())
    extra = ["rope_scaling", "rope_parameters", "head_dim", "architectures", "n_inner", "rope_theta", "chat_template"]
    for _ in range(data.draw(st.integers(1, 3))):
        field = data.draw(st.sampled_from(sorted(config) + extra))
        config[field] = data.draw(finite_json | st.integers(-2, 2**62))
    load_and_run(with_file(src, tmp_path, "config.json", json.dumps(config).encode()))


@FILES
@given(data=st.data())
def test_config_bytes(model_dirs, tmp_path, data):
    raw = bytearray((model_dirs["llama"] / "config.json").read_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    load_and_run(with_file(model_dirs["llama"], tmp_path, "config.json", bytes(raw)))


tokenizer_parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["Precompiled", "Sequence", "BPE", "WordPiece", "WordLevel", "Unigram", "ByteLevel",
                              "Split", "Replace", "Strip", "NFC", "NFKC", "Lowercase", "Prepend", "Metaspace",
                              "TemplateProcessing", "BertProcessing", "Digits", "Fuse", "ByteFallback"])},
    optional={k: finite_json for k in ("vocab", "merges", "pattern", "content", "behavior", "normalizers",
                                       "pretokenizers", "precompiled_charsmap", "unk_token", "single", "pair",
                                       "special_tokens", "replacement", "prepend_scheme", "dropout")},
)


@FILES
@given(data=st.data())
def test_tokenizer_sections(model_dirs, tmp_path, data):
    tok = json.loads((model_dirs["gpt2"] / "tokenizer.json").read_text())
    section = data.draw(st.sampled_from(["normalizer", "pre_tokenizer", "post_processor", "decoder", "model",
                                         "padding", "truncation", "added_tokens"]))
    tok[section] = data.draw(tokenizer_parts | finite_json)
    load_and_run(with_file(model_dirs["gpt2"], tmp_path, "tokenizer.json", json.dumps(tok).encode()))


@FILES
@given(data=st.data())
def test_index_entries(model_dirs, tmp_path, data):
    src = model_dirs["llama"]
    index = json.loads((src / "model.safetensors.index.json").read_text())
    if data.draw(st.booleans()):
        index["weight_map"] = data.draw(finite_json)
    else:
        name = data.draw(st.sampled_from(sorted(index["weight_map"])))
        index["weight_map"][name] = data.draw(finite_json | st.text(alphabet="./\\:Ca-", max_size=12))
    load_and_run(with_file(src, tmp_path, "model.safetensors.index.json", json.dumps(index).encode()))


@pytest.fixture(scope="module")
def sae_src(tmp_path_factory):
    from sae_factory import lens_sae, save_lens

    return save_lens(lens_sae("jumprelu", 16, 24, hook="blocks.0.hook_resid_post"), tmp_path_factory.mktemp("sae"))


@FILES
@given(data=st.data())
def test_sae_config_fields(sae_src, tmp_path, data):
    from tinymech.sae.sae import SAE

    cfg = json.loads((sae_src / "cfg.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        meta = cfg.get("metadata")
        where = meta if isinstance(meta, dict) and data.draw(st.booleans()) else cfg
        extra = ["architecture", "activation_fn_kwargs", "model_from_pretrained_kwargs", "hook_name_out"]
        where[data.draw(st.sampled_from(sorted(where) + extra))] = data.draw(finite_json)
    d = with_file(sae_src, tmp_path, "cfg.json", json.dumps(cfg).encode())
    try:
        SAE.load(d)
    except tm.TinymechError:
        pass
