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
// 23-27 GB/s while the decode's 1-row matmul streamed 28-42), whose
// prefetchers need several streams in flight to fill the memory pipeline;
// four interleaved streams per thread, and the 1-row matmul itself (the
// decode's own read), each read every byte once, so the fastest is an honest
// measure of what the hardware gives.
struct ReadProbes {
  double one_stream = 0, four_streams = 0, matvec = 0;
  double best() const;
};
ReadProbes read_bandwidth_probes(int64_t bytes, int repeats);

}  // namespace tmech
