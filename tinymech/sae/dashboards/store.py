"""Feature dashboards on disk and in memory.

A dashboards folder holds:
- index.json: what was built (source: SAE, transcoder or an MLP layer's neurons, the
  SAE's weights hash, model, hook, corpus, context, how many tokens) and the sizes below;
- dashboards.safetensors: the arrays, one row per feature (count, sum, range, hist,
  top_value/top_token, sample_value/sample_token, promoted/suppressed ids and values,
  cooc_ids/cooc_counts), the windows' activations (CSR over every context: window_start,
  window_offset relative to the peak, window_value), and the corpus rows the contexts
  come from, each kept once (rows: their indices in the corpus, tokens: their ids);
- vocab.json: the string of every token id the arrays mention;
- labels.json: the automatic labels (labels.py).
A context is referenced by the index of its token in the corpus (row * context + pos).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from ...errors import FeatureIndexError, InvalidInputError, ModelLoadError, whole_number
from ...io.files import check_regular, read_json
from ...io.safetensors import SafetensorsFile
from ...runtime import check_memory
from ...text import printable

FORMAT, VERSION = "tinymech feature dashboards", 1
INDEX, ARRAYS, VOCAB, AUTO_LABELS = "index.json", "dashboards.safetensors", "vocab.json", "labels.json"
MAX_SIZE = 2**40  # any size read from index.json
MAX_ARGUMENT = 1 << 16  # the largest top_k, before, after... tm.feature_dashboards takes (and index.json may say)


@dataclasses.dataclass(frozen=True, eq=False)  # arrays inside: compared by identity
class Context:
    """A window of the corpus around one token: its ids, strings and this feature's
    activation at each; `peak` is the index of the token it is about."""

    token_ids: np.ndarray
    tokens: tuple[str, ...]
    activations: np.ndarray  # float32, one per token
    peak: int
    row: int  # the corpus row and position of the peak token
    position: int

    @property
    def value(self) -> float:
        return float(self.activations[self.peak])

    @property
    def token(self) -> str:
        return self.tokens[self.peak]

    def text(self, marks: tuple[str, str] = ("«", "»")) -> str:
        """The window as one line, the peak token between marks (printable: strings come from files)."""
        parts = [printable(t) for t in self.tokens]
        parts[self.peak] = marks[0] + parts[self.peak] + marks[1]
        return "".join(parts).replace("\n", "⏎")


@dataclasses.dataclass(frozen=True)
class Interval:
    """Activations in [low, high): how many tokens, and a sample of them."""

    low: float
    high: float
    count: int
    contexts: tuple[Context, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureDashboard:
    """Everything known about one feature over the corpus."""

    index: int
    count: int  # tokens where it is active (> 0)
    n_tokens: int  # tokens seen
    max_activation: float
    mean_activation: float  # over the tokens where it is active
    top_contexts: tuple[Context, ...]  # one per corpus row, the highest peaks first
    intervals: tuple[Interval, ...]  # samples by activation, the lowest interval first; empty ones left out
    hist_edges: np.ndarray  # [n_bins + 1]
    hist_counts: np.ndarray  # [n_bins]
    promoted: tuple[tuple[str, float], ...]  # (token, W_dec[f] @ W_U) the largest first
    suppressed: tuple[tuple[str, float], ...]  # the most negative first
    cooccurring: tuple[tuple[int, int], ...]  # (feature, tokens where both are active), most first
    label: str | None = None
    label_source: str | None = None  # "user" or "auto"
    note: str | None = None

    @property
    def density(self) -> float:
        return self.count / self.n_tokens if self.n_tokens else 0.0

    def __str__(self) -> str:
        from .render import dashboard_text

        return dashboard_text(self)


class FeatureDashboards:
    """The dashboards of every feature of an SAE, transcoder or MLP layer:
    dash[f] is feature f's FeatureDashboard; density, count, max_activation
    and mean_activation are arrays over all features."""

    def __init__(self, meta: dict, summary: Mapping[str, np.ndarray], feature: Callable[[int], FeatureDashboard],
                 auto_labels: Mapping[int, str], path: Path | None = None, notes_path: Path | None = None):
        self.meta = meta
        self.path = path
        self.notes_path = notes_path
        self.count = summary["count"]
        self.n_tokens = int(meta["n_tokens"])
        self.max_activation = summary["max_activation"]
        self.mean_activation = summary["mean_activation"]
        self.specificity = summary["specificity"]
        self.auto_labels = dict(auto_labels)
        self._feature = feature
        # why nothing shows these dashboards are the SAE's they were loaded for (None: their index does, or
        # they were loaded for no SAE); the TUI shows it on every dashboard
        self.unverified: str | None = None
        from .labels import read_notes

        self.notes = read_notes(notes_path, self.n_features) if notes_path is not None else {}

    @property
    def n_features(self) -> int:
        return len(self.count)

    @property
    def density(self) -> np.ndarray:
        return self.count / max(self.n_tokens, 1)

    def __len__(self) -> int:
        return self.n_features

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return printable(f"FeatureDashboards({self.n_features} features of {self.meta.get('hook')}, "
                         f"{self.n_tokens} tokens{where})", keep="")  # the hook's name comes from a file

    def __iter__(self) -> Iterator[FeatureDashboard]:
        return (self[f] for f in range(self.n_features))

    def __getitem__(self, feature) -> FeatureDashboard:
        f = whole_number(feature, "a feature index", error=FeatureIndexError)
        if not 0 <= f < self.n_features:
            raise FeatureIndexError(f"feature {f} is out of range: these dashboards have {self.n_features} features")
        label, source = self.label(f)
        note = self.notes.get(f, {}).get("note")
        return dataclasses.replace(self._feature(f), label=label, label_source=source, note=note)

    def label(self, f: int) -> tuple[str | None, str | None]:
        """(label, "user" | "auto") of feature f; a user's label wins."""
        user = self.notes.get(f, {}).get("label")
        if user:
            return user, "user"
        auto = self.auto_labels.get(f)
        return (auto, "auto") if auto else (None, None)

    @property
    def labels(self) -> dict[int, str]:
        """Every feature's label, a user's where there is one."""
        out = dict(self.auto_labels)
        out.update({f: n["label"] for f, n in self.notes.items() if n.get("label")})
        return out

    def set_label(self, feature: int, label: str | None = None, note: str | None = None) -> None:
        """Save a user label and/or note for a feature (beside the SAE); None leaves it as it is, "" removes it."""
        from .labels import write_notes

        f = self[feature].index
        if self.notes_path is None:
            raise InvalidInputError("these dashboards were not loaded from a folder: there is nowhere to save labels")
        entry = dict(self.notes.get(f, {}))
        for key, value in (("label", label), ("note", note)):
            if value is not None:
                if not isinstance(value, str):
                    raise InvalidInputError(f"a {key} must be a string, not {type(value).__name__}")
                entry[key] = value
        entry = {k: v for k, v in entry.items() if v}
        notes = dict(self.notes)
        if entry:
            notes[f] = entry
        else:
            notes.pop(f, None)
        write_notes(self.notes_path, notes)
        self.notes = notes

    def search(self, query: str) -> list[int]:
        """Features matching a query: "#781" or "781" (that id), else the features whose label holds the
        text or that fire on or promote a token holding it (case-insensitive), densest first."""
        from .labels import search

        return search(self, query)

    @classmethod
    def load(cls, path, sae=None, trust_unverified: bool = False) -> FeatureDashboards:
        """The dashboards in a folder written by tm.feature_dashboards. With sae, refused unless
        they are of its width and, where their index records a hash of the SAE's weights (a
        build from an SAE records one), of its weights. Dashboards that record none (made
        elsewhere, or by hand) load with a warning saying what could not be checked (their
        `unverified` says it too), unless trust_unverified=True: you know they are this SAE's."""
        dash = _load(Path(path))
        if sae is not None:
            dash.unverified = match_sae(dash, sae, f"the dashboards in {path}")
            if dash.unverified and not trust_unverified:
                warnings.warn(f"{path}: {dash.unverified}; pass trust_unverified=True if you know they are",
                              stacklevel=2)
        return dash


