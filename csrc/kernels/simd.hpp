// One small vector API mapped onto each instruction set. Kernels are written
// once against it and compiled once per variant (TM_ARCH = scalar, avx2,
// avx512, neon); the CMake build sets the matching compiler flags.
//
// Kernel translation units include no STL headers: the same inline function
// compiled with AVX-512 flags in one unit and without in another would break
// the one-definition rule and could run AVX-512 code on a CPU without it.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
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
// VL bfloat16 values widened to float32 (shifted into the upper half).
static inline vf vload_bf16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
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
static inline vf vzero_below(vf a, vf x, vf limit) {
  return _mm256_and_ps(a, _mm256_cmp_ps(x, limit, _CMP_GE_OQ));
}
static inline vf vload_bf16(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
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
static inline vf vload_bf16(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
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
