"""A corpus: texts read from files (read_corpus), as rows of tokens
(TransformerLens's tokenize_and_concatenate for plain texts), and batches of
them, so that a loop over a text file (capturing activations, collecting SAE
statistics) needs no datasets library.

    rows = tm.tokenize_and_concatenate(model, tm.read_corpus("book.txt"), max_length=128)
    for batch in tm.batches(rows, batch_size=16, progress=True):
        _, cache = model.run_with_cache(batch, names_filter="blocks.1.mlp.hook_post", return_type=None)
"""
from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from .errors import array_of, check_model, whole_number
from .errors import InvalidInputError, NoTokenizerError
from .io.files import check_regular, open_regular, parse_json
from .progress import progress_function

DOCUMENT_SEPARATOR = "<|endoftext|>"
CORPUS_SUFFIXES = (".txt", ".md", ".jsonl")
BLOCK_BYTES = 1 << 20  # read at a time from a text file
MAX_DOCUMENT_CHARS = 1 << 24  # a longer document is cut at a line break
MAX_JSONL_LINE_BYTES = 1 << 26


def read_corpus(source, text_field: str = "text") -> Iterator[str]:
    """The texts (documents) of a corpus, one at a time, read as they are used:
    - a text file: its documents are separated by "<|endoftext|>" (as GPT-2's
      training text and training/build_corpus.py join them); a file without
      one is one document. A document longer than MAX_DOCUMENT_CHARS is cut
      at a line break (its pieces are then separated by EOS in token rows);
    - a .jsonl file: one JSON object a line, its `text_field` string a document;
    - a folder: its .txt, .md and .jsonl files, recursively, in the order of
      their sorted paths; a symbolic link leading outside the folder is refused
      and linked folders inside it are not followed;
    - an iterable of strings (a list, a generator): its items;
    - a dict of columns (a Hugging Face dataset's ds[:n]): its `text_field` column.
    Blank documents are skipped. InvalidInputError, naming the file (and line),
    for a missing, unreadable, binary or non-UTF-8 file, a bad JSON line, and
    a corpus without any text (raised when it runs out)."""
    if not isinstance(text_field, str):
        raise InvalidInputError(f"text_field must be a string, not {text_field!r}")
    what = str(source) if isinstance(source, (str, os.PathLike)) else "given"
    return _nonblank(_texts(source, text_field), what)


def corpus_description(source) -> str:
    """What a corpus is, for an activation store's header: a path with its
    files' count and bytes (so that a changed corpus is noticed), or 'texts
    given in Python' (which cannot be checked)."""
    if not isinstance(source, (str, os.PathLike)):
        return "texts given in Python"
    path = corpus_path(source)
    if not path.exists():
        raise InvalidInputError(f"no corpus file or folder at {path}")
    files = _corpus_files(path) if path.is_dir() else [path]
    size = sum(_size(f) for f in files)
    return f"{path.resolve()} ({len(files)} file{'s' * (len(files) != 1)}, {size} bytes)"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as e:
        raise InvalidInputError(f"cannot read the corpus file {path}: {e.strerror or e}") from e


def _nonblank(texts: Iterable[str], what: str) -> Iterator[str]:
    seen = False
    for text in texts:
        if text.strip():
            seen = True
            yield text
    if not seen:
        raise InvalidInputError(f"the corpus {what} holds no text")


def corpus_path(source) -> Path:
    """A corpus's path; "" is refused: Path("") is the current folder, which would be read as the corpus."""
    if os.fspath(source) in ("", b""):
        raise InvalidInputError('the corpus "" names no file or folder (an unset variable?): give a corpus file, '
                                "a folder of them, or texts")
    return Path(source)


