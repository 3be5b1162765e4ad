"""tinymech on its own: load time, peak memory, and how prefill scales with
length and threads, on a random GPT-2-small-shaped checkpoint.

    python benchmarks/bench_system.py [--layers 12] [--repeats 3]

load_time_rows(path)             tm.load of a save_pretrained directory (memory-mapped; and in bf16), best of 3
peak_rss_rows(path, threads)     peak RSS growth of loading + one 512-token forward, or + generating 64
                                 tokens after it, over the weights' bytes, measured in fresh interpreters
length_scaling_rows(model, ...)  per-token prefill time at 1024 tokens vs 512
thread_scaling_rows(model, ...)  prefill 512 tokens with 2 threads vs 1
each return report rows.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

from report import Skipped, row, target
from timing import bench_parser, best_time, measured_interleaved, random_tokens, times_interleaved

LOAD_TARGET = target("<", 0.5, of="value")  # seconds
RSS_TARGET = target("<=", 1.15)  # peak RSS growth / weight bytes
LENGTH_TARGET = target("within", 0.15)  # per-token time at 1024 / at 512
THREADS_TARGET = target(">=", 1.8)  # speed with 2 threads / with 1


def load_time_rows(path, repeats: int = 3) -> list:
    import tinymech as tm

    seconds = best_time(lambda: tm.load(path), repeats)
    bf16 = best_time(lambda: tm.load(path, dtype="bf16"), repeats)
    return [row("load", f"tm.load (memory-mapped), best of {repeats}", seconds, unit="s", target=LOAD_TARGET),
            row("load-bf16", f"tm.load(dtype=\"bf16\"), best of {repeats}", bf16, unit="s",
                note="every matrix rounded to bfloat16 and stored [out, in]")]


def weight_bytes(path) -> int:
    """Bytes of the tensors in a directory's .safetensors files (headers not counted)."""
    total = 0
    for file in Path(path).glob("*.safetensors"):
        with open(file, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    return total


# Run in a fresh interpreter: the same imports either way, then (mode "run")
# load the model and run one forward; prints the peak resident set size in bytes.
# Linux carries ru_maxrss across execve (and the spawned process starts as a
# copy of the parent's memory), so a spawned interpreter would report the
# benchmark process's own peak; it forks first and measures in the child,
# whose counters start from this small interpreter.
_PEAK_RSS_CHILD = """
import os, resource, sys
pid = os.fork()
if pid:
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
import numpy as np
import tinymech as tm
mode, path, n, threads, variant = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
tm.set_num_threads(threads)
tm.set_kernel_variant(variant)  # the parent's (run_all.py --kernels)
if mode != "base":
    model = tm.load(path)
    tokens = np.random.default_rng(0).integers(0, model.cfg.d_vocab, (1, n))
    if mode == "forward":
        model(tokens)
    else:  # "generate": a prompt of n tokens, then 64 more decoded with the KV cache
        model.generate(tokens, max_new_tokens=64)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(peak if sys.platform == "darwin" else peak * 1024)
"""


def _peak_rss(mode: str, path, tokens: int, threads: int) -> int:
    import tinymech

    env = dict(os.environ)  # the child imports the same tinymech as this process
    root = str(Path(tinymech.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    # run in that folder: `python -c` puts its working directory first on sys.path, and from the
    # repository's root that is the source tree, which has no compiled core
    args = [mode, str(path), str(tokens), str(threads), tinymech.kernel_variant()]
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS_CHILD, *args],
                         env=env, cwd=root, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def peak_rss_rows(path, threads: int, tokens: int = 512) -> list:
    """Peak RSS (ru_maxrss) of a fresh interpreter that loads the model and runs
    one forward (all positions' logits), or generates 64 tokens after a prompt,
    minus that of one that only imports the same modules."""
    base = _peak_rss("base", path, tokens, threads)
    weights = weight_bytes(path)
    vocab = json.loads((Path(path) / "config.json").read_text())["vocab_size"]
    logits = tokens * vocab * 4  # the float32 logits the forward returns
    rows = []
    for mode, task in (("forward", f"load + {tokens}-token forward"), ("generate", f"load + generate 64 after {tokens}")):
        growth = _peak_rss(mode, path, tokens, threads) - base
        note = f"import baseline {base / 2**20:.0f} MiB"
        if mode == "forward":
            note += f"; {(growth - logits) / weights:.2f}× without the {logits / 2**20:.0f} MiB of logits it returns"
        rows.append(row(f"peak-rss-{mode}", f"peak RSS growth, {task} / weights", growth / 2**20, weights / 2**20,
                        "MiB", growth / weights, ref_name="weights", target=RSS_TARGET, note=note))
    return rows


def length_scaling_rows(model, repeats: int = 3) -> list:
    """Per-token prefill time at 1024 tokens / at 512, the two timed in turn."""
    lengths = (512, 1024)
    ids = [random_tokens(model.cfg.d_vocab, n, seed=n) for n in lengths]
    seconds = times_interleaved([lambda: model(ids[0]), lambda: model(ids[1])], repeats)
    per_token = {n: s / n * 1e3 for n, s in zip(lengths, seconds)}
    return [row("length-scaling", "prefill per-token time, 1024 tokens / 512", per_token[1024], per_token[512],
                "ms/tok", per_token[1024] / per_token[512], ref_name="512 tokens", target=LENGTH_TARGET)]


def thread_scaling_rows(model, repeats: int = 3, tokens: int = 512) -> list:
    """Prefill speed with 2 threads / with 1, timed in turn (the core's thread
    count is restored)."""
    import tinymech as tm

    if (os.cpu_count() or 1) < 2:
        raise Skipped("needs at least 2 cores")
    ids = random_tokens(model.cfg.d_vocab, tokens, seed=tokens)

    def prefill_with(threads):
        def measure():
            tm.set_num_threads(threads)
            model(ids)  # the pool's new threads start and size their buffers outside the timing
            t0 = time.perf_counter()
            model(ids)
            return time.perf_counter() - t0
        return measure

    before = tm.get_num_threads()
    try:
        one, two = measured_interleaved([prefill_with(1), prefill_with(2)], repeats)
    finally:
        tm.set_num_threads(before)
    speed = {1: tokens / one, 2: tokens / two}
    return [row("thread-scaling", f"prefill {tokens} tokens, 2 threads / 1 thread", speed[2], speed[1], "tok/s",
                speed[2] / speed[1], ref_name="1 thread", target=THREADS_TARGET)]


def main():
    parser = bench_parser(__doc__.splitlines()[0])
    args = parser.parse_args()

    import tinymech as tm
    from gpt2_small import gpt2_small
    from report import format_table

    tm.set_num_threads(args.threads)
    with gpt2_small(args.layers) as (path, _, model):
        rows = load_time_rows(path) + peak_rss_rows(path, args.threads)
        rows += length_scaling_rows(model, args.repeats)
        try:
            rows += thread_scaling_rows(model, args.repeats)
        except Skipped as e:
            print(f"thread scaling: skipped, {e}")
    print(f"gpt2-small shape ({args.layers} layers), {args.threads} threads, kernels {tm._core.kernels.variant()}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
