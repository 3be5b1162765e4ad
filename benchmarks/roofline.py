"""How close the core's kernels come to this machine's limits.

    python benchmarks/roofline.py [--threads N] [--repeats 3] [--variants avx512,avx2]

Prints matmul GFLOP/s of tinymech's kernel and of numpy's BLAS on the shapes a
GPT-2-small prefill uses, and memory read bandwidth (GB/s) of a 1-row matmul
(the decode pattern: it streams the whole matrix once). Where the core has
its native probes (kernels.fma_peak_gflops, kernels.read_bandwidth_gbs), the
kernel's GF/s are also given as a share of the measured FMA peak and the
1-row matmul's GB/s as a share of the measured read bandwidth; otherwise the
bandwidth reference is numpy streaming a large array. On a CPU with bfloat16
dot products, the same shapes with bfloat16 weights (stored [N, K], as
`tm.load(..., dtype="bf16")` keeps them) are given as a share of the
measured bfloat16 dot-product peak.

Each kernel variant named by --variants (default: the one the core picked,
and avx2 beside it where the CPU runs both) is measured against its own
probes: `tm.set_kernel_variant("avx2")` on an AVX-512 CPU runs the AVX2
kernels, and its FMA probe then runs AVX2 instructions, so the share is of
the AVX2 peak. numpy's OpenBLAS picks its own kernels; run with
OPENBLAS_CORETYPE=Haswell to compare with its AVX2 ones.

roofline_rows(threads, repeats, variants) returns the measurements as report
rows, each with the variant it ran on (`kernels`).
"""
from __future__ import annotations


import numpy as np

from report import row
from timing import bench_parser, best_time, beyond_caches_bytes, paired_times

SHAPES = [(512, 768, 2304), (512, 768, 3072), (512, 3072, 768), (512, 768, 768), (512, 768, 50257)]


def default_variants() -> list:
    """The variant the core picked, and avx2 after it where the CPU runs both."""
    import tinymech as tm

    picked = tm.kernel_variant()
    return [picked] + (["avx2"] if picked != "avx2" and "avx2" in tm.kernel_variants() else [])


def roofline_rows(threads: int, repeats: int = 3, variants=None) -> list:
    """For each kernel variant (default: default_variants()), rows
    "matmul-MxKxN" (GF/s, ratio tinymech / numpy, `peak_share` when the FMA
    probe exists), "fma-peak" (only with the probe), where the variant has
    bfloat16 dot products "bf16-peak" and "bf16-matmul-MxKxN" (GF/s, ratio =
    share of that peak), and "memory-read" (GB/s of the 1-row matmul, ratio =
    its share of the reference bandwidth); ids after the first variant's end
    in "-" and the variant's name, and every row names its variant in `kernels`.
    The core runs `threads` threads meanwhile; threads and variant are restored after."""
    import tinymech as tm

    variants = list(variants or default_variants())
    before, picked = tm.get_num_threads(), tm.kernel_variant()
    tm.set_num_threads(threads)
    rows = []
    try:
        for i, variant in enumerate(variants):
            tm.set_kernel_variant(variant)
            for r in _roofline_rows(repeats):
                r["kernels"] = variant
                if i:
                    r["id"] += f"-{variant}"
                rows.append(r)
    finally:
        tm.set_num_threads(before)
        tm.set_kernel_variant(picked)
    return rows


