// Multi-threaded drivers over the kernel table: split the work into one
// range per thread and call the active SIMD variant on each range.
#pragma once
#include <cstdint>
#include <vector>

#include "core/weights.hpp"

namespace tmech {

// C[M, N] = A[M, K] · B + bias (+ C if accumulate); B's element (k, n) is at
// B[k * b_stride_k + n * b_stride_n]; B is float32 or bfloat16.
void matmul(const float* A, int64_t M, int64_t K, int64_t lda, Matrix B, int64_t N,
            int64_t b_stride_k, int64_t b_stride_n, const float* bias, float* C, int64_t ldc,
            bool accumulate = false);

// A[M, K] (rows lda floats apart) rounded to bfloat16 pairs, over the
// threads, into buf, as MatmulArgs::A_pairs for a matmul with bfloat16 weights;
// null where nothing would read it (no bfloat16 dot products, or few rows).
const uint32_t* round_to_pairs(const float* A, int64_t M, int64_t K, int64_t lda, std::vector<uint32_t>& buf);

// out[r] = LayerNorm(x[r]) * w + b for rows x[rows, n].
void layernorm_rows(const float* x, int64_t rows, int64_t n, float eps, const float* w,
                    const float* b, float* out);

// x[rows, cols] as bfloat16 bits, to nearest, ties to even (subnormals kept,
// NaN as 0x7FC0: torch's rounding), into out[rows, cols], or out[cols, rows]
// when transpose; over the threads (loading a model in bf16 converts every
// weight matrix).
void to_bf16_matrix(const float* x, int64_t rows, int64_t cols, bool transpose, uint16_t* out);

// out[r] = log(sum_j exp(x[r, j])) for rows x[rows, n], n >= 1.
void log_sum_exp_rows(const float* x, int64_t rows, int64_t n, float* out);

// out[b, t] = log_sum_exp(logits[b, t]) - logits[b, t, tokens[b, t + 1]] for
// t < T - 1: each next token's cross-entropy, [B, T - 1]. Token ids must be
// in [0, V).
void token_losses(const float* logits, const int32_t* tokens, int64_t B, int64_t T, int64_t V, float* out);

void gelu_new_rows(float* x, int64_t count);
void add_inplace(float* x, const float* y, int64_t count);  // x += y

}  // namespace tmech
