"""generate's TransformerLens keywords without torch: what each changes, and the
precise errors hostile values get. (Against HookedTransformer.generate:
tests/reference/test_generate_tl.py.)"""
import numpy as np
import pytest

import tinymech as tm

PROMPT = "Mr Darcy walked in"


@pytest.fixture(scope="module")
def demo():
    return tm.load()


def test_do_sample(demo):
    greedy = demo.generate(PROMPT, max_new_tokens=8)
    assert demo.generate(PROMPT, max_new_tokens=8, do_sample=False, temperature=2.0, seed=0) == greedy
    sampled = demo.generate(PROMPT, max_new_tokens=8, do_sample=True, seed=0)  # temperature 1.0, as TransformerLens
    assert sampled == demo.generate(PROMPT, max_new_tokens=8, temperature=1.0, seed=0)
    assert sampled != greedy


def test_use_past_kv_cache_and_freq_penalty(demo):
    tokens = demo.to_tokens([PROMPT, "Mr Bingley sat down"])
    cached = demo.generate(tokens, max_new_tokens=10, stop_at_eos=False)
    np.testing.assert_array_equal(demo.generate(tokens, max_new_tokens=10, stop_at_eos=False, use_past_kv_cache=False),
                                  cached)
    # greedy decoding ignores the penalty, as TransformerLens's
    np.testing.assert_array_equal(demo.generate(tokens, max_new_tokens=10, stop_at_eos=False, freq_penalty=9.0), cached)
    penalized = demo.generate(tokens, max_new_tokens=10, stop_at_eos=False, do_sample=True, top_k=1, freq_penalty=50.0)
    for row in penalized:  # a penalty this large never repeats a token it has seen
        new = row[tokens.shape[1]:]
        assert len(set(new.tolist())) == len(new) and not set(new.tolist()) & set(row[:tokens.shape[1]].tolist())


def test_return_type(demo):
    text = demo.generate(PROMPT, max_new_tokens=5, stop_at_eos=False)
    ids = demo.generate(PROMPT, max_new_tokens=5, stop_at_eos=False, return_type="tokens")
    assert ids.dtype == np.int64 and ids.shape == (1, demo.to_tokens(PROMPT).shape[1] + 5)
    assert demo.generate(ids[:, :-5], max_new_tokens=5, stop_at_eos=False, return_type="str") == text
    assert text.startswith(PROMPT) and "<|endoftext|>" not in text
    both = demo.generate([PROMPT, "Mr Bingley sat down"], max_new_tokens=5)
    assert isinstance(both, list) and len(both) == 2 and both[0] == demo.generate(PROMPT, max_new_tokens=5)


def test_verbose_shows_progress(demo, capsys):
    demo.generate(PROMPT, max_new_tokens=3, stop_at_eos=False, verbose=True)
    assert "generating 3/3" in capsys.readouterr().err
    demo.generate(PROMPT, max_new_tokens=3)
    assert capsys.readouterr().err == ""


def test_eos_token_id_stops_and_pads(demo):
    tokens = demo.to_tokens([PROMPT, "Mr Bingley sat down"])
    free = demo.generate(tokens, max_new_tokens=8, stop_at_eos=False)
    stop = int(free[0, tokens.shape[1] + 1])  # the first row's second new token
    out = demo.generate(tokens, max_new_tokens=8, eos_token_id=[stop])
    np.testing.assert_array_equal(out[0, :tokens.shape[1] + 2], free[0, :tokens.shape[1] + 2])
    assert np.all(out[0, tokens.shape[1] + 2:] == stop)  # a finished row is padded with its stop token


def test_padding_side_where_no_padding_is_needed(demo):
    greedy = demo.generate(PROMPT, max_new_tokens=4)
    for side in ["left", "right", None]:
        assert demo.generate(PROMPT, max_new_tokens=4, padding_side=side) == greedy
    # texts of different lengths (were an error) are padded on the left, whatever the side asked
    for side in ["left", "right", None]:
        assert demo.generate([PROMPT, "Mr Darcy"], max_new_tokens=4, padding_side=side) == [
            greedy, demo.generate("Mr Darcy", max_new_tokens=4)]


def test_huge_penalties_and_nan_logits(demo):
    """freq_penalty * temperature overflowed float32 into inf * 0 = NaN, and the core's refusal of
    NaN logits escaped as a plain ValueError."""
    tokens = demo.to_tokens(PROMPT)
    for penalty, temperature in ((1e30, 1e30), (1e308, 1e-30), (1e308, 1e308)):
        out = demo.generate(tokens, max_new_tokens=4, stop_at_eos=False, do_sample=True, seed=0,
                            freq_penalty=penalty, temperature=temperature)
        new = out[0, tokens.shape[1]:].tolist()
        assert len(set(new)) == len(new) and not set(new) & set(tokens[0].tolist())
    with pytest.raises(tm.InvalidInputError, match="NaN"):
        demo.generate(tokens, max_new_tokens=2, do_sample=True,
                      hooks=[("unembed.hook_out", lambda logits, hook: logits * np.nan)])


@pytest.mark.parametrize("options,match", [
    (dict(return_type="embeds"), "not embeddings"),
    (dict(return_type=None), "return_type"),
    (dict(padding_side="middle"), "padding_side"),
    (dict(do_sample="yes"), "do_sample"),
    (dict(do_sample=1), "do_sample"),
    (dict(verbose=2), "verbose"),
    (dict(use_past_kv_cache=None), "use_past_kv_cache"),
    (dict(freq_penalty=-1.0), "freq_penalty"),
    (dict(freq_penalty=float("nan"), do_sample=True), "freq_penalty"),
    (dict(freq_penalty="high"), "freq_penalty"),
    (dict(eos_token_id=-1), "eos_token_id"),
    (dict(eos_token_id=10**9), "eos_token_id"),
    (dict(eos_token_id=[]), "eos_token_id"),
    (dict(eos_token_id=[1.5]), "eos_token_id"),
    (dict(eos_token_id=object()), "eos_token_id"),
    (dict(eos_token_id="0"), "eos_token_id"),
    (dict(do_sample=True, temperature=-1.0), "temperature"),
])
def test_hostile_options_are_refused(demo, options, match):
    with pytest.raises(tm.InvalidInputError, match=match):
        demo.generate(PROMPT, max_new_tokens=2, **options)
