// One small vector API mapped onto each instruction set. Kernels are written
// once against it and compiled once per variant (TM_ARCH = scalar, avx2,
// avx512, neon); the CMake build sets the matching compiler flags.
//
// Kernel translation units include no standard header but <cstdint> and
// <cstring> (types, and C functions declared only; math goes through
// __builtin_*): the same inline function of any other, compiled with AVX-512
// flags in one unit and without in another, would break the one-definition
// rule and could run AVX-512 code on a CPU without it. CI checks this
// (tools/check-kernel-includes).
#pragma once
#include <cstdint>
#include <cstring>

#if defined(TM_ARCH_SCALAR)
// the plain fallback below, even where the compiler's baseline has vectors
// (NEON on 64-bit ARM): the scalar variant is the one that runs anywhere
#elif defined(__AVX512F__)
#include <immintrin.h>
#define TM_SIMD_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TM_SIMD_AVX2 1
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#define TM_SIMD_NEON 1
#endif

namespace tm_simd {

#if TM_SIMD_AVX512
using vf = __m512;
constexpr int VL = 16;
static inline vf vzero() { return _mm512_setzero_ps(); }
static inline vf vset1(float x) { return _mm512_set1_ps(x); }
static inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
static inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline float vsum(vf v) { return _mm512_reduce_add_ps(v); }
static inline float vhmax(vf v) { return _mm512_reduce_max_ps(v); }
static inline vf vround(vf v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// 2^n for integer-valued n in [-126, 127], built from the exponent bits.
static inline vf vpow2i(vf n) {
  __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
  return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
}
// a where a >= limit, else 0
static inline vf vzero_below(vf a, vf x, vf limit) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, limit, _CMP_GE_OQ), a);
}
// whether some lane of a is not <= b's (greater, or either NaN)
static inline bool vany_not_le(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_NLE_UQ) != 0; }
// VL bfloat16 values widened to float32 (shifted into the upper half).
static inline vf vload_bf16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
// r[s] = (r[0][s], ..., r[15][s]): a 16 x 16 transpose of 32-bit words, in
// three rounds of shuffles (words, then pairs of words, then 128-bit lanes).
static inline void transpose16_epi32(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int p = 0; p < 8; ++p) {
    t[2 * p] = _mm512_unpacklo_epi32(r[2 * p], r[2 * p + 1]);
    t[2 * p + 1] = _mm512_unpackhi_epi32(r[2 * p], r[2 * p + 1]);
  }
  for (int q = 0; q < 4; ++q) {  // u[4q + c], lane L: rows 4q..4q+3 of column 4L + c
    u[4 * q] = _mm512_unpacklo_epi64(t[4 * q], t[4 * q + 2]);
    u[4 * q + 1] = _mm512_unpackhi_epi64(t[4 * q], t[4 * q + 2]);
    u[4 * q + 2] = _mm512_unpacklo_epi64(t[4 * q + 1], t[4 * q + 3]);
    u[4 * q + 3] = _mm512_unpackhi_epi64(t[4 * q + 1], t[4 * q + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i even = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), odd = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD);
    const __m512i even2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
    const __m512i odd2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_i32x4(even, even2, 0x88);
    r[8 + c] = _mm512_shuffle_i32x4(even, even2, 0xDD);
    r[4 + c] = _mm512_shuffle_i32x4(odd, odd2, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(odd, odd2, 0xDD);
  }
}
// r[s] = (r[0][s], ..., r[VL-1][s])
static inline void vtranspose(vf r[VL]) {
  __m512i w[16];
  for (int i = 0; i < 16; ++i) w[i] = _mm512_castps_si512(r[i]);
  transpose16_epi32(w);
  for (int i = 0; i < 16; ++i) r[i] = _mm512_castsi512_ps(w[i]);
}
#elif TM_SIMD_AVX2
using vf = __m256;
constexpr int VL = 8;
static inline vf vzero() { return _mm256_setzero_ps(); }
static inline vf vset1(float x) { return _mm256_set1_ps(x); }
static inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline float vsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline float vhmax(vf v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline vf vround(vf v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf vpow2i(vf n) {
  __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
}
static inline vf vzero_below(vf a, vf x, vf limit) { return _mm256_and_ps(a, _mm256_cmp_ps(x, limit, _CMP_GE_OQ)); }
static inline bool vany_not_le(vf a, vf b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_NLE_UQ)) != 0; }
static inline vf vload_bf16(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline void vtranspose(vf r[8]) {
  vf t[8], u[8];
  for (int p = 0; p < 4; ++p) {
    t[2 * p] = _mm256_unpacklo_ps(r[2 * p], r[2 * p + 1]);
    t[2 * p + 1] = _mm256_unpackhi_ps(r[2 * p], r[2 * p + 1]);
  }
  for (int q = 0; q < 2; ++q) {  // u[4q + c], each 128-bit half: rows 4q..4q+3 of column 4 half + c
    u[4 * q] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
    u[4 * q + 1] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0xEE);
    u[4 * q + 2] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    u[4 * q + 3] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}
#elif TM_SIMD_NEON
using vf = float32x4_t;
constexpr int VL = 4;
static inline vf vzero() { return vdupq_n_f32(0.f); }
static inline vf vset1(float x) { return vdupq_n_f32(x); }
static inline vf vload(const float* p) { return vld1q_f32(p); }
static inline void vstore(float* p, vf v) { vst1q_f32(p, v); }
static inline vf vadd(vf a, vf b) { return vaddq_f32(a, b); }
static inline vf vsub(vf a, vf b) { return vsubq_f32(a, b); }
static inline vf vmul(vf a, vf b) { return vmulq_f32(a, b); }
static inline vf vdiv(vf a, vf b) { return vdivq_f32(a, b); }
static inline vf vmax(vf a, vf b) { return vmaxq_f32(a, b); }
static inline vf vmin(vf a, vf b) { return vminq_f32(a, b); }
static inline vf vfma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
static inline float vsum(vf v) { return vaddvq_f32(v); }
static inline float vhmax(vf v) { return vmaxvq_f32(v); }
static inline vf vround(vf v) { return vrndnq_f32(v); }
static inline vf vpow2i(vf n) {
  int32x4_t e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
  return vreinterpretq_f32_s32(vshlq_n_s32(e, 23));
}
static inline vf vzero_below(vf a, vf x, vf limit) {
  return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(a), vcgeq_f32(x, limit)));
}
static inline bool vany_not_le(vf a, vf b) { return vminvq_u32(vcleq_f32(a, b)) == 0; }
static inline vf vload_bf16(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
static inline void vtranspose(vf r[4]) {
  const float32x4x2_t t01 = vtrnq_f32(r[0], r[1]), t23 = vtrnq_f32(r[2], r[3]);
  r[0] = vcombine_f32(vget_low_f32(t01.val[0]), vget_low_f32(t23.val[0]));
  r[1] = vcombine_f32(vget_low_f32(t01.val[1]), vget_low_f32(t23.val[1]));
  r[2] = vcombine_f32(vget_high_f32(t01.val[0]), vget_high_f32(t23.val[0]));
  r[3] = vcombine_f32(vget_high_f32(t01.val[1]), vget_high_f32(t23.val[1]));
}
#else
using vf = float;
constexpr int VL = 1;
static inline vf vzero() { return 0.f; }
static inline vf vset1(float x) { return x; }
static inline vf vload(const float* p) { return *p; }
static inline void vstore(float* p, vf v) { *p = v; }
static inline vf vadd(vf a, vf b) { return a + b; }
static inline vf vsub(vf a, vf b) { return a - b; }
static inline vf vmul(vf a, vf b) { return a * b; }
static inline vf vdiv(vf a, vf b) { return a / b; }
static inline vf vmax(vf a, vf b) { return a > b ? a : b; }
static inline vf vmin(vf a, vf b) { return a < b ? a : b; }
static inline vf vfma(vf a, vf b, vf c) { return __builtin_fmaf(a, b, c); }
static inline float vsum(vf v) { return v; }
static inline float vhmax(vf v) { return v; }
static inline vf vround(vf v) { return __builtin_nearbyintf(v); }
static inline vf vpow2i(vf n) {
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}
static inline vf vzero_below(vf a, vf x, vf limit) { return x >= limit ? a : 0.f; }
static inline bool vany_not_le(vf a, vf b) { return !(a <= b); }
static inline void vtranspose(vf*) {}
#endif

static inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}
#if !(TM_SIMD_AVX512 || TM_SIMD_AVX2 || TM_SIMD_NEON)
static inline vf vload_bf16(const uint16_t* p) { return bf16_to_float(*p); }
#endif

