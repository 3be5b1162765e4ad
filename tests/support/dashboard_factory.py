"""Synthetic feature dashboards (torch-free): arrays of the on-disk format filled
with small made-up data, for tests of the labels, the explorer and the exports
that need no model run."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tinymech.sae.dashboards.store import FORMAT, VERSION, from_arrays, write_folder

WORDS = [" the", " cat", " sat", " on", " mat", " Darcy", " walked", " in", ".", " Mr", " dog", " ran", "\n",
         " ⟨odd⟩", "\x1b[31mred", " 1", " 2", " 3"]


def synthetic(n_features: int = 6, context: int = 8, n_rows: int = 5, top_k: int = 3, n_intervals: int = 2,
              per_interval: int = 2, n_bins: int = 8, before: int = 3, after: int = 1, seed: int = 0,
              dead: tuple[int, ...] = (2,)):
    """(meta, arrays, vocab): feature f fires on word f of WORDS (dead features never fire)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, len(WORDS), size=(n_rows, context)).astype(np.int32)
    f_count = n_features
    meta = {"format": FORMAT, "version": VERSION, "kind": "sae latents", "hook": "blocks.0.hook_resid_pre",
            "hook_out": None, "model": "synthetic", "sae_path": None, "sae_sha256": None, "corpus": "synthetic",
            "n_features": f_count, "n_tokens": n_rows * context, "n_rows": n_rows, "context": context,
            "top_k": top_k, "n_intervals": n_intervals, "per_interval": per_interval, "n_bins": n_bins,
            "before": before, "after": after, "n_logits": 3, "n_cooc": 2, "complete": True}
    count = np.zeros(f_count, np.int64)
    sums = np.zeros(f_count)
    rng_ = np.zeros(f_count, np.float32)
    hist = np.zeros((f_count, n_bins), np.int64)
    top_value = np.zeros((f_count, top_k), np.float32)
    top_token = np.full((f_count, top_k), -1, np.int64)
    sample_value = np.zeros((f_count, n_intervals, per_interval), np.float32)
    sample_token = np.full((f_count, n_intervals, per_interval), -1, np.int64)
    flat = tokens.reshape(-1)
    acts = np.zeros((f_count, flat.size), np.float32)
    for f in range(f_count):
        if f in dead:
            continue
        on = flat == (f % len(WORDS))
        acts[f, on] = rng.uniform(0.5, 4.0, on.sum()).astype(np.float32)
    for f in range(f_count):
        a = acts[f]
        active = np.flatnonzero(a > 0)
        count[f], sums[f] = len(active), a[active].sum()
        if not len(active):
            continue
        m, e = np.frexp(a.max())
        rng_[f] = np.ldexp(1.0, e)
        np.add.at(hist[f], np.floor(a[active] * n_bins / rng_[f]).astype(int), 1)
        peaks = sorted(((a[r * context:(r + 1) * context].max(), r) for r in range(n_rows)
                        if a[r * context:(r + 1) * context].max() > 0), key=lambda x: (-x[0], x[1]))[:top_k]
        for j, (v, r) in enumerate(peaks):
            top_value[f, j] = v
            top_token[f, j] = r * context + int(np.argmax(a[r * context:(r + 1) * context]))
        for i in range(n_intervals):
            inside = [t for t in active if int(a[t] * n_intervals / rng_[f]) == i][:per_interval]
            for j, t in enumerate(inside):
                sample_value[f, i, j], sample_token[f, i, j] = a[t], t

    def window(f, t):
        if t < 0:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        r, p = divmod(int(t), context)
        offs = np.arange(max(0, p - before), min(context, p + after + 1)) - p
        vals = acts[f, t + offs]
        keep = vals != 0
        return offs[keep].astype(np.int32), vals[keep]

    order = [(f, t) for f in range(f_count) for t in top_token[f]] + \
            [(f, t) for f in range(f_count) for t in sample_token[f].reshape(-1)]
    parts = [window(f, t) for f, t in order]
    start = np.concatenate([[0], np.cumsum([len(o) for o, _ in parts])]).astype(np.int64)
    promoted = np.array([[(f + j) % len(WORDS) for j in range(3)] for f in range(f_count)], np.int32)
    arrays = {
        "count": count, "sum": sums, "range": rng_, "hist": hist, "top_value": top_value, "top_token": top_token,
        "sample_value": sample_value, "sample_token": sample_token, "window_start": start,
        "window_offset": np.concatenate([o for o, _ in parts]).astype(np.int32),
        "window_value": np.concatenate([v for _, v in parts]).astype(np.float32),
        "promoted_ids": promoted, "promoted_values": np.tile(np.float32([3.0, 2.0, 1.0]), (f_count, 1)),
        "suppressed_ids": promoted[:, ::-1].copy(), "suppressed_values": np.tile(np.float32([-3.0, -2.0, -1.0]),
                                                                                (f_count, 1)),
        "cooc_ids": np.array([[(f + 1) % f_count, -1] for f in range(f_count)], np.int32),
        "cooc_counts": np.array([[1, 0] for _ in range(f_count)], np.int64),
        "rows": np.arange(n_rows, dtype=np.int64), "tokens": tokens,
    }
    vocab = dict(enumerate(WORDS))
    return meta, arrays, vocab


def synthetic_dashboards(**kw):
    """A FeatureDashboards in memory (no folder: labels cannot be saved)."""
    meta, arrays, vocab = synthetic(**kw)
    return from_arrays(meta, arrays, vocab, {})


def synthetic_folder(folder: Path, **kw) -> Path:
    """A dashboards folder on disk (tm.FeatureDashboards.load reads it)."""
    meta, arrays, vocab = synthetic(**kw)
    write_folder(Path(folder), meta, arrays, vocab, {})
    return Path(folder)
