"""tinymech vs Hugging Face transformers (torch, CPU) on the same random
GPT-2-small-shaped weights and the same number of threads, in one process.

    python benchmarks/bench_forward.py [--threads N] [--layers 12] [--repeats 3]

Prints prefill throughput (all positions' logits) for 128/512/1024 tokens and
decode throughput after a 128-token prompt, with the ratio tinymech / HF, and
the weight bytes decoding streams per second against the core's read-bandwidth probe.
Machines are noisy: compare ratios, not absolute numbers.

forward_rows(model, hf, ...) returns the measurements as report rows.
"""
from __future__ import annotations


from report import row, target
from timing import (bench_parser, hf_decode_seconds, measured_interleaved, paired_times, random_tokens,
                    times_interleaved, tinymech_decode_seconds)

# the issue's targets, as tinymech speed / HF fp32 speed
PREFILL_TARGET = {512: target(">=", 2.4)}
DECODE_TARGET = target(">=", 2.2)
BANDWIDTH_TARGET = target(">=", 0.9)  # weight bytes read per second while decoding / measured read bandwidth
MATMUL_FLOOR_TARGET = target("<=", 1.05, of="value")  # prefill time / numpy's time for its matmuls alone
# bf16 weight mode: decode vs HF fp32, prefill vs HF bf16
BF16_DECODE_TARGET = target(">=", 4.4)
BF16_PREFILL_TARGET = target(">=", 1.2)


def decode_bytes_per_token(hf, matrix_bytes: int = 4) -> int:
    """Weight bytes one decoded token reads: every parameter once, matrices at
    matrix_bytes per element, but not the tables read one row per token
    (position embeddings; the input embedding unless the unembedding shares it)."""
    skip = {id(p) for name, p in hf.named_parameters() if "wpe" in name or "embed_positions" in name}
    tokens_in, out = hf.get_input_embeddings().weight, hf.get_output_embeddings().weight
    if tokens_in is not out:
        skip.add(id(tokens_in))
    return sum(p.numel() * (matrix_bytes if p.dim() == 2 else 4) for p in hf.parameters() if id(p) not in skip)