def texts_of(texts, field: str = "text", what: str = "a corpus",
             kinds: str = "a file, a folder or an iterable of strings") -> Iterable[str]:
    """Texts as an iterable: a string is one text, a dict of columns (a Hugging Face dataset's
    ds[:n]) its `field` column (iterating the dict would give its keys); anything else iterable as it is."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, Mapping):
        if field not in texts:
            keys = ", ".join(repr(k) for k in list(texts)[:10])
            raise InvalidInputError(f"{what} given as a dict is read from its {field!r} column, and this one has "
                                    f"none (its keys: {keys}): pass the column's texts, or name the column")
        column = texts[field]
        texts = [column] if isinstance(column, str) else column  # one row, {"text": "..."}
    if isinstance(texts, bytes) or not isinstance(texts, Iterable):
        raise InvalidInputError(f"{what} must be {kinds}, not {type(texts).__name__}")
    return texts


def _texts(source, text_field: str) -> Iterator[str]:
    if isinstance(source, (str, os.PathLike)):
        path = corpus_path(source)
        if path.is_dir():
            files = _corpus_files(path)
            if not files:
                raise InvalidInputError(f"the corpus folder {path} holds no {', '.join(CORPUS_SUFFIXES)} files")
            return (text for f in files for text in _file_texts(f, text_field))
        if not path.exists():
            raise InvalidInputError(f"no corpus file or folder at {path}")
        check_regular(path, InvalidInputError)
        return _file_texts(path, text_field)
    return _strings(texts_of(source, text_field))


def _strings(items: Iterable) -> Iterator[str]:
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidInputError(f"a corpus's texts must be strings; item {i} is a {type(item).__name__}")
        yield item


def _corpus_files(folder: Path) -> list[Path]:
    """The corpus files under folder, sorted; InvalidInputError for a link leading outside it."""
    root = folder.resolve()
    found = []
    for here, dirs, files in os.walk(folder, onerror=_walk_error):
        for name in dirs + files:
            entry = Path(here) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                raise InvalidInputError(f"the corpus folder {folder} holds {entry}, a link to outside it")
        found += [Path(here) / f for f in files if f.endswith(CORPUS_SUFFIXES)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _walk_error(e: OSError):
    raise InvalidInputError(f"cannot read the corpus folder {e.filename}: {e.strerror or e}") from e


def _file_texts(path: Path, text_field: str) -> Iterator[str]:
    with open_regular(path, InvalidInputError) as f:
        if path.suffix == ".jsonl":
            yield from _jsonl_texts(f, path, text_field)
        else:
            yield from _documents(f, path)


def _blocks(f, path: Path) -> Iterator[str]:
    """The file's text, a block at a time; InvalidInputError for bytes that are not UTF-8 text."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    while True:
        try:
            raw = f.read(BLOCK_BYTES)
        except OSError as e:
            raise InvalidInputError(f"cannot read the corpus file {path}: {e.strerror or e}") from e
        if b"\0" in raw:
            raise InvalidInputError(f"the corpus file {path} is binary (a NUL byte at offset "
                                    f"{offset + raw.index(0)}), not text")
        held = len(decoder.getstate()[0])  # bytes of a character begun in the last block
        try:
            yield decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise InvalidInputError(f"the corpus file {path} is not UTF-8 text (at byte {offset - held + e.start})"
                                    ) from None
        if not raw:
            return
        offset += len(raw)


def _documents(f, path: Path) -> Iterator[str]:
    pending = ""
    for block in _blocks(f, path):
        *done, pending = (pending + block).split(DOCUMENT_SEPARATOR)
        yield from done
        while len(pending) >= MAX_DOCUMENT_CHARS + len(DOCUMENT_SEPARATOR):  # never cut a marker's beginning
            cut = pending.rfind("\n", 0, MAX_DOCUMENT_CHARS) + 1 or MAX_DOCUMENT_CHARS
            yield pending[:cut]
            pending = pending[cut:]
    yield pending


def _jsonl_texts(f, path: Path, text_field: str) -> Iterator[str]:
    for number in range(1, 1 << 62):
        try:
            line = f.readline(MAX_JSONL_LINE_BYTES + 1)
        except OSError as e:
            raise InvalidInputError(f"cannot read the corpus file {path}: {e.strerror or e}") from e
        if not line:
            return
        where = f"line {number} of {path}"
        if len(line) > MAX_JSONL_LINE_BYTES:
            raise InvalidInputError(f"{where} is longer than {MAX_JSONL_LINE_BYTES} bytes")
        if not line.strip():
            continue
        record = parse_json(line, where, InvalidInputError)
        text = record.get(text_field)
        if not isinstance(text, str):
            found = "no" if text is None else f"a {type(text).__name__} as its"
            raise InvalidInputError(f"{where} has {found} {text_field!r} field (a string is needed; "
                                    "text_field names another)")
        yield text


