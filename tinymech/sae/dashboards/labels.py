"""Feature labels: automatic ones made from a dashboard (no language model), and a
user's labels and notes, saved beside the SAE and preferred when present.

(Stub: the labels helper writes the real module.)"""
from __future__ import annotations

from pathlib import Path

NOTES_FILE = "feature_notes.json"


def auto_label(d) -> str:
    tokens = [c.token for c in d.top_contexts]
    return "fires on " + ", ".join(repr(t) for t in dict.fromkeys(tokens[:3])) if tokens else ""


def auto_labels(dash) -> dict[int, str]:
    return {f: label for f in range(dash.n_features) if dash.count[f] and (label := auto_label(dash[f]))}


def read_auto_labels(path: Path, n_features: int) -> dict[int, str]:
    import json

    if not path.is_file():
        return {}
    return {int(k): v for k, v in json.loads(path.read_text()).items()}


def read_notes(path: Path) -> dict[int, dict]:
    import json

    if not path.is_file():
        return {}
    return {int(k): v for k, v in json.loads(path.read_text()).items()}


def write_notes(path: Path, notes: dict[int, dict]) -> None:
    import json

    path.write_text(json.dumps({str(k): v for k, v in sorted(notes.items())}))


def search(dash, query: str) -> list[int]:
    q = query.strip().lstrip("#")
    if q.isdigit():
        return [int(q)] if int(q) < dash.n_features else []
    return [f for f, label in dash.labels.items() if q.lower() in label.lower()]
