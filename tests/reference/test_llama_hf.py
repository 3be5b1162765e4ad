"""Llama-class models (RMSNorm, rotary positions, grouped-query attention,
SwiGLU) against Hugging Face transformers on the same random weights."""
import json

import numpy as np
import pytest

import tinymech as tm
from llama_factory import LLAMA_SHAPES, hf_greedy, make_hf_llama
from model_factory import hf_logits, rel_err

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(LLAMA_SHAPES))
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = make_hf_llama(path, **LLAMA_SHAPES[request.param])
    return hf, tm.load(path)


@pytest.mark.parametrize("batch", [1, 2])
def test_logits_match_hf(pair, batch):
    hf, model = pair
    rng = np.random.default_rng(batch)
    for length in (1, 9, model.cfg.n_ctx):
        tokens = rng.integers(0, model.cfg.d_vocab, (batch, length))
        ours = model(tokens)
        assert ours.shape == (batch, length, model.cfg.d_vocab) and ours.dtype == np.float32
        assert rel_err(ours, hf_logits(hf, tokens)) <= TOL


def test_greedy_generation_matches_hf(pair):
    hf, model = pair
    prompt = np.random.default_rng(7).integers(0, model.cfg.d_vocab, (2, 5))
    ours = model.generate(prompt, max_new_tokens=32, stop_at_eos=False)
    np.testing.assert_array_equal(ours, hf_greedy(hf, prompt, 32))


def test_cached_decode_equals_prefill(pair):
    _, model = pair
    tokens = np.random.default_rng(5).integers(0, model.cfg.d_vocab, (2, model.cfg.n_ctx))
    full = model(tokens)
    cache = model.new_cache(batch=2)
    split = 7
    prefix = model.forward(tokens[:, :split], cache=cache)
    steps = [model.forward(tokens[:, t : t + 1], cache=cache, logits="last") for t in range(split, tokens.shape[1])]
    assert rel_err(prefix, full[:, :split]) <= TOL
    assert rel_err(np.stack(steps, axis=1), full[:, split:]) <= TOL


def test_config_reads_llama_fields(pair):
    hf, model = pair
    c, h = model.cfg, hf.config
    assert (c.normalization_type, c.positional_embedding_type, c.gated_mlp) == ("RMS", "rotary", True)
    assert c.n_key_value_heads == h.num_key_value_heads and c.d_head == h.head_dim
    assert c.tie_word_embeddings == h.tie_word_embeddings
    assert np.shares_memory(model.W_U, model.W_E) == c.tie_word_embeddings


def test_sharded_checkpoint_loads_the_same(tmp_path):
    shape = LLAMA_SHAPES["gqa"]
    make_hf_llama(tmp_path / "one", seed=3, **shape)
    make_hf_llama(tmp_path / "sharded", seed=3, max_shard_size="100KB", **shape)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    tokens = np.arange(12)[None] % shape["vocab_size"]
    np.testing.assert_array_equal(tm.load(tmp_path / "one")(tokens), tm.load(tmp_path / "sharded")(tokens))


def test_unsupported_rope_type_is_named(tmp_path):
    make_hf_llama(tmp_path, **LLAMA_SHAPES["mha_tied"])
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(tm.UnsupportedArchitectureError, match="yarn.*llama3"):
        tm.load(tmp_path)


def test_weight_processing_keeps_hugging_faces_next_token_distribution(pair, tmp_path):
    # the flags were refused on Llama-class models before issue 23; TransformerLens's processing keeps log-probs
    import torch

    hf = make_hf_llama(tmp_path, **LLAMA_SHAPES["mqa_llama3"])
    model = tm.from_pretrained(tmp_path)
    tokens = np.random.default_rng(2).integers(0, model.cfg.d_vocab, (2, 9))
    with torch.no_grad():
        want = torch.log_softmax(hf(torch.as_tensor(tokens)).logits, -1).numpy()
    got = model(tokens)
    got = got - got.max(-1, keepdims=True)
    got = got - np.log(np.exp(got).sum(-1, keepdims=True))
    np.testing.assert_allclose(got, want, atol=1e-4)
