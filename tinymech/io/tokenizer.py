"""Text <-> token ids through the `tokenizers` library, TransformerLens-style."""
from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import numpy as np

from ..errors import InvalidTokensError, ModelLoadError, whole_number
from .files import check_regular, parse_json, read_text


@contextlib.contextmanager
def panics_as_errors(what: str):
    """A Rust panic in the tokenizers library as ModelLoadError: it arrives as
    pyo3_runtime.PanicException, a BaseException, caught by name so that
    KeyboardInterrupt and SystemExit still pass."""
    try:
        yield
    except BaseException as e:
        if type(e).__name__ != "PanicException":
            raise
        raise ModelLoadError(f"{what}: the tokenizers library failed ({e})") from e


def call_tokenizers(what: str, fn, *args, error=ModelLoadError):
    """fn(*args) of the tokenizers library, its failures as `error`: the plain
    Exception it raises for a bad tokenizer (a file it cannot read, a text its
    model cannot encode), or a panic."""
    with panics_as_errors(what):
        try:
            return fn(*args)
        except Exception as e:
            raise error(f"{what}: {e}") from e


def check_charsmaps(spec: dict, path: Path) -> None:
    """Refuse a Precompiled normalizer whose charsmap ([u32 trie bytes][trie]
    [strings], base64) claims a trie longer than itself: the tokenizers library
    allocates what it claims, and a failed allocation aborts the process."""
    pending = [spec.get("normalizer")]
    while pending:  # the normalizer, or one nested in Sequences
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict):
            pending.extend(node.values())
            if node.get("type") == "Precompiled" and not _sound_charsmap(node.get("precompiled_charsmap")):
                raise ModelLoadError(f"{path}: the Precompiled normalizer's precompiled_charsmap is corrupt")


def _sound_charsmap(encoded) -> bool:
    try:
        data = base64.b64decode(encoded, validate=True)
    except (TypeError, ValueError):  # not a string, or not base64 (binascii.Error)
        return False
    return len(data) >= 4 and int.from_bytes(data[:4], "little") <= len(data) - 4


