#include "ops/matmul.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/kernels.hpp"
#include "runtime/threads.hpp"

namespace tmech {
namespace {

// A few rows against B stored [K, N]: split over K, so each thread streams
// one contiguous block of B's rows (split over N, every thread would read a
// short piece of every row). Each block's partial sums go to a buffer of its
// own and are added in block order: whichever thread takes which block, the
// same call gives the same bits.
void matmul_split_k(const MatmulArgs& base) {
  const KernelTable& kt = kernels::active();
  const int64_t M = base.M, N = base.N, K = base.K, partial_floats = M * N;
  const int64_t blocks = std::min<int64_t>(num_threads(), K / 64);
  thread_local std::vector<float> partials;
  partials.resize(static_cast<size_t>(blocks * partial_floats));
  float* parts = partials.data();  // (a thread_local: not to be named inside the lambda)
  parallel_for(
      blocks,
      [&](int64_t b0, int64_t b1, int t) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t k0 = K * b / blocks / 16 * 16, k1 = b + 1 == blocks ? K : K * (b + 1) / blocks / 16 * 16;
          MatmulArgs a = base;
          a.A += k0;
          if (a.B) a.B += k0 * base.b_stride_k;
          if (a.B16) a.B16 += k0 * base.b_stride_k;
          a.K = k1 - k0;
          a.bias = nullptr;
          a.C = parts + b * partial_floats;
          a.ldc = N;
          a.accumulate = false;
          a.scratch = thread_scratch(t, matmul_scratch_floats());
          kt.matmul_cols(a, 0, N);
        }
      },
      1);
  for (int64_t m = 0; m < M; ++m) {
    float* c = base.C + m * base.ldc;
    bool first = !base.accumulate;
    if (base.bias) {
      if (first)
        std::memcpy(c, base.bias, N * sizeof(float));
      else
        kt.add(c, c, base.bias, N);
      first = false;
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const float* p = parts + b * partial_floats + m * N;
      if (first)
        std::memcpy(c, p, N * sizeof(float));
      else
        kt.add(c, c, p, N);
      first = false;
    }
  }
}

}  // namespace

void matmul(const float* A, int64_t M, int64_t K, int64_t lda, Matrix B, int64_t N, int64_t b_stride_k,
            int64_t b_stride_n, const float* bias, float* C, int64_t ldc, bool accumulate,
            bool same_bits_for_any_threads) {
  const KernelTable& kt = kernels::active();
  MatmulArgs base{M, N, K, A, lda, B.f32, b_stride_k, b_stride_n, bias, C, ldc, accumulate, nullptr, B.bf16};
  if (!same_bits_for_any_threads && matmul_streams_rows(kt, M, b_stride_n, B.bf16 != nullptr) && K >= 128 &&
      num_threads() > 1) {
    matmul_split_k(base);
    return;
  }
  // Every block of columns reads all of A: rounded to bfloat16 once here, not
  // once per block (an unembedding has a hundred blocks).
  thread_local std::vector<uint32_t> a_pairs;
  if (B.bf16) base.A_pairs = round_to_pairs(A, M, K, lda, a_pairs);
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

const uint32_t* round_to_pairs(const float* A, int64_t M, int64_t K, int64_t lda, std::vector<uint32_t>& buf) {
  const KernelTable& kt = kernels::active();
  if (!kt.bf16_dot_products || M <= kMatmulSmallM) return nullptr;
  buf.resize(static_cast<size_t>(matmul_a_pairs_words(M, K)));
  uint32_t* out = buf.data();  // (buf may be a thread_local: not to be named inside the lambda)
  parallel_for(M, [&](int64_t m0, int64_t m1, int) { kt.round_a_pairs(A, lda, M, K, m0, m1, out); }, 16);
  return out;
}

}  // namespace tmech
