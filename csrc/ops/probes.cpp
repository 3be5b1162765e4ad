#include "ops/probes.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/kernels.hpp"
#include "ops/matmul.hpp"
#include "runtime/threads.hpp"

namespace tmech {
namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// GFLOP/s of `chains` (a probe of the kernel table) on every pool thread at once.
double chains_gflops(float (*chains)(int64_t), int64_t (*flops)(int64_t), double seconds) {
  // Calibrate on one thread so every thread runs about `seconds`.
  int64_t iters = 1 << 16;
  for (double t0 = now(); now() - t0 < 0.02; iters *= 2) chains(iters);
  const double per_iter = [&] {
    const double t0 = now();
    chains(iters);
    return (now() - t0) / static_cast<double>(iters);
  }();
  // Many small pieces, so every thread stays busy to the end whichever takes which.
  constexpr int64_t kPiecesPerThread = 32;
  iters = std::max<int64_t>(1, static_cast<int64_t>(seconds / per_iter / kPiecesPerThread));
  const int64_t pieces = num_threads() * kPiecesPerThread;
  std::atomic<float> sink{0.f};
  const double t0 = now();
  parallel_for(pieces, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) sink = sink + chains(iters);
  });
  const double elapsed = now() - t0;
  return static_cast<double>(flops(iters)) * pieces / elapsed / 1e9;
}
}  // namespace

namespace {
void check_seconds(double seconds) {
  if (!(seconds > 0 && seconds <= 60)) throw std::invalid_argument("a peak probe runs for (0, 60] seconds");
}
}  // namespace

double fma_peak_gflops(double seconds) {
  check_seconds(seconds);
  const KernelTable& kt = kernels::active();
  return chains_gflops(kt.fma_chains, kt.fma_chains_flops, seconds);
}

double bf16_dot_peak_gflops(double seconds) {
  check_seconds(seconds);
  const KernelTable& kt = kernels::active();
  if (!kt.bf16_dot_chains) return 0.0;
  return chains_gflops(kt.bf16_dot_chains, kt.bf16_dot_chains_flops, seconds);
}

const std::vector<std::string>& read_ways() {
  static const std::vector<std::string> ways = {"one_stream",  "stretches_2", "stretches_4",
                                                "stretches_6", "stretches_8", "matvec"};
  return ways;
}

std::vector<std::pair<std::string, double>> read_bandwidth_probes(int64_t bytes, int repeats,
                                                                  const std::vector<std::string>& ways, bool mean) {
  if (bytes <= 0 || repeats <= 0) throw std::invalid_argument("bytes and repeats must be positive");
  if (bytes > (int64_t{1} << 36) || repeats > 1000)
    throw std::invalid_argument("a read probe takes at most 64 GiB and 1000 repeats");
  const std::vector<std::string>& known = read_ways();
  for (auto way = ways.begin(); way != ways.end(); ++way) {
    if (std::find(known.begin(), known.end(), *way) == known.end())
      throw std::invalid_argument("no read probe '" + *way + "'; there are one_stream, stretches_2/4/6/8 and matvec");
    if (std::find(ways.begin(), way, *way) != way) throw std::invalid_argument("read probe '" + *way + "' named twice");
  }
  const KernelTable& kt = kernels::active();
  constexpr int64_t kCols = 4096;  // the matvec's view: [rows, kCols]
  const int64_t rows = std::max<int64_t>(bytes / 4 / kCols, 1), n = rows * kCols;
  std::vector<float> buf(static_cast<size_t>(n), 1.f), ones(static_cast<size_t>(rows), 1.f),
      out(static_cast<size_t>(kCols));
  const float* data = buf.data();
  std::atomic<float> sink{0.f};
  auto pass = [&](const std::string& way) {
    if (way == "matvec") {
      matmul(ones.data(), 1, rows, rows, Matrix{data}, kCols, kCols, 1, nullptr, out.data(), kCols);
      return;
    }
    const int stretches = way == "one_stream" ? 1 : way.back() - '0';
    parallel_for(
        n, [&](int64_t b, int64_t e, int) { sink = sink + kt.read_stretches(data + b, e - b, stretches); }, 4096);
  };
  std::vector<std::pair<std::string, double>> out_gbs;
  for (const std::string& way : ways.empty() ? known : ways) {
    double best = 1e30, total = 0;
    for (int r = 0; r < repeats + 1; ++r) {  // the first pass only faults the pages in
      const double t0 = now();
      pass(way);
      const double t = now() - t0;
      if (r > 0) best = std::min(best, t), total += t;
    }
    out_gbs.emplace_back(way, static_cast<double>(n) * 4 / (mean ? total / repeats : best) / 1e9);
  }
  return out_gbs;
}

double read_bandwidth_gbs(int64_t bytes, int repeats) {
  double best = 0;
  for (const auto& way : read_bandwidth_probes(bytes, repeats, {}, false)) best = std::max(best, way.second);
  return best;
}

}  // namespace tmech
