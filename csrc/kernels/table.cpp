// Gathers this variant's kernels into its KernelTable.
#include "kernels/variant.hpp"

namespace tmech {
namespace TM_ARCH {
#if defined(__AVX512BF16__)
constexpr bool kBf16DotProducts = true;
#else
constexpr bool kBf16DotProducts = false;
constexpr float (*bf16_dot_chains)(int64_t) = nullptr;
constexpr int64_t (*bf16_dot_chains_flops)(int64_t) = nullptr;
#endif
// Rows up to which streaming [K, N] weights beats packing them (measured on
// Zen 4 in alternation, float32 weights from memory: with 16 lanes streaming
// was 1.2-1.9x faster up to 16 rows and slower from 24; with 8 lanes, 1.2-2x
// up to 8 rows and about even at 12).
// The int16 screen pays on AVX2 (measured on Zen 3, docs/performance.md);
// AVX-512 without BF16 has not been measured with it.
#if defined(TM_ARCH_AVX2)
constexpr bool kInt16ScreenPays = true;
#else
constexpr bool kInt16ScreenPays = false;
#endif
constexpr int64_t kStreamRowsKN = tm_simd::VL >= 16 ? 16 : 8;
const KernelTable& table() {
  static const KernelTable t = {TM_STR(TM_ARCH),
                                kBf16DotProducts,
                                kInt16ScreenPays,
                                kStreamRowsKN,
                                matmul_cols,
                                dot,
                                axpy,
                                add,
                                round_bf16,
                                round_a_pairs,
                                transpose,
                                screen,
                                quantize_i16,
                                pack_i16,
                                matmul_i16,
                                scale,
                                row_stats,
                                normalize,
                                gelu_new,
                                softmax,
                                log_sum_exp,
                                exp,
                                silu_mul,
                                rope,
                                fma_chains,
                                fma_chains_flops,
                                read_stretches,
                                bf16_dot_chains,
                                bf16_dot_chains_flops};
  return t;
}
}  // namespace TM_ARCH
}  // namespace tmech
