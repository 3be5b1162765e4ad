"""tinymech vs Hugging Face transformers (torch, CPU) on the same random
GPT-2-small-shaped weights and the same number of threads, in one process.

    python benchmarks/bench_forward.py [--threads N] [--layers 12] [--repeats 3]

Prints prefill throughput (all positions' logits) for 128/512/1024 tokens and
decode throughput after a 128-token prompt, with the ratio tinymech / HF.
Machines are noisy: compare ratios, not absolute numbers.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from timing import best_time, hf_decode_seconds, tinymech_decode_seconds



def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=32)
    args = parser.parse_args()

    import torch
    import transformers

    import tinymech as tm

    torch.set_num_threads(args.threads)
    tm.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=args.layers, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = tm.load(tmp)
        rng = np.random.default_rng(0)
        print(f"gpt2-small shape ({args.layers} layers), {args.threads} threads, "
              f"kernels {tm._core.kernels.variant()}, torch {torch.__version__}")
        print(f"{'task':<28}{'tinymech':>14}{'HF':>14}{'ratio':>9}")

        for n in (128, 512, 1024):
            tokens = rng.integers(0, cfg.vocab_size, (1, n))
            tt = torch.as_tensor(tokens)
            ours = best_time(lambda: model(tokens), args.repeats)
            with torch.inference_mode():
                ref = best_time(lambda: hf(tt).logits, args.repeats)
            print(f"{f'prefill {n} tokens (tok/s)':<28}{n / ours:>14.0f}{n / ref:>14.0f}{ref / ours:>8.2f}x")

        prompt = rng.integers(0, cfg.vocab_size, (1, 128))
        steps = args.decode_tokens

        def decode_ours():
            return tinymech_decode_seconds(model, prompt, steps)

        def decode_hf():
            return hf_decode_seconds(hf, prompt, steps)

        decode_ours()
        decode_hf()
        ours = min(decode_ours() for _ in range(args.repeats))
        ref = min(decode_hf() for _ in range(args.repeats))
        print(f"{'decode after 128 (tok/s)':<28}{steps / ours:>14.1f}{steps / ref:>14.1f}{ref / ours:>8.2f}x")


if __name__ == "__main__":
    main()
