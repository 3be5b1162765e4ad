"""TransformerLens 4.x TransformerBridge on a local GPT-2 checkpoint: its
run_with_cache (every hook point) and plain forward times, as one JSON line.

The main environment pins transformer-lens < 4 (sae-lens needs 3.x), so this
script runs under a separate virtual environment's python (tools/setup-tl4-venv
makes one); run_all would start it as a subprocess on the checkpoint it built:

    <venv>/bin/python benchmarks/bench_tl_bridge.py --model DIR --tokens 512 --threads 2 --repeats 3

and read the one line it prints on stdout:

    {"tl_version": ..., "torch_version": ..., "run_with_cache_s": ..., "forward_s": ...,
     "n_hooks_cached": ..., "max_logit_diff_vs_hf": ...}

Times are the best of --repeats runs after one warm-up, under torch.no_grad,
on the [1, tokens] batch timing.random_tokens(vocab, tokens, seed=tokens)
(the one bench_hooks.py gives TL 3.x). The bridge keeps the raw HF weights (no
LayerNorm folding), so its logits are compared with a plain transformers
GPT2LMHeadModel loaded from the same directory.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the checkpoint is local; never ask the hub


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="save_pretrained directory of a GPT-2 model")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from importlib.metadata import version

    import torch
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    from timing import best_time, random_tokens

    torch.set_num_threads(args.threads)
    # library chatter goes to stderr: stdout carries only the JSON line
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        bridge = TransformerBridge.boot_transformers(args.model, device="cpu", dtype=torch.float32)
        tokens = torch.as_tensor(random_tokens(bridge.cfg.d_vocab, args.tokens, seed=args.tokens))

        cache_s = best_time(lambda: bridge.run_with_cache(tokens), args.repeats)
        forward_s = best_time(lambda: bridge(tokens), args.repeats)
        n_cached = len(bridge.run_with_cache(tokens[:, :8])[1])

        short = torch.as_tensor(random_tokens(bridge.cfg.d_vocab, 32, seed=1))
        hf = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        logit_diff = (bridge(short) - hf(short).logits).abs().max().item()

    print(json.dumps(dict(
        tl_version=version("transformer-lens"),
        torch_version=torch.__version__,
        run_with_cache_s=cache_s,
        forward_s=forward_s,
        n_hooks_cached=n_cached,
        max_logit_diff_vs_hf=logit_diff,
    )))


if __name__ == "__main__":
    main()
