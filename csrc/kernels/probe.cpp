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
