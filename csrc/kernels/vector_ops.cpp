// Elementwise and reduction kernels on float rows: dot, axpy, add, scale,
// exp, softmax, GPT-2's tanh-approximated GELU, SwiGLU's silu(gate) * up, the
// rotary embedding's rotation, the SAE screen's test; and a matrix transpose.
// Each has a vector main loop and a padded tail (simd.hpp), so any length works.
#include "kernels/variant.hpp"

namespace tmech {
namespace TM_ARCH {
using namespace tm_simd;

float dot(const float* a, const float* b, int64_t n) { return dot_w(a, b, n); }

void axpy(float* y, float alpha, const float* x, int64_t n) { axpy_w(y, alpha, x, n); }

// float32 -> bfloat16 bits, to nearest, ties to even (NaN stays NaN). With
// AVX512-BF16 the instruction flushes subnormal inputs to zero; so does the tail.
void round_bf16(const float* x, uint16_t* out, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512BF16__)
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
  constexpr bool kFlushSubnormals = true;
#else
  constexpr bool kFlushSubnormals = false;
#endif
  for (; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    if (kFlushSubnormals && (bits & 0x7F800000u) == 0) bits &= 0x80000000u;
    const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
    out[i] = nan ? static_cast<uint16_t>((bits >> 16) | 0x40u)
                 : static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
  }
}

// dst[c * ld_dst + r] = src[r * ld_src + c]: VL x VL blocks through
// registers, the ragged edges element by element.
void transpose(const float* src, int64_t ld_src, int64_t rows, int64_t cols, float* dst, int64_t ld_dst) {
  int64_t r0 = 0;
  for (; r0 + VL <= rows; r0 += VL) {
    int64_t c0 = 0;
    for (; c0 + VL <= cols; c0 += VL) {
      vf v[VL];
      for (int i = 0; i < VL; ++i) v[i] = vload(src + (r0 + i) * ld_src + c0);
      vtranspose(v);
      for (int i = 0; i < VL; ++i) vstore(dst + (c0 + i) * ld_dst + r0, v[i]);
    }
    for (; c0 < cols; ++c0)
      for (int64_t r = r0; r < r0 + VL; ++r) dst[c0 * ld_dst + r] = src[r * ld_src + c0];
  }
  for (; r0 < rows; ++r0)
    for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r0] = src[r0 * ld_src + c];
}

// Indices j (into out, returned count) where x[j] + alpha w[j] <= limit[j]
// fails (greater, or NaN) or x[j] is -inf: the SAE screen's survivors.
// Vectors with none are skipped whole.
int64_t screen(const float* x, const float* w, float alpha, const float* limit, int64_t n, int32_t* out) {
  const auto passes = [&](int64_t j) {
    return !(__builtin_fmaf(alpha, w[j], x[j]) <= limit[j] && x[j] > -__builtin_inff());
  };
  const vf va = vset1(alpha), fmax = vset1(3.40282347e38f);
  int64_t count = 0, j = 0;
  for (; j + VL <= n; j += VL) {
    const vf xs = vload(x + j);
    if (!vany_not_le(vfma(va, vload(w + j), xs), vload(limit + j)) && !vany_not_le(vsub(vzero(), xs), fmax)) continue;
    for (int64_t i = j; i < j + VL; ++i)
      if (passes(i)) out[count++] = static_cast<int32_t>(i);
  }
  for (; j < n; ++j)
    if (passes(j)) out[count++] = static_cast<int32_t>(j);
  return count;
}

void add(float* out, const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) vstore(out + i, vadd(vload(a + i), vload(b + i)));
  if (i < n) vstore_part(out + i, vadd(vload_part(a + i, n - i), vload_part(b + i, n - i)), n - i);
}

void scale(float* x, float alpha, int64_t n) {
  vf va = vset1(alpha);
  int64_t i = 0;
  for (; i + VL <= n; i += VL) vstore(x + i, vmul(va, vload(x + i)));
  if (i < n) vstore_part(x + i, vmul(va, vload_part(x + i, n - i)), n - i);
}

void exp(const float* x, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) vstore(out + i, vexp(vload(x + i)));
  if (i < n) vstore_part(out + i, vexp(vload_part(x + i, n - i)), n - i);
}