// Loads of a weight matrix's elements, float32 or bfloat16, as float32.
static inline vf vload_w(const float* p) { return vload(p); }
static inline vf vload_w(const uint16_t* p) { return vload_bf16(p); }
static inline float load_w(const float* p) { return *p; }
static inline float load_w(const uint16_t* p) { return bf16_to_float(*p); }

// The first n < VL elements of a weight row, zero-padded, as float32.
template <class W>
static inline vf vload_w_part(const W* p, int64_t n) {
  W tmp[VL] = {};
  std::memcpy(tmp, p, static_cast<size_t>(n) * sizeof(W));
  return vload_w(tmp);
}

// y += alpha w over n elements, w float32 or bfloat16.
template <class W>
static inline void axpy_w(float* y, float alpha, const W* w, int64_t n) {
  const vf va = vset1(alpha);
  int64_t i = 0;
  for (; i + VL <= n; i += VL) vstore(y + i, vfma(va, vload_w(w + i), vload(y + i)));
  for (; i < n; ++i) y[i] += alpha * load_w(w + i);
}

// x · w over n elements, w float32 or bfloat16. Two accumulators hide the FMA
// latency on short rows such as d_head = 64.
template <class W>
static inline float dot_w(const float* x, const W* w, int64_t n) {
  vf s0 = vzero(), s1 = vzero();
  int64_t i = 0;
  for (; i + 2 * VL <= n; i += 2 * VL) {
    s0 = vfma(vload(x + i), vload_w(w + i), s0);
    s1 = vfma(vload(x + i + VL), vload_w(w + i + VL), s1);
  }
  for (; i + VL <= n; i += VL) s0 = vfma(vload(x + i), vload_w(w + i), s0);
  float s = vsum(vadd(s0, s1));
  for (; i < n; ++i) s += x[i] * load_w(w + i);
  return s;
}