def bandwidth_row(id: str, task: str, seconds_per_token, bytes_per_token: int, repeats: int, target=None,
                  tokens: int = 32) -> dict:
    """Weight bytes streamed per second while decoding / the core's read-bandwidth
    probe. The probe's fastest way is picked first (best pass of each). This
    machine's bandwidth drifts from one second to the next, so each decode run
    (seconds_per_token(), a run of `tokens` tokens) is paired with that way
    reading about as many bytes right after it, timed as the run is (all its
    passes' bytes over their time: the best of many short passes reads high
    where the bandwidth drifts), and the pair with the median ratio is reported.
    The probe reads a buffer as large as one token's weights (at least 64 MiB),
    so a cache helps both alike (a 256 MiB probe read 60 GB/s from a 300 MiB L3
    where memory gave 36)."""
    from tinymech import _core

    probe_bytes = max(64 << 20, bytes_per_token >> 20 << 20)
    probes = _core.kernels.read_bandwidth_probes(probe_bytes, 3)
    way = max(probes, key=probes.get)
    passes = min(1000, max(1, round(tokens * bytes_per_token / probe_bytes)))
    pairs = []
    for _ in range(repeats):
        achieved = bytes_per_token / seconds_per_token() / 1e9
        probe = _core.kernels.read_bandwidth_probes(probe_bytes, passes, [way], mean=True)[way]
        pairs.append((achieved / probe, achieved, probe))
    ratio, achieved, probe = sorted(pairs)[len(pairs) // 2]
    return row(id, task, achieved, probe, "GB/s", ratio, ref_name=f"native read probe ({way})", target=target,
               note=f"{bytes_per_token / 2**20:.0f} MiB of weights per token; median of {repeats} paired runs; "
                    f"probes' best passes: " + ", ".join(f"{k} {v:.1f}" for k, v in probes.items()))


def weight_matmul_shapes(cfg, n: int) -> list:
    """(M, K, N) of every matmul with a weight in a forward of n tokens (all logits)."""
    D, F, L = cfg.d_model, cfg.d_mlp, cfg.n_layers
    qkv = (cfg.n_heads + 2 * (cfg.n_key_value_heads or cfg.n_heads)) * cfg.d_head
    per_layer = [(n, D, qkv), (n, cfg.n_heads * cfg.d_head, D), (n, D, F), (n, F, D)]
    if cfg.gated_mlp:
        per_layer.append((n, D, F))
    return per_layer * L + [(n, D, cfg.d_vocab)]


def matmul_floor_row(model, n: int = 512, repeats: int = 3) -> dict:
    """The whole prefill of n tokens (all logits) over numpy's time for its weight matmuls
    alone (same shapes, float32, numpy's BLAS on its own threads): how much the rest of the
    forward (norms, attention, activations, threads' waits) adds to the matmuls' floor.
    Median of paired runs, each pair timed in turn."""
    import numpy as np

    rng = np.random.default_rng(0)
    mats = [(rng.standard_normal((M, K), dtype=np.float32), rng.standard_normal((K, N), dtype=np.float32))
            for M, K, N in weight_matmul_shapes(model.cfg, n)]
    ids = random_tokens(model.cfg.d_vocab, n, seed=n)

    def numpy_matmuls():
        for A, B in mats:
            A @ B

    pairs = [(ours / ref, ours, ref) for _, ours, ref in paired_times(lambda: model(ids), numpy_matmuls, repeats)]
    ratio, ours, ref = sorted(pairs)[len(pairs) // 2]
    return row(f"prefill-{n}-vs-matmuls", f"prefill {n} tokens / numpy's time for its matmuls alone", ratio,
               None, "×", None, target=MATMUL_FLOOR_TARGET, seconds=ours, tokens=n,
               note=f"{ours * 1e3:.0f} ms vs {ref * 1e3:.0f} ms; median of {len(pairs)} paired runs, "
                    f"range {min(p[0] for p in pairs):.2f}–{max(p[0] for p in pairs):.2f}")


def forward_rows(model, hf, *, tokens=(8, 128, 512, 1024), decode_tokens: int = 32, prompt_tokens: int = 128,
                 decode_batch: int = 8, repeats: int = 3, targets: bool = True, prefix: str = "") -> list:
    """Prefill (all logits) of each of `tokens`, decode after a prompt, and
    (decode_batch > 1) decode a batch of that many prompts, tinymech `model` vs
    transformers `hf` (same weights). Rows `prefix + "prefill-N"`, `prefix +
    "decode"` and `prefix + "decode-batch"` in tok/s (a batch's: tokens of all
    its sequences), ratio tinymech / HF; each row's `seconds` is tinymech's
    time. targets=False leaves the issue's GPT-2-small targets off."""
    import torch

    vocab = model.cfg.d_vocab
    rows = []
    for n in tokens:
        ids = random_tokens(vocab, n, seed=n)
        tt = torch.as_tensor(ids)
        with torch.inference_mode():
            ours, ref = times_interleaved([lambda: model(ids), lambda: hf(tt).logits], repeats)
        rows.append(row(f"{prefix}prefill-{n}", f"{prefix}prefill {n} tokens, all logits", n / ours, n / ref,
                        "tok/s", ref / ours, ref_name="HF", seconds=ours, tokens=n,
                        target=PREFILL_TARGET.get(n) if targets else None))
    if targets and 512 in tokens:
        rows.append(matmul_floor_row(model, 512, repeats))
    prompt = random_tokens(vocab, prompt_tokens, seed=1)
    ours, ref = measured_interleaved([lambda: tinymech_decode_seconds(model, prompt, decode_tokens),
                                      lambda: hf_decode_seconds(hf, prompt, decode_tokens)], repeats)
    rows.append(row(f"{prefix}decode", f"{prefix}decode after {prompt_tokens} tokens", decode_tokens / ours,
                    decode_tokens / ref, "tok/s", ref / ours, ref_name="HF", seconds=ours / decode_tokens,
                    tokens=decode_tokens, prompt=prompt_tokens, target=DECODE_TARGET if targets else None))
    rows.append(bandwidth_row(f"{prefix}decode-bandwidth", f"{prefix}decode: weight bytes read / s vs bandwidth",
                              lambda: tinymech_decode_seconds(model, prompt, decode_tokens) / decode_tokens,
                              decode_bytes_per_token(hf), repeats, BANDWIDTH_TARGET if targets else None,
                              tokens=decode_tokens))
    if decode_batch > 1:
        prompts = random_tokens(vocab, prompt_tokens, seed=2, batch=decode_batch)
        ours, ref = measured_interleaved([lambda: tinymech_decode_seconds(model, prompts, decode_tokens),
                                          lambda: hf_decode_seconds(hf, prompts, decode_tokens)], repeats)
        made = decode_batch * decode_tokens
        rows.append(row(f"{prefix}decode-batch", f"{prefix}decode, batch of {decode_batch}, after {prompt_tokens} tokens",
                        made / ours, made / ref, "tok/s", ref / ours, ref_name="HF", seconds=ours / decode_tokens,
                        tokens=decode_tokens, prompt=prompt_tokens, batch=decode_batch))
    return rows


def bf16_rows(path, model, hf, *, prefill_tokens: int = 512, decode_tokens: int = 32, prompt_tokens: int = 128,
              repeats: int = 3) -> list:
    """tinymech's bf16 weight mode (loaded from `path`): decode vs HF fp32
    (timed in turn, as every ratio here), prefill vs HF in bfloat16, and the
    largest logit difference from the float32 `model`."""
    import copy

    import numpy as np
    import torch

    import tinymech as tm

    bf16 = tm.load(path, dtype="bf16")
    vocab = model.cfg.d_vocab
    prompt = random_tokens(vocab, prompt_tokens, seed=1)
    ours, ref = measured_interleaved([lambda: tinymech_decode_seconds(bf16, prompt, decode_tokens),
                                      lambda: hf_decode_seconds(hf, prompt, decode_tokens)], repeats)
    rows = [row("bf16-decode", f"bf16 weights: decode after {prompt_tokens} tokens", decode_tokens / ours,
                decode_tokens / ref, "tok/s", ref / ours, ref_name="HF fp32", target=BF16_DECODE_TARGET),
            bandwidth_row("bf16-decode-bandwidth", "bf16 weights: decode bytes read / s vs bandwidth",
                          lambda: tinymech_decode_seconds(bf16, prompt, decode_tokens) / decode_tokens,
                          decode_bytes_per_token(hf, matrix_bytes=2), repeats, tokens=decode_tokens)]
    ids = random_tokens(vocab, prefill_tokens, seed=prefill_tokens)
    hf16 = copy.deepcopy(hf).to(torch.bfloat16)
    tt = torch.as_tensor(ids)
    with torch.inference_mode():
        ours, ref = times_interleaved([lambda: bf16(ids), lambda: hf16(tt).logits], repeats)
    rows.append(row("bf16-prefill", f"bf16 weights: prefill {prefill_tokens} tokens, all logits",
                    prefill_tokens / ours, prefill_tokens / ref, "tok/s", ref / ours, ref_name="HF bf16",
                    target=BF16_PREFILL_TARGET))
    exact = model(ids)
    err = float(np.abs(bf16(ids) - exact).max())
    rows.append(row("bf16-error", "bf16 weights: max |logit - fp32 logit|", err, float(np.abs(exact).max()), "",
                    ref_name="max |fp32 logit|", note="random weights"))
    return rows


def print_forward_rows(rows) -> None:
    """The table this script (and bench_smollm2.py) prints."""
    print(f"{'task':<28}{'tinymech':>14}{'HF':>14}{'ratio':>9}")
    for r in rows:
        if r["id"].endswith("vs-matmuls"):
            print(f"{'prefill / numpy matmuls':<28}{r['tinymech']:>14.2f}{'':>14}{'':>9}")
            continue
        if r["id"].endswith("bandwidth"):
            task, digits = "decode bytes (GB/s)", 1
        elif r["id"].endswith("decode"):
            task, digits = f"decode after {r['prompt']} (tok/s)", 1
        elif r["id"].endswith("decode-batch"):
            task, digits = f"decode x{r['batch']} after {r['prompt']} (tok/s)", 1
        else:
            task, digits = f"prefill {r['tokens']} tokens (tok/s)", 0
        print(f"{task:<28}{r['tinymech']:>14.{digits}f}{r['reference']:>14.{digits}f}{r['ratio']:>8.2f}x")


def main():
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--decode-tokens", type=int, default=32)
    args = parser.parse_args()

    import torch

    import tinymech as tm
    from gpt2_small import gpt2_small

    torch.set_num_threads(args.threads)
    tm.set_num_threads(args.threads)
    with gpt2_small(args.layers) as (_, hf, model):
        print(f"gpt2-small shape ({args.layers} layers), {args.threads} threads, "
              f"kernels {tm._core.kernels.variant()}, torch {torch.__version__}")
        print_forward_rows(forward_rows(model, hf, decode_tokens=args.decode_tokens, repeats=args.repeats))


if __name__ == "__main__":
    main()
