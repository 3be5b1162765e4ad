// Gathers this variant's kernels into its KernelTable.
#include "kernels/variant.hpp"

namespace tmech {
namespace TM_ARCH {
#if defined(__AVX512BF16__)
constexpr bool kBf16DotProducts = true;
#else
constexpr bool kBf16DotProducts = false;
#endif
const KernelTable& table() {
  static const KernelTable t = {TM_STR(TM_ARCH), kBf16DotProducts, matmul_cols,      dot,     axpy,
                                add,             round_bf16,       round_a_pairs,    transpose,
                                screen,          scale,            row_stats,        normalize,
                                gelu_new,        softmax,          exp,              silu_mul,
                                rope,            fma_chains,       fma_chains_flops};
  return t;
}
}  // namespace TM_ARCH
}  // namespace tmech
