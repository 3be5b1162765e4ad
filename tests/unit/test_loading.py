"""Loading checkpoints: layouts, hub-id resolution, memory mapping, and every
kind of bad input, which must raise a precise tinymech exception."""
import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tinymech as tm
from model_factory import SHAPES, save_tokenizer
from numpy_checkpoints import write_gpt2


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    write_gpt2(path, **SHAPES["tiny"])
    return path


def copy_ckpt(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def rewrite_header(path, edit):
    """Rewrite a safetensors header through edit(header_dict), keeping the data."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_weights_are_memory_mapped(ckpt):
    model = tm.load(ckpt)
    wte = model._weights["wte"]
    assert not wte.flags.owndata and not wte.flags.writeable


def test_resident_memory_close_to_weight_size(tmp_path):
    write_gpt2(tmp_path, n_layer=4, n_embd=512, n_head=8, n_positions=64, vocab_size=8000)
    size = (tmp_path / "model.safetensors").stat().st_size
    script = textwrap.dedent(f"""
        import os, numpy as np, tinymech as tm
        def rss(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
        before = rss()
        model = tm.load({str(tmp_path)!r})
        model(np.arange(8)[None])
        print(rss() - before)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.check_output([sys.executable, "-c", script], env=env, cwd=os.path.dirname(__file__))
    grown = int(out.decode().split()[-1])
    assert grown < 1.5 * size, (grown, size)


def test_hub_id_resolves_from_local_cache(ckpt, tmp_path, monkeypatch):
    snap = tmp_path / "hub" / "models--openai-community--gpt2" / "snapshots" / "abc123"
    copy_ckpt(ckpt, snap)
    (tmp_path / "hub" / "models--openai-community--gpt2" / "refs").mkdir()
    (tmp_path / "hub" / "models--openai-community--gpt2" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model = tm.load("gpt2")
    assert model.cfg.n_layers == SHAPES["tiny"]["n_layer"]
    assert model.cfg.model_name == "openai-community/gpt2"  # not the snapshot's commit hash


def test_model_name_is_the_folder(ckpt):
    assert tm.load(ckpt).cfg.model_name == ckpt.name  # a converted GGUF's: tests/reference/test_gguf.py


def test_unknown_hub_id_offline_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(tm.ModelNotFoundError, match="could not download"):
        tm.load("someone/not-a-model")


def test_missing_directory():
    with pytest.raises(tm.ModelNotFoundError, match="no model directory"):
        tm.load("/nonexistent/dir/for/sure")


def test_missing_weights(ckpt, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(tm.ModelNotFoundError, match="no model.safetensors"):
        tm.load(d)


def test_missing_config(ckpt, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(tm.ModelNotFoundError, match="config.json"):
        tm.load(d)


@pytest.mark.parametrize("cut", [0, 5, 100, -1000])
def test_truncated_file(ckpt, tmp_path, cut):
    d = copy_ckpt(ckpt, tmp_path / "m")
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[:cut])
    with pytest.raises(tm.ModelLoadError, match="corrupt safetensors"):
        tm.load(d)


def test_header_offsets_past_the_end(ckpt, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "m")

    def lie(h):
        name = next(k for k in h if k != "__metadata__")
        begin, end = h[name]["data_offsets"]
        h[name]["data_offsets"] = [begin + 10**9, end + 10**9]

    rewrite_header(d / "model.safetensors", lie)
    with pytest.raises(tm.ModelLoadError, match="outside"):
        tm.load(d)


def test_header_shape_disagrees_with_offsets(ckpt, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "m")
    rewrite_header(d / "model.safetensors", lambda h: h["transformer.wte.weight"].update(shape=[99999, 64]))
    with pytest.raises(tm.ModelLoadError, match="needs .* bytes"):
        tm.load(d)


def test_config_disagrees_with_weights(ckpt, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_embd"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(tm.ModelLoadError, match="has shape .* but the config needs"):
        tm.load(d)


def test_missing_tensor(ckpt, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = copy_ckpt(ckpt, tmp_path / "m")
    tensors = load_file(d / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(tm.ModelLoadError, match="h.1.mlp.c_fc.bias"):
        tm.load(d)


def test_unsupported_architecture_is_named(ckpt, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(tm.UnsupportedArchitectureError, match="'mamba'.*supported: gpt2"):
        tm.load(d)


def test_bad_config_json(ckpt, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(tm.ModelLoadError, match="not valid JSON"):
        tm.load(d)


def test_half_precision_weights_are_widened(ckpt, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = copy_ckpt(ckpt, tmp_path / "m")
    tensors = load_file(d / "model.safetensors")
    save_file({k: v.astype(np.float16) for k, v in tensors.items()}, d / "model.safetensors")
    half = tm.load(d)
    tokens = np.arange(10)[None]
    ref = tm.load(ckpt)(tokens)
    assert np.abs(half(tokens) - ref).max() < 0.05 * np.abs(ref).max()


class TestBadTokens:
    @pytest.fixture(scope="class")
    def model(self, ckpt):
        return tm.load(ckpt)

    def test_out_of_vocab(self, model):
        with pytest.raises(tm.InvalidTokensError, match="outside the vocabulary"):
            model(np.array([[1, model.cfg.d_vocab]]))
        with pytest.raises(tm.InvalidTokensError, match="-1"):
            model(np.array([[1, -1]]))

    def test_wrong_dtype(self, model):
        with pytest.raises(tm.InvalidTokensError, match="integers"):
            model(np.array([[1.5, 2.0]]))

    def test_empty(self, model):
        with pytest.raises(tm.InvalidTokensError, match="empty"):
            model(np.zeros((1, 0), dtype=np.int64))

    def test_ragged_lists(self, model):
        with pytest.raises(tm.InvalidTokensError, match=r"must form a \[batch, pos\] array"):
            model([[1, 2, 3], [4, 5]])

    @pytest.mark.parametrize("kwargs,match", [(dict(max_new_tokens=2.5), "max_new_tokens must be a whole number"),
                                              (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
                                              (dict(max_new_tokens=True), "whole number"),
                                              (dict(top_k=2.5, temperature=1.0), "top_k must be a whole number"),
                                              (dict(top_k=0, temperature=1.0), "top_k must be >= 1")])
    def test_generate_counts_are_whole_numbers(self, model, kwargs, match):
        with pytest.raises(tm.InvalidInputError, match=match):
            model.generate(np.array([[1, 2]]), **kwargs)

    def test_too_long(self, model):
        with pytest.raises(tm.ContextLengthError, match="exceed"):
            model(np.zeros((1, model.cfg.n_ctx + 1), dtype=np.int64))

    def test_generate_past_context(self, model):
        with pytest.raises(tm.ContextLengthError):
            model.generate(np.zeros((1, 10), dtype=np.int64), max_new_tokens=model.cfg.n_ctx)

    def test_cache_overflow_keeps_cache(self, model):
        cache = model.new_cache()
        model.forward(np.zeros((1, model.cfg.n_ctx - 1), dtype=np.int64), cache=cache)
        with pytest.raises(tm.ContextLengthError):
            model.forward(np.zeros((1, 2), dtype=np.int64), cache=cache)
        assert cache.n_past == model.cfg.n_ctx - 1
        model.forward(np.zeros((1, 1), dtype=np.int64), cache=cache)

    def test_text_without_tokenizer(self, model):
        with pytest.raises(tm.NoTokenizerError, match="without a tokenizer"):
            model("hello")

    def test_core_rejects_bad_tokens_itself(self, model):
        # the C++ layer checks too, so nothing reads out of bounds even if Python checks are bypassed
        cache = model._core.new_cache(1)
        with pytest.raises(IndexError, match="outside the vocabulary"):
            model._core.forward(cache, np.array([[10**6]], dtype=np.int32), None, "all")
        with pytest.raises(ValueError, match="batch"):
            model._core.forward(cache, np.zeros((2, 1), dtype=np.int32), None, "all")


def test_kv_cache_truncate_and_fork(ckpt):
    model = tm.load(ckpt)
    tokens = np.random.default_rng(0).integers(0, model.cfg.d_vocab, (1, 20))
    full = model(tokens)
    cache = model.new_cache()
    model.forward(tokens[:, :12], cache=cache)
    branch = cache.fork()
    cache.truncate(8)
    assert cache.n_past == 8
    out = model.forward(tokens[:, 8:20], cache=cache)
    np.testing.assert_allclose(out, full[:, 8:20], atol=1e-5)
    out = model.forward(tokens[:, 12:20], cache=branch)
    np.testing.assert_allclose(out, full[:, 12:20], atol=1e-5)
    cache.reset()
    assert cache.n_past == 0
    with pytest.raises(tm.InvalidInputError, match="cannot truncate a cache of 0 positions to 5"):
        cache.truncate(5)


def test_kv_cache_reserve(ckpt):
    """Room made up front: the decode is the same, capacity stays put, and n_ctx bounds it."""
    model = tm.load(ckpt)
    tokens = np.random.default_rng(1).integers(0, model.cfg.d_vocab, (2, 20))
    full = model(tokens)
    cache = model.new_cache(batch=2)
    assert cache.capacity == 0 and cache.fork().capacity == 0
    cache.reserve(20)
    assert cache.capacity == 20
    model.forward(tokens[:, :5], cache=cache)
    steps = [model.forward(tokens[:, t : t + 1], cache=cache, logits="last") for t in range(5, 20)]
    np.testing.assert_allclose(np.stack(steps, axis=1), full[:, 5:], atol=1e-5)
    assert cache.capacity == 20 and cache.fork().n_past == 20
    with pytest.raises(tm.ContextLengthError, match="exceeds the context length"):
        cache.reserve(model.cfg.n_ctx + 1)


def test_a_forward_leaves_room_to_decode(ckpt):
    """A forward that must grow its cache takes room for twice the positions (up
    to n_ctx; it costs no memory until written), so the decoding steps after a
    prompt do not copy the cache; an explicit reserve() grows as before."""
    model = tm.load(ckpt)
    n_ctx = model.cfg.n_ctx  # 64
    tokens = np.random.default_rng(2).integers(0, model.cfg.d_vocab, (1, n_ctx))
    full = model(tokens)
    cache = model.new_cache()
    model.forward(tokens[:, :20], cache=cache, logits="none")
    assert cache.capacity == 40
    steps = [model.forward(tokens[:, t:t + 1], cache=cache, logits="last") for t in range(20, 40)]
    assert cache.capacity == 40
    np.testing.assert_allclose(np.stack(steps, axis=1), full[:, 20:40], atol=1e-5)
    model.forward(tokens[:, 40:41], cache=cache, logits="last")
    assert cache.capacity == n_ctx  # twice 41 is past the context
    cache = model.new_cache()
    model.forward(tokens[:, :5], cache=cache, logits="none")
    assert cache.capacity == 16  # the smallest growth
    cache.reserve(17)
    assert cache.capacity == 32  # reserve grows as before: at least double


def test_tokens_roundtrip(ckpt, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "m")
    save_tokenizer(d, SHAPES["tiny"]["vocab_size"])
    model = tm.load(d)
    text = "The cat sat on the mat.\nThe dog"
    tokens = model.to_tokens(text)
    assert tokens.shape[0] == 1 and tokens[0, 0] == model.tokenizer.bos_token_id
    assert model.to_string(tokens[0, 1:]) == text
    strs = model.to_str_tokens(text)
    assert strs[0] == "<|endoftext|>" and "".join(strs[1:]) == text
    assert model.to_tokens(text, prepend_bos=False).shape[1] == tokens.shape[1] - 1
    assert model.to_tokens(["ab", "ab"]).shape == (2, model.to_tokens("ab").shape[1])
    short, long = model.to_tokens("a"), model.to_tokens("The cat sat on")
    padded = model.to_tokens(["a", "The cat sat on"])  # was an error: padded on the right, as TransformerLens
    pad = [model.tokenizer.pad_token_id] * (long.shape[1] - short.shape[1])
    np.testing.assert_array_equal(padded, [short[0].tolist() + pad, long[0].tolist()])