def _roofline_rows(repeats: int) -> list:
    from tinymech import _core

    kernels = _core.kernels
    # the native probes run on the core's thread pool; the FMA probe for its default time
    peak = kernels.fma_peak_gflops() if hasattr(kernels, "fma_peak_gflops") else None
    rng = np.random.default_rng(0)
    rows = []
    if peak is not None:
        rows.append(row("fma-peak", "FMA peak, native probe (GF/s)", peak, unit="GF/s"))
    problems = []
    for M, K, N in SHAPES:
        transposed = N == 50257  # the unembedding is stored [vocab, d_model]
        B = rng.standard_normal((N, K) if transposed else (K, N), dtype=np.float32)
        problems.append((M, K, N, rng.standard_normal((M, K), dtype=np.float32), B, transposed))
    for M, K, N, A, B, t in problems:
        flops = 2 * M * K * N
        pairs = paired_times(lambda: kernels.matmul(A, B, None, t), lambda: A @ (B.T if t else B), repeats)
        t_ours, t_ref = pairs[len(pairs) // 2][1:]  # the pair of the median ratio
        ours, ref = flops / t_ours / 1e9, flops / t_ref / 1e9
        share = ours / peak if peak else None
        spread = f"ratio {pairs[0][0]:.2f}–{pairs[-1][0]:.2f} over {len(pairs)} pairs"
        rows.append(row(f"matmul-{M}x{K}x{N}", f"matmul {M}x{K}x{N}", ours, ref, "GF/s", ours / ref,
                        ref_name="numpy", note=(f"{share:.0%} of {kernels.variant()} FMA peak; " if share else "")
                        + spread, peak_share=share))
    rows += _bf16_rows(kernels, problems, repeats)

    size = beyond_caches_bytes()  # the matmul's matrix and the probes' buffer alike
    big = np.empty(size // 4 // 4096 * 4096, dtype=np.float32)
    big[:] = 1.0 / 3  # (any value: the time is the reading)
    mat = big.reshape(-1, 4096)
    vec = rng.standard_normal((1, mat.shape[0]), dtype=np.float32)
    ours = mat.nbytes / best_time(lambda: kernels.matmul(vec, mat, None, False), repeats) / 1e9
    note = ""
    if hasattr(kernels, "read_bandwidth_probes"):
        probes = kernels.read_bandwidth_probes(mat.nbytes)
        ref, ref_name = max(probes.values()), "native read probe, best way"
        note = "probes (GB/s): " + ", ".join(f"{way} {gbs:.1f}" for way, gbs in probes.items())
    else:
        ref, ref_name = big.nbytes / best_time(lambda: big.sum(), repeats) / 1e9, "numpy sum"
    rows.append(row("memory-read", "memory read, 1-row matmul (share of bandwidth)", ours, ref, "GB/s", ours / ref,
                    ref_name=ref_name, note=note))
    return rows


def _bf16_rows(kernels, problems, repeats: int) -> list:
    """The bfloat16 kernel on the same problems, against the bfloat16
    dot-product peak; none where the CPU has no such instructions."""
    bf16_peak = kernels.bf16_dot_peak_gflops() if hasattr(kernels, "bf16_dot_peak_gflops") else 0.0
    if not bf16_peak:
        return []
    rows = [row("bf16-peak", "bfloat16 dot-product peak, native probe (GF/s)", bf16_peak, unit="GF/s")]
    for M, K, N, A, B, transposed in problems:
        B16 = kernels.round_bf16(B if transposed else np.ascontiguousarray(B.T))  # [N, K]
        ours = 2 * M * K * N / best_time(lambda: kernels.matmul(A, B16, None, True), repeats) / 1e9
        rows.append(row(f"bf16-matmul-{M}x{K}x{N}", f"bf16 matmul {M}x{K}x{N} (share of bf16 peak)", ours,
                        bf16_peak, "GF/s", ours / bf16_peak, ref_name="bf16 dot-product peak"))
    return rows


def main():
    parser = bench_parser(__doc__.splitlines()[0], layers=False)
    parser.add_argument("--variants", help="comma-separated kernel variants (default: the core's pick, and avx2)")
    args = parser.parse_args()

    import tinymech as tm

    tm.set_num_threads(args.threads)
    variants = args.variants.split(",") if args.variants else default_variants()
    for variant in variants:
        print_rows(roofline_rows(args.threads, args.repeats, [variant]), args.threads, variant)


def print_rows(rows: list, threads: int, variant: str) -> None:
    print(f"threads {threads}, kernels {variant}")
    peak = next((r["tinymech"] for r in rows if r["id"] == "fma-peak"), None)
    if peak is not None:
        print(f"FMA peak (native probe): {peak:.1f} GF/s")
    print(f"{'matmul M x K x N':<26}{'tinymech GF/s':>15}{'numpy GF/s':>13}{'ratio':>8}"
          + (f"{'of peak':>9}" if peak else ""))
    for r in rows:
        if r["id"].startswith("matmul-"):
            shape = r["id"][len("matmul-"):].replace("x", " x ")
            share = f"{r['peak_share']:>8.0%}" if r["peak_share"] else ""
            print(f"{shape:<26}{r['tinymech']:>15.1f}{r['reference']:>13.1f}{r['ratio']:>7.2f}x {share}".rstrip())
    bf16_peak = next((r["tinymech"] for r in rows if r["id"] == "bf16-peak"), None)
    if bf16_peak is not None:
        print(f"bfloat16 dot-product peak (native probe): {bf16_peak:.1f} GF/s")
        for r in rows:
            if r["id"].startswith("bf16-matmul-"):
                shape = r["id"][len("bf16-matmul-"):].replace("x", " x ")
                print(f"bf16 weights {shape:<22}{r['tinymech']:>8.1f} GF/s {r['ratio']:>5.0%} of bf16 peak")
    mem = rows[-1]
    print(f"memory read: {mem['ref_name']} {mem['reference']:.1f} GB/s, "
          f"tinymech 1-row matmul {mem['tinymech']:.1f} GB/s ({mem['ratio']:.2f}x)")


if __name__ == "__main__":
    main()