class Tokenizer:
    def __init__(self, backend, bos_token_id: int | None, eos_token_id: int | None):
        self.backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    @classmethod
    def from_dir(cls, model_dir: Path, bos_token_id, eos_token_id) -> Tokenizer | None:
        """tokenizer.json, else vocab.json + merges.txt (byte-level BPE), else None.

        tokenizer.json's padding and truncation sections are ignored, as
        transformers ignores them unless a call asks for them: applied, they
        would cut every prompt short or pad it with tokens the model then reads."""
        import tokenizers

        path, vocab, merges = model_dir / "tokenizer.json", model_dir / "vocab.json", model_dir / "merges.txt"
        if path.exists():
            text = read_text(path, "the tokenizer")
            # parsed here only where a Precompiled normalizer may be (its name, or escapes that could spell
            # it): a 6.9 MB vocabulary takes 0.15 s to parse
            if '"Precompiled"' in text or "\\u" in text:
                check_charsmaps(parse_json(text, f"the tokenizer {path}"), path)
            backend = call_tokenizers(f"cannot read the tokenizer {path}", tokenizers.Tokenizer.from_str, text)
            backend.no_padding()
            backend.no_truncation()
        elif vocab.exists() and merges.exists():
            check_regular(vocab)
            check_regular(merges)
            backend = call_tokenizers(f"cannot read the tokenizer in {model_dir}", tokenizers.ByteLevelBPETokenizer,
                                      str(vocab), str(merges))
        else:
            return None
        if bos_token_id is None:
            bos_token_id = backend.token_to_id("<|endoftext|>")
        if eos_token_id is None:
            eos_token_id = bos_token_id
        return cls(backend, bos_token_id, eos_token_id)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InvalidTokensError(f"the tokenizer encodes a string, not {type(text).__name__}")
        encoding = call_tokenizers("the tokenizer failed to encode",  # e.g. a text its vocabulary cannot hold
                                   lambda: self.backend.encode(text, add_special_tokens=False),
                                   error=InvalidTokensError)
        return encoding.ids

    @staticmethod
    def _ids(ids, limit: int | None) -> list[int]:
        """Whole ids in [0, limit): a model's d_vocab, which may exceed the tokenizer's vocabulary
        (padded embeddings: those ids decode as ''), else what tokenizers' u32 ids hold (-1 and
        2**32 + 5 overflowed inside it)."""
        limit = 1 << 32 if limit is None else limit
        ids = [whole_number(i, "a token id", error=InvalidTokensError) for i in ids]
        bad = [i for i in ids if not 0 <= i < limit]
        if bad:
            raise InvalidTokensError(f"token id {bad[0]} is outside the vocabulary [0, {limit})")
        return ids

    def decode(self, ids, limit: int | None = None, skip_special_tokens: bool = False) -> str:
        ids = self._ids(ids, limit)
        with panics_as_errors("the tokenizer failed to decode"):
            return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def decode_each(self, ids, limit: int | None = None) -> list[str]:
        """One string per token (partial UTF-8 bytes show as U+FFFD, as in TransformerLens)."""
        ids = [[i] for i in self._ids(ids, limit)]
        with panics_as_errors("the tokenizer failed to decode"):
            return self.backend.decode_batch(ids, skip_special_tokens=False)

    # ---- what notebooks call on a Hugging Face tokenizer (model.tokenizer(...), .pad_token, ...) ----

    padding_side = "right"
    _pad_token_id = None  # set through pad_token; None: the EOS token pads

    def _name(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.backend.id_to_token(token_id)

    @property
    def bos_token(self) -> str | None:
        return self._name(self.bos_token_id)

    @property
    def eos_token(self) -> str | None:
        return self._name(self.eos_token_id)

    @property
    def pad_token_id(self) -> int | None:
        """The padding id: the EOS token's, as TransformerLens sets it on tokenizers without one."""
        return self.eos_token_id if self._pad_token_id is None else self._pad_token_id

    @property
    def pad_token(self) -> str | None:
        return self._name(self.pad_token_id)

    @pad_token.setter
    def pad_token(self, token: str) -> None:
        """As on Hugging Face's: `tokenizer.pad_token = tokenizer.eos_token` (a notebook habit)."""
        token_id = self.backend.token_to_id(token) if isinstance(token, str) else None
        if token_id is None:
            raise InvalidTokensError(f"pad_token must be a token of the vocabulary, not {token!r}")
        self._pad_token_id = token_id

    def __len__(self) -> int:
        return self.vocab_size

    def convert_ids_to_tokens(self, ids):
        """The vocabulary's string of each id (byte-level BPE's Ġ for a space, as Hugging Face's)."""
        if isinstance(ids, (int, np.integer)):
            return self._name(self._ids([ids], None)[0])
        return [self._name(i) for i in self._ids(ids, None)]

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(list(np.asarray(s).reshape(-1)), skip_special_tokens=skip_special_tokens)
                for s in sequences]

    def __call__(self, text, padding=False, truncation: bool = False, max_length: int | None = None,
                 add_special_tokens: bool = True, return_tensors: str | None = None,
                 return_attention_mask: bool = True) -> "Encoding":
        """Hugging Face's tokenizer call: {"input_ids", "attention_mask"} for a text or a list of
        them; padding True/"longest" or "max_length" on padding_side with pad_token_id;
        truncation to max_length; return_tensors None (lists), "np" or "pt" (torch, if installed)."""
        single = isinstance(text, str)
        texts = [text] if single else list(text) if isinstance(text, (list, tuple, np.ndarray)) else None
        if texts is None or not all(isinstance(t, str) for t in texts):
            raise InvalidTokensError("the tokenizer takes a string or a list of strings")
        rows = [call_tokenizers("the tokenizer failed to encode",
                                lambda t=t: self.backend.encode(t, add_special_tokens=add_special_tokens),
                                error=InvalidTokensError).ids for t in texts]
        if max_length is not None:
            max_length = whole_number(max_length, "max_length", 1, error=InvalidTokensError)
        if truncation and max_length is not None:
            rows = [r[:max_length] for r in rows]
        masks = [[1] * len(r) for r in rows]
        if padding not in (False, None, "do_not_pad"):
            if padding not in (True, "longest", "max_length"):
                raise InvalidTokensError(f"padding must be True, 'longest', 'max_length' or False, not {padding!r}")
            width = max_length if padding == "max_length" and max_length else max(map(len, rows), default=0)
            # a side other than left or right is refused (it padded on the right, silently)
            masks = [[0] * (width - len(m)) + m if self.padding_side == "left" else m + [0] * (width - len(m))
                     for m in masks]
            rows = self._padded(rows, width, self.padding_side)
        out = Encoding(input_ids=rows, **({"attention_mask": masks} if return_attention_mask else {}))
        if return_tensors is not None:
            if len({len(r) for r in rows}) > 1:
                raise InvalidTokensError("texts of different lengths need padding=True to become one array")
            for key in out:
                out[key] = _tensor(out[key], return_tensors)
        elif single:
            for key in out:
                out[key] = out[key][0]
        return out

    def to_tokens(self, text: str | list[str], prepend_bos: bool = True, padding_side: str | None = None,
                  max_length: int | None = None) -> np.ndarray:
        """Token ids [batch, pos] (int64), BOS first unless prepend_bos=False; each text's first
        max_length tokens (None: all); texts of different lengths padded with pad_token_id on
        padding_side (None: self.padding_side), as TransformerLens's to_tokens pads them."""
        rows = [self.encode(t) for t in _texts(text)]
        if prepend_bos:
            if self.bos_token_id is None:
                raise InvalidTokensError("this tokenizer has no BOS token; use prepend_bos=False")
            rows = [[self.bos_token_id] + r for r in rows]
        if max_length is not None:  # each row before padding, as Hugging Face's truncation
            rows = [r[:max_length] for r in rows]
        width = max(map(len, rows), default=0)
        if any(len(r) != width for r in rows):
            rows = self._padded(rows, width, self.padding_side if padding_side is None else padding_side)
        return np.array(rows, dtype=np.int64).reshape(len(rows), -1)

    def _padded(self, rows: list[list[int]], width: int, side: str) -> list[list[int]]:
        if side not in ("left", "right"):
            raise InvalidTokensError(f"padding_side must be 'left' or 'right', not {side!r}")
        pad = self.pad_token_id
        if pad is None:
            raise InvalidTokensError("the texts tokenize to different lengths and this tokenizer has no padding "
                                     "token (nor an EOS token to pad with): pass them one at a time")
        return [[pad] * (width - len(r)) + r if side == "left" else r + [pad] * (width - len(r)) for r in rows]


