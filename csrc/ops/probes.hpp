// What this machine can do, measured with the core's own thread pool:
// the floating-point peak and the memory read bandwidth that
// benchmarks/roofline.py compares the kernels against.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tmech {

// GFLOP/s of independent FMA chains on every pool thread at once.
double fma_peak_gflops(double seconds);
// The same with bfloat16 dot products (vdpbf16ps); 0 where the active
// kernel variant has none.
double bf16_dot_peak_gflops(double seconds);
// GB/s of reading a `bytes`-sized buffer (far larger than the caches), the
// best pass of the best way (read_bandwidth_probes); bytes and repeats positive.
double read_bandwidth_gbs(int64_t bytes, int repeats);

// The ways to read the buffer, each reading every byte once:
// - one_stream: each thread's contiguous share read as one stream. It
//   under-reads on some CPUs (AMD Zen 3 here: 26-37 GB/s where stretches read
//   34-60 from one minute to the next, 1.3-1.6x more in the same minute),
//   whose prefetchers need several streams in flight in different pages to
//   fill the memory pipeline;
// - stretches_S (S = 2, 4, 6, 8): each thread's share as S stretches read
//   side by side (KernelTable::read_stretches);
// - matvec: the 1-row matmul itself (the decode's own read).
// The fastest is an honest measure of what the hardware gives.
const std::vector<std::string>& read_ways();
// (way, GB/s) for each of `ways` (all read_ways() when empty; an unknown name
// is an invalid_argument): the best of `repeats` passes, or with `mean` all
// passes' bytes over all their time (to compare with a run of the same length).
std::vector<std::pair<std::string, double>> read_bandwidth_probes(int64_t bytes, int repeats,
                                                                  const std::vector<std::string>& ways, bool mean);

}  // namespace tmech
