"""Feature labels: automatic ones made from a dashboard (no language model), and a
user's labels and notes, saved beside the SAE (feature_notes.json) and preferred when present.

An automatic label names, in order of preference: the one token a feature fires on
("' the'"), the few it fires on ("' the' / ' a' / ' an'"), the kind of token
("numbers", "capitalised words"), the token that consistently comes before or after its
peaks ("after ' Mr'"), or else what it promotes ("→ ' walked'"). Tokens stay raw in the
labels (they are data); whoever shows a label makes it printable."""
from __future__ import annotations

import collections
import json
import unicodedata
from pathlib import Path

from ...errors import InvalidInputError
from ...io.files import read_json
from ..loading import NOTES_FILE

__all__ = ["NOTES_FILE", "auto_label", "auto_labels", "feature_labels_json", "read_auto_labels", "read_notes",
           "write_notes", "search"]

MAX_LABEL = 40
DOMINANT = 0.6  # share of the peaks one token (or one neighbour) needs to name the feature
COVERED = 0.8  # share of the peaks a small set of tokens, or a class of tokens, needs
CODE_MARKS = "{}[]<>=_\\`$|&^~#@"  # characters prose rarely has
SPACE_MARKS = " Ġ▁"  # a word's leading space, as byte-level BPE and SentencePiece vocabularies write it


def bare(token: str) -> str:
    """A token without its leading space marks, lower-cased (what search and the classes compare)."""
    return token.lstrip(SPACE_MARKS).lower()


def quoted(token: str, limit: int = 14) -> str:
    """'token', cut to `limit` characters."""
    return "'" + (token if len(token) <= limit else token[:limit - 1] + "…") + "'"


def token_class(token: str) -> str | None:
    """The kind of token, for labels like "numbers"; None for an ordinary lower-case word piece."""
    core = token.lstrip(SPACE_MARKS)
    if not core:
        return "spaces" if token else None
    if not core.strip():
        return "newlines" if "\n" in core or "\r" in core else "spaces"
    core = core.strip()
    if core.replace(",", "").replace(".", "").isdigit():
        return "numbers"
    if any(ch in CODE_MARKS for ch in core) or all(unicodedata.category(ch)[0] == "S" for ch in core):
        return "code / symbols"
    if all(unicodedata.category(ch)[0] in "PS" for ch in core):
        return "punctuation"
    if core[0].isupper() and core.isalpha():
        return "capitalised words"
    return None


def _peaks(d) -> list:
    """The contexts a label is read from: the top contexts and the samples above half the maximum
    (at low activations a feature is least specific)."""
    upper = [c for i in d.intervals if i.high > d.max_activation / 2 for c in i.contexts]
    return list(d.top_contexts) + upper


def _neighbour(contexts, step: int) -> str | None:
    """The token `step` away from the peak when most contexts agree on it."""
    near = [c.tokens[c.peak + step] for c in contexts if 0 <= c.peak + step < len(c.tokens)]
    if len(near) < 2:
        return None
    token, n = collections.Counter(near).most_common(1)[0]
    return token if n >= DOMINANT * len(contexts) else None


def _what_it_fires_on(tokens: list[str]) -> str | None:
    """One token, a few, or a class of tokens that most peaks are; None if there is none."""
    # ' of' and 'of' count as one token, shown as the more frequent of the two
    shown = {t.lstrip(SPACE_MARKS) or t: t for t, _ in collections.Counter(tokens).most_common()[::-1]}
    counted = [(shown[t], n) for t, n in collections.Counter(t.lstrip(SPACE_MARKS) or t for t in tokens).most_common()]
    n, top3 = len(tokens), counted[:3]
    if counted[0][1] >= DOMINANT * n:
        return quoted(counted[0][0])
    few = " / ".join(quoted(t, 8) for t, _ in top3) if sum(c for _, c in top3) >= COVERED * n else None
    if few and len(counted) <= 3:  # all of them: more precise than their class
        return few
    kind, k = collections.Counter(token_class(t) for t in tokens).most_common(1)[0]
    return kind if kind is not None and k >= COVERED * n else few


def auto_label(d) -> str:
    """A short automatic label for a FeatureDashboard ("" for a feature that never fires)."""
    contexts = _peaks(d)
    if not d.count or not contexts:
        return ""
    fires_on = _what_it_fires_on([c.token for c in contexts])
    before, after = _neighbour(contexts, -1), _neighbour(contexts, 1)
    around = f"after {quoted(before)}" if before is not None else f"before {quoted(after)}" if after is not None \
        else None
    parts = [p for p in (fires_on, around) if p]
    label = " ".join(parts)
    if label and len(label) <= MAX_LABEL:
        return label
    if parts:
        return parts[0][:MAX_LABEL]
    if d.promoted:
        return ("→ " + " / ".join(quoted(t, 10) for t, _ in d.promoted[:2]))[:MAX_LABEL]
    counted = collections.Counter(c.token for c in contexts).most_common(2)
    return ("mixed: " + " / ".join(quoted(t, 10) for t, _ in counted))[:MAX_LABEL]


def auto_labels(dash) -> dict[int, str]:
    """The automatic label of every feature that fires."""
    return {f: label for f in range(dash.n_features) if dash.count[f] and (label := auto_label(dash[f]))}


