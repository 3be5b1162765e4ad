// Included by every kernel source: names the namespace of the variant being
// compiled (tmech::avx512, tmech::avx2, tmech::scalar, tmech::neon) and declares its
// entry points, which table.cpp gathers into a KernelTable.
#pragma once
#include "kernels/kernels.hpp"
#include "kernels/simd.hpp"

#ifndef TM_ARCH
#error "TM_ARCH must name the kernel variant being compiled"
#endif
#define TM_STR2(x) #x
#define TM_STR(x) TM_STR2(x)

namespace tmech {
namespace TM_ARCH {
void matmul_cols(const MatmulArgs& a, int64_t n_begin, int64_t n_end);
float dot(const float* a, const float* b, int64_t n);
void axpy(float* y, float alpha, const float* x, int64_t n);
void add(float* out, const float* a, const float* b, int64_t n);
void round_bf16(const float* x, uint16_t* out, int64_t n);
void round_a_pairs(const float* A, int64_t lda, int64_t M, int64_t K, int64_t m_begin, int64_t m_end, uint32_t* out);
void transpose(const float* src, int64_t ld_src, int64_t rows, int64_t cols, float* dst, int64_t ld_dst);
int64_t screen(const float* x, const float* w, float alpha, const float* limit, int64_t n, int32_t* out);
int64_t quantize_i16(const float* x, int64_t n, int32_t q_cap, int64_t l1_cap, int16_t* out, float* scale,
                     float* max_abs);
void pack_i16(const int16_t* B, int64_t ldb, int64_t N, int64_t K, int16_t* out);
void matmul_i16(const int16_t* A, int64_t lda, int64_t M, const int16_t* B_packed, int64_t N, int64_t K,
                const float* row_scale, const float* col_scale, float* C, int64_t ldc);
void scale(float* x, float alpha, int64_t n);
void row_stats(const float* x, int64_t n, float eps, float* mean, float* scale);
void normalize(const float* x, float mean, float scale, const float* w, const float* b, float* out, int64_t n);
void gelu_new(const float* x, float* out, int64_t n);
void softmax(float* x, int64_t n);
float log_sum_exp(const float* x, int64_t n);
void exp(const float* x, float* out, int64_t n);
void silu_mul(const float* gate, const float* up, float* out, int64_t n);
void rope(float* x, const float* cos, const float* sin, int64_t half);
float fma_chains(int64_t iters);
int64_t fma_chains_flops(int64_t iters);
float read_stretches(const float* x, int64_t n, int stretches);
#if defined(__AVX512BF16__)
float bf16_dot_chains(int64_t iters);
int64_t bf16_dot_chains_flops(int64_t iters);
#endif
const KernelTable& table();
}  // namespace TM_ARCH
}  // namespace tmech
