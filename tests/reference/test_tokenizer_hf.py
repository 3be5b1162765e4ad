"""model.tokenizer behaves as a Hugging Face tokenizer where notebooks call it (TransformerLens
sets the padding token to EOS): the call with padding, truncation and tensors, the special tokens'
strings, batch_decode; and tinymech.utils.tokenize_and_concatenate(dataset, model.tokenizer)."""
from __future__ import annotations

import numpy as np
import pytest
import transformers

import tinymech as tm
from tinymech import utils
from tinymech.io.sources import default_model_dir

TEXTS = ["Mr Darcy walked in.", "It is a truth universally acknowledged", "Hi"]


@pytest.fixture(scope="module")
def pair():
    hf = transformers.AutoTokenizer.from_pretrained(default_model_dir())
    hf.pad_token = hf.eos_token  # what TransformerLens does for GPT-2
    return tm.load().tokenizer, hf


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kwargs", [dict(), dict(padding=True), dict(padding=True, truncation=True, max_length=4),
                                    dict(padding="max_length", max_length=12), dict(padding=True, return_tensors="np")])
def test_the_call_is_hugging_faces(pair, side, kwargs):
    ours, hf = pair
    ours.padding_side = hf.padding_side = side
    try:
        for text in (TEXTS, TEXTS[0]):
            got, want = ours(text, **kwargs), hf(text, **kwargs)
            assert set(got) == set(want)
            for key in want:
                if isinstance(want[key], np.ndarray):
                    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
                else:
                    assert got[key] == want[key], key
            assert got.input_ids is got["input_ids"]
    finally:
        ours.padding_side = hf.padding_side = "right"


def test_the_rest_of_what_notebooks_read(pair):
    ours, hf = pair
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (hf.bos_token, hf.eos_token, hf.pad_token)
    assert ours.pad_token_id == hf.pad_token_id and len(ours) == len(hf)
    ids = hf(TEXTS, padding=True)["input_ids"]
    assert ours.batch_decode(ids) == hf.batch_decode(ids)
    assert ours.batch_decode(ids, skip_special_tokens=True) == hf.batch_decode(ids, skip_special_tokens=True)
    assert ours.convert_ids_to_tokens(ids[0]) == hf.convert_ids_to_tokens(ids[0])
    torch_ids = ours(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    np.testing.assert_array_equal(torch_ids.numpy(), np.asarray(ids))


def test_tokenize_and_concatenate_takes_a_dataset_and_the_tokenizer():
    model = tm.load()
    rows = [{"text": t * 20} for t in TEXTS]
    got = utils.tokenize_and_concatenate(rows, model.tokenizer, max_length=16)["tokens"]
    np.testing.assert_array_equal(got, tm.tokenize_and_concatenate(model, [r["text"] for r in rows], 16))
    with pytest.raises(tm.InvalidInputError, match="'body' column"):
        utils.tokenize_and_concatenate(rows, model.tokenizer, column_name="body")
    with pytest.raises(tm.InvalidTokensError, match="padding=True"):
        model.tokenizer(TEXTS, return_tensors="np")
