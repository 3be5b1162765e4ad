// The SAE encoder's int16 screen (sae/screen.hpp): rows quantized to int16,
// one scale each, and their dot products summed exactly in int32. On AVX2 a
// vpmaddwd does 16 multiply-adds, twice an FMA's 8; elsewhere these are
// plain loops, there so that every variant runs (and tests) the screen.
#include "kernels/variant.hpp"

namespace tmech {
namespace TM_ARCH {
using namespace tm_simd;

namespace {

// Below this a row is quantized to zeros (its scale would be subnormal).
constexpr float kQuantizeFloor = 0x1p-64f;
constexpr int64_t kPanel = kI16Panel;

// max |x| and sum |x| (NaN or infinity where x holds one, or the sum overflows).
void abs_stats(const float* x, int64_t n, float* max_abs, float* sum_abs) {
  float mx = 0.f, sum = 0.f;
  int64_t i = 0;
#if defined(__AVX2__)
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 vm = _mm256_setzero_ps(), vs = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i));
    vm = _mm256_max_ps(vm, a);
    vs = _mm256_add_ps(vs, a);
  }
  alignas(32) float m8[8], s8[8];
  _mm256_store_ps(m8, vm);
  _mm256_store_ps(s8, vs);
  for (int l = 0; l < 8; ++l) mx = m8[l] > mx ? m8[l] : mx, sum += s8[l];
#endif
  for (; i < n; ++i) {
    const float a = __builtin_fabsf(x[i]);
    mx = a > mx ? a : mx;
    sum += a;
  }
  // a NaN or infinity makes the sum non-finite; max_ps may have dropped a NaN
  *max_abs = sum < __builtin_inff() ? mx : sum;
  *sum_abs = sum;
}

}  // namespace

int64_t quantize_i16(const float* x, int64_t n, int32_t q_cap, int64_t l1_cap, int16_t* out, float* scale,
                     float* max_abs) {
  float mx, sum;
  abs_stats(x, n, &mx, &sum);
  *max_abs = mx;
  const int64_t padded = n + (n & 1);
  if (!(mx < __builtin_inff()) || mx < kQuantizeFloor) {
    for (int64_t i = 0; i < padded; ++i) out[i] = 0;
    *scale = mx < kQuantizeFloor ? 0.f : mx;  // non-finite: the caller's bound is too
    return 0;
  }
  // the largest Q whose sum |q| <= Q sum|x| / max|x| (1 + rounding) + n / 2 stays within l1_cap
  double q = q_cap;
  const double per_q = static_cast<double>(sum) / mx * (1 + 0x1p-10);
  if (per_q * q + 0.5 * static_cast<double>(n) + 1 > static_cast<double>(l1_cap))
    q = (static_cast<double>(l1_cap) - 0.5 * static_cast<double>(n) - 1) / per_q;
  const float Q = q < 1 ? 1.f : static_cast<float>(static_cast<int32_t>(q));
  const float r = Q / mx;
  *scale = mx / Q;
  int64_t l1 = 0, i = 0;
#if defined(__AVX2__)
  const __m256 vr = _mm256_set1_ps(r), hi = _mm256_set1_ps(Q), lo = _mm256_set1_ps(-Q);
  __m256i acc = _mm256_setzero_si256();
  int64_t since_flush = 0;
  alignas(32) int32_t part[8];
  const auto flush = [&] {
    _mm256_store_si256(reinterpret_cast<__m256i*>(part), acc);
    for (int l = 0; l < 8; ++l) l1 += part[l];
    acc = _mm256_setzero_si256();
    since_flush = 0;
  };
  for (; i + 16 <= n; i += 16) {
    const __m256 t0 = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vr), lo), hi);
    const __m256 t1 = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vr), lo), hi);
    const __m256i q0 = _mm256_cvtps_epi32(t0), q1 = _mm256_cvtps_epi32(t1);  // to nearest, ties to even
    acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_abs_epi32(q0), _mm256_abs_epi32(q1)));
    // packs interleaves the 128-bit halves: put them back in order
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), packed);
    if (++since_flush == 1 << 14) flush();  // 2^14 * 2 * 32767 < 2^31
  }
  flush();