def tokenize_and_concatenate(model, texts: str | Iterable[str], max_length: int | None = None,
                             add_bos_token: bool = True) -> np.ndarray:
    """Rows [n, max_length] (int64) of the texts' tokens, one after the
    other with the EOS token between texts, each row starting with BOS when
    add_bos_token (then max_length - 1 text tokens per row). max_length None:
    TransformerLens's default of 1024, or the model's context where it is
    shorter. texts: strings, or a dict of columns (its "text" column). The last
    tokens that do not fill a whole row are dropped, as TransformerLens's
    tokenize_and_concatenate does; unlike it, each text is tokenized whole
    (it tokenizes the joined texts in 20 pieces cut at arbitrary characters)."""
    check_model(model, hint=_SWAPPED)
    if max_length is None:
        max_length = min(1024, model.cfg.n_ctx)
    blocks = list(token_rows(model, texts, max_length, add_bos_token))
    return np.concatenate(blocks) if blocks else np.zeros((0, max_length), np.int64)


def token_rows(model, texts: str | Iterable[str], max_length: int, add_bos_token: bool = True) -> Iterator[np.ndarray]:
    """tokenize_and_concatenate's rows as they fill, a block [k, max_length]
    at a time (k >= 1), for corpora too large to tokenize at once. The
    arguments are checked when called, the texts as they are read."""
    check_model(model, hint=_SWAPPED)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise NoTokenizerError("tokenize_and_concatenate needs a model with a tokenizer")
    texts = texts_of(texts, what="texts", kinds="a string or an iterable of strings")
    max_length = whole_number(max_length, "max_length", 1 + bool(add_bos_token))
    if max_length > model.cfg.n_ctx:
        raise InvalidInputError(f"max_length {max_length} is longer than the model's context of {model.cfg.n_ctx}")
    if add_bos_token and tokenizer.bos_token_id is None:
        raise InvalidInputError("this tokenizer has no BOS token: pass add_bos_token=False")
    return _rows(tokenizer, texts, max_length, add_bos_token)


# what a model argument that is not one likely means: TransformerLens's argument order
_SWAPPED = ("; tm.tokenize_and_concatenate takes (model, texts): for TransformerLens's (dataset, tokenizer) "
            "order, call tinymech.utils.tokenize_and_concatenate")


def _rows(tokenizer, texts: Iterable[str], max_length: int, add_bos_token: bool) -> Iterator[np.ndarray]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    width = max_length - 1 if add_bos_token else max_length
    ids: list[int] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(f"texts must be strings; item {i} is a {type(text).__name__}")
        if i and eos is not None:
            ids.append(eos)
        ids += tokenizer.encode(text)
        n = len(ids) // width
        if n:
            rows = np.asarray(ids[: n * width], dtype=np.int64).reshape(n, width)
            del ids[: n * width]
            if add_bos_token:
                rows = np.concatenate([np.full((n, 1), bos, dtype=np.int64), rows], axis=1)
            yield rows


def batches(rows, batch_size: int, progress=None) -> Iterator[np.ndarray]:
    """Consecutive slices of rows [n, ...] with batch_size rows each (the
    last may have fewer). progress: True for a line on stderr, or a function
    progress(done_rows, total_rows) called after each batch is used."""
    rows = array_of(rows, "rows")
    if rows.ndim == 0:  # len() of it would be numpy's TypeError
        raise InvalidInputError(f"rows must be an array [n, ...] (e.g. tm.tokenize_and_concatenate's), not {rows!r}")
    batch_size = whole_number(batch_size, "batch_size", 1)
    report = progress_function(progress, label="rows")
    total = len(rows)
    for start in range(0, total, batch_size):
        yield rows[start : start + batch_size]
        if report is not None:
            report(min(start + batch_size, total), total)
