// Named plain reference twins of the kernel table's entries (kernels.hpp):
// what each kernel computes, written as the plainest loop in double
// precision, compiled once (not per variant). They are the specification the
// native tests hold every variant to; a twin shares no code with the SIMD
// kernel, so it catches a bug in the algorithm, not only in one instruction set.
//
// A twin takes its kernel's arguments in the same order; outputs are double.
// A kernel that works in place (scale, softmax, rope) reads its input and
// writes `out`, the twin's last argument.
#pragma once
#include <cstdint>

#include "kernels/kernels.hpp"

namespace tmech {

// C[m * a.ldc + n] for m < a.M, n in [n_begin, n_end): a.C (when
// a.accumulate) + a.bias + A · B, B from a.B or a.B16 with its strides. A is
// read as given: a caller whose variant rounds A to bfloat16 (A_pairs, or the
// many-row bf16 path) passes A rounded.
void ref_matmul_cols(const MatmulArgs& a, int64_t n_begin, int64_t n_end, double* C);
double ref_dot(const float* a, const float* b, int64_t n);
void ref_axpy(const float* y, float alpha, const float* x, int64_t n, double* out);  // y + alpha x
void ref_add(double* out, const float* a, const float* b, int64_t n);
// The nearer of the two bfloat16 values around x, the one with an even last
// bit on a tie; beyond the largest, infinity; NaN stays NaN (quiet).
void ref_round_bf16(const float* x, uint16_t* out, int64_t n);
// round_a_pairs's layout: blocks of kMatmulKC columns, each [M][pairs], a
// pair (A[m, k], A[m, k + 1]) rounded as ref_round_bf16, the first in the low half.
void ref_round_a_pairs(const float* A, int64_t lda, int64_t M, int64_t K, int64_t m_begin, int64_t m_end,
                       uint32_t* out);
void ref_transpose(const float* src, int64_t ld_src, int64_t rows, int64_t cols, float* dst, int64_t ld_dst);
// The j where x[j] + alpha w[j] <= limit[j] fails (greater, or NaN) or x[j] is -inf.
int64_t ref_screen(const float* x, const float* w, float alpha, const float* limit, int64_t n, int32_t* out);
// int16 screen: pack_i16's layout, and matmul_i16's C with the integer sum
// exact (int64) and the scales applied in double.
void ref_pack_i16(const int16_t* B, int64_t ldb, int64_t N, int64_t K, int16_t* out);
void ref_matmul_i16(const int16_t* A, int64_t lda, int64_t M, const int16_t* B, int64_t ldb, int64_t N, int64_t K,
                    const float* row_scale, const float* col_scale, double* C);
void ref_scale(const float* x, float alpha, int64_t n, double* out);
// The mean and sqrt(variance + eps) of x[0, n), variance over n.
void ref_row_stats(const float* x, int64_t n, float eps, double* mean, double* scale);
void ref_normalize(const float* x, float mean, float scale, const float* w, const float* b, double* out, int64_t n);
// GPT-2's gelu_new: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
void ref_gelu_new(const float* x, double* out, int64_t n);
// exp(x - max) / sum; a row of -inf only gives zeros.
void ref_softmax(const float* x, int64_t n, double* out);
// log(sum exp(x)) for n >= 1; NaN if some x is NaN or +inf.
double ref_log_sum_exp(const float* x, int64_t n);
void ref_exp(const float* x, double* out, int64_t n);
void ref_silu_mul(const float* gate, const float* up, double* out, int64_t n);  // gate / (1 + exp(-gate)) * up
// out[0, 2 half): x1 cos - x2 sin, then x2 cos + x1 sin, with x1 = x[0, half), x2 = x[half, 2 half).
void ref_rope(const float* x, const float* cos, const float* sin, int64_t half, double* out);
// The probes (kernels.hpp's kProbe constants), for a variant of `lanes` lanes:
// the sum over every chain and lane after `iters` steps, and the
// floating-point operations the steps take (a multiply-add is two).
double ref_fma_chains(int64_t iters, int64_t lanes);
int64_t ref_fma_chains_flops(int64_t iters, int64_t lanes);
double ref_bf16_dot_chains(int64_t iters, int64_t lanes);
int64_t ref_bf16_dot_chains_flops(int64_t iters, int64_t lanes);

}  // namespace tmech
