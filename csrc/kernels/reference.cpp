#include "kernels/reference.hpp"

#include <cmath>
#include <cstring>
#include <limits>

namespace tmech {
namespace {

float bf16_value(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

uint16_t round_bf16_one(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint16_t toward_zero = static_cast<uint16_t>(bits >> 16);
  if (std::isnan(x)) return toward_zero | 0x40;  // the quiet bit
  if (std::isinf(x)) return toward_zero;
  // The candidates: x's bits cut to bfloat16, and the next bfloat16 away from
  // zero, one unit in the last of its 8 significant bits further (infinity
  // after the largest). Both differences are exact in double.
  const int exponent = static_cast<int>((bits >> 23) & 0xFF);
  const double unit = std::ldexp(1.0, (exponent > 0 ? exponent : 1) - 127 - 7);
  const double below = std::fabs(static_cast<double>(bf16_value(toward_zero)));
  const double magnitude = std::fabs(static_cast<double>(x));
  const double gap_below = magnitude - below, gap_above = below + unit - magnitude;
  const bool up = gap_above < gap_below || (gap_above == gap_below && (toward_zero & 1));
  return static_cast<uint16_t>(toward_zero + (up ? 1 : 0));
}

}  // namespace

void ref_matmul_cols(const MatmulArgs& a, int64_t n_begin, int64_t n_end, double* C) {
  for (int64_t m = 0; m < a.M; ++m)
    for (int64_t n = n_begin; n < n_end; ++n) {
      double acc = a.accumulate ? a.C[m * a.ldc + n] : 0.0;
      if (a.bias) acc += a.bias[n];
      for (int64_t k = 0; k < a.K; ++k) {
        const int64_t at = k * a.b_stride_k + n * a.b_stride_n;
        const double b = a.B16 ? bf16_value(a.B16[at]) : a.B[at];
        acc += static_cast<double>(a.A[m * a.lda + k]) * b;
      }
      C[m * a.ldc + n] = acc;
    }
}

double ref_dot(const float* a, const float* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

void ref_axpy(const float* y, float alpha, const float* x, int64_t n, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = y[i] + static_cast<double>(alpha) * x[i];
}

void ref_add(double* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<double>(a[i]) + b[i];
}

void ref_round_bf16(const float* x, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = round_bf16_one(x[i]);
}

void ref_round_a_pairs(const float* A, int64_t lda, int64_t M, int64_t K, int64_t m_begin, int64_t m_end,
                       uint32_t* out) {
  for (int64_t k0 = 0; k0 < K; k0 += kMatmulKC) {
    const int64_t kc = K - k0 < kMatmulKC ? K - k0 : kMatmulKC, pairs = (kc + 1) / 2;
    uint32_t* block = out + M * (k0 / 2);  // the blocks before hold M * k0 / 2 words
    for (int64_t m = m_begin; m < m_end; ++m)
      for (int64_t p = 0; p < pairs; ++p) {
        const int64_t k = k0 + 2 * p;
        const uint32_t first = round_bf16_one(A[m * lda + k]);
        const uint32_t second = 2 * p + 1 < kc ? round_bf16_one(A[m * lda + k + 1]) : 0;
        block[m * pairs + p] = first | second << 16;
      }
  }
}

void ref_transpose(const float* src, int64_t ld_src, int64_t rows, int64_t cols, float* dst, int64_t ld_dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
}

int64_t ref_screen(const float* x, const float* w, float alpha, const float* limit, int64_t n, int32_t* out) {
  int64_t count = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double sum = static_cast<double>(x[j]) + static_cast<double>(alpha) * w[j];
    if (!(sum <= limit[j]) || x[j] == -std::numeric_limits<float>::infinity()) out[count++] = static_cast<int32_t>(j);
  }
  return count;
}

void ref_pack_i16(const int16_t* B, int64_t ldb, int64_t N, int64_t K, int16_t* out) {
  const int64_t panels = (N + kI16Panel - 1) / kI16Panel;
  for (int64_t c = 0; c < panels * kI16Panel; ++c)
    for (int64_t k = 0; k < K; ++k)
      out[((c / kI16Panel) * (K / 2) + k / 2) * 2 * kI16Panel + 2 * (c % kI16Panel) + k % 2] =
          c < N ? B[c * ldb + k] : int16_t{0};
}

void ref_matmul_i16(const int16_t* A, int64_t lda, int64_t M, const int16_t* B, int64_t ldb, int64_t N, int64_t K,
                    const float* row_scale, const float* col_scale, double* C) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < N; ++c) {
      int64_t sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += int64_t{A[m * lda + k]} * B[c * ldb + k];
      C[m * N + c] = static_cast<double>(sum) * col_scale[c] * row_scale[m];
    }
}

