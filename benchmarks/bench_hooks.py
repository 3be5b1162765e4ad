"""Cost of caching every hook point: tinymech's plain forward vs its
run_with_cache, and TransformerLens's run_with_cache on the same weights.

A random-weight model of gpt2-small's shape (12 layers, d_model 768, 12 heads,
vocab 50257, n_ctx 1024); both libraries use the same number of threads.
Both caches hold the default hook points (everything but attn.hook_result).

    python benchmarks/bench_hooks.py [--threads N] [--layers 12] [--repeats R] [--tokens 128 512]

make_tl(hf) builds the TransformerLens reference; hooks_rows(model, tl, ...)
returns the measurements as report rows. tl_bridge_rows(path, model, ...)
times TransformerLens 4.x's TransformerBridge too, in the separate virtual
environment tools/setup-tl4-venv makes (sae-lens pins TL < 4 here): its
python is $TINYMECH_TL4_PYTHON, or ../tl4-venv/bin/python beside the repo.
"""
from __future__ import annotations

import argparse
import json
import statistics
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from report import Skipped, row, target
from timing import best_time, random_tokens, times_interleaved

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # shared reference builders

CACHE_VS_PLAIN_TARGET = target("<=", 1.5)  # run_with_cache time / plain forward time
TL_TARGET = target(">=", 3.0)  # TransformerLens run_with_cache time / tinymech's


def make_tl(hf):
    """A TransformerLens HookedTransformer on hf's weights (no weight processing)."""
    from tl_reference import hooked_transformer

    return hooked_transformer(hf, use_attn_result=False)


def hooks_rows(model, tl, *, tokens=(128, 512), repeats: int = 3) -> list:
    """Per token count, median times (ms) of tinymech's plain forward, its
    run_with_cache and TransformerLens's run_with_cache. Rows "cache-plain-N"
    (ratio cache / plain) and "cache-tl-N" (ratio TL / tinymech); each holds
    plain_ms, cache_ms, tl_ms and hook_points."""
    import torch

    import tinymech as tm

    n_points = len(model.run_with_cache(np.zeros((1, 1), dtype=np.int64))[1])
    rows = []
    for n in tokens:
        ids = random_tokens(model.cfg.d_vocab, n, seed=n)
        tl_ids = torch.as_tensor(ids)
        plain, cached = (s * 1e3 for s in times_interleaved(
            [lambda: model(ids), lambda: model.run_with_cache(ids)], repeats, statistics.median))
        # TransformerLens on its own, after tinymech gave back its kept capture
        # buffers: called in turn with tinymech's run_with_cache, its own took
        # 1.4-1.8x as long (the memory both allocate interfering), which would
        # flatter tinymech.
        tm.release_memory()
        with torch.no_grad():
            tl_cached = times_interleaved([lambda: tl.run_with_cache(tl_ids)], repeats, statistics.median)[0] * 1e3
        times = dict(tokens=n, plain_ms=plain, cache_ms=cached, tl_ms=tl_cached, hook_points=n_points)
        rows.append(row(f"cache-plain-{n}", f"run_with_cache {n} tokens: time / plain forward", cached, plain,
                        "ms", cached / plain, ref_name="plain", target=CACHE_VS_PLAIN_TARGET,
                        note=f"{n_points} hook points", **times))
        rows.append(row(f"cache-tl-{n}", f"run_with_cache {n} tokens: speed vs TL", cached, tl_cached, "ms",
                        tl_cached / cached, ref_name="TL", target=TL_TARGET, **times))
    return rows


def tl4_python() -> Path:
    """The TL 4.x environment's python, or Skipped when there is none."""
    default = Path(__file__).resolve().parents[2] / "tl4-venv" / "bin" / "python"
    python = Path(os.environ.get("TINYMECH_TL4_PYTHON", default))
    if not python.exists():
        raise Skipped(f"no TransformerLens 4.x environment at {python} (make one with tools/setup-tl4-venv, "
                      "or point TINYMECH_TL4_PYTHON at its python)")
    return python


def tl_bridge_rows(path, model, threads: int, *, tokens: int = 512, repeats: int = 3) -> list:
    """run_with_cache of every hook point: TL 4.x TransformerBridge's time
    (bench_tl_bridge.py in its own environment, on the same checkpoint and
    tokens) / tinymech's, timed alike (best of repeats) in this run."""
    python = tl4_python()
    script = Path(__file__).with_name("bench_tl_bridge.py")
    done = subprocess.run([str(python), str(script), "--model", str(path), "--tokens", str(tokens),
                           "--threads", str(threads), "--repeats", str(repeats)],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise Skipped(f"bench_tl_bridge.py failed: {done.stderr.strip().splitlines()[-1:]}")
    bridge = json.loads(done.stdout.strip().splitlines()[-1])
    ids = random_tokens(model.cfg.d_vocab, tokens, seed=tokens)
    ours = best_time(lambda: model.run_with_cache(ids), repeats)
    theirs = bridge["run_with_cache_s"]
    return [row(f"cache-bridge-{tokens}", f"run_with_cache {tokens} tokens: speed vs TL 4.x bridge", ours * 1e3,
                theirs * 1e3, "ms", theirs / ours, ref_name=f"TL {bridge['tl_version']} TransformerBridge",
                note=f"{bridge['n_hooks_cached']} bridge hooks cached; its logits vs HF "
                     f"{bridge['max_logit_diff_vs_hf']:.1e}")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512])
    args = parser.parse_args()

    import torch

    import tinymech as tm
    from gpt2_small import gpt2_small

    torch.set_num_threads(args.threads)
    tm.set_num_threads(args.threads)
    with gpt2_small(args.layers) as (_, hf, model):
        tl = make_tl(hf)
        del hf
        rows = [r for r in hooks_rows(model, tl, tokens=args.tokens, repeats=args.repeats)
                if r["id"].startswith("cache-plain")]
    print(f"gpt2-small shape ({args.layers} layers), random weights, {args.threads} threads, batch 1, "
          f"{rows[0]['hook_points']} hook points cached, median of {args.repeats}")
    print(f"{'tokens':>6} {'plain':>9} {'tm cache':>9} {'TL cache':>9} {'cache/plain':>12} {'TL/tm cache':>12}")
    for r in rows:
        print(f"{r['tokens']:>6} {r['plain_ms']:>7.1f}ms {r['cache_ms']:>7.1f}ms {r['tl_ms']:>7.1f}ms "
              f"{r['cache_ms'] / r['plain_ms']:>11.2f}x {r['tl_ms'] / r['cache_ms']:>11.2f}x")


if __name__ == "__main__":
    main()