def match_sae(dash: FeatureDashboards, sae, what: str) -> str | None:
    """Refuse dashboards that are another SAE's (InvalidInputError); None when their index shows
    they are sae's (the hash of its weights), else a sentence saying that nothing does (without
    their path: the TUI shows it on every dashboard)."""
    if dash.n_features != sae.d_sae:
        raise InvalidInputError(f"{what} have {dash.n_features} features, the SAE {sae.d_sae}: they belong to "
                                "another SAE")
    meta = dash.meta
    if meta.get("kind") == "neurons":
        raise InvalidInputError(printable(f"{what} are of an MLP layer's neurons ({meta.get('hook')}), not of an "
                                          "SAE's features", keep=""))
    recorded = meta.get("sae_sha256")
    if recorded is not None:
        if recorded != sae_sha256(sae):
            raise InvalidInputError(f"{what} were built from another SAE (its weights differ): build them again "
                                    "for this one")
        return None
    # no hash: only the width is known to match. A hook other than the SAE's is named, not refused:
    # folders without a hash are made by hand or by other tools, whose hook may be a placeholder
    hook, sae_hook = meta.get("hook"), sae.cfg.hook_name
    comparable = isinstance(hook, str) and isinstance(sae_hook, str)
    if comparable and not same_hook(hook, sae_hook):
        seen = f"only their width ({sae.d_sae}) matches: they were built at {hook}, the SAE reads {sae_hook}"
    else:
        seen = f"only their width ({sae.d_sae}){' and hook' if comparable else ''} match"
    return printable(f"these dashboards record no hash of their SAE's weights: nothing shows they are this SAE's "
                     f"({seen})", keep="")  # the hook comes from a file


