// The threaded matrix multiply: the work split into one range per thread
// (columns, or K for a few rows), each range given to the active kernel variant.
#pragma once
#include <cstdint>
#include <vector>

#include "core/weights.hpp"

namespace tmech {

// C[M, N] = A[M, K] · B + bias (+ C if accumulate); B's element (k, n) is at
// B[k * b_stride_k + n * b_stride_n]; B is float32 or bfloat16. A few rows are
// split over K, in as many blocks as threads, so the bits depend on the thread
// count; same_bits_for_any_threads splits over columns only (the backward's promise).
void matmul(const float* A, int64_t M, int64_t K, int64_t lda, Matrix B, int64_t N, int64_t b_stride_k,
            int64_t b_stride_n, const float* bias, float* C, int64_t ldc, bool accumulate = false,
            bool same_bits_for_any_threads = false);

// A[M, K] (rows lda floats apart) rounded to bfloat16 pairs, over the
// threads, into buf, as MatmulArgs::A_pairs for a matmul with bfloat16 weights;
// null where nothing would read it (no bfloat16 dot products, or few rows).
const uint32_t* round_to_pairs(const float* A, int64_t M, int64_t K, int64_t lda, std::vector<uint32_t>& buf);

}  // namespace tmech