#endif
  for (; i < n; ++i) {
    float t = x[i] * r;
    t = t < -Q ? -Q : (t > Q ? Q : t);
    const auto v = static_cast<int32_t>(__builtin_nearbyintf(t));
    out[i] = static_cast<int16_t>(v);
    l1 += v < 0 ? -v : v;
  }
  if (n & 1) out[n] = 0;
  return l1;
}

void pack_i16(const int16_t* B, int64_t ldb, int64_t N, int64_t K, int16_t* out) {
  const int64_t pairs = K / 2;
  for (int64_t c0 = 0; c0 < N; c0 += kPanel) {
    int16_t* panel = out + (c0 / kPanel) * pairs * 2 * kPanel;
    const int64_t w = N - c0 < kPanel ? N - c0 : kPanel;
    int64_t p0 = 0;
#if defined(__AVX2__)
    if (w == kPanel)  // 8 x 8 blocks of pairs through registers
      for (; p0 + 8 <= pairs; p0 += 8)
        for (int64_t j0 = 0; j0 < kPanel; j0 += 8) {
          __m256 r[8];
          for (int i = 0; i < 8; ++i)
            r[i] = _mm256_castsi256_ps(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + (c0 + j0 + i) * ldb + 2 * p0)));
          const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
          const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
          const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
          const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
          const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
          const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
          const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
          const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
          const __m256 o[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                               _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                               _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                               _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
          for (int p = 0; p < 8; ++p)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(panel + ((p0 + p) * kPanel + j0) * 2),
                                _mm256_castps_si256(o[p]));
        }
#endif
    for (int64_t p = p0; p < pairs; ++p)
      for (int64_t j = 0; j < kPanel; ++j)
        for (int h = 0; h < 2; ++h) panel[(p * kPanel + j) * 2 + h] = j < w ? B[(c0 + j) * ldb + 2 * p + h] : 0;
  }
}