# a hook that reads the residual stream after block L reads it before block L + 1
_RESID_POST = re.compile(r"blocks\.(\d+)\.hook_resid_post")


def same_hook(a: str, b: str) -> bool:
    """Whether two hook names read the same activations (blocks.0.hook_resid_post is blocks.1.hook_resid_pre)."""
    def canonical(hook: str) -> str:
        m = _RESID_POST.fullmatch(hook)
        return f"blocks.{int(m[1]) + 1}.hook_resid_pre" if m else hook

    return canonical(a) == canonical(b)


def sae_sha256(sae) -> str:
    """A fingerprint of an SAE's weights: dashboards of one SAE are not another's."""
    h = hashlib.sha256()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip", "r_mag", "b_mag"):
        w = getattr(sae, name, None)
        if w is not None:
            h.update(name.encode())
            h.update(np.ascontiguousarray(w, np.float32).tobytes())
    return h.hexdigest()


# --- reading a folder -------------------------------------------------------------------------------------------

def read_index(folder: Path) -> dict:
    """index.json of a dashboards folder, its sizes checked (it is read from a file)."""
    path = folder / INDEX
    if not path.is_file():
        raise InvalidInputError(f"no feature dashboards at {folder} (no {INDEX})")
    meta = read_json(path, "the dashboards' index", InvalidInputError)
    if meta.get("format") != FORMAT:
        raise InvalidInputError(f"{path} is not a {FORMAT} index")
    if meta.get("version") != VERSION:
        raise InvalidInputError(f"{path} has format version {meta.get('version')!r}; this tinymech reads version "
                                f"{VERSION}: build the dashboards again")
    for key in SIZES:
        whole_number(meta.get(key), f"{path}'s {key}", 0, maximum=MAX_SIZE, error=InvalidInputError)
    for key in ("n_features", "context", "n_bins", "n_intervals"):
        whole_number(meta[key], f"{path}'s {key}", 1, maximum=MAX_SIZE, error=InvalidInputError)
    for key in ARGUMENTS:  # before and after size every window, whatever the arrays hold
        whole_number(meta[key], f"{path}'s {key}", 0, maximum=MAX_ARGUMENT, error=InvalidInputError)
    # a feature's contexts are read as one [contexts, window] block of ids and positions
    cells = (meta["top_k"] + meta["n_intervals"] * meta["per_interval"]) * (meta["before"] + meta["after"] + 1)
    check_memory(cells * 32, f"reading a feature of {path} ({cells:,} context tokens)",
                 "its top_k, per_interval, before and after are beyond what a build makes")
    return meta


