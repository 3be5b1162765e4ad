"""How close the core's kernels come to this machine's limits.

    python benchmarks/roofline.py [--threads N]

Prints matmul GFLOP/s of tinymech's kernel and of numpy's BLAS on the shapes a
GPT-2-small prefill uses, and memory read bandwidth (GB/s) measured by
streaming a large array, with the kernel's share of each.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from timing import best_time



def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import tinymech as tm
    from tinymech import _core

    tm.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"threads {args.threads}, kernels {_core.kernels.variant()}")
    print(f"{'matmul M x K x N':<26}{'tinymech GF/s':>15}{'numpy GF/s':>13}{'ratio':>8}")
    shapes = [(512, 768, 2304), (512, 768, 3072), (512, 3072, 768), (512, 768, 768), (512, 768, 50257)]
    for M, K, N in shapes:
        A = rng.standard_normal((M, K), dtype=np.float32)
        transposed = N == 50257  # the unembedding is stored [vocab, d_model]
        B = rng.standard_normal((N, K) if transposed else (K, N), dtype=np.float32)
        flops = 2 * M * K * N
        ours = best_time(lambda: _core.kernels.matmul(A, B, None, transposed), 3)
        ref = best_time(lambda: A @ (B.T if transposed else B), 3)
        print(f"{f'{M} x {K} x {N}':<26}{flops / ours / 1e9:>15.1f}{flops / ref / 1e9:>13.1f}{ref / ours:>7.2f}x")

    big = rng.standard_normal(64 * 1024 * 1024 // 4 * 8, dtype=np.float32)  # 256 MB, far beyond caches
    t_np = best_time(lambda: big.sum(), 3)
    # a 1-row matmul streams the whole matrix once: the decode pattern
    mat = big.reshape(-1, 4096)
    vec = rng.standard_normal((1, mat.shape[0]), dtype=np.float32)
    t_ours = best_time(lambda: _core.kernels.matmul(vec, mat, None, False), 3)
    print(f"memory read: numpy sum {big.nbytes / t_np / 1e9:.1f} GB/s, "
          f"tinymech 1-row matmul {mat.nbytes / t_ours / 1e9:.1f} GB/s ({t_np / t_ours:.2f}x)")


if __name__ == "__main__":
    main()
