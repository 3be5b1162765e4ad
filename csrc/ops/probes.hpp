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
// GB/s of reading a `bytes`-sized buffer (far larger than the caches), the
// best of several ways to read it (ReadProbes); bytes and repeats positive.
double read_bandwidth_gbs(int64_t bytes, int repeats);

// Each way, best of `repeats` passes. One stream per thread (a dot product of
// the thread's contiguous share) under-reads on some CPUs (AMD Zen 3 here:
// 29 GB/s where 2-8 stretches of each thread's share read side by side gave
// 42-60 from one minute to the next), whose prefetchers need several streams
// in flight in different pages to fill the memory pipeline. `stretches` is
// the best of 2, 4, 6 and 8 stretches per thread; `matvec` the 1-row matmul
// itself (the decode's own read). Each reads every byte once, so the fastest
// is an honest measure of what the hardware gives.
struct ReadProbes {
  double one_stream = 0, stretches = 0, matvec = 0;
  double best() const;
};
ReadProbes read_bandwidth_probes(int64_t bytes, int repeats);

}  // namespace tmech
