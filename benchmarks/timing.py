"""Timing shared by the benchmark scripts: the best of several runs after a
warm-up, which is the least noisy estimate on a busy machine."""
from __future__ import annotations

import time


def best_time(fn, repeats: int = 3) -> float:
    fn()  # warm up: page in weights, size buffers
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
