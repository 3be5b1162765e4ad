"""tokenize_and_concatenate and batches: a corpus of plain texts as rows of
tokens for a loop of runs, on the bundled model's tokenizer."""
import numpy as np
import pytest

import tinymech as tm
from tinymech import corpus

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


# ---- read_corpus: texts from files, folders and iterables ----

def test_a_text_file_is_documents_between_end_of_text_markers(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first doc\nline two<|endoftext|>second<|endoftext|>  \n<|endoftext|>third é")
    assert list(tm.read_corpus(path)) == ["first doc\nline two", "second", "third é"]
    (tmp_path / "one.md").write_text("no markers\n\nat all")
    assert list(tm.read_corpus(str(tmp_path / "one.md"))) == ["no markers\n\nat all"]


def test_documents_are_read_a_block_at_a_time(tmp_path, monkeypatch):
    """Markers and characters split across blocks; a document longer than the limit is cut at a line break."""
    monkeypatch.setattr(corpus, "BLOCK_BYTES", 5)
    monkeypatch.setattr(corpus, "MAX_DOCUMENT_CHARS", 12)
    path = tmp_path / "a.txt"
    long = "ab\ncdefgh\nijklmnopqrstuvwxyz0123456789"
    path.write_text(f"éé<|endoftext|>{long}<|endoftext|>z")
    docs = list(tm.read_corpus(path))
    assert docs[0] == "éé" and docs[-1] == "z" and "".join(docs[1:-1]) == long
    assert docs[1] == "ab\ncdefgh\n" and docs[2] == "ijklmnopqrst" and all(len(d) <= 12 for d in docs)


def test_jsonl_and_folders(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.jsonl").write_text('{"text": "from json"}\n\n{"text": "again", "id": 3}\n')
    (tmp_path / "b" / "1.txt").write_text("plain")
    (tmp_path / "a.md").write_text("markdown")
    (tmp_path / "skipped.bin").write_bytes(b"\0\1")
    assert list(tm.read_corpus(tmp_path)) == ["markdown", "plain", "from json", "again"]
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n')
    assert list(tm.read_corpus(tmp_path / "c.jsonl", text_field="body")) == ["x"]
    with pytest.raises(tm.InvalidInputError, match=r"line 1 of .*c.jsonl has no 'text' field"):
        list(tm.read_corpus(tmp_path / "c.jsonl"))
    (tmp_path / "c.jsonl").write_text('{"text": "x"}\n{"text": 3}\n')
    with pytest.raises(tm.InvalidInputError, match=r"line 2 of .*c.jsonl has a int as its 'text' field"):
        list(tm.read_corpus(tmp_path / "c.jsonl"))
    (tmp_path / "c.jsonl").write_text('{"text": "x"}\n[1]\n')
    with pytest.raises(tm.InvalidInputError, match=r"line 2 of .*c.jsonl does not hold an object"):
        list(tm.read_corpus(tmp_path / "c.jsonl"))
    (tmp_path / "c.jsonl").write_text('{"text": "x"\n')
    with pytest.raises(tm.InvalidInputError, match=r"line 1 of .*c.jsonl is not valid JSON"):
        list(tm.read_corpus(tmp_path / "c.jsonl"))


def test_links_out_of_a_corpus_folder_are_refused(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text("outside")
    (tmp_path / "in" / "b.txt").symlink_to(tmp_path / "in" / "a.txt")
    assert list(tm.read_corpus(tmp_path / "in")) == ["inside", "inside"]
    (tmp_path / "in" / "c.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(tm.InvalidInputError, match="c.txt, a link to outside it"):
        tm.read_corpus(tmp_path / "in")
    (tmp_path / "in" / "c.txt").unlink()
    (tmp_path / "in" / "d").symlink_to(tmp_path)
    with pytest.raises(tm.InvalidInputError, match="d, a link to outside it"):
        tm.read_corpus(tmp_path / "in")


def test_bad_corpora(tmp_path):
    with pytest.raises(tm.InvalidInputError, match="no corpus file or folder at"):
        tm.read_corpus(tmp_path / "missing.txt")
    with pytest.raises(tm.InvalidInputError, match="holds no .txt, .md, .jsonl files"):
        tm.read_corpus(tmp_path)
    (tmp_path / "empty.txt").write_text(" \n<|endoftext|>\n")
    with pytest.raises(tm.InvalidInputError, match="the corpus .*empty.txt holds no text"):
        list(tm.read_corpus(tmp_path / "empty.txt"))
    with pytest.raises(tm.InvalidInputError, match="the corpus given holds no text"):
        list(tm.read_corpus([]))
    (tmp_path / "bin.txt").write_bytes(b"text\0more")
    with pytest.raises(tm.InvalidInputError, match=r"bin.txt is binary \(a NUL byte at offset 4\)"):
        list(tm.read_corpus(tmp_path / "bin.txt"))
    (tmp_path / "latin.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(tm.InvalidInputError, match=r"latin.txt is not UTF-8 text \(at byte 3\)"):
        list(tm.read_corpus(tmp_path / "latin.txt"))
    with pytest.raises(tm.InvalidInputError, match="is not a regular file"):
        tm.read_corpus("/dev/null")
    with pytest.raises(tm.InvalidInputError, match="item 1 is a bytes"):
        list(tm.read_corpus(["a", b"b"]))
    with pytest.raises(tm.InvalidInputError, match="not int"):
        tm.read_corpus(3)
    with pytest.raises(tm.InvalidInputError, match="text_field must be a string"):
        tm.read_corpus(["a"], text_field=None)


def test_token_rows_are_tokenize_and_concatenates_in_blocks(model):
    texts = iter(TEXTS * 3)
    blocks = list(corpus.token_rows(model, texts, 5))
    assert all(len(b) >= 1 for b in blocks) and len(blocks) > 1
    np.testing.assert_array_equal(np.concatenate(blocks), tm.tokenize_and_concatenate(model, TEXTS * 3, 5))