def feature_labels_json(dash, labels: dict[int, str] | None = None, contexts: int = 5,
                        logits: int = 8) -> dict[str, dict]:
    """The SAE folder's feature_labels.json (what SAE.labels and the TUI read) made from dashboards:
    per labelled feature its automatic label (from `labels` if given: auto_labels(dash)), density,
    max activation, top contexts and logit effects."""
    labels = auto_labels(dash) if labels is None else labels
    out = {}
    for f, label in sorted(labels.items()):
        d = dash[f]
        out[str(f)] = {
            "label": label, "label_source": "auto", "density": round(d.density, 6),
            "max_activation": round(d.max_activation, 4),
            "top_contexts": [{"activation": round(c.value, 4), "text": c.text()} for c in d.top_contexts[:contexts]],
            "promoted_tokens": [[t, round(v, 4)] for t, v in d.promoted[:logits]],
            "suppressed_tokens": [[t, round(v, 4)] for t, v in d.suppressed[:logits]],
        }
    return out


# --- files: labels.json (automatic) and feature_notes.json (the user's) ---------------------------------------------

def feature_id(key, n_features: int | None, path: Path) -> int:
    """A feature id from a JSON key: decimal digits, below n_features (when known)."""
    if not isinstance(key, str) or not key.isascii() or not key.isdigit() or len(key) > 19:
        raise InvalidInputError(f"{path}: {key!r} is not a feature id (a whole number as a string)")
    f = int(key)
    if n_features is not None and f >= n_features:
        raise InvalidInputError(f"{path}: feature {f} is out of range: there are {n_features} features")
    return f


def read_auto_labels(path: Path, n_features: int) -> dict[int, str]:
    """labels.json of a dashboards folder: {"781": "' the'"}; {} when absent."""
    if not path.is_file():
        return {}
    data = read_json(path, "the automatic feature labels", InvalidInputError)
    labels = {}
    for key, value in data.items():
        f = feature_id(key, n_features, path)
        if not isinstance(value, str):
            raise InvalidInputError(f"{path}: the label of feature {f} must be a string, not {type(value).__name__}")
        labels[f] = value
    return labels


def read_notes(path: Path, n_features: int | None = None) -> dict[int, dict]:
    """A user's labels and notes: {"781": {"label": "...", "note": "..."}}; {} when absent.
    Other keys of an entry are kept (they are the user's), but a label or note must be a string."""
    if not path.is_file():
        return {}
    data = read_json(path, "the feature notes", InvalidInputError)
    notes = {}
    for key, entry in data.items():
        f = feature_id(key, n_features, path)
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{path}: feature {f} must map to an object with a \"label\" and/or a \"note\", "
                                    f"not {type(entry).__name__}")
        for field in ("label", "note"):
            if field in entry and not isinstance(entry[field], str):
                raise InvalidInputError(f"{path}: the {field} of feature {f} must be a string, not "
                                        f"{type(entry[field]).__name__}")
        notes[f] = entry
    return notes


def write_notes(path: Path, notes: dict[int, dict]) -> None:
    """Save the notes in one step (an interruption leaves the old file whole)."""
    from ..saving import write_atomically

    text = json.dumps({str(f): notes[f] for f in sorted(notes)}, ensure_ascii=False, indent=1)
    # a lone surrogate (valid JSON, read from a file) is written as JSON spells it, \udXXX
    write_atomically(Path(path), lambda p: Path(p).write_text(text + "\n", encoding="utf-8",
                                                                    errors="backslashreplace"))


# --- search -------------------------------------------------------------------------------------------------------

def search(dash, query: str) -> list[int]:
    """Features matching a query: "#781" or "781" (that id), else those whose label holds the text or
    whose peak or promoted tokens hold it (case-insensitive, leading space marks ignored). Exact token
    matches come first (the features firing on it most often first), then the others; densest first."""
    q = query.strip()
    if q.lstrip("#").isascii() and q.lstrip("#").isdigit() and q.count("#") <= 1 and len(q) < 20:
        f = int(q.lstrip("#"))
        return [f] if f < dash.n_features else []
    q = bare(q)
    if not q:
        return []
    labels = dash.labels
    scored = []
    for f, (peaks, promoted) in token_index(dash).items():
        exact = sum(t == q for t in peaks) / max(len(peaks), 1) + (q in promoted) * 0.5
        if exact or any(q in t for t in peaks) or any(q in t for t in promoted) or q in labels.get(f, "").lower():
            scored.append((-exact, -float(dash.density[f]), f))
    found = {f for *_, f in scored}
    scored += [(0.0, -float(dash.density[f]), f) for f, label in labels.items()
               if f not in found and q in label.lower()]
    return [f for *_, f in sorted(scored)]


def token_index(dash) -> dict[int, tuple[list[str], frozenset[str]]]:
    """Each live feature's peak tokens and promoted tokens (bare), built once per FeatureDashboards."""
    index = getattr(dash, "_token_index", None)
    if index is None:
        index = {}
        for f in range(dash.n_features):
            if dash.count[f]:
                d = dash[f]
                index[f] = ([bare(c.token) for c in d.top_contexts], frozenset(bare(t) for t, _ in d.promoted))
        dash._token_index = index
    return index