ARGUMENTS = ("top_k", "n_intervals", "per_interval", "n_bins", "before", "after", "n_logits", "n_cooc")
SIZES = ("n_features", "n_tokens", "n_rows", "context", *ARGUMENTS)


def expected_shapes(meta: dict) -> dict[str, tuple]:
    """The shape of every array in dashboards.safetensors (-1: any length)."""
    f, k, i, p = meta["n_features"], meta["top_k"], meta["n_intervals"], meta["per_interval"]
    n_contexts = f * (k + i * p)
    return {
        "count": (f,), "sum": (f,), "range": (f,), "hist": (f, meta["n_bins"]),
        "top_value": (f, k), "top_token": (f, k), "sample_value": (f, i, p), "sample_token": (f, i, p),
        "window_start": (n_contexts + 1,), "window_offset": (-1,), "window_value": (-1,),
        "promoted_ids": (f, meta["n_logits"]), "promoted_values": (f, meta["n_logits"]),
        "suppressed_ids": (f, meta["n_logits"]), "suppressed_values": (f, meta["n_logits"]),
        "cooc_ids": (f, meta["n_cooc"]), "cooc_counts": (f, meta["n_cooc"]),
        "rows": (-1,), "tokens": (-1, meta["context"]),
    }


FLOATS = {"sum", "range", "top_value", "sample_value", "window_value", "promoted_values", "suppressed_values"}


def _load(folder: Path) -> FeatureDashboards:
    meta = read_index(folder)
    if not meta.get("complete"):
        raise InvalidInputError(f"the dashboards in {folder} are unfinished (an interrupted run): run "
                                "tm.feature_dashboards (or tinymech dashboards) again with the same arguments "
                                "to finish them")
    arrays = read_arrays(folder / ARRAYS, meta)
    vocab = _read_vocab(folder / VOCAB)
    from .labels import read_auto_labels

    return from_arrays(meta, arrays, vocab, read_auto_labels(folder / AUTO_LABELS, meta["n_features"]),
                       path=folder, notes_path=notes_path(folder, meta))


def notes_path(folder: Path, meta: dict) -> Path:
    """Where user labels and notes live: beside the SAE when the dashboards sit in an SAE's folder (its
    dashboards/: wherever that folder was moved), else in theirs."""
    from .labels import NOTES_FILE

    if meta.get("kind") != "neurons" and (folder.parent / "cfg.json").is_file():
        return folder.parent / NOTES_FILE
    return folder / NOTES_FILE


def read_arrays(path: Path, meta: dict) -> dict[str, np.ndarray]:
    check_regular(path, InvalidInputError)
    try:
        file = SafetensorsFile(path)
    except ModelLoadError as e:  # the reader's error names the file: the same words as a dashboards error
        raise InvalidInputError(str(e)) from e
    out = {}
    for name, shape in expected_shapes(meta).items():
        if name not in file:
            raise InvalidInputError(f"{path} has no {name!r} array")
        a = file.tensor(name)
        if a.dtype.kind not in ("f" if name in FLOATS else "iu"):
            raise InvalidInputError(f"{path}'s {name!r} holds {a.dtype}, not {'floats' if name in FLOATS else 'integers'}")
        if len(a.shape) != len(shape) or any(w not in (-1, g) for w, g in zip(shape, a.shape)):
            raise InvalidInputError(f"{path}'s {name!r} has shape {a.shape}, not {shape} as its index says")
        out[name] = a
    _check_references(path, meta, out)
    return out


