// What this machine can do, measured with the core's own thread pool:
// the floating-point peak and the memory read bandwidth that
// benchmarks/roofline.py compares the kernels against.
#pragma once
#include <cstdint>

namespace tmech {

// GFLOP/s of independent FMA chains on every pool thread at once.
double fma_peak_gflops(double seconds);
// The same with bfloat16 dot products (vdpbf16ps); 0 where the active
// kernel variant has none.
double bf16_dot_peak_gflops(double seconds);
// GB/s of reading a `bytes`-sized buffer (far larger than the caches), every
// pool thread streaming its own contiguous share; bytes and repeats positive.
double read_bandwidth_gbs(int64_t bytes, int repeats);

}  // namespace tmech
