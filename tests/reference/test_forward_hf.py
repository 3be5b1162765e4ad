"""The core forward pass against Hugging Face transformers on the same weights."""
import numpy as np
import pytest

import tinymech as tm
from model_factory import SHAPES, hf_logits, make_hf_gpt2, rel_err, save_tokenizer

TOL = 1e-4


@pytest.fixture(scope="module", params=["small", "odd"])
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = make_hf_gpt2(path, **SHAPES[request.param])
    return hf, tm.load(path)


@pytest.mark.parametrize("batch", [1, 3])
def test_logits_match_hf(pair, batch):
    hf, model = pair
    rng = np.random.default_rng(batch)
    # 7 and 16 rows (batch 1): weights streamed and dot-product tiles; 17 and
    # more: packed
    for length in (1, 7, 16, 17, model.cfg.n_ctx):
        tokens = rng.integers(0, model.cfg.d_vocab, (batch, length))
        ours = model(tokens)
        assert ours.shape == (batch, length, model.cfg.d_vocab) and ours.dtype == np.float32
        assert rel_err(ours, hf_logits(hf, tokens)) <= TOL


def test_losses_match_hf(pair):
    """return_type="loss": HF's own loss (labels=tokens); per token: torch's cross-entropy of HF's logits."""
    import torch

    hf, model = pair
    tokens = np.random.default_rng(7).integers(0, model.cfg.d_vocab, (2, model.cfg.n_ctx))
    with torch.no_grad():
        out = hf(torch.as_tensor(tokens), labels=torch.as_tensor(tokens))
        per_token = torch.nn.functional.cross_entropy(out.logits[:, :-1].transpose(1, 2),
                                                      torch.as_tensor(tokens[:, 1:]), reduction="none")
    assert model(tokens, return_type="loss") == pytest.approx(out.loss.item(), rel=1e-5)
    logits, losses = model(tokens, return_type="both", loss_per_token=True)
    assert losses.shape == (2, model.cfg.n_ctx - 1) and losses.dtype == np.float32
    np.testing.assert_allclose(losses, per_token.numpy(), rtol=1e-4, atol=1e-5)
    assert np.isnan(model(tokens[:, :1], return_type="loss"))  # no next token to predict


def test_cached_decode_equals_prefill(pair):
    hf, model = pair
    tokens = np.random.default_rng(5).integers(0, model.cfg.d_vocab, (2, model.cfg.n_ctx))
    full = model(tokens)
    cache = model.new_cache(batch=2)
    split = model.cfg.n_ctx // 2
    prefix = model.forward(tokens[:, :split], cache=cache)
    steps = [model.forward(tokens[:, t : t + 1], cache=cache, logits="last") for t in range(split, tokens.shape[1])]
    assert cache.n_past == tokens.shape[1]
    assert rel_err(prefix, full[:, :split]) <= TOL
    assert rel_err(np.stack(steps, axis=1), full[:, split:]) <= TOL


def test_greedy_generate_matches_hf(pair):
    import torch

    hf, model = pair
    n_new = min(32, model.cfg.n_ctx - 4)
    prompt = np.random.default_rng(1).integers(1, model.cfg.d_vocab, (1, 4))
    ours = model.generate(prompt, max_new_tokens=n_new, stop_at_eos=False)
    ref = hf.generate(torch.as_tensor(prompt), max_new_tokens=n_new, do_sample=False,
                      min_new_tokens=n_new, pad_token_id=0).numpy()
    assert ours.shape == (1, 4 + n_new)
    np.testing.assert_array_equal(ours, ref)


def test_untied_lm_head(tmp_path):
    hf = make_hf_gpt2(tmp_path, tie_word_embeddings=False, **SHAPES["tiny"])
    model = tm.load(tmp_path)
    tokens = np.arange(20)[None] % model.cfg.d_vocab
    assert rel_err(model(tokens), hf_logits(hf, tokens)) <= TOL
    assert not np.shares_memory(model.W_U, model.W_E)


def test_weights_without_transformer_prefix(tmp_path):
    from safetensors.numpy import load_file, save_file

    hf = make_hf_gpt2(tmp_path, **SHAPES["tiny"])
    tensors = load_file(tmp_path / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, tmp_path / "model.safetensors")
    tokens = np.arange(30)[None]
    assert rel_err(tm.load(tmp_path)(tokens), hf_logits(hf, tokens)) <= TOL


def test_scale_attn_by_inverse_layer_idx(tmp_path):
    hf = make_hf_gpt2(tmp_path, scale_attn_by_inverse_layer_idx=True, **SHAPES["tiny"])
    tokens = np.arange(30)[None]
    assert rel_err(tm.load(tmp_path)(tokens), hf_logits(hf, tokens)) <= TOL


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_other_activations(tmp_path, act):
    hf = make_hf_gpt2(tmp_path, activation_function=act, **SHAPES["tiny"])
    tokens = np.arange(30)[None]
    assert rel_err(tm.load(tmp_path)(tokens), hf_logits(hf, tokens)) <= TOL


def test_every_kernel_variant_gives_the_same_logits(pair):
    hf, model = pair
    tokens = np.random.default_rng(2).integers(0, model.cfg.d_vocab, (2, 9))
    ref = hf_logits(hf, tokens)
    default = tm._core.kernels.variant()
    try:
        for variant in tm._core.kernels.available():
            tm._core.kernels.select(variant)
            assert rel_err(model(tokens), ref) <= TOL, variant
    finally:
        tm._core.kernels.select(default)


def test_thread_counts_agree(pair):
    _, model = pair
    tokens = np.random.default_rng(3).integers(0, model.cfg.d_vocab, (1, 17))
    before = tm.get_num_threads()
    try:
        tm.set_num_threads(1)
        assert tm.get_num_threads() == 1
        one = model(tokens)
        tm.set_num_threads(3)
        three = model(tokens)
    finally:
        tm.set_num_threads(before)
    assert rel_err(one, three) <= 1e-6


def test_text_input_and_generate_text(tmp_path):
    make_hf_gpt2(tmp_path, **SHAPES["odd"])
    save_tokenizer(tmp_path, 301)
    model = tm.load(tmp_path)
    tokens = model.to_tokens("The cat sat")
    assert tokens[0, 0] == 0 and tokens.dtype == np.int64
    np.testing.assert_allclose(model("The cat sat"), model(tokens))
    out = model.generate("The cat sat", max_new_tokens=5, stop_at_eos=False)
    assert isinstance(out, str) and out.startswith("The cat sat")
    ids = model.generate(tokens, max_new_tokens=5, stop_at_eos=False)
    assert model.to_string(ids[0, 1:]) == out


def test_demo_model_logits_equal_transformers():
    import transformers

    from tinymech.io.sources import default_model_dir

    model = tm.load()
    hf = transformers.GPT2LMHeadModel.from_pretrained(default_model_dir(), attn_implementation="eager").eval()
    tokens = model.to_tokens(
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
        "of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
        "the rightful property of some one or other of their daughters. And God said, Let there be light: and there "
        "was light.")
    assert rel_err(model(tokens), hf_logits(hf, tokens)) <= 1e-4
