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
    `prompt` with its KV cache (the prefill is not counted)."""
    cache = model.new_cache()
    logits = model.forward(prompt, cache=cache, logits="last")
    t0 = time.perf_counter()
    for _ in range(steps):
        logits = model.forward(logits.argmax(-1)[:, None], cache=cache, logits="last")
    return time.perf_counter() - t0
