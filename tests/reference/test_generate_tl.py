"""generate's TransformerLens keywords against HookedTransformer.generate on the
demo model (its tokenizer on both sides): do_sample, freq_penalty,
use_past_kv_cache, return_type, padding_side, verbose, eos_token_id. Sampling
draws differ between the libraries, so sampled runs are compared with top_k=1,
where the frequency penalty alone decides. (Hostile arguments:
tests/unit/test_generate_options.py.)"""
import numpy as np
import pytest
import torch

from tl_reference import demo_pair

PROMPT = "Mr Darcy walked in"
N_NEW = 12


@pytest.fixture(scope="module")
def demo():
    """The demo model in both libraries, with its tokenizer."""
    return demo_pair()


def tl_generate(tl, input, **options):
    with torch.no_grad():
        out = tl.generate(torch.as_tensor(input) if isinstance(input, np.ndarray) else input,
                          max_new_tokens=options.pop("max_new_tokens", N_NEW), verbose=False, **options)
    return out.numpy() if isinstance(out, torch.Tensor) else out


def same(ours, ref):
    if isinstance(ref, np.ndarray):
        assert isinstance(ours, np.ndarray) and ours.dtype == np.int64
        np.testing.assert_array_equal(ours, ref)
    else:
        assert ours == ref


@pytest.mark.parametrize("options", [
    {},
    {"return_type": "str"},
    {"return_type": "tokens"},
    {"use_past_kv_cache": False},
    {"padding_side": "left"},
    {"padding_side": "right", "return_type": "tokens"},
    {"stop_at_eos": False},
    {"prepend_bos": False},
], ids=str)
@pytest.mark.parametrize("as_tokens", [False, True], ids=["text", "tokens"])
def test_greedy_generate_matches_tl(demo, options, as_tokens):
    model, tl = demo
    bos = options.get("prepend_bos", True)
    input = model.to_tokens(PROMPT, prepend_bos=bos) if as_tokens else PROMPT
    same(model.generate(input, max_new_tokens=N_NEW, do_sample=False, verbose=False, **options),
         tl_generate(tl, input, do_sample=False, **options))


def test_a_batch_of_texts_matches_tl(demo):
    model, tl = demo
    texts = ["Mr Darcy walked in", "Mr Bingley sat down"]
    assert len({model.to_tokens(t).shape[1] for t in texts}) == 1  # equal lengths: no padding needed
    for return_type in ["input", "tokens"]:
        same(model.generate(texts, max_new_tokens=N_NEW, do_sample=False, return_type=return_type),
             tl_generate(tl, texts, do_sample=False, return_type=return_type))
    # one text in a list gives a string, as TransformerLens's does
    same(model.generate(texts[:1], max_new_tokens=N_NEW, do_sample=False), tl_generate(tl, texts[:1], do_sample=False))


@pytest.mark.parametrize("freq_penalty,temperature", [(0.0, 1.0), (2.0, 1.0), (5.0, 0.5), (0.7, 3.0)])
def test_frequency_penalty_matches_tl(demo, freq_penalty, temperature):
    model, tl = demo
    tokens = model.to_tokens(["Mr Darcy walked in. Mr Darcy", "She said that she would not go"])
    options = dict(do_sample=True, top_k=1, freq_penalty=freq_penalty, temperature=temperature, stop_at_eos=False)
    ours = model.generate(tokens, max_new_tokens=20, seed=0, **options)
    np.testing.assert_array_equal(ours, tl_generate(tl, tokens, max_new_tokens=20, **options))
    if freq_penalty >= 2:  # the penalty changes the greedy continuation
        assert not np.array_equal(ours, model.generate(tokens, max_new_tokens=20, stop_at_eos=False))


def test_eos_token_id_matches_tl(demo):
    model, tl = demo
    greedy = model.generate(PROMPT, max_new_tokens=N_NEW, return_type="tokens", stop_at_eos=False)
    prompt_len = model.to_tokens(PROMPT).shape[1]
    stop = int(greedy[0, prompt_len + 3])  # a token the continuation reaches
    for eos in [stop, [stop, 5]]:
        for return_type in ["str", "tokens"]:
            ours = model.generate(PROMPT, max_new_tokens=N_NEW, eos_token_id=eos, return_type=return_type)
            same(ours, tl_generate(tl, PROMPT, do_sample=False, eos_token_id=eos, return_type=return_type))
    assert model.generate(PROMPT, max_new_tokens=N_NEW, eos_token_id=stop, return_type="tokens").shape[1] < greedy.shape[1]


@pytest.mark.parametrize("use_past_kv_cache", [True, False])
def test_odd_shapes_match_tl(demo, use_past_kv_cache):
    model, tl = demo
    options = dict(do_sample=False, use_past_kv_cache=use_past_kv_cache, stop_at_eos=False)
    one = np.array([[model.to_single_token(" Darcy")]])  # a prompt of one token
    batch = model.to_tokens(["Mr Darcy walked in", "Mr Bingley sat down", "She said that he"])
    # (not "", BOS alone: TransformerLens 3.9's generate masks that BOS out as padding, since GPT-2 pads with
    # the same token, and continues from nothing; its forward pass, Hugging Face's and tinymech's agree)
    for input in [one, batch]:
        same(model.generate(input, max_new_tokens=N_NEW, **options), tl_generate(tl, input, **options))