namespace {

// Columns [c0, c0 + w) of rows [0, R) of C (see kernels.hpp) from one packed panel.
#if defined(__AVX2__)
// acc[r][v] += the products of rows [0, 6) of A (pairs of int16) and the
// panel's two vectors, over `pairs` steps. Written out in assembly: 12 sums,
// the panel's 2 vectors, the broadcast pair and one product fill AVX2's 16
// registers exactly, which GCC's allocator spilled from (and shuffled with
// moves), running at about half the vpmaddwd rate. kVnni: AVX-VNNI's vpdpwssd
// adds a pair's products to a sum in one instruction where vpmaddwd + vpaddd
// take two (the same int32 arithmetic, wrapping); the SAE forward ran 10 %
// faster with it on Zen 5 (both 1 and 2 threads), 3 % on an Emerald Rapids Xeon.
#define TM_ROW_MADD(addr, lo, hi)          \
  "vpbroadcastd " addr                     \
  ", %%ymm14\n\t"                          \
  "vpmaddwd %%ymm12, %%ymm14, %%ymm15\n\t" \
  "vpaddd %%ymm15, %%" lo ", %%" lo        \
  "\n\t"                                   \
  "vpmaddwd %%ymm13, %%ymm14, %%ymm14\n\t" \
  "vpaddd %%ymm14, %%" hi ", %%" hi "\n\t"
#define TM_ROW_VNNI(addr, lo, hi)            \
  "vpbroadcastd " addr                       \
  ", %%ymm14\n\t"                            \
  "%{vex%} vpdpwssd %%ymm12, %%ymm14, %%" lo \
  "\n\t"                                     \
  "%{vex%} vpdpwssd %%ymm13, %%ymm14, %%" hi "\n\t"
// The loop around one of the rows above: the 12 sums loaded, per step the
// panel's two vectors and the six rows, the 12 sums stored.
// clang-format off
#define TM_SUMS_6X16(ROW)                                                                         \
  __asm__ volatile(                                                                               \
      "vmovdqu 0(%[acc]), %%ymm0\n\t"     "vmovdqu 32(%[acc]), %%ymm1\n\t"                         \
      "vmovdqu 64(%[acc]), %%ymm2\n\t"    "vmovdqu 96(%[acc]), %%ymm3\n\t"                         \
      "vmovdqu 128(%[acc]), %%ymm4\n\t"   "vmovdqu 160(%[acc]), %%ymm5\n\t"                        \
      "vmovdqu 192(%[acc]), %%ymm6\n\t"   "vmovdqu 224(%[acc]), %%ymm7\n\t"                        \
      "vmovdqu 256(%[acc]), %%ymm8\n\t"   "vmovdqu 288(%[acc]), %%ymm9\n\t"                        \
      "vmovdqu 320(%[acc]), %%ymm10\n\t"  "vmovdqu 352(%[acc]), %%ymm11\n\t"                       \
      "1:\n\t"                                                                                    \
      "vmovdqu (%[p]), %%ymm12\n\t"       "vmovdqu 32(%[p]), %%ymm13\n\t"                          \
      ROW("(%[a0])", "ymm0", "ymm1")                                                              \
      ROW("(%[a0],%[st],1)", "ymm2", "ymm3")                                                      \
      ROW("(%[a0],%[st],2)", "ymm4", "ymm5")                                                      \
      ROW("(%[a3])", "ymm6", "ymm7")                                                              \
      ROW("(%[a3],%[st],1)", "ymm8", "ymm9")                                                      \
      ROW("(%[a3],%[st],2)", "ymm10", "ymm11")                                                    \
      "add $64, %[p]\n\t"  "add $4, %[a0]\n\t"  "add $4, %[a3]\n\t"  "dec %[n]\n\t"  "jnz 1b\n\t"     \
      "vmovdqu %%ymm0, 0(%[acc])\n\t"     "vmovdqu %%ymm1, 32(%[acc])\n\t"                         \
      "vmovdqu %%ymm2, 64(%[acc])\n\t"    "vmovdqu %%ymm3, 96(%[acc])\n\t"                         \
      "vmovdqu %%ymm4, 128(%[acc])\n\t"   "vmovdqu %%ymm5, 160(%[acc])\n\t"                        \
      "vmovdqu %%ymm6, 192(%[acc])\n\t"   "vmovdqu %%ymm7, 224(%[acc])\n\t"                        \
      "vmovdqu %%ymm8, 256(%[acc])\n\t"   "vmovdqu %%ymm9, 288(%[acc])\n\t"                        \
      "vmovdqu %%ymm10, 320(%[acc])\n\t"  "vmovdqu %%ymm11, 352(%[acc])\n\t"                       \
      : [p] "+r"(panel), [a0] "+r"(a0), [a3] "+r"(a3), [n] "+r"(n)                                \
      : [st] "r"(stride), [acc] "r"(&acc[0][0])                                                   \
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",    \
        "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15")
// clang-format on
template <bool kVnni>
void sums_6x16(const int16_t* A, int64_t lda, const int16_t* panel, int64_t pairs, __m256i acc[6][2]) {
  if (pairs <= 0) return;
  const int16_t* a0 = A;
  const int16_t* a3 = A + 3 * lda;
  const int64_t stride = lda * static_cast<int64_t>(sizeof(int16_t));
  int64_t n = pairs;
  if constexpr (kVnni)
    TM_SUMS_6X16(TM_ROW_VNNI);
  else
    TM_SUMS_6X16(TM_ROW_MADD);
}
#undef TM_SUMS_6X16
#undef TM_ROW_VNNI
#undef TM_ROW_MADD
#endif

template <int R>
void tile_i16(const int16_t* A, int64_t lda, const int16_t* panel, int64_t pairs, const float* row_scale,
              const float* col_scale, int64_t w, float* C, int64_t ldc) {
#if defined(__AVX2__)
  __m256i acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  if constexpr (R == 6) {
#if TM_HAVE_AVX_VNNI
    if (kernels::use_avx_vnni)
      sums_6x16<true>(A, lda, panel, pairs, acc);
    else
#endif
      sums_6x16<false>(A, lda, panel, pairs, acc);
    pairs = 0;
  }
#pragma GCC unroll 2
  for (int64_t p = 0; p < pairs; ++p) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + p * 2 * kPanel));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + p * 2 * kPanel + 16));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, A + r * lda + 2 * p, sizeof pair);
      const __m256i a = _mm256_set1_epi32(pair);
      // wraps mod 2^32: exact wherever the whole sum fits in int32 (the caller's bound)
      acc[r][0] = _mm256_add_epi32(_mm256_madd_epi16(a, b0), acc[r][0]);
      acc[r][1] = _mm256_add_epi32(_mm256_madd_epi16(a, b1), acc[r][1]);
    }
  }
  float cs[kPanel] = {};
  for (int64_t j = 0; j < w; ++j) cs[j] = col_scale[j];
  const __m256 cs0 = _mm256_loadu_ps(cs), cs1 = _mm256_loadu_ps(cs + 8);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m256 rs = _mm256_set1_ps(row_scale[r]);
    const __m256 v0 = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][0]), cs0), rs);
    const __m256 v1 = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][1]), cs1), rs);
    if (w == kPanel) {
      _mm256_storeu_ps(C + r * ldc, v0);
      _mm256_storeu_ps(C + r * ldc + 8, v1);
    } else {
      float tmp[kPanel];
      _mm256_storeu_ps(tmp, v0);
      _mm256_storeu_ps(tmp + 8, v1);
      for (int64_t j = 0; j < w; ++j) C[r * ldc + j] = tmp[j];
    }
  }
