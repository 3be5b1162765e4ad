"""model.tokenizer's Hugging Face-style call: hostile arguments get InvalidTokensError (the
equality with Hugging Face's tokenizer is in tests/reference/test_tokenizer_hf.py)."""
from __future__ import annotations

import pytest

import tinymech as tm


@pytest.fixture(scope="module")
def tok():
    return tm.load().tokenizer


@pytest.mark.parametrize("call, match", [
    (lambda t: t(["a", 3]), "string"),
    (lambda t: t(3), "string"),  # these two were list()'s TypeError
    (lambda t: t(None), "string"),
    (lambda t: t.encode(None), "string"),  # was a TypeError
    (lambda t: t("a", padding="sideways"), "padding must be"),
    (lambda t: t(["a", "b c"], padding=True, return_tensors="tf"), "return_tensors"),
    (lambda t: t("a", truncation=True, max_length=0), "max_length"),
    (lambda t: t(["a", "b c d"], return_tensors="np"), "padding=True"),
])
def test_bad_calls_are_refused(tok, call, match):
    with pytest.raises(tm.InvalidTokensError, match=match):
        call(tok)


def test_a_single_text_gives_flat_lists_and_padding_fills_the_mask(tok):
    enc = tok("Mr Darcy")
    assert isinstance(enc.input_ids[0], int) and enc.attention_mask == [1] * len(enc.input_ids)
    batch = tok(["Mr Darcy walked", "Hi"], padding=True)
    assert len(batch.input_ids[0]) == len(batch.input_ids[1]) and batch.attention_mask[1][-1] == 0
    assert batch.input_ids[1][-1] == tok.pad_token_id == tok.eos_token_id


def test_an_unknown_padding_side_is_refused(tok):
    tok.padding_side = "middle"  # padded on the right, silently
    try:
        with pytest.raises(tm.InvalidTokensError, match="padding_side must be 'left' or 'right'"):
            tok(["Mr Darcy walked", "Hi"], padding=True)
    finally:
        tok.padding_side = "right"


def test_pad_token_can_be_set_as_on_hugging_faces(tok):
    """`tokenizer.pad_token = tokenizer.eos_token`, a notebook habit, was an AttributeError."""
    try:
        tok.pad_token = tok.eos_token
        assert tok.pad_token_id == tok.eos_token_id
        tok.pad_token = tok.convert_ids_to_tokens(0)  # id 0 is a padding id too, not "unset"
        assert tok.pad_token_id == 0 and tok(["Mr Darcy walked", "Hi"], padding=True).input_ids[1][-1] == 0
        for bad in ("no such token here", 5, None):
            with pytest.raises(tm.InvalidTokensError, match="pad_token must be a token"):
                tok.pad_token = bad
    finally:
        tok._pad_token_id = None
