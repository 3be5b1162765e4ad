"""Activations from a corpus, on disk, for training SAEs and transcoders:
collect_activations runs the model over a corpus and writes a hook's
activations (and, for a transcoder, hook_out's from the same pass) at every
kept position; ActivationStore memory-maps them and serves shuffled batches.

    store = tm.collect_activations(model, "blocks.6.hook_resid_pre", "corpus.txt", 2_000_000, out="acts")
    for x, _ in store.batches(4096):
        ...

On disk, one folder:
- activations.json, the header: what was collected (model, hook, hook_out,
  widths, dtype, context, the excluded token ids, the tokenizer's hash, the
  corpus), the target n_tokens, and how far the collection got
  (tokens_written, rows_written, complete);
- inputs.bin [n_tokens, d_in] and, for a transcoder, outputs.bin [n_tokens,
  d_out]: raw rows, float32 or bfloat16 (uint16 bits), in corpus order;
- tokens.bin [n_rows, context] int32: the token rows the activations came from.
The data files are appended to before the header is rewritten (atomically),
so an interrupted collection is consistent up to its header's counts, and
running it again with the same arguments continues from there.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from ..arch.bf16 import from_bf16, to_bf16
from ..corpus import corpus_description, read_corpus, token_rows
from ..errors import HookError, InvalidInputError, SAELoadError, check_model, true_or_false, whole_number
from ..hooks import HookPoint, resolve_names
from ..io.files import check_regular, folder_to_write, read_json
from ..progress import progress_function
from .loading import _check_hooks
from .splice import hook_widths

FORMAT, VERSION = "tinymech activation store", 1
HEADER, INPUTS, OUTPUTS, TOKENS = "activations.json", "inputs.bin", "outputs.bin", "tokens.bin"
ITEM_BYTES = {"float32": 4, "bf16": 2}
STORE_DTYPES = {"float32": np.float32, "bf16": np.uint16}
# what must agree for a collection to continue another (n_tokens may change while it is unfinished)
MATCHED = ("model", "model_dtype", "hook", "hook_out", "d_in", "d_out", "dtype", "context", "prepend_bos",
           "excluded_token_ids", "tokenizer_sha256", "corpus")
MAX_SIZE = 2**62  # any count or width in a header
SPARE_BYTES = 1 << 20  # beyond the data, for the header and the file system
# batches: rows are shuffled within windows of WINDOW_CHUNKS chunks of CHUNK_ROWS consecutive rows, the
# chunks drawn at random from the whole store: a batch mixes rows from all over it, and reading
# one costs a sorted gather from a window, not a permutation of the whole store
CHUNK_ROWS = 4096
WINDOW_CHUNKS = 256


def collect_activations(model, hook: str, corpus, n_tokens: int, out, context: int = 128, dtype: str = "float32",
                        hook_out: str | None = None, batch_size: int = 8, seed: int = 0, progress=True,
                        resume: bool = True, text_field: str = "text") -> ActivationStore:
    """Run model over corpus (see tm.read_corpus) in rows of `context` tokens
    (tm.tokenize_and_concatenate's: BOS first, EOS between texts), and write
    the activations at `hook` (and `hook_out`, for a transcoder) of n_tokens
    positions into the folder `out`; positions holding BOS, EOS or padding
    are left out, as SAELens's exclude_special_tokens does. Each run stops
    after the last block it reads. dtype: "float32" or "bf16" (half the
    bytes). seed is recorded for the trainer; the corpus is read in order.
    progress: True for a line with tokens/s and the time left, or a function
    progress(done, total). An existing store in `out` is continued (resume)
    when it was collected with the same model, hooks, dtype, context and
    corpus, and refused otherwise; a complete one is returned as it is."""
    header, out = _checked(model, hook, corpus, n_tokens, out, context, dtype, hook_out, batch_size, seed, resume,
                           text_field)
    if not header["complete"]:
        report = progress_function(progress, label="collecting", unit="tokens", start_done=header["tokens_written"])
        rows = token_rows(model, read_corpus(corpus, text_field), header["context"])
        _collect(model, rows, header, out, whole_number(batch_size, "batch_size", 1, maximum=MAX_SIZE), report)
    return ActivationStore.open(out)


def check_collection(model, hook: str, corpus, n_tokens: int, out, context: int = 128, dtype: str = "float32",
                     hook_out: str | None = None, batch_size: int = 8, seed: int = 0, resume: bool = True,
                     text_field: str = "text") -> dict:
    """What collect_activations with these arguments refuses before it collects, refused now
    (InvalidInputError, HookError), with nothing written: for a caller with work of its own to check
    first (the train-sae command checks its training). Returns the header the store would have
    (d_in and d_out: the widths; complete and tokens_written: what out already holds)."""
    return _checked(model, hook, corpus, n_tokens, out, context, dtype, hook_out, batch_size, seed, resume,
                    text_field)[0]


def _checked(model, hook, corpus, n_tokens, out, context, dtype, hook_out, batch_size, seed, resume,
             text_field) -> tuple[dict, Path]:
    """(the header to collect under, out as a Path), every argument checked and the corpus's first row
    read where that can be done twice: a refusal comes before the collection, which can take hours."""
    header = _new_header(model, hook, hook_out, dtype, context, corpus, seed)
    n_tokens = whole_number(n_tokens, "n_tokens", 1, maximum=MAX_SIZE)
    whole_number(batch_size, "batch_size", 1, maximum=MAX_SIZE)
    path = os.fspath(out) if isinstance(out, (str, os.PathLike)) else None
    if isinstance(path, str) and path and Path(path).exists() and not Path(path).is_dir():
        raise InvalidInputError(f"{out} is not a folder")
    out = folder_to_write(out, required="the activations")  # None, "", a path inside a file
    old = _existing_header(out, true_or_false(resume, "resume"))
    header = _continued(old, header, n_tokens, out) if old else header | {"n_tokens": n_tokens}
    if not header["complete"]:
        # a path or a list is read again by the collection (an iterator is not): a corpus too short is refused now
        if header["rows_written"] == 0 and isinstance(corpus, (str, os.PathLike, list, tuple, Mapping)):
            if not _holds_a_row(model, corpus, text_field, header["context"]):
                raise _too_short(header)
        else:
            token_rows(model, read_corpus(corpus, text_field), header["context"])  # its arguments checked
        _check_disk(out, header)
    return header, out


def _holds_a_row(model, corpus, text_field: str, context: int) -> bool:
    """Whether the corpus gives a row of tokens: its first texts read, each cut to far more than a row
    needs (a book-long document is not tokenized whole for this), and read whole only where that finds
    no row (a short corpus, quick; or the cut left too little, which the whole text decides)."""
    cut = (text[: context * 256] for text in read_corpus(corpus, text_field))
    if next(token_rows(model, cut, context), None) is not None:
        return True
    return next(token_rows(model, read_corpus(corpus, text_field), context), None) is not None


def _too_short(header: dict) -> InvalidInputError:
    return InvalidInputError(f"the corpus {header['corpus']} holds less than one row of {header['context']} "
                             "tokens: give more text or a smaller context")


def check_hook_order(hook: str | None, hook_out: str | None, d_in: int, d_out: int | None) -> None:
    """HookError unless a transcoder reading `hook` can write `hook_out`: a later hook point (or the
    same one at the same width), as a saved SAE's config must say (loading.py's rule, checked here
    before the activations are collected or trained on rather than when the SAE is saved)."""
    if hook is None or hook_out is None:
        return
    try:
        _check_hooks(hook, hook_out, d_in, d_out)
    except SAELoadError as e:  # worded for a cfg.json: say it in this call's terms
        message = str(e).removeprefix("cfg.json: ").replace("hook_name_out", "hook_out").replace("hook_name", "hook")
        raise HookError(message.replace("the SAE", "the transcoder")) from None


def _new_header(model, hook, hook_out, dtype, context, corpus, seed) -> dict:
    from .. import __version__

    check_model(model, hint=" (tm.collect_activations(model, hook, corpus, n_tokens, out))")
    names = resolve_names(model, [hook] + ([] if hook_out is None else [hook_out]))
    if model.tokenizer is None:
        raise InvalidInputError("collecting activations from a corpus needs a model with a tokenizer")
    if dtype not in ITEM_BYTES:
        raise InvalidInputError(f"dtype must be 'float32' or 'bf16', not {dtype!r}")
    context = whole_number(context, "context", 2, maximum=model.cfg.n_ctx)
    d_in, d_out = _width(model, names[0]), None if hook_out is None else _width(model, names[-1])
    check_hook_order(names[0], hook_out, d_in, d_out)
    tok = model.tokenizer
    excluded = {tok.bos_token_id, tok.eos_token_id, getattr(tok, "pad_token_id", None)} - {None}
    return {
        "format": FORMAT, "version": VERSION, "tinymech_version": __version__,
        "model": model_identity(model), "model_dtype": model.dtype,
        "hook": names[0], "hook_out": hook_out, "d_in": d_in, "d_out": d_out,
        "dtype": dtype, "context": context, "prepend_bos": True, "excluded_token_ids": sorted(excluded),
        "seed": whole_number(seed, "seed", 0, maximum=2**63 - 1),
        "tokenizer_sha256": tokenizer_sha256(model),
        "corpus": corpus_description(corpus),
        "n_tokens": 0, "tokens_written": 0, "rows_written": 0, "complete": False,
    }


def model_identity(model) -> str:
    """What a store records of its model: the folder it was loaded from (resolved), else its name."""
    return str(Path(model.path).resolve()) if model.path else str(model.cfg.model_name)


def tokenizer_sha256(model) -> str | None:
    """A fingerprint of the model's tokenizer: activations of one tokenization are not another's."""
    tok = model.tokenizer
    return None if tok is None else hashlib.sha256(tok.backend.to_str().encode()).hexdigest()


def _width(model, name: str) -> int:
    widths = hook_widths(model.cfg, name)
    if widths is None:
        raise HookError(f"{name} holds attention over key positions, not one vector per token")
    return widths[0]


def _existing_header(out: Path, resume: bool) -> dict | None:
    """The header of the store in out, None for a new (missing or empty) folder."""
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} is not a folder")
    if not (out / HEADER).exists():
        if out.exists() and any(out.iterdir()):
            raise InvalidInputError(f"{out} is not empty and holds no activation store: choose a new folder")
        return None
    if not resume:
        raise InvalidInputError(f"{out} already holds an activation store: pass resume=True to continue it, "
                                "or choose another folder")
    return _read_header(out)


def _continued(old: dict, new: dict, n_tokens: int, out: Path) -> dict:
    """The header to continue from: old's progress, refused unless old was collected as new would be."""
    for key in MATCHED:
        if old[key] != new[key]:
            raise InvalidInputError(f"{out} holds activations collected with {key} {old[key]!r}, not {new[key]!r}: "
                                    "choose another folder (a store never mixes two collections)")
    if old["complete"] and old["n_tokens"] != n_tokens:
        raise InvalidInputError(f"{out} holds a complete collection of {old['n_tokens']} tokens, not {n_tokens}: "
                                "choose another folder")
    if n_tokens < old["tokens_written"]:
        raise InvalidInputError(f"{out} already holds {old['tokens_written']} tokens, more than the {n_tokens} asked")
    return old | {"n_tokens": n_tokens}


