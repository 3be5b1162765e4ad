// Synthetic multiply-add loops for benchmarks/roofline.py: independent
// accumulator chains, enough to cover the instruction's latency, so they run
// at the core's peak rate and say what "% of peak" means on this machine.
#include "kernels/variant.hpp"

namespace tmech {
namespace TM_ARCH {
using namespace tm_simd;

namespace {
// `iters` rounds of acc = step(acc) on every chain; returns their sum so
// that the loop is kept.
template <class Step>
float run_chains(int64_t iters, Step step) {
  vf acc[kProbeChains];
  for (int c = 0; c < kProbeChains; ++c) acc[c] = vset1(0.001f * static_cast<float>(c));
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kProbeChains; ++c) acc[c] = step(acc[c]);
  }
  vf s = acc[0];
  for (int c = 1; c < kProbeChains; ++c) s = vadd(s, acc[c]);
  return vsum(s);
}
}  // namespace

float fma_chains(int64_t iters) {
  const vf mul = vset1(kProbeMul), add = vset1(kProbeAdd);
  return run_chains(iters, [&](vf acc) { return vfma(acc, mul, add); });
}

int64_t fma_chains_flops(int64_t iters) { return iters * kProbeChains * VL * 2; }

// Several stretches of memory read side by side: some CPUs (Zen 3) read
// memory fastest with several streams in flight in different pages.
template <int S>
float sum_stretches(const float* x, int64_t n) {
  const int64_t len = n / S / VL * VL;
  vf acc[S];
  for (int s = 0; s < S; ++s) acc[s] = vzero();
  for (int64_t i = 0; i < len; i += VL)
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) acc[s] = vadd(acc[s], vload(x + s * len + i));
  vf total = vzero();
  for (int s = 0; s < S; ++s) total = vadd(total, acc[s]);
  float sum = vsum(total);
  for (int64_t i = S * len; i < n; ++i) sum += x[i];
  return sum;
}

float read_stretches(const float* x, int64_t n, int stretches) {
  static_assert(kMaxStretches == 8, "one case per count");
  switch (stretches < 1 ? 1 : stretches > kMaxStretches ? kMaxStretches : stretches) {
    case 1: return sum_stretches<1>(x, n);
    case 2: return sum_stretches<2>(x, n);
    case 3: return sum_stretches<3>(x, n);
    case 4: return sum_stretches<4>(x, n);
    case 5: return sum_stretches<5>(x, n);
    case 6: return sum_stretches<6>(x, n);
    case 7: return sum_stretches<7>(x, n);
    default: return sum_stretches<8>(x, n);
  }
}

#if defined(__AVX512BF16__)
// vdpbf16ps: each lane of each instruction adds two products (the bfloat16
// matmul's inner step), so its peak is that kernel's yardstick.
float bf16_dot_chains(int64_t iters) {
  const int a_pair = kProbeBf16A << 16 | kProbeBf16A, b_pair = kProbeBf16B << 16 | kProbeBf16B;
  const __m512bh a = (__m512bh)_mm512_set1_epi32(a_pair), b = (__m512bh)_mm512_set1_epi32(b_pair);
  return run_chains(iters, [&](vf acc) { return _mm512_dpbf16_ps(acc, a, b); });
}
int64_t bf16_dot_chains_flops(int64_t iters) { return iters * kProbeChains * VL * 4; }
#endif

}  // namespace TM_ARCH
}  // namespace tmech