#else
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < w; ++j) {
      uint32_t sum = 0;  // wraps as the SIMD sum does
      for (int64_t p = 0; p < pairs; ++p)
        for (int h = 0; h < 2; ++h)
          sum += static_cast<uint32_t>(int32_t{A[r * lda + 2 * p + h]} * panel[(p * kPanel + j) * 2 + h]);
      const float v = static_cast<float>(static_cast<int32_t>(sum));
      const float scaled = v * col_scale[j];
      C[r * ldc + j] = scaled * row_scale[r];
    }
#endif
}

// Rows per tile: 6 x 16 columns keep 12 sums, 2 panel vectors, the broadcast
// and a product in AVX2's 16 registers.
constexpr int kTileRows = 6;

template <int R>
void tile_rows(int rows, const int16_t* A, int64_t lda, const int16_t* panel, int64_t pairs, const float* rs,
               const float* cs, int64_t w, float* C, int64_t ldc) {
  if (rows == R) {
    tile_i16<R>(A, lda, panel, pairs, rs, cs, w, C, ldc);
  } else if constexpr (R > 1) {
    tile_rows<R - 1>(rows, A, lda, panel, pairs, rs, cs, w, C, ldc);
  }
}

}  // namespace

void matmul_i16(const int16_t* A, int64_t lda, int64_t M, const int16_t* B_packed, int64_t N, int64_t K,
                const float* row_scale, const float* col_scale, float* C, int64_t ldc) {
  const int64_t pairs = K / 2;
  // Rows in blocks that stay in L2 (with the packed columns) while every panel sweeps them.
  constexpr int64_t kBlockRows = 16 * kTileRows;
  for (int64_t m0 = 0; m0 < M; m0 += kBlockRows) {
    const int64_t m1 = M - m0 < kBlockRows ? M : m0 + kBlockRows;
    for (int64_t c0 = 0; c0 < N; c0 += kPanel) {
      const int16_t* panel = B_packed + (c0 / kPanel) * pairs * 2 * kPanel;
      const int64_t w = N - c0 < kPanel ? N - c0 : kPanel;
      for (int64_t m = m0; m < m1; m += kTileRows) {
        const int rows = static_cast<int>(m1 - m < kTileRows ? m1 - m : kTileRows);
        tile_rows<kTileRows>(rows, A + m * lda, lda, panel, pairs, row_scale + m, col_scale + c0, w, C + m * ldc + c0,
                             ldc);
      }
    }
  }
}

}  // namespace TM_ARCH
}  // namespace tmech