// Tails: go through a zero-padded stack buffer so no load or store ever
// touches memory past n floats.
static inline vf vload_part(const float* p, int64_t n) {
  float tmp[VL] = {};
  std::memcpy(tmp, p, static_cast<size_t>(n) * sizeof(float));
  return vload(tmp);
}
static inline void vstore_part(float* p, vf v, int64_t n) {
  float tmp[VL];
  vstore(tmp, v);
  std::memcpy(p, tmp, static_cast<size_t>(n) * sizeof(float));
}

// exp(x) to about 1 ulp: range reduction by ln 2, a degree-6 polynomial, and
// 2^n from the exponent bits. Inputs below -87.3 give exactly 0 (so masked
// attention scores of -inf vanish), inputs above 88.7 saturate.
static inline vf vexp(vf x) {
  const vf lo = vset1(-87.3f);
  vf xc = vmin(vmax(x, lo), vset1(88.7f));
  vf n = vround(vmul(xc, vset1(1.44269504088896341f)));
  vf r = vfma(n, vset1(-0.693359375f), xc);  // ln2 split in two for accuracy
  r = vfma(n, vset1(2.12194440e-4f), r);
  vf p = vset1(1.9875691500e-4f);
  p = vfma(p, r, vset1(1.3981999507e-3f));
  p = vfma(p, r, vset1(8.3334519073e-3f));
  p = vfma(p, r, vset1(4.1665795894e-2f));
  p = vfma(p, r, vset1(1.6666665459e-1f));
  p = vfma(p, r, vset1(5.0000001201e-1f));
  p = vfma(p, vmul(r, r), vadd(r, vset1(1.f)));
  // n can be 128 only when xc > 88.38; split 2^n to stay in range.
  vf half = vround(vmul(n, vset1(0.5f)));
  vf res = vmul(vmul(p, vpow2i(half)), vpow2i(vsub(n, half)));
  return vzero_below(res, x, lo);
}

}  // namespace tm_simd
