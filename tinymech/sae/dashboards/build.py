"""One pass over a corpus builds every feature's dashboard.

The model runs over the corpus in rows of `context` tokens (tm.tokenize_and_concatenate's
rows; BOS, EOS and padding count for nothing), stopping after the hook's block; the SAE
encodes each batch (or an MLP layer's neurons are read as they are); the core's
FeatureStats folds the batch into every feature's statistics, each thread owning whole
features. A finished pass adds what needs no corpus (the tokens each feature promotes and
suppresses, its most co-occurring features) and automatic labels, and writes the folder
(store.py). An activation store (tm.collect_activations) can stand in for the model run.

The pass is checkpointed (the core's state and the corpus rows so far, in out/checkpoint)
every few minutes and on Ctrl-C; the same call continues it.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from ... import _core
from ...corpus import corpus_description, corpus_path, read_corpus, token_rows
from ...errors import HookError, InvalidInputError, TinymechError, TrainingError, check_model, whole_number
from ...io.files import folder_to_write
from ...runtime import check_memory
from ...hooks import HookPoint, resolve_names
from ...ops import top_k
from ...progress import progress_function
from ..activations import ActivationStore, _row_batches, _stop_layer, model_identity, tokenizer_sha256
from ..splice import check_hooks, hook_widths
from .labels import auto_labels, feature_labels_json
from .store import (FORMAT, INDEX, MAX_ARGUMENT, VERSION, FeatureDashboards, from_arrays, read_index, sae_sha256,
                    write_folder)

DEFAULTS = dict(top_k=20, n_intervals=16, per_interval=4, n_bins=64, before=24, after=8, n_logits=10, n_cooc=10)
COOC_CAP = 64  # features per token that count for co-occurrence (all of a TopK SAE's)
COOC_MEMORY = 1 << 30  # the co-occurrence matrix is skipped beyond this many bytes
CHECKPOINT_SECONDS = 300
UNSIGNED = {"sample_key": np.uint64, "cooc": np.uint32}  # the core's unsigned state arrays
CHECKPOINT, STATE, TOKENS = "checkpoint", "state.safetensors", "tokens.bin"
# what must agree for a run to continue another, or for a finished one to be returned as it is
MATCHED = ("kind", "hook", "hook_out", "sae_sha256", "model", "tokenizer_sha256", "corpus", "context",
           "n_tokens_asked", "seed", "cooccurrence", "excluded_token_ids", *DEFAULTS)


def feature_dashboards(model, sae=None, corpus=None, n_tokens: int | None = None, context: int = 128, out=None,
                       hook: str | None = None, batch_size: int = 8, seed: int = 0, cooccurrence: bool = True,
                       progress=True, resume: bool = True, text_field: str = "text", **sizes) -> FeatureDashboards:
    """Build every feature's dashboard in one pass over `corpus` and write them to the folder `out`.

    sae: an SAE or transcoder (tm.SAE or its folder), or None with `hook` naming a hook whose
    units are the features (e.g. "blocks.3.mlp.hook_post": an MLP layer's neurons). corpus: what
    tm.read_corpus reads (a text file, a folder, .jsonl, strings), or an activation store of the
    same model and hook (tm.collect_activations), which saves the model run. n_tokens: how many
    tokens to read (None: all). out: the folder (default: "dashboards" inside the SAE's folder).
    Sizes (keywords): top_k contexts per feature (20), n_intervals activation intervals (16, a
    power of two) with per_interval samples each (4), n_bins histogram bins (64, a power of two),
    before/after tokens around each peak (24, 8), n_logits promoted/suppressed tokens (10),
    n_cooc co-occurring features (10). A folder holding an unfinished run with the same
    arguments is continued (resume); a finished one is returned as it is; one built from
    another SAE, model or corpus is refused."""
    from ..sae import SAE
    from ..train import _make_folder

    check_model(model, hint=" (tm.feature_dashboards(model, sae, corpus))")
    if isinstance(sae, (str, os.PathLike)):
        sae = SAE.load(sae)
    source = _source(model, sae, hook)
    out = _out_folder(out, sae)
    sizes = _sizes(sizes, context)
    store = _store_of(corpus, model, source)
    meta = _new_meta(model, source, store, corpus, n_tokens, context, seed, cooccurrence, sizes)
    old = _existing(out, meta, resume)
    if old is not None and old.get("complete"):
        return FeatureDashboards.load(out)
    batch_size = whole_number(batch_size, "batch_size", 1, maximum=1 << 20)
    stats = _new_stats(meta)
    _make_folder(out)  # one that cannot be made or written in: InvalidInputError, not the OSError
    checkpoint = _Checkpoint(out, meta, stats, resumed=old is not None)
    report = progress_function(progress, label="dashboards", unit="tokens", start_done=checkpoint.done)
    batches = _batches(model, source, store, corpus, meta, batch_size, text_field, checkpoint.rows_done)
    try:
        _run(stats, batches, meta, checkpoint, report)
        return _finish(model, source, stats, meta, out, checkpoint)
    except KeyboardInterrupt:
        if not checkpoint.finished:  # also while finishing: the whole pass is kept
            checkpoint.save()
        raise


# --- what the features are ------------------------------------------------------------------------------------------

class _Source:
    """The features: an SAE's or transcoder's latents, or a hook's units (index.json's kind: "sae latents",
    "transcoder latents" or "neurons")."""

    def __init__(self, kind: str, hook: str, width: int, sae=None, directions=None):
        self.kind, self.hook, self.width, self.sae, self.directions = kind, hook, width, sae, directions

    def encode(self, x: np.ndarray, context: int):
        """(idx int32 [n, k], val [n, k]) for an SAE, the activations themselves [n, width] for units;
        x: whole sequences of `context` positions (a temporal SAE attends over them)."""
        if self.sae is None:
            return np.ascontiguousarray(x, np.float32)
        offsets, idx, val = self.sae._core.encode_sparse(np.ascontiguousarray(x, np.float32), context)
        counts = np.diff(offsets)
        rows = np.repeat(np.arange(len(counts)), counts)
        rank = np.arange(len(rows)) - offsets[rows]
        width = max(int(counts.max(initial=0)), 1)
        pidx = np.full((len(counts), width), -1, np.int32)
        pval = np.zeros((len(counts), width), np.float32)
        pidx[rows, rank] = idx
        pval[rows, rank] = val
        return pidx, pval


def _source(model, sae, hook) -> _Source:
    if sae is not None:
        if not hasattr(sae, "encode_sparse"):
            raise InvalidInputError(f"sae must be a tm.SAE or its folder, not {type(sae).__name__}")
        if hook is not None and hook != sae.cfg.hook_name:
            raise HookError(f"the SAE reads {sae.cfg.hook_name}, not {hook}: leave hook out")
        check_hooks(model, sae.cfg)
        kind = "transcoder latents" if sae.cfg.is_transcoder else "sae latents"
        directions = sae.W_dec if sae.d_out == model.cfg.d_model else None
        return _Source(kind, sae.cfg.hook_name, sae.d_sae, sae, directions)
    if hook is None:
        raise InvalidInputError("give an SAE, or hook= naming the units to explain (e.g. 'blocks.3.mlp.hook_post')")
    name = resolve_names(model, [hook])[0]
    widths = hook_widths(model.cfg, name)
    if widths is None:
        raise HookError(f"{name} holds attention over key positions, not one vector per token")
    return _Source("neurons", name, widths[0], directions=_unit_directions(model, name, widths[0]))


def _unit_directions(model, name: str, width: int):
    """What each unit writes into the residual stream, where that is direct: an MLP neuron's row of
    W_out, a residual-stream dimension itself; None elsewhere (no logit effects)."""
    point = HookPoint(name)
    if name.endswith("mlp.hook_post"):
        return model.W_out[point.layer()]
    if width == model.cfg.d_model and ("hook_resid" in name or name.endswith("_out")):
        return np.eye(width, dtype=np.float32)
    return None


# --- the corpus -----------------------------------------------------------------------------------------------------

def _store_of(corpus, model, source: _Source) -> ActivationStore | None:
    """The activation store the corpus names, checked against the model and hook; None for text."""
    if corpus is None:
        raise InvalidInputError("give a corpus: a text file, a folder, a .jsonl file, strings, or an activation store")
    if isinstance(corpus, ActivationStore):
        store = corpus
    elif isinstance(corpus, (str, os.PathLike)) and (corpus_path(corpus) / "activations.json").is_file():
        store = ActivationStore.open(corpus)
    else:
        return None
    h = store.meta
    if h["hook"] != source.hook:
        raise HookError(f"the activation store holds {h['hook']}, but these features read {source.hook}")
    if h["model"] != model_identity(model) or h.get("tokenizer_sha256") != tokenizer_sha256(model):
        raise InvalidInputError(f"the activation store was collected from {h['model']}, not this model")
    if not h["complete"]:
        raise InvalidInputError("the activation store is unfinished: collect it to the end first")
    return store


def _batches(model, source, store, corpus, meta, batch_size, text_field, skip_rows) -> Iterator[tuple]:
    """(token rows [b, context] int32, activations at every position [b * context, width] or None where
    invalid is all, valid [b * context] uint8) after the first skip_rows rows."""
    excluded = np.asarray(meta["excluded_token_ids"], np.int64)
    if store is not None:
        yield from _store_batches(store, excluded, batch_size, skip_rows)
        return
    rows = token_rows(model, read_corpus(corpus, text_field), meta["context"])
    stop = _stop_layer(model, [source.hook])
    for batch in _row_batches(rows, batch_size, skip=skip_rows):
        t0 = time.perf_counter()
        _, cache = model.run_with_cache(batch, names_filter=[source.hook], return_type=None, stop_at_layer=stop)
        acts = cache[source.hook].reshape(batch.size, -1)
        yield batch, acts, (~np.isin(batch, excluded)).reshape(-1).astype(np.uint8), time.perf_counter() - t0


def _store_batches(store, excluded, batch_size, skip_rows) -> Iterator[tuple]:
    """The store's rows and activations, the activations put back at their positions."""
    tokens = np.asarray(store.tokens)
    kept = ~np.isin(tokens, excluded)
    first = np.concatenate([[0], np.cumsum(kept.sum(axis=1))])  # row r's first activation
    for start in range(skip_rows, len(tokens), batch_size):
        t0 = time.perf_counter()
        batch = tokens[start:start + batch_size]
        valid = kept[start:start + batch_size].reshape(-1).copy()
        lo, hi = int(first[start]), int(min(first[start + len(batch)], store.n_tokens))
        x, _ = store.rows(lo, hi)
        where = np.flatnonzero(valid)
        valid[where[hi - lo:]] = False  # the last row may be only partly in the store
        acts = np.zeros((batch.size, x.shape[1]), np.float32)
        acts[where[: hi - lo]] = x
        yield batch.astype(np.int32), acts, valid.astype(np.uint8), time.perf_counter() - t0


# --- the pass -------------------------------------------------------------------------------------------------------

def _add(stats, codes, valid, first_row: int, context: int) -> None:
    """Fold a batch's features into the statistics; the core refuses an activation that is not finite
    or reaches 2^127 (a ValueError naming the feature and token): an InvalidInputError here."""
    try:
        if isinstance(codes, tuple):
            stats.add_sparse(codes[0], codes[1], valid, first_row, context)
        else:
            stats.add_dense(codes, valid, first_row, context)
    except ValueError as e:
        if isinstance(e, TinymechError):
            raise
        raise InvalidInputError(f"{e}: dashboards need finite activations below 2^127; look for huge or "
                                "non-finite values in the SAE's weights (or in the model's activations there)") from e


def _run(stats, batches, meta, checkpoint, report) -> None:
    left = meta["n_tokens_asked"]
    seconds = meta["seconds"]
    done = checkpoint.done
    for batch, acts, valid, t_model in batches:
        if left is not None and done >= left:
            break  # a resumed pass that had read them all: no row more
        if left is not None:
            kept = np.cumsum(valid)
            if done + int(kept[-1]) >= left:  # the last batch: cut at the n_tokens-th valid token
                valid = valid * (kept <= left - done)
                n_rows = int(np.searchsorted(kept, left - done) // meta["context"]) + 1
                batch, acts, valid = batch[:n_rows], acts[: n_rows * meta["context"]], valid[: n_rows * meta["context"]]
        seconds["model"] += t_model
        t0 = time.perf_counter()
        codes = meta["_source"].encode(acts, meta["context"])
        t1 = time.perf_counter()
        _add(stats, codes, valid, checkpoint.rows_done, meta["context"])
        t2 = time.perf_counter()
        seconds["encode"] += t1 - t0
        seconds["merge"] += t2 - t1
        done += int(valid.sum())
        checkpoint.rows(batch)
        if report is not None:
            report(done, left if left is not None else meta["_total"])
        if left is not None and done >= left:
            break
        checkpoint.maybe_save()
    if report is not None and left is None and meta["_total"] is None:
        report(done, done)  # the whole corpus is read: the last line says so
    if checkpoint.rows_done == 0 or done == 0:
        raise InvalidInputError(f"the corpus {meta['corpus']} holds less than one row of {meta['context']} tokens: "
                                "give more text or a smaller context")
    if left is not None and done < left:
        raise InvalidInputError(f"the corpus ran out after {done} of the {left} tokens asked: give n_tokens={done} "
                                "or None (all of it), or a larger corpus")


def _finish(model, source, stats, meta, out, checkpoint) -> FeatureDashboards:
    t0 = time.perf_counter()
    state = stats.state()
    arrays = _arrays(state, meta, checkpoint.read_rows)
    arrays.update(_logit_effects(model, source.directions, meta))
    arrays.update(_cooccurring(state.get("cooc"), meta))
    meta = {k: v for k, v in meta.items() if not k.startswith("_")}
    meta.update(n_tokens=int(state["n_tokens"][0]), n_rows=int(state["n_rows"][0]), complete=True)
    arrays = {name: a if name == "tokens" else _compact(a) for name, a in arrays.items()}
    vocab = _vocab(model, arrays)
    dash = from_arrays(meta, arrays, vocab, {})
    labels = auto_labels(dash)
    meta["seconds"]["finish"] = time.perf_counter() - t0
    write_folder(out, meta, arrays, vocab, labels)
    checkpoint.finished = True  # index.json says complete: a checkpoint must not replace it
    checkpoint.remove()
    if source.sae is not None and source.sae.path and out.resolve().parent == Path(source.sae.path).resolve():
        _write_feature_labels(Path(source.sae.path), dash, labels)
    return FeatureDashboards.load(out)


def _arrays(state: dict, meta: dict, read_rows) -> dict:
    """The folder's arrays from the core's state: windows as CSR, only the referenced corpus rows."""
    before = meta["before"]
    windows = np.concatenate([state["top_window"].reshape(-1, before + 1 + meta["after"]),
                              state["sample_window"].reshape(-1, before + 1 + meta["after"])])
    slot, col = np.nonzero(windows)
    start = np.searchsorted(slot, np.arange(len(windows) + 1)).astype(np.int64)
    top_token = np.where(state["top_row"] >= 0, state["top_row"] * meta["context"] + state["top_pos"], -1)
    rows = np.unique(np.concatenate([top_token[top_token >= 0], state["sample_token"][state["sample_token"] >= 0]])
                     // meta["context"])
    return {
        "count": state["count"], "sum": state["sum"], "range": state["range"], "hist": state["hist"],
        "top_value": state["top_value"], "top_token": top_token.astype(np.int64),
        "sample_value": state["sample_value"], "sample_token": state["sample_token"],
        "window_start": start, "window_offset": (col - before).astype(np.int32),
        "window_value": windows[slot, col].astype(np.float32),
        "rows": rows.astype(np.int64), "tokens": read_rows(rows),
    }


def _compact(a: np.ndarray) -> np.ndarray:
    """An integer array in the smallest signed type that holds it (the folder stays small; readers widen)."""
    if a.dtype.kind not in "iu" or a.size == 0:
        return a
    lo, hi = int(a.min()), int(a.max())
    kind = next(t for t in (np.int8, np.int16, np.int32, np.int64)
                if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
    return a.astype(kind)


def _logit_effects(model, directions, meta) -> dict:
    """Each feature's n_logits most promoted and suppressed tokens through the unembedding (direct path)."""
    f, n = meta["n_features"], meta["n_logits"] if directions is not None else 0
    out = {"promoted_ids": np.full((f, n), -1, np.int32), "promoted_values": np.zeros((f, n), np.float32),
           "suppressed_ids": np.full((f, n), -1, np.int32), "suppressed_values": np.zeros((f, n), np.float32)}
    if n == 0:
        meta["n_logits"] = 0
        return out
    n = min(n, model.cfg.d_vocab)
    W_U = model.W_U
    for lo in range(0, f, 256):
        effects = np.asarray(directions[lo:lo + 256], np.float32) @ W_U
        for side, sign in (("promoted", 1.0), ("suppressed", -1.0)):
            ids, values = top_k(sign * effects, n)
            out[side + "_ids"][lo:lo + 256, :n] = ids
            out[side + "_values"][lo:lo + 256, :n] = sign * values
    return out


def _cooccurring(cooc, meta) -> dict:
    """Each feature's n_cooc most co-occurring features (tokens where both are active)."""
    f, n = meta["n_features"], min(meta["n_cooc"], max(meta["n_features"] - 1, 0))
    ids = np.full((f, meta["n_cooc"]), -1, np.int32)
    counts = np.zeros((f, meta["n_cooc"]), np.int64)
    if cooc is not None and n:
        for lo in range(0, f, 1024):
            block = cooc[lo:lo + 1024].astype(np.int64)
            order = np.argsort(-block, axis=1, kind="stable")[:, :n]
            got = np.take_along_axis(block, order, axis=1)
            ids[lo:lo + 1024, :n] = np.where(got > 0, order, -1)
            counts[lo:lo + 1024, :n] = got
    return {"cooc_ids": ids, "cooc_counts": counts}


def _vocab(model, arrays) -> dict[int, str]:
    used = np.unique(np.concatenate([arrays["tokens"].reshape(-1).astype(np.int64),
                                     arrays["promoted_ids"].reshape(-1), arrays["suppressed_ids"].reshape(-1)]))
    used = used[used >= 0]
    return dict(zip(used.tolist(), model.tokenizer.decode_each(used.tolist(), limit=model.cfg.d_vocab)))


def _write_feature_labels(folder: Path, dash, labels: dict[int, str]) -> None:
    """The SAE's feature_labels.json, from the automatic labels (SAE.labels reads it; a user's win)."""
    from .store import _write_json

    _write_json(folder / "feature_labels.json", feature_labels_json(dash, labels, contexts=1, logits=4))  # the rest: dashboards/


# --- arguments, the folder and the checkpoint ------------------------------------------------------------------------

def _out_folder(out, sae) -> Path:
    if out is not None:
        return folder_to_write(out, required="the dashboards")
    if sae is None or not sae.path:
        raise InvalidInputError("give out=: a folder for the dashboards (only an SAE loaded from a folder has "
                                "a default, its 'dashboards' subfolder)")
    return Path(sae.path) / "dashboards"


def _sizes(sizes: dict, context) -> dict:
    unknown = set(sizes) - set(DEFAULTS)
    if unknown:
        raise InvalidInputError(f"unknown argument {sorted(unknown)[0]!r}; the sizes are {', '.join(DEFAULTS)}")
    # top_k >= 1: a feature's max activation is its first top context's
    out = {k: whole_number(sizes.get(k, v), k, int(k == "top_k"), maximum=MAX_ARGUMENT) for k, v in DEFAULTS.items()}
    for k in ("n_intervals", "n_bins"):
        if out[k] < 1 or out[k] & (out[k] - 1):
            raise InvalidInputError(f"{k} must be a power of two, not {out[k]}")
    if out["n_intervals"] > out["n_bins"]:
        raise InvalidInputError("n_intervals cannot exceed n_bins")
    return out


def _new_meta(model, source, store, corpus, n_tokens, context, seed, cooccurrence, sizes) -> dict:
    from ... import __version__

    if model.tokenizer is None:
        raise InvalidInputError("dashboards need a model with a tokenizer (they show tokens)")
    if store is not None:
        context = store.meta["context"]
        excluded = store.meta["excluded_token_ids"]
    else:
        context = whole_number(context, "context", 2, maximum=model.cfg.n_ctx)
        tok = model.tokenizer
        excluded = sorted({tok.bos_token_id, tok.eos_token_id, getattr(tok, "pad_token_id", None)} - {None})
    f = source.width
    cooc = bool(cooccurrence) and f * f * 4 <= COOC_MEMORY
    return {
        "format": FORMAT, "version": VERSION, "tinymech_version": __version__,
        "kind": source.kind, "hook": source.hook,
        "hook_out": source.sae.cfg.hook_name_out if source.sae is not None else None,
        "sae_path": str(Path(source.sae.path).resolve()) if source.sae is not None and source.sae.path else None,
        "sae_sha256": sae_sha256(source.sae) if source.sae is not None else None,
        "model": model_identity(model), "tokenizer_sha256": tokenizer_sha256(model),
        "corpus": corpus_description(corpus) if store is None else f"activation store {store.folder}",
        "context": context, "excluded_token_ids": list(excluded),
        "n_tokens_asked": None if n_tokens is None else whole_number(n_tokens, "n_tokens", 1, maximum=2**62),
        "seed": whole_number(seed, "seed", 0, maximum=2**63 - 1), "cooccurrence": cooc, "cooc_cap": COOC_CAP,
        "n_features": f, **sizes, "n_tokens": 0, "n_rows": 0, "complete": False,
        "seconds": {"model": 0.0, "encode": 0.0, "merge": 0.0},
        "_source": source, "_total": store.n_tokens if store is not None else None,  # for the progress line
    }


def _existing(out: Path, meta: dict, resume: bool) -> dict | None:
    """The index of a run in out with the same arguments (None: a new run); another SAE's is refused."""
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} is not a folder")
    if not (out / INDEX).is_file():
        return None
    old = read_index(out)
    if old.get("sae_sha256") != meta["sae_sha256"] or old.get("kind") != meta["kind"]:
        raise InvalidInputError(f"{out} holds the dashboards of another "
                                f"{'SAE (its weights differ)' if meta['sae_sha256'] else 'source'}: "
                                "choose another folder, or remove it")
    differ = [k for k in MATCHED if old.get(k) != meta.get(k)]
    if not resume:
        _clear(out)
        return None
    if differ:
        raise InvalidInputError(f"{out} holds dashboards built with another {differ[0]} "
                                f"({old.get(differ[0])!r}, not {meta.get(differ[0])!r}): pass resume=False "
                                "(--restart) to replace them, or choose another folder")
    return old


def _clear(out: Path) -> None:
    """Remove a previous run's files from out (only those the dashboards write)."""
    from .store import ARRAYS, AUTO_LABELS, VOCAB

    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    for name in (INDEX, ARRAYS, VOCAB, AUTO_LABELS):
        (out / name).unlink(missing_ok=True)


def _new_stats(meta: dict):
    per_context = (meta["before"] + 1 + meta["after"]) * 4 + 24
    n = meta["n_features"]
    need = n * ((meta["top_k"] + meta["n_intervals"] * meta["per_interval"]) * per_context + meta["n_bins"] * 8 + 32)
    need += n * n * 4 if meta["cooccurrence"] else 0
    check_memory(need, "these dashboards", "choose smaller sizes (top_k, n_intervals × per_interval, before + after) "
                 "or cooccurrence=False")
    try:
        return _core.FeatureStats(n, meta["top_k"], meta["n_intervals"], meta["per_interval"], meta["n_bins"],
                                  meta["before"], meta["after"], meta["cooccurrence"], COOC_CAP, meta["seed"])
    except MemoryError as e:
        raise InvalidInputError(f"not enough memory for the dashboards' {need / 2**30:.2f} GiB: choose smaller "
                                "sizes or cooccurrence=False") from e


class _Checkpoint:
    """out/checkpoint: the corpus rows so far (tokens.bin) and the core's state at the last save."""

    def __init__(self, out: Path, meta: dict, stats, resumed: bool):
        self.folder, self.meta, self.stats, self.out = out / CHECKPOINT, meta, stats, out
        self.context = meta["context"]
        self.rows_done, self.done, self.finished = 0, 0, False
        state_file = self.folder / STATE
        if resumed and state_file.is_file():
            self._load(state_file)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tokens = open(self.folder / TOKENS, "r+b" if (self.folder / TOKENS).exists() else "w+b")
        self.tokens.truncate(self.rows_done * self.context * 4)
        self.tokens.seek(0, os.SEEK_END)
        self.saved_at = time.monotonic()

    def _load(self, path: Path) -> None:
        from ...io.safetensors import SafetensorsFile

        try:
            file = SafetensorsFile(path)
            state = {name: file.tensor(name).copy() for name in file.keys()}
            for name, kind in UNSIGNED.items():  # stored as signed (see save)
                if name in state:
                    state[name] = state[name].view(kind)
            self.stats.load_state(state)
        except (TinymechError, ValueError) as e:
            raise InvalidInputError(f"the checkpoint {path} cannot be continued ({e}): remove "
                                    f"{self.folder} to start over") from e
        self.rows_done, self.done = int(state["n_rows"][0]), int(state["n_tokens"][0])
        size = (self.folder / TOKENS).stat().st_size if (self.folder / TOKENS).exists() else 0
        if size < self.rows_done * self.context * 4:
            raise InvalidInputError(f"{self.folder / TOKENS} is shorter than its checkpoint: remove {self.folder} "
                                    "to start over")
        seconds = read_index(self.out).get("seconds")
        if isinstance(seconds, dict) and all(isinstance(seconds.get(k), float) for k in self.meta["seconds"]):
            self.meta["seconds"] = seconds  # the time spent so far; a damaged record restarts the timings only

    def rows(self, batch: np.ndarray) -> None:
        self.tokens.write(np.ascontiguousarray(batch, np.int32).data)
        self.rows_done += len(batch)

    def maybe_save(self) -> None:
        if time.monotonic() - self.saved_at >= CHECKPOINT_SECONDS:
            self.save()

    def save(self) -> None:
        from safetensors.numpy import save_file

        from ..saving import write_atomically
        from .store import _write_json

        self.tokens.flush()
        state = self.stats.state()
        for name, kind in UNSIGNED.items():  # the safetensors reader takes no unsigned types: their bits as signed
            if name in state:
                state[name] = state[name].view(np.dtype(kind).str.replace("u", "i"))
        try:
            write_atomically(self.folder / STATE, lambda p: save_file(state, str(p)))
        except OSError as e:
            raise TrainingError(f"could not write the dashboards' checkpoint in {self.folder}: {e}; the previous "
                                "one is kept") from e
        meta = {k: v for k, v in self.meta.items() if not k.startswith("_")}
        meta.update(n_tokens=int(state["n_tokens"][0]), n_rows=int(state["n_rows"][0]))
        _write_json(self.out / INDEX, meta, indent=1)
        self.saved_at = time.monotonic()

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        self.tokens.flush()
        n = self.rows_done
        if n == 0:
            return np.zeros((0, self.context), np.int32)
        data = np.memmap(self.folder / TOKENS, dtype=np.int32, mode="r", shape=(n, self.context))
        return np.array(data[rows])

    def remove(self) -> None:
        self.tokens.close()
        shutil.rmtree(self.folder, ignore_errors=True)