def _bytes_per_token(header: dict) -> int:
    return (header["d_in"] + (header["d_out"] or 0)) * ITEM_BYTES[header["dtype"]]


def _check_disk(out: Path, header: dict) -> None:
    """InvalidInputError unless the file system holding out has room for what is left to collect."""
    left = header["n_tokens"] - header["tokens_written"]
    # tokens.bin: a row of `context` int32 per context - 1 kept tokens at most
    need = left * _bytes_per_token(header) + -(-left * 4 * header["context"] // (header["context"] - 1)) + SPARE_BYTES
    where = next(p for p in (out, *out.absolute().parents) if p.exists())
    free = shutil.disk_usage(where).free
    if need > free:
        raise InvalidInputError(f"collecting {left} more tokens into {out} needs {_gb(need)} of disk space, "
                                f"and only {_gb(free)} are free there")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _collect(model, rows: Iterator[np.ndarray], header: dict, out: Path, batch_size: int, report) -> None:
    """Append the activations of the token rows after header's to out's files, the header rewritten after
    each batch."""
    from .train import _make_folder  # train imports this module

    names = [header["hook"]] + ([header["hook_out"]] if header["hook_out"] else [])
    stop = _stop_layer(model, names)
    excluded = np.asarray(header["excluded_token_ids"], dtype=np.int64)
    _make_folder(out)
    with _DataFiles(out, header) as files:
        _write_header(out, header)
        for batch in _row_batches(rows, batch_size, skip=header["rows_written"]):
            left = header["n_tokens"] - header["tokens_written"]
            if left == 0:  # a store finished with fewer tokens than first asked (the corpus ran out)
                break
            _, cache = model.run_with_cache(batch, names_filter=names, return_type=None, stop_at_layer=stop)
            keep = ~np.isin(batch, excluded)
            acts = [cache[n].reshape(*batch.shape, -1)[keep] for n in names]
            n_rows, n_kept = _used(keep, left)
            files.append(batch[:n_rows], [a[:n_kept] for a in acts])
            header["tokens_written"] += n_kept
            header["rows_written"] += n_rows
            _write_header(out, header)
            if report is not None:
                report(header["tokens_written"], header["n_tokens"])
            if header["tokens_written"] == header["n_tokens"]:
                break
    if header["tokens_written"] == 0:
        raise _too_short(header)
    if header["tokens_written"] < header["n_tokens"]:
        raise InvalidInputError(
            f"the corpus ran out after {header['tokens_written']} of the {header['n_tokens']} tokens asked; "
            f"they are kept in {out}: collect again with n_tokens={header['tokens_written']} to finish the "
            "store with them, or into another folder from a larger corpus")
    header["complete"] = True
    _write_header(out, header)


def _stop_layer(model, names: list[str]) -> int | None:
    """The block after which the last of names is reached: blocks.i.* -> i + 1, the embeddings -> 0,
    None (the whole model) for those after the blocks."""
    order = model.hook_names()
    first_block = next(i for i, n in enumerate(order) if n.startswith("blocks."))
    stops = [HookPoint(n).layer() + 1 if n.startswith("blocks.") else 0 if order.index(n) < first_block else None
             for n in names]
    return None if None in stops else max(stops)


def _row_batches(blocks: Iterator[np.ndarray], batch_size: int, skip: int) -> Iterator[np.ndarray]:
    """int32 batches [batch_size, context] (the last may be smaller) of the rows of blocks after the first skip."""

    def after_skip():
        nonlocal skip
        for block in blocks:
            dropped = min(skip, len(block))
            skip -= dropped
            yield block[dropped:]

    return (rows.astype(np.int32) for rows in cut_into(after_skip(), batch_size))


def _used(keep: np.ndarray, left: int) -> tuple[int, int]:
    """(rows, kept positions) of a batch to write so as not to pass `left` positions."""
    per_row = np.cumsum(keep.sum(axis=1))
    if per_row[-1] <= left:
        return len(keep), int(per_row[-1])
    return int(np.searchsorted(per_row, left)) + 1, left


class _DataFiles:
    """The store's data files opened for appending, cut back first to the header's counts
    (an interrupted batch may have left more)."""

    def __init__(self, out: Path, header: dict):
        self.dtype = header["dtype"]
        sizes = {TOKENS: header["rows_written"] * header["context"] * 4,
                 INPUTS: header["tokens_written"] * header["d_in"] * ITEM_BYTES[self.dtype]}
        if header["d_out"] is not None:
            sizes[OUTPUTS] = header["tokens_written"] * header["d_out"] * ITEM_BYTES[self.dtype]
        self.files = {}
        for name, size in sizes.items():
            path = out / name
            if size and (not path.is_file() or path.stat().st_size < size):
                raise InvalidInputError(f"{path} is shorter than its header says: the store is damaged")
            f = open(path, "r+b" if path.exists() else "w+b")
            f.truncate(size)
            f.seek(size)
            self.files[name] = f

    def append(self, tokens: np.ndarray, acts: list[np.ndarray]) -> None:
        self.files[TOKENS].write(np.ascontiguousarray(tokens, np.int32).data)
        for name, a in zip((INPUTS, OUTPUTS), acts):
            a = to_bf16(a) if self.dtype == "bf16" else np.ascontiguousarray(a, np.float32)
            self.files[name].write(a.data)
        for f in self.files.values():
            f.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in self.files.values():
            f.close()


def _write_header(out: Path, header: dict) -> None:
    """header written to out/HEADER in one step (a new file renamed over the old)."""
    tmp = out / (HEADER + ".tmp")
    tmp.write_text(json.dumps(header, indent=1) + "\n")
    os.replace(tmp, out / HEADER)


def _read_header(folder: Path) -> dict:
    """out's header, every field checked (it is read from a file)."""
    path = folder / HEADER
    if not path.exists():
        raise InvalidInputError(f"no activation store at {folder} (no {HEADER})")
    h = read_json(path, "the activation store's header", InvalidInputError)
    what = f"the activation store's header {path}"
    if h.get("format") != FORMAT:
        raise InvalidInputError(f"{what} is not a {FORMAT}'s")
    if h.get("version") != VERSION:
        raise InvalidInputError(f"{what} has format version {h.get('version')!r}; this tinymech reads version "
                                f"{VERSION}: collect the activations again")
    for key, kind in (("model", str), ("model_dtype", str), ("hook", str), ("hook_out", (str, type(None))),
                      ("tokenizer_sha256", str), ("corpus", str), ("prepend_bos", bool), ("complete", bool),
                      ("excluded_token_ids", list)):
        if not isinstance(h.get(key), kind):
            raise InvalidInputError(f"{what}: {key} is missing or of the wrong type")
    if h.get("dtype") not in ITEM_BYTES:
        raise InvalidInputError(f"{what}: dtype must be 'float32' or 'bf16', not {h.get('dtype')!r}")
    for key, low in (("d_in", 1), ("context", 2), ("n_tokens", 1), ("tokens_written", 0), ("rows_written", 0),
                     ("seed", 0)):
        h[key] = whole_number(h.get(key), f"{what}: {key}", low, maximum=MAX_SIZE)
    if (h.get("d_out") is None) != (h["hook_out"] is None):
        raise InvalidInputError(f"{what}: d_out must be given exactly when hook_out is")
    if h.get("d_out") is not None:
        h["d_out"] = whole_number(h["d_out"], f"{what}: d_out", 1, maximum=MAX_SIZE)
    for i in h["excluded_token_ids"]:
        whole_number(i, f"{what}: an excluded token id", 0, maximum=MAX_SIZE)
    if h["tokens_written"] > h["n_tokens"]:
        raise InvalidInputError(f"{what}: tokens_written ({h['tokens_written']}) exceeds n_tokens ({h['n_tokens']})")
    return h


class ActivationStore:
    """A folder of activations written by collect_activations, memory-mapped.

    inputs [n_tokens, d_in] and outputs [n_tokens, d_out] (None without
    hook_out) are the raw maps (float32, or bfloat16 bits as uint16); rows()
    and batches() give float32. tokens [n_rows, context] int32: the token rows
    the activations came from (their non-excluded positions, in order)."""

    def __init__(self, folder: Path, header: dict, inputs, outputs, tokens):
        self.folder = folder
        self.meta = dict(header, shape=[header["n_tokens"], header["d_in"]])
        self.n_tokens, self.d_in, self.d_out = header["n_tokens"], header["d_in"], header["d_out"]
        self.inputs, self.outputs, self.tokens = inputs, outputs, tokens

    @classmethod
    def open(cls, folder) -> ActivationStore:
        """The complete store in folder; InvalidInputError for an unfinished,
        damaged (truncated) or foreign one."""
        folder = Path(folder)
        h = _read_header(folder)
        if not h["complete"]:
            raise InvalidInputError(f"the collection in {folder} stopped after {h['tokens_written']} of "
                                    f"{h['n_tokens']} tokens: run it again with the same arguments to finish it")
        dtype, n = STORE_DTYPES[h["dtype"]], h["n_tokens"]
        inputs = _map(folder / INPUTS, dtype, (n, h["d_in"]))
        outputs = None if h["d_out"] is None else _map(folder / OUTPUTS, dtype, (n, h["d_out"]))
        tokens = _map(folder / TOKENS, np.int32, (h["rows_written"], h["context"]))
        _check_rows(folder, tokens, h)
        return cls(folder, h, inputs, outputs, tokens)

    def __repr__(self):
        out = f", d_out={self.d_out}" if self.d_out is not None else ""
        return f"ActivationStore({self.folder}: {self.n_tokens} tokens, d_in={self.d_in}{out}, {self.meta['dtype']})"

    def __len__(self) -> int:
        return self.n_tokens

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(x [stop - start, d_in], y [stop - start, d_out] or None), float32 copies of rows start..stop-1."""
        start = whole_number(start, "start", 0, maximum=self.n_tokens)
        stop = whole_number(stop, "stop", start, maximum=self.n_tokens)
        return tuple(None if data is None else _floats(data[start:stop], copy=True)
                     for data in (self.inputs, self.outputs))

    def batches(self, batch_size: int, seed: int = 0, start_token: int = 0, holdout: int = 0,
                epochs: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Shuffled batches (x [batch_size, d_in], y [batch_size, d_out] or
        None), float32, over rows [0, n_tokens - holdout) (the last `holdout`
        rows are left for evaluation: rows(n_tokens - holdout, n_tokens)).
        Each epoch is a permutation of those rows, its own for each (seed,
        epoch); epochs follow one another without a break (a batch may span
        two), forever when epochs is None, else until `epochs` are done (the
        last batch may be smaller). Within a batch the rows come in the
        store's order (read sequentially; the order is nothing to training).
        start_token: skip that many rows of this stream, to continue a run
        that used them."""
        batch_size = whole_number(batch_size, "batch_size", 1, maximum=MAX_SIZE)
        seed = whole_number(seed, "seed", 0, maximum=2**63 - 1)
        holdout = whole_number(holdout, "holdout", 0, maximum=self.n_tokens - 1)
        start_token = whole_number(start_token, "start_token", 0)
        if epochs is not None:
            epochs = whole_number(epochs, "epochs", 1)
        indices = _row_stream(self.n_tokens - holdout, seed, start_token, epochs)
        return (self._gather(idx) for idx in cut_into(indices, batch_size))

    def _gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The rows idx, read in increasing order (the order within a batch does not matter to training)."""
        idx = np.sort(idx)
        return tuple(None if data is None else _floats(np.asarray(data)[idx], copy=False)
                     for data in (self.inputs, self.outputs))


def _check_rows(folder: Path, tokens, h: dict) -> None:
    """The token rows must hold the store's activations: all of them, the last row partly at most."""
    per_row = (~np.isin(np.asarray(tokens), np.asarray(h["excluded_token_ids"], dtype=np.int64))).sum(1)
    before_last = int(per_row[:-1].sum())
    if len(per_row) == 0 or before_last >= h["n_tokens"] or before_last + int(per_row[-1]) < h["n_tokens"]:
        raise InvalidInputError(f"{folder / TOKENS}: its {len(per_row)} token rows do not hold the store's "
                                f"{h['n_tokens']} activations (a damaged or foreign store)")


def _map(path: Path, dtype, shape: tuple[int, int]):
    """path memory-mapped as shape, refused unless its size is exactly the shape's bytes."""
    check_regular(path, InvalidInputError)
    need = shape[0] * shape[1] * np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size != need:
        state = "truncated" if size < need else "longer than its header says"
        raise InvalidInputError(f"{path} is {state}: {size} bytes, {need} expected for {list(shape)} "
                                f"{np.dtype(dtype).name}")
    if need == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def _floats(a: np.ndarray, copy: bool) -> np.ndarray:
    """float32 rows from rows of a map (bfloat16 bits widened); copy: a's are a view of the file."""
    a = np.asarray(a)
    if a.dtype == np.uint16:
        return from_bf16(a)
    return a.copy() if copy else a


def _row_stream(n: int, seed: int, start: int, epochs: int | None) -> Iterator[np.ndarray]:
    """Row indices of epoch after epoch, each a permutation of range(n), from position start of the stream.
    An epoch: the chunks of CHUNK_ROWS rows in a random order, taken WINDOW_CHUNKS at a time (a window),
    each window's rows permuted; the windows skipped to reach start are not built."""
    epoch, offset = divmod(start, n)
    n_chunks = -(-n // CHUNK_ROWS)
    short = n_chunks * CHUNK_ROWS - n  # the rows the last chunk lacks
    while epochs is None or epoch < epochs:
        chunks = np.random.default_rng([seed, epoch]).permutation(n_chunks)
        for window, first in enumerate(range(0, n_chunks, WINDOW_CHUNKS)):
            ids = chunks[first : first + WINDOW_CHUNKS]
            size = len(ids) * CHUNK_ROWS - (short if n_chunks - 1 in ids else 0)
            if offset >= size:
                offset -= size
                continue
            rows = (ids[:, None] * CHUNK_ROWS + np.arange(CHUNK_ROWS)).reshape(-1)
            rows = rows[rows < n]
            yield rows[np.random.default_rng([seed, epoch, window]).permutation(size)][offset:]
            offset = 0
        epoch += 1


def cut_into(pieces: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The concatenation of pieces (along their first axis), in slices of `size` (the last may be smaller)."""
    pending: list[np.ndarray] = []
    count = 0
    for piece in pieces:
        while len(piece):
            take = min(size - count, len(piece))
            pending.append(piece[:take])
            piece, count = piece[take:], count + take
            if count == size:
                yield np.concatenate(pending)
                pending, count = [], 0
    if count:
        yield np.concatenate(pending)
