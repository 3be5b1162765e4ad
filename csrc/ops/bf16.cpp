#include "ops/bf16.hpp"

#include <algorithm>
#include <cstring>

#include "kernels/kernels.hpp"
#include "runtime/threads.hpp"

namespace tmech {

namespace {
// Plain integer rounding, which the compiler vectorizes; the kernels' own
// round_bf16 flushes subnormals where the CPU converts in hardware.
void round_bf16_exact(const float* x, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    out[i] = (bits & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t{0x7FC0}
                                                : static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
  }
}
}  // namespace

void to_bf16_matrix(const float* x, int64_t rows, int64_t cols, bool transpose, uint16_t* out) {
  if (!transpose) {
    parallel_for(
        rows * cols, [&](int64_t i0, int64_t i1, int) { round_bf16_exact(x + i0, out + i0, i1 - i0); }, 1 << 16);
    return;
  }
  // 16 columns of x at a time, transposed into the thread's scratch, then
  // rounded as 16 rows of out.
  constexpr int64_t kBlock = 16;
  const KernelTable& kt = kernels::active();
  parallel_for(
      cols,
      [&](int64_t c0, int64_t c1, int t) {
        float* tmp = thread_scratch(t, kBlock * rows);
        for (int64_t c = c0; c < c1; c += kBlock) {
          const int64_t w = std::min(kBlock, c1 - c);
          kt.transpose(x + c, cols, rows, w, tmp, rows);
          for (int64_t j = 0; j < w; ++j) round_bf16_exact(tmp + j * rows, out + (c + j) * rows, rows);
        }
      },
      kBlock);
}

}  // namespace tmech