void ref_scale(const float* x, float alpha, int64_t n, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<double>(alpha) * x[i];
}

void ref_row_stats(const float* x, int64_t n, float eps, double* mean, double* scale) {
  double sum = 0, squares = 0;
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  *mean = sum / n;
  for (int64_t i = 0; i < n; ++i) squares += (x[i] - *mean) * (x[i] - *mean);
  *scale = std::sqrt(squares / n + eps);
}

void ref_normalize(const float* x, float mean, float scale, const float* w, const float* b, double* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    out[i] = (x[i] - static_cast<double>(mean)) / scale * (w ? w[i] : 1.0) + (b ? b[i] : 0.0);
}

void ref_gelu_new(const float* x, double* out, int64_t n) {
  const double c = std::sqrt(2.0 / std::acos(-1.0));
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    out[i] = 0.5 * v * (1.0 + std::tanh(c * (v + 0.044715 * v * v * v)));
  }
}

void ref_softmax(const float* x, int64_t n, double* out) {
  const double minus_inf = -std::numeric_limits<double>::infinity();
  double max = minus_inf, sum = 0;
  for (int64_t i = 0; i < n; ++i)
    if (x[i] > max) max = x[i];
  for (int64_t i = 0; i < n; ++i) {
    out[i] = max == minus_inf ? 0.0 : std::exp(x[i] - max);
    sum += out[i];
  }
  for (int64_t i = 0; i < n && sum > 0; ++i) out[i] /= sum;
}

double ref_log_sum_exp(const float* x, int64_t n) {
  double max = x[0], sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(x[i]) || x[i] == std::numeric_limits<float>::infinity()) return std::nan("");
    if (x[i] > max) max = x[i];
  }
  for (int64_t i = 0; i < n; ++i) sum += std::exp(x[i] - max);
  return max + std::log(sum);
}

void ref_exp(const float* x, double* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp(static_cast<double>(x[i]));
}

void ref_silu_mul(const float* gate, const float* up, double* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0 + std::exp(-static_cast<double>(gate[i]))) * up[i];
}

void ref_rope(const float* x, const float* cos, const float* sin, int64_t half, double* out) {
  for (int64_t i = 0; i < half; ++i) {
    const double x1 = x[i], x2 = x[half + i];
    out[i] = x1 * cos[i] - x2 * sin[i];
    out[half + i] = x2 * cos[i] + x1 * sin[i];
  }
}

double ref_fma_chains(int64_t iters, int64_t lanes) {
  double sum = 0;
  for (int c = 0; c < kProbeChains; ++c) {
    double acc = 0.001f * static_cast<float>(c);
    for (int64_t i = 0; i < iters; ++i) acc = acc * kProbeMul + kProbeAdd;
    sum += acc;
  }
  return sum * lanes;
}

int64_t ref_fma_chains_flops(int64_t iters, int64_t lanes) { return iters * kProbeChains * lanes * 2; }

double ref_bf16_dot_chains(int64_t iters, int64_t lanes) {
  const double step = 2.0 * bf16_value(kProbeBf16A) * bf16_value(kProbeBf16B);
  double sum = 0;
  for (int c = 0; c < kProbeChains; ++c) sum += 0.001f * static_cast<float>(c) + iters * step;
  return sum * lanes;
}

int64_t ref_bf16_dot_chains_flops(int64_t iters, int64_t lanes) { return iters * kProbeChains * lanes * 4; }

}  // namespace tmech
