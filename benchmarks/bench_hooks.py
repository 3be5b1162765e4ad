"""Cost of caching every hook point: tinymech's plain forward vs its
run_with_cache, and TransformerLens's run_with_cache on the same weights.

A random-weight model of gpt2-small's shape (12 layers, d_model 768, 12 heads,
vocab 50257, n_ctx 1024); both libraries use the same number of threads.
Both caches hold the default hook points (everything but attn.hook_result).

    python benchmarks/bench_hooks.py [--threads N] [--repeats R] [--tokens 128 512]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # shared reference builders

import tinymech as tm  # noqa: E402
from model_factory import make_hf_gpt2  # noqa: E402
from tl_reference import hooked_transformer  # noqa: E402

GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm up: buffers, caches, lazy initialization
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512])
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    tm.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        hf = make_hf_gpt2(Path(tmp), std=0.02, **GPT2_SMALL)
        model = tm.load(tmp)
        tl = hooked_transformer(hf, use_attn_result=False)
        del hf
        n_points = len(model.run_with_cache(np.zeros((1, 1), dtype=np.int64))[1])
        print(f"gpt2-small shape, random weights, {args.threads} threads, batch 1, "
              f"{n_points} hook points cached, median of {args.repeats}")
        print(f"{'tokens':>6} {'plain':>9} {'tm cache':>9} {'TL cache':>9} {'cache/plain':>12} {'TL/tm cache':>12}")
        for n in args.tokens:
            tokens = np.random.default_rng(n).integers(0, GPT2_SMALL["vocab_size"], (1, n))
            tl_tokens = torch.as_tensor(tokens)
            plain = median_seconds(lambda: model(tokens), args.repeats)
            cached = median_seconds(lambda: model.run_with_cache(tokens), args.repeats)
            with torch.no_grad():
                tl_cached = median_seconds(lambda: tl.run_with_cache(tl_tokens), args.repeats)
            print(f"{n:>6} {plain * 1e3:>7.1f}ms {cached * 1e3:>7.1f}ms {tl_cached * 1e3:>7.1f}ms "
                  f"{cached / plain:>11.2f}x {tl_cached / cached:>11.2f}x")


if __name__ == "__main__":
    main()