def _check_references(path: Path, meta: dict, a: dict) -> None:
    """Every offset in the arrays points inside them (they come from a file)."""
    rows, start = a["rows"], a["window_start"]  # compared, not subtracted: a difference may overflow
    if len(rows) != len(a["tokens"]) or np.any(rows[1:] <= rows[:-1]):
        raise InvalidInputError(f"{path}'s rows are not sorted indices of its token rows")
    if start[0] != 0 or np.any(start[1:] < start[:-1]) or start[-1] != len(a["window_offset"]) \
            or len(a["window_offset"]) != len(a["window_value"]):
        raise InvalidInputError(f"{path}'s window_start does not index its windows")
    if np.any(np.abs(a["window_offset"].astype(np.int64)) > meta["context"]):
        raise InvalidInputError(f"{path}'s window_offset points outside a row")
    for name, array in a.items():  # what a build writes is finite: the TUI's shading divides by it
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInputError(f"{path}'s {name} holds a non-finite value")
    if not np.all(a["range"] >= 0):
        raise InvalidInputError(f"{path}'s range holds a negative value")
    n_corpus = meta["n_rows"] * meta["context"]
    for name in ("top_token", "sample_token"):
        t = a[name]
        if np.any((t < -1) | (t >= n_corpus)):
            raise InvalidInputError(f"{path}'s {name} points outside the corpus of {meta['n_rows']} rows")
        used = np.unique(t[t >= 0] // meta["context"])
        if not np.all(np.isin(used, a["rows"])):
            raise InvalidInputError(f"{path}'s {name} refers to a row it does not keep")
    f = meta["n_features"]
    cooc = a["cooc_ids"]
    if np.any((cooc < -1) | (cooc >= f)):
        raise InvalidInputError(f"{path}'s cooc_ids holds a feature outside [0, {f})")
    ordered = np.sort(cooc, axis=-1)
    if np.any((ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)):
        raise InvalidInputError(f"{path}'s cooc_ids lists a feature twice for one feature")


def _read_vocab(path: Path) -> dict[int, str]:
    data = read_json(path, "the dashboards' vocabulary", InvalidInputError)
    vocab = {}
    for key, value in data.items():
        if not isinstance(value, str) or not (key.isascii() and key.isdigit() and len(key) <= 19):
            raise InvalidInputError(f"{path} maps {key[:40]!r} to {str(value)[:40]!r}: token ids to strings are "
                                    "expected")
        vocab[int(key)] = value
    return vocab


# --- arrays to dashboards ------------------------------------------------------------------------------------------

def summary_of(meta: dict, a: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    count = a["count"].astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, a["sum"] / np.maximum(count, 1), 0.0)
    top = a["top_token"]
    return {"count": count, "max_activation": a["top_value"][:, 0].astype(np.float32) if top.shape[1] else
            np.zeros(len(count), np.float32), "mean_activation": mean, "specificity": specificity(top, a, meta)}


def specificity(top_token: np.ndarray, a: Mapping[str, np.ndarray], meta: dict) -> np.ndarray:
    """How specific each feature is: the share of its top contexts whose peak is its most common peak token
    (1: it fires on one token; near 1/top_k: on many different ones; 0: never active)."""
    f, k = top_token.shape
    ids = np.full((f, k), -1, np.int64)
    have = top_token >= 0
    rows, pos = np.divmod(top_token[have], meta["context"])
    ids[have] = a["tokens"][np.searchsorted(a["rows"], rows), pos]
    out = np.zeros(f)
    for i in np.flatnonzero(have.any(axis=1)):
        _, counts = np.unique(ids[i][have[i]], return_counts=True)
        out[i] = counts.max() / have[i].sum()
    return out


def from_arrays(meta: dict, a: Mapping[str, np.ndarray], vocab: Mapping[int, str], auto_labels: Mapping[int, str],
                path: Path | None = None, notes_path: Path | None = None) -> FeatureDashboards:
    summary = summary_of(meta, a)

    ctx, before = meta["context"], meta["before"]
    offsets = np.arange(-before, meta["after"] + 1)

    def contexts(tokens: np.ndarray, first_slot: int) -> list[Context]:
        """The contexts of the tokens (-1: none) held in consecutive slots from first_slot, all at once."""
        slots = first_slot + np.flatnonzero(tokens >= 0)
        row, pos = np.divmod(tokens[tokens >= 0].astype(np.int64), ctx)
        cols = pos[:, None] + offsets
        ids = a["tokens"][np.searchsorted(a["rows"], row)[:, None], np.clip(cols, 0, ctx - 1)]
        starts, ends = a["window_start"][slots], a["window_start"][slots + 1]
        lengths = (ends - starts).astype(np.int64)
        which = np.repeat(np.arange(len(slots)), lengths)
        entries = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts,
                                                                                                          lengths)
        col = a["window_offset"][entries].astype(np.int64) + before
        ok = (col >= 0) & (col < len(offsets))
        acts = np.zeros(ids.shape, np.float32)
        acts[which[ok], col[ok]] = a["window_value"][entries[ok]]
        used, which_id = np.unique(ids, return_inverse=True)  # only the ids shown: vocab's ids come from a file
        strs = np.array([vocab.get(i, f"<{i}>") for i in used.tolist()], dtype=object)[which_id].reshape(ids.shape)
        first = np.maximum(before - pos, 0).tolist()  # the window's part inside the row: [first, last)
        last = np.minimum(before + ctx - pos, len(offsets)).tolist()
        rows, poss = row.tolist(), pos.tolist()
        return [Context(ids[i, lo:hi], tuple(strs[i, lo:hi].tolist()), acts[i, lo:hi], before - lo, rows[i], poss[i])
                for i, (lo, hi) in enumerate(zip(first, last))]

    n_bins, k, n_int, per = meta["n_bins"], meta["top_k"], meta["n_intervals"], meta["per_interval"]

    def feature(f: int) -> FeatureDashboard:
        r = float(a["range"][f])
        first_sample = meta["n_features"] * k + f * n_int * per
        tops = tuple(contexts(a["top_token"][f], f * k))
        hist = a["hist"][f].astype(np.int64)
        samples = a["sample_token"][f].reshape(-1)
        have = np.cumsum(np.concatenate([[0], (samples >= 0)]))  # the contexts of interval i: have[i*per]:...
        every = contexts(samples, first_sample)
        intervals = []
        for i in range(n_int):
            width = n_bins // n_int
            chosen = tuple(every[have[i * per]:have[(i + 1) * per]])
            n = int(hist[i * width:(i + 1) * width].sum())
            if n:
                intervals.append(Interval(r * i / n_int, r * (i + 1) / n_int, n, chosen))
        count = int(summary["count"][f])
        logits = {side: tuple((vocab.get(int(t), f"<{int(t)}>"), float(v))
                              for t, v in zip(a[side + "_ids"][f], a[side + "_values"][f]) if t >= 0)
                  for side in ("promoted", "suppressed")}
        cooc = tuple((int(g), int(c)) for g, c in zip(a["cooc_ids"][f], a["cooc_counts"][f]) if g >= 0 and c > 0)
        return FeatureDashboard(
            index=f, count=count, n_tokens=int(meta["n_tokens"]), max_activation=float(summary["max_activation"][f]),
            mean_activation=float(summary["mean_activation"][f]), top_contexts=tops, intervals=tuple(intervals),
            hist_edges=np.linspace(0.0, r, n_bins + 1), hist_counts=hist, promoted=logits["promoted"],
            suppressed=logits["suppressed"], cooccurring=cooc)

    return FeatureDashboards(meta, summary, feature, auto_labels, path=path, notes_path=notes_path)


def write_folder(folder: Path, meta: dict, arrays: Mapping[str, np.ndarray], vocab: Mapping[int, str],
                 auto_labels: Mapping[int, str]) -> None:
    """Write a finished dashboards folder (each file replaced in one step), index.json last."""
    from safetensors.numpy import save_file

    from ..saving import write_atomically

    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / ARRAYS, lambda p: save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                                         str(p)))
    _write_json(folder / VOCAB, {str(k): v for k, v in sorted(vocab.items())})
    _write_json(folder / AUTO_LABELS, {str(k): v for k, v in sorted(auto_labels.items())})
    _write_json(folder / INDEX, meta, indent=1)


def _write_json(path: Path, data, indent: int | None = None) -> None:
    from ..saving import write_atomically

    text = json.dumps(data, ensure_ascii=False, indent=indent, separators=None if indent else (",", ":"))
    # a lone surrogate (valid JSON, read from a file) is written as JSON spells it, \udXXX
    write_atomically(path, lambda p: Path(p).write_text(text + "\n", encoding="utf-8",
                                                                    errors="backslashreplace"))


__all__: Sequence[str] = ["Context", "FeatureDashboard", "FeatureDashboards", "Interval"]
