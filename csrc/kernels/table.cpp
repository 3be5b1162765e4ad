// Gathers this variant's kernels into its KernelTable.
#include "kernels/variant.hpp"

namespace tmech {
namespace TM_ARCH {
const KernelTable& table() {
  static const KernelTable t = {TM_STR(TM_ARCH), matmul_cols, dot,       axpy,     add,
                                scale,           row_stats,   normalize, gelu_new, softmax,
                                exp,             silu_mul,    rope,      fma_chains,
                                fma_chains_flops};
  return t;
}
}  // namespace TM_ARCH
}  // namespace tmech