// The largest of x[0, n), n >= 1 (NaNs may be skipped).
static float row_max(const float* x, int64_t n) {
  vf vmx = vset1(x[0]);
  int64_t i = 0;
  for (; i + VL <= n; i += VL) vmx = vmax(vmx, vload(x + i));
  float mx = vhmax(vmx);
  for (; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  return mx;
}

static inline float exp1(float x) { return vhmax(vexp(vset1(x))); }  // every lane holds the same value

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  const float mx = row_max(x, n);
  if (mx == -__builtin_inff()) {  // every entry masked: no finite weight to give
    for (int64_t i = 0; i < n; ++i) x[i] = 0.f;
    return;
  }
  const vf vmx = vset1(mx);
  vf acc = vzero();
  int64_t i = 0;
  for (; i + VL <= n; i += VL) {
    vf e = vexp(vsub(vload(x + i), vmx));
    vstore(x + i, e);
    acc = vadd(acc, e);
  }
  float sum = vsum(acc);
  for (; i < n; ++i) {
    x[i] = exp1(x[i] - mx);
    sum += x[i];
  }
  scale(x, 1.f / sum, n);
}

float log_sum_exp(const float* x, int64_t n) {
  const float mx = row_max(x, n);
  const vf vmx = vset1(mx);
  // vexp clamps its input, so a NaN would pass for a tiny term: the plain
  // sum of x - max is NaN exactly when some x is NaN (or max is infinite).
  vf acc = vzero(), nan_seen = vzero();
  int64_t i = 0;
  for (; i + VL <= n; i += VL) {
    const vf d = vsub(vload(x + i), vmx);
    acc = vadd(acc, vexp(d));
    nan_seen = vadd(nan_seen, d);
  }
  double sum = vsum(acc);
  float seen = vsum(nan_seen);
  for (; i < n; ++i) {
    sum += exp1(x[i] - mx);
    seen += x[i] - mx;
  }
  if (__builtin_isnan(seen)) return __builtin_nanf("");
  return static_cast<float>(static_cast<double>(mx) + __builtin_log(sum));
}

// gelu_new(x) = 0.5 x (1 + tanh(c (x + 0.044715 x^3))) = x * sigmoid(2 c (x + 0.044715 x^3)),
// the sigmoid form avoids tanh's cancellation near 0 and overflow for large |x|.
static inline vf gelu_vec(vf x) {
  const vf k = vset1(-2.f * 0.7978845608028654f);
  vf inner = vfma(vmul(vset1(0.044715f), vmul(x, x)), x, x);
  return vdiv(x, vadd(vset1(1.f), vexp(vmul(k, inner))));
}

void gelu_new(const float* x, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) vstore(out + i, gelu_vec(vload(x + i)));
  if (i < n) vstore_part(out + i, gelu_vec(vload_part(x + i, n - i)), n - i);
}

// silu(g) * u = g * u / (1 + exp(-g)); exp overflows to inf for very
// negative g, which gives the right limit 0.
static inline vf silu_mul_vec(vf g, vf u) { return vdiv(vmul(g, u), vadd(vset1(1.f), vexp(vsub(vzero(), g)))); }

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) vstore(out + i, silu_mul_vec(vload(gate + i), vload(up + i)));
  if (i < n) vstore_part(out + i, silu_mul_vec(vload_part(gate + i, n - i), vload_part(up + i, n - i)), n - i);
}

static inline void rope_vec(vf a, vf b, vf c, vf s, vf* a_out, vf* b_out) {
  *a_out = vsub(vmul(a, c), vmul(b, s));
  *b_out = vadd(vmul(b, c), vmul(a, s));
}

void rope(float* x, const float* cos, const float* sin, int64_t half) {
  float* x2 = x + half;
  vf a, b;
  int64_t i = 0;
  for (; i + VL <= half; i += VL) {
    rope_vec(vload(x + i), vload(x2 + i), vload(cos + i), vload(sin + i), &a, &b);
    vstore(x + i, a);
    vstore(x2 + i, b);
  }
  if (i < half) {
    const int64_t n = half - i;
    rope_vec(vload_part(x + i, n), vload_part(x2 + i, n), vload_part(cos + i, n), vload_part(sin + i, n), &a, &b);
    vstore_part(x + i, a, n);
    vstore_part(x2 + i, b, n);
  }
}

}  // namespace TM_ARCH
}  // namespace tmech
