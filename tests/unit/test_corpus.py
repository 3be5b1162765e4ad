"""tokenize_and_concatenate and batches: a corpus of plain texts as rows of
tokens for a loop of runs, on the bundled model's tokenizer."""
import numpy as np
import pytest

import tinymech as tm

TEXTS = ["It is a truth universally acknowledged, that a single man in possession of a good fortune",
         "must be in want of a wife.", "In the beginning God created the heaven and the earth.", ""]


@pytest.fixture(scope="module")
def model():
    return tm.load()


def joined_ids(model, texts) -> list[int]:
    """The texts' tokens one after the other, EOS between texts."""
    out = []
    for i, text in enumerate(texts):
        out += ([model.tokenizer.eos_token_id] if i else []) + model.tokenizer.encode(text)
    return out


@pytest.mark.parametrize("add_bos", [True, False])
def test_rows_hold_the_texts_in_order(model, add_bos):
    rows = tm.tokenize_and_concatenate(model, TEXTS, max_length=7, add_bos_token=add_bos)
    ids = joined_ids(model, TEXTS)
    width = 6 if add_bos else 7
    assert rows.dtype == np.int64 and rows.shape == (len(ids) // width, 7)
    body = rows[:, 1:] if add_bos else rows
    np.testing.assert_array_equal(body.reshape(-1), ids[: rows.shape[0] * width])  # the tail is dropped
    if add_bos:
        assert (rows[:, 0] == model.tokenizer.bos_token_id).all()
    # one text is the same as a list of it
    np.testing.assert_array_equal(tm.tokenize_and_concatenate(model, TEXTS[0], max_length=7, add_bos_token=add_bos),
                                  tm.tokenize_and_concatenate(model, TEXTS[:1], max_length=7, add_bos_token=add_bos))


def test_too_little_text_gives_no_rows(model):
    assert tm.tokenize_and_concatenate(model, "Mr Darcy", max_length=64).shape == (0, 64)


def test_bad_arguments(model):
    with pytest.raises(tm.InvalidInputError, match="longer than the model's context"):
        tm.tokenize_and_concatenate(model, TEXTS, max_length=model.cfg.n_ctx + 1)
    for bad in (1, 0, 2.5):
        with pytest.raises(tm.InvalidInputError, match="max_length must be"):
            tm.tokenize_and_concatenate(model, TEXTS, max_length=bad)
    with pytest.raises(tm.InvalidInputError, match="item 1 is a int"):
        tm.tokenize_and_concatenate(model, ["a", 3], max_length=8)
    bare = tm.Model(model.cfg, model._weights, None)
    with pytest.raises(tm.NoTokenizerError):
        tm.tokenize_and_concatenate(bare, TEXTS)
    with pytest.raises(tm.InvalidInputError, match="batch_size must be"):
        next(tm.batches(np.zeros((3, 4)), 0))
    with pytest.raises(tm.InvalidInputError, match="progress must be"):
        next(tm.batches(np.zeros((3, 4)), 2, progress="yes"))


def test_batches_cover_every_row_and_report_progress(model, capsys):
    rows = tm.tokenize_and_concatenate(model, TEXTS * 5, max_length=9)
    calls = []
    got = list(tm.batches(rows, 4, progress=lambda done, total: calls.append((done, total))))
    np.testing.assert_array_equal(np.concatenate(got), rows)
    assert [len(b) for b in got] == [4] * (len(rows) // 4) + ([len(rows) % 4] if len(rows) % 4 else [])
    assert calls[-1] == (len(rows), len(rows)) and [c[0] for c in calls] == sorted({c[0] for c in calls})
    list(tm.batches(rows, 4, progress=True))
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"rows {len(rows)}/{len(rows)} [")
    # a loop of runs over the batches gives what one run over all rows gives
    name = "blocks.1.mlp.hook_post"
    whole = model.run_with_cache(rows, names_filter=name, return_type=None)[1][name]
    parts = [model.run_with_cache(b, names_filter=name, return_type=None)[1][name] for b in tm.batches(rows, 4)]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-5, atol=1e-5)
