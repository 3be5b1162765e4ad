"""Write feature_labels.json for an SAE from the activations it was trained on, without torch.

A stopgap until tinymech builds feature dashboards itself (issue 22). Per feature: its
density over the store, its top activating contexts (the max token in «»), the tokens its
decoder direction promotes and suppresses (W_dec[f] @ W_U, SAE.logit_effects) and an
automatic label: the most common max-activating token if it is at least half of them,
else the three most common. The SAE encodes the store chunk by chunk in the core
(SAE.encode_sparse); numpy only keeps each feature's best activations across chunks.

Usage: python training/label_features.py SAE_DIR ACTIVATIONS [--model models/demo-gpt2] [--features 600]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np

import tinymech as tm

ROOT = Path(__file__).resolve().parent.parent
TOP = 20       # max-activating tokens a label is chosen from
SHOWN = 5      # contexts written per feature
CHUNK = 65536  # activations encoded at a time


def best_per_feature(feats, values, rows, k: int):
    """The k largest values of each feature, as the same three arrays (grouped by feature, largest first)."""
    order = np.lexsort((-values, feats))
    feats, values, rows = feats[order], values[order], rows[order]
    rank = np.arange(len(feats)) - np.searchsorted(feats, feats)
    keep = rank < k
    return feats[keep], values[keep], rows[keep]


def scan(sae: tm.SAE, store) -> tuple[np.ndarray, tuple]:
    """(how often each feature fires, each feature's TOP best (feature, value, activation row))."""
    counts = np.zeros(sae.d_sae, np.int64)
    best = (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
    for start in range(0, store.n_tokens, CHUNK):
        x, _ = store.rows(start, min(start + CHUNK, store.n_tokens))
        idx, val = sae.encode_sparse(x)
        row, slot = np.nonzero((idx >= 0) & (val > 0))
        feats = idx[row, slot]
        counts += np.bincount(feats, minlength=sae.d_sae)
        best = best_per_feature(*(np.concatenate(p) for p in zip(best, (feats, val[row, slot], row + start))), TOP)
    return counts, best


class Contexts:
    """The text around each activation row, from the store's token rows."""

    def __init__(self, model, store):
        excluded = store.meta["excluded_token_ids"]
        self.tokens = np.asarray(store.tokens)
        self.keep = ~np.isin(self.tokens, excluded)
        self.where = np.flatnonzero(self.keep)[: store.n_tokens]  # activation row -> flat token position
        self.decode = model.tokenizer.decode

    def token(self, act_row: int) -> str:
        return self.decode([int(self.tokens.flat[self.where[act_row]])])

    def text(self, act_row: int, before: int = 12, after: int = 3) -> str:
        row, col = divmod(int(self.where[act_row]), self.tokens.shape[1])
        ids, kept = self.tokens[row], self.keep[row]

        def part(lo, hi):
            return self.decode([int(t) for t, k in zip(ids[lo:hi], kept[lo:hi]) if k])

        text = part(max(0, col - before), col) + "«" + part(col, col + 1) + "»" + part(col + 1, col + 1 + after)
        return text.replace("\n", "⏎")


def label(max_tokens: list[str]) -> str:
    counted = collections.Counter(max_tokens).most_common()
    if counted and counted[0][1] >= 0.5 * len(max_tokens):
        return f"token {counted[0][0].strip() or repr(counted[0][0])}"
    return "fires on " + ", ".join(repr(t) for t, _ in counted[:3])


def feature_labels(model, sae: tm.SAE, store, n_features: int) -> dict:
    counts, (feats, values, rows) = scan(sae, store)
    live = np.flatnonzero(counts)
    chosen = live[np.argsort(-counts[live], kind="stable")][:n_features]
    contexts = Contexts(model, store)
    first = np.searchsorted(feats, np.arange(sae.d_sae + 1))  # feature f's best are first[f]:first[f + 1]
    out = {}
    for f in chosen.tolist():
        top = range(first[f], first[f + 1])
        effects = sae.logit_effects(model, f, k=8)
        out[str(f)] = {
            "label": label([contexts.token(rows[i]) for i in top]),
            "density": round(float(counts[f] / store.n_tokens), 5),
            "max_activation": round(float(values[top[0]]), 3),
            "top_contexts": [{"activation": round(float(values[i]), 3), "text": contexts.text(rows[i])}
                             for i in top[:SHOWN]],
            "promoted_tokens": [[t, round(float(v), 3)]
                                for t, v in zip(effects.promoted_tokens, effects.promoted_values)],
            "suppressed_tokens": [[t, round(float(v), 3)]
                                  for t, v in zip(effects.suppressed_tokens, effects.suppressed_values)],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sae", type=Path, help="the SAE's folder (feature_labels.json is written there)")
    parser.add_argument("activations", type=Path, help="its activation store (tm.collect_activations)")
    parser.add_argument("--model", default=str(ROOT / "models/demo-gpt2"), help='a model folder, or "smollm2"')
    parser.add_argument("--features", type=int, default=600, help="the most frequent live features to describe")
    args = parser.parse_args()
    labels = feature_labels(tm.load(args.model), tm.SAE.load(args.sae), tm.ActivationStore.open(args.activations),
                            args.features)
    (args.sae / "feature_labels.json").write_text(json.dumps(labels, ensure_ascii=False, separators=(",", ":")))
    print(f"wrote {len(labels)} feature labels to {args.sae / 'feature_labels.json'}")


if __name__ == "__main__":
    main()
