"""Timing shared by the benchmark scripts: the best (or median) of several runs
after a warm-up, which is the least noisy estimate on a busy machine."""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

from cpus import size_bytes


def _times(fn, repeats: int) -> list:
    fn()  # warm up: page in weights, size buffers
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def seconds_of(fn) -> float:
    """Seconds of one call of fn, no warm-up (for calls that are long runs themselves)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_time(fn, repeats: int = 3) -> float:
    """Seconds of the fastest of `repeats` calls of fn after one warm-up call."""
    return min(_times(fn, repeats))


# A pause before each timed call: thread pools (torch's OpenMP, numpy's BLAS,
# tinymech's) spin for a while after a call, and would take a core from
# whichever contender runs next.
SETTLE_SECONDS = 0.02


def measured_interleaved(measures, repeats: int = 3, statistic=min) -> list:
    """statistic (min: the fastest; or statistics.median) of `repeats` results
    of each of measures (functions that time something themselves and return
    seconds), called in turn, one call of each per round after one warm-up
    call of each: a slow minute of this machine then slows every contender
    alike instead of one of them."""
    for measure in measures:
        measure()
    results = [[] for _ in measures]
    for _ in range(max(1, repeats)):
        for measure, out in zip(measures, results):
            time.sleep(SETTLE_SECONDS)
            out.append(measure())
    return [statistic(r) for r in results]


def times_interleaved(fns, repeats: int = 3, statistic=min) -> list:
    """Seconds of calls of each of fns, called in turn (see measured_interleaved)."""
    def timed(fn):
        def measure():
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        return measure
    return measured_interleaved([timed(fn) for fn in fns], repeats, statistic)


def paired_times(ours, ref, repeats: int, pause: float = 0.3) -> list:
    """[(ref time / ours time, ours time, ref time)] of `repeats` pairs, sorted by ratio: a
    slow moment of a shared machine then slows both sides of a pair, and the median pair
    is the measure. Each call follows a pause (BLAS threads keep spinning for a while
    after a call and would take a core from the next), and the pairs alternate which side
    goes first (what one call leaves in the caches or the clock favours neither side); a
    short call is timed as the mean of a run of calls (the steady state a model's forward
    sees, not a lone call's cold start). OPENBLAS_THREAD_TIMEOUT=4 shortens numpy's spinning."""
    calls = []
    for fn in (ours, ref):  # warm up; a short call is timed as a run of calls of 50 ms or more
        t0 = time.perf_counter()
        fn()
        calls.append(max(1, math.ceil(0.05 / max(time.perf_counter() - t0, 1e-6))))
    pairs = []
    for i in range(max(1, repeats)):
        times = {}
        for side, fn in ((0, ours), (1, ref)) if i % 2 == 0 else ((1, ref), (0, ours)):
            time.sleep(pause)
            t0 = time.perf_counter()
            for _ in range(calls[side]):
                fn()
            times[side] = (time.perf_counter() - t0) / calls[side]
        pairs.append((times[1] / times[0], times[0], times[1]))
    return sorted(pairs)


def best_measured(measure, repeats: int = 3) -> float:
    """The smallest of `repeats` results of measure(), a function that times
    something itself and returns seconds, after one warm-up call."""
    measure()
    return min(measure() for _ in range(max(1, repeats)))


def last_level_cache_bytes(caches=Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The largest cache of CPU 0 (Linux's sysfs), 0 where unknown."""
    sizes = []
    for index in Path(caches).glob("index*"):
        try:
            sizes.append(size_bytes((index / "size").read_text()) or 0)
        except OSError:
            continue
    return max(sizes, default=0)


def beyond_caches_bytes(at_least: int = 256 << 20) -> int:
    """A buffer size that reads from memory, not cache: at_least, or four times the
    last-level cache where that is larger (a VM may share a server's 300 MiB L3)."""
    return max(at_least, 4 * last_level_cache_bytes())


def random_tokens(vocab_size: int, n: int, seed: int = 0, batch: int = 1) -> np.ndarray:
    """[batch, n] token ids, the same for the same seed."""
    return np.random.default_rng(seed).integers(0, vocab_size, (batch, n))


def hf_decode_seconds(hf, prompt, steps: int) -> float:
    """Seconds for `steps` greedy decode steps of a transformers model after
    `prompt`, through its own generate() and KV cache: generating steps + 1
    tokens minus generating 1 (the prefill), so only decoding is counted."""
    import torch

    ids = torch.as_tensor(prompt)

    def run(n):
        t0 = time.perf_counter()
        with torch.inference_mode():
            hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0

    run(2)
    return run(steps + 1) - run(1)


def tinymech_decode_seconds(model, prompt, steps: int) -> float:
    """Seconds for `steps` greedy decode steps of a tinymech model after
    `prompt` ([batch, pos]) with its KV cache (the prefill is not counted)."""
    cache = model.new_cache(len(prompt))
    logits = model.forward(prompt, cache=cache, logits="last")
    t0 = time.perf_counter()
    for _ in range(steps):
        logits = model.forward(logits.argmax(-1)[:, None], cache=cache, logits="last")
    return time.perf_counter() - t0


def tinymech_prefill_seconds(model, n: int, repeats: int = 3) -> float:
    """Best seconds of a tinymech forward over n random tokens (all positions' logits)."""
    tokens = random_tokens(model.cfg.d_vocab, n, seed=n)
    return best_time(lambda: model(tokens), repeats)


def bench_parser(description: str | None = None, *, layers: bool = True, repeats: int = 3) -> argparse.ArgumentParser:
    """The options every benchmark script shares: --threads, --repeats and
    (for the GPT-2-small-shaped model) --layers."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for tinymech and torch")
    if layers:
        parser.add_argument("--layers", type=int, default=12, help="layers of the GPT-2-small-shaped model")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs per measurement")
    return parser


def evict_from_page_cache(directory) -> None:
    """Writes the files of a directory out and drops them from the page cache,
    so that tinymech maps them as it maps weights read cold from disk. A file
    written moments ago stays cached in the 4 KiB pieces the writes made, and
    mapped so it costs decoding ~9 % (TLB misses, measured here on Linux 6.18
    ext4); read cold, it comes into the cache in large folios that map as
    2 MiB pages. (Linux only; elsewhere nothing happens.)"""
    if not hasattr(os, "posix_fadvise"):
        return
    for file in Path(directory).iterdir():
        if not file.is_file():
            continue
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
