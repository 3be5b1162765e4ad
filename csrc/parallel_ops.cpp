#include "parallel_ops.hpp"

#include "kernels/kernels.hpp"
#include "threads.hpp"

namespace tmech {
namespace {
constexpr int64_t kElementGrain = 4096;  // below this, splitting costs more than it saves
}

void matmul(const float* A, int64_t M, int64_t K, int64_t lda, const float* B, int64_t N,
            int64_t b_stride_k, int64_t b_stride_n, const float* bias, float* C, int64_t ldc,
            bool accumulate) {
  const KernelTable& kt = kernels::active();
  const MatmulArgs base{M, N, K, A, lda, B, b_stride_k, b_stride_n, bias, C, ldc, accumulate, nullptr};
  // Columns are split on 64-float boundaries: whole panels for every variant.
  parallel_for(
      N,
      [&](int64_t n0, int64_t n1, int t) {
        MatmulArgs a = base;
        a.scratch = thread_scratch(t, matmul_scratch_floats());
        kt.matmul_cols(a, n0, n1);
      },
      64);
}

void layernorm_rows(const float* x, int64_t rows, int64_t n, float eps, const float* w,
                    const float* b, float* out) {
  const KernelTable& kt = kernels::active();
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      float mean, scale;
      kt.row_stats(x + r * n, n, eps, &mean, &scale);
      kt.normalize(x + r * n, mean, scale, w, b, out + r * n, n);
    }
  });
}

void gelu_new_rows(float* x, int64_t count) {
  const KernelTable& kt = kernels::active();
  parallel_for(count, [&](int64_t i0, int64_t i1, int) { kt.gelu_new(x + i0, x + i0, i1 - i0); },
               kElementGrain);
}

void add_inplace(float* x, const float* y, int64_t count) {
  const KernelTable& kt = kernels::active();
  parallel_for(count, [&](int64_t i0, int64_t i1, int) { kt.add(x + i0, x + i0, y + i0, i1 - i0); },
               kElementGrain);
}

}  // namespace tmech
