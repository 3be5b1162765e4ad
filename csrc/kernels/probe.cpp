// A synthetic FMA loop for benchmarks/roofline.py: independent accumulator
// chains, enough to cover the FMA latency, so it runs at the core's peak
// floating-point rate and says what "% of peak" means on this machine.
#include "kernels/variant.hpp"

namespace tmech {
namespace TM_ARCH {
using namespace tm_simd;

float fma_chains(int64_t iters) {
  constexpr int kChains = 12;
  vf acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = vset1(0.001f * static_cast<float>(c));
  const vf mul = vset1(0.999f), add = vset1(1e-4f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = vfma(acc[c], mul, add);
  }
  vf s = acc[0];
  for (int c = 1; c < kChains; ++c) s = vadd(s, acc[c]);
  return vsum(s);
}

int64_t fma_chains_flops(int64_t iters) { return iters * 12 * VL * 2; }

#if defined(__AVX512BF16__)
// The same with vdpbf16ps: each lane of each instruction adds two products
// (the bfloat16 matmul's inner step), so its peak is that kernel's yardstick.
float bf16_dot_chains(int64_t iters) {
  constexpr int kChains = 12;
  vf acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = vset1(0.001f * static_cast<float>(c));
  const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f7f3f7f), b = (__m512bh)_mm512_set1_epi32(0x38d138d1);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
  }
  vf s = acc[0];
  for (int c = 1; c < kChains; ++c) s = vadd(s, acc[c]);
  return vsum(s);
}
int64_t bf16_dot_chains_flops(int64_t iters) { return iters * 12 * VL * 4; }
#endif

}  // namespace TM_ARCH
}  // namespace tmech
