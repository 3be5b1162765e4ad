"""Every benchmark of the project in one process run, printed as one table of
ratios and absolute numbers with the issue's targets, after a description of
the machine.

    python benchmarks/run_all.py [--threads N] [--layers 12] [--repeats 3]
                                 [--only forward,hooks,...] [--markdown] [--write PATH]
                                 [--train-tokens N] [--variants avx512,avx2] [--kernels avx2]

--kernels avx2 runs tinymech on its AVX2 kernels throughout (on a CPU with
AVX-512) and holds numpy's and torch's kernels to AVX2 as well, so their ratios
compare AVX2 with AVX2 (llama.cpp picks its own: its rows are skipped then).

--write PATH also writes the Markdown report to PATH (the project keeps its
latest in docs/benchmarks.md: python benchmarks/run_all.py --write docs/benchmarks.md).

Benchmarks (--only takes any of these names, comma-separated):
  forward   prefill 128/512/1024 tokens and decode vs HF transformers  (bench_forward.py)
  bf16      bf16 weight mode: decode vs HF fp32, prefill vs HF bf16      (bench_forward.py)
  gradients forward + backward vs torch autograd; its cost in forwards  (bench_gradients.py)
  hooks     run_with_cache vs plain forward and vs TransformerLens       (bench_hooks.py)
  tlbridge  run_with_cache vs TL 4.x TransformerBridge, in its own venv  (bench_hooks.py)
  analysis  activation patching and an early block's capture vs TL; IOI attribution vs activation patching (bench_analysis.py)
  sae       SAE encode / decode vs SAELens; a TopK SAE's forward too      (bench_sae.py)
  sae_training  TopK SAE training tok/s, held-out EV and CE recovered vs SAELens's
            trainer and a sparsify-style torch loop; a quick budget unless
            --train-tokens                                               (bench_sae_training.py)
  dashboards  feature dashboards tok/s, where the time goes, seconds per 10^6 tokens (bench_dashboards.py)
  roofline  matmul GF/s vs numpy and each kernel variant's FMA peak (the core's
            pick and avx2 beside it, or --variants); memory bandwidth     (roofline.py)
  load      tm.load time of a save_pretrained checkpoint                 (bench_system.py)
  rss       peak RSS of load + a 512-token forward, or + generation, vs the weights' bytes (bench_system.py)
  length    per-token prefill time, 1024 tokens vs 512                   (bench_system.py)
  threads   prefill 512 tokens, 2 threads vs 1                           (bench_system.py)
  llamacpp  prefill and decode vs llama.cpp's llama-bench, if on PATH    (bench_llamacpp.py)
  smollm2   SmolLM2-135M vs HF on the same GGUF, if installed            (bench_smollm2.py)

All GPT-2 benchmarks share one random GPT-2-small-shaped checkpoint
(--layers layers), built once. Ratios are what to compare across machines.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
import warnings

from report import AVX2_REFERENCES  # (report imports neither numpy nor torch at its top)

BENCHMARKS = ("forward", "bf16", "gradients", "hooks", "tlbridge", "analysis", "sae", "sae_training", "dashboards", "roofline", "load", "rss", "length", "threads", "llamacpp", "smollm2")
NEEDS_GPT2 = {"forward", "bf16", "gradients", "hooks", "tlbridge", "analysis", "load", "rss", "length", "threads", "llamacpp"}
TITLES = {"llamacpp": "llama.cpp", "smollm2": "SmolLM2", "tlbridge": "TL 4.x bridge"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for tinymech and torch")
    parser.add_argument("--layers", type=int, default=12, help="layers of the GPT-2-small-shaped model")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best or median)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--train-tokens", type=int, metavar="N",
                        help="sae_training: training tokens per model (default: its quick budget)")
    parser.add_argument("--variants", help="roofline: comma-separated kernel variants (default: the core's pick, "
                                           "and avx2; with --kernels, that one)")
    parser.add_argument("--kernels", metavar="VARIANT",
                        help="run tinymech on this kernel variant throughout; with avx2, numpy's and torch's "
                             "kernels are held to AVX2 too (" + ", ".join(f"{k}={v}" for k, v in AVX2_REFERENCES.items()) + ")")
    parser.add_argument("--write", metavar="PATH", help="also write the Markdown report to PATH (e.g. docs/benchmarks.md)")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    unknown = [name for name in args.only if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.kernels:  # every benchmark runs on it, the roofline's rows too
        if args.variants and args.variants != [args.kernels]:
            parser.error(f"--kernels {args.kernels} runs every benchmark on {args.kernels}: --variants may only name it")
        args.variants = [args.kernels]
    if args.write and not os.path.isdir(os.path.dirname(os.path.abspath(args.write))):
        parser.error(f"--write {args.write}: no such folder")  # now, not after the whole run
    return args


def run(args) -> tuple:
    """Runs the chosen benchmarks, printing each row to stderr as it is measured; returns
    (rows, [(name, reason)] of the skipped, [(name, error)] of the failed). A failed
    benchmark does not stop the others: the rows measured before it are kept."""
    from bench_analysis import analysis_rows
    from bench_dashboards import dashboard_rows
    from bench_forward import bf16_rows, forward_rows
    from bench_gradients import gradient_rows
    from bench_hooks import hooks_rows, make_tl, tl_bridge_rows
    from bench_llamacpp import llamacpp_rows
    from bench_sae import sae_rows
    from bench_sae_training import sae_training_rows
    from bench_smollm2 import smollm2_rows
    from bench_system import length_scaling_rows, load_time_rows, peak_rss_rows, thread_scaling_rows
    from gpt2_small import gpt2_small
    from report import Skipped, format_table
    from roofline import roofline_rows

    rows, skipped, failed, by_name = [], [], [], {}
    chosen = [name for name in BENCHMARKS if name in args.only]

    def step(name, fn):
        t0 = time.perf_counter()
        print(f"[run_all] {name} ...", file=sys.stderr, flush=True)
        try:
            by_name[name] = fn()
        except Skipped as e:
            skipped.append((name, str(e)))
        except Exception as e:  # noqa: BLE001 - one broken benchmark must not lose the others' rows
            traceback.print_exc(file=sys.stderr)
            failed.append((name, f"{type(e).__name__}: {e}"))
        else:
            for r in by_name[name]:  # the table's kernels column: the variant each row ran on
                r.setdefault("kernels", active_variant())
            rows.extend(by_name[name])
            if by_name[name]:
                body = format_table(by_name[name]).splitlines()[2:]  # the rows without the header
                print("\n".join(f"[run_all]   {line}" for line in body), file=sys.stderr, flush=True)
        print(f"[run_all] {name} ended in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    reps = args.repeats
    if NEEDS_GPT2 & set(chosen):
        with gpt2_small(args.layers) as (path, hf, model):
            for name in chosen:
                if name == "forward":
                    step(name, lambda: forward_rows(model, hf, repeats=reps))
                elif name == "bf16":
                    step(name, lambda: bf16_rows(path, model, hf, repeats=reps))
                elif name == "gradients":
                    step(name, lambda: gradient_rows(model, hf, repeats=reps))
                elif name == "hooks":
                    step(name, lambda: hooks_rows(model, make_tl(hf), repeats=reps))
                elif name == "analysis":
                    step(name, lambda: analysis_rows(model, make_tl(hf), repeats=reps))
                elif name == "tlbridge":
                    step(name, lambda: tl_bridge_rows(path, model, args.threads, repeats=reps))
                elif name == "load":
                    step(name, lambda: load_time_rows(path, repeats=3))
                elif name == "rss":
                    step(name, lambda: peak_rss_rows(path, args.threads))
                elif name == "length":
                    step(name, lambda: length_scaling_rows(model, reps))
                elif name == "threads":
                    step(name, lambda: thread_scaling_rows(model, reps))
                elif name == "llamacpp" and args.kernels:
                    skipped.append((name, f"llama.cpp picks its own instruction set, not --kernels {args.kernels}"))
                elif name == "llamacpp":
                    step(name, lambda: llamacpp_rows(hf, model, args.threads, repeats=reps,
                                                     forward_rows=by_name.get("forward")))
    for name in chosen:
        if name == "sae":
            step(name, lambda: sae_rows(repeats=reps) +
                 [r for r in sae_rows("topk", repeats=reps) if r["name"] == "forward"])
        elif name == "sae_training":
            tokens = {"smollm2": args.train_tokens, "demo": args.train_tokens} if args.train_tokens else None
            step(name, lambda: sae_training_rows(tokens))
        elif name == "dashboards":
            step(name, dashboard_rows)
        elif name == "roofline":
            step(name, lambda: roofline_rows(args.threads, repeats=reps, variants=args.variants))
        elif name == "smollm2":
            step(name, lambda: smollm2_rows(repeats=reps))
    return rows, skipped, failed


def active_variant() -> str:
    import tinymech as tm

    return tm.kernel_variant()


def hold_references_to_avx2() -> None:
    """Sets AVX2_REFERENCES in the environment, before numpy or torch loads (they read it then)."""
    loaded = [name for name in ("numpy", "torch") if name in sys.modules]
    if loaded:
        raise SystemExit(f"--kernels avx2: {' and '.join(loaded)} already loaded (kernels are picked at load), "
                         "too late to hold them to AVX2")
    clash = [f"{k}={os.environ[k]}" for k, v in AVX2_REFERENCES.items() if os.environ.get(k, v) != v]
    if clash:
        raise SystemExit(f"--kernels avx2 sets {', '.join(f'{k}={v}' for k, v in AVX2_REFERENCES.items())}; "
                         f"this shell has {', '.join(clash)}")
    os.environ.update(AVX2_REFERENCES)


def main(argv=None):
    args = parse_args(argv)
    warnings.simplefilter("ignore")
    if args.kernels == "avx2":
        hold_references_to_avx2()
    import torch
    import transformers

    import tinymech as tm

    if args.kernels:
        try:
            tm.set_kernel_variant(args.kernels)
        except ValueError as e:
            raise SystemExit(f"--kernels: {e}") from None
    transformers.utils.logging.disable_progress_bar()  # keep stderr to run_all's own progress lines
    torch.set_num_threads(args.threads)
    tm.set_num_threads(args.threads)
    rows, skipped, failed = run(args)

    print(report_text(args, rows, skipped, failed, markdown=args.markdown))
    if args.write:
        write_report(args.write, sys.argv[1:] if argv is None else argv,
                     report_text(args, rows, skipped, failed, markdown=True))
    return 1 if failed else 0


def write_report(path: str, argv, text: str) -> None:
    """The Markdown report under a line naming the command that wrote it (and so rewrites it)."""
    command = " ".join(["python benchmarks/run_all.py"] + [shlex.quote(a) for a in argv])
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"*Generated by `{command}`: do not edit by hand.*\n\n{text}\n")


def report_text(args, rows, skipped, failed, markdown: bool) -> str:
    """The machine's description, the table, the skipped and failed benchmarks and the targets met."""
    from report import format_table, machine_description

    lines = machine_description(args.threads)
    if NEEDS_GPT2 & set(args.only):
        lines.append(f"model: GPT-2-small shape, {args.layers} layers, random weights, fp32; "
                     f"{args.repeats} timed runs per measurement")
    bullet = "- " if markdown else ""
    parts = ["\n".join(bullet + line for line in lines), format_table(rows, markdown=markdown)]
    if skipped:
        parts.append("\n".join(f"{bullet}{TITLES.get(name, name)}: {reason}" for name, reason in skipped))
    if failed:
        parts.append("\n".join(f"{bullet}{TITLES.get(name, name)} FAILED: {error}" for name, error in failed))
    targets = [r for r in rows if r["met"] is not None]
    if targets:
        parts.append(f"{bullet}targets met: {sum(r['met'] for r in targets)} of {len(targets)}")
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