def texts_in(input) -> str | list[str] | None:
    """The input as texts: a string, or the list of an ordered iterable of strings (as to_tokens
    reads them: not a set, not bytes); None for anything else (token ids). An iterator is spent:
    callers read it once and pass what this returns on."""
    if isinstance(input, np.ndarray) and input.ndim == 0 and input.dtype.kind == "U":  # one text, as to_tokens reads it
        input = input.item()
    if isinstance(input, str):
        return input
    kind = getattr(getattr(input, "dtype", None), "kind", None)
    if hasattr(input, "dtype") and kind not in ("O", "U"):  # numbers (numpy, torch): ids, never iterated
        return None
    try:
        return _texts(input)
    except InvalidTokensError:
        return None


def _texts(text) -> list[str]:
    """A text, or an ordered iterable of texts (a list, a dataset's column, a pandas Series, a
    generator), as a list; anything else is refused by name (a set: its order would vary by run)."""
    if isinstance(text, np.ndarray) and text.ndim == 0:
        text = text.item()
    if isinstance(text, str):
        return [text]
    if isinstance(text, (bytes, bytearray, memoryview, dict, set, frozenset)) or not hasattr(text, "__iter__"):
        raise InvalidTokensError(f"to_tokens takes a string or a list of strings, not {text!r:.60}"
                                 " (token ids need no tokenizing: pass them to the model as they are)")
    texts = list(text)
    for t in texts:
        if not isinstance(t, str):
            raise InvalidTokensError(f"to_tokens takes a string or a list of strings, but the list holds {t!r:.60}")
    if not texts:
        raise InvalidTokensError("to_tokens was given no text: give a string or a list of strings (at least one)")
    return [str(t) for t in texts]


class Encoding(dict):
    """What a Hugging Face tokenizer call returns (its BatchEncoding): keys also as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _tensor(rows: list, kind: str):
    array = np.asarray(rows, dtype=np.int64)
    if kind == "np":
        return array
    if kind == "pt":
        import torch  # only when asked for

        return torch.from_numpy(array)
    raise InvalidTokensError(f"return_tensors must be None, 'np' or 'pt', not {kind!r}")
