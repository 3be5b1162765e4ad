// LayerNorm, split in two so the forward pass can expose TransformerLens's
// ln.hook_scale and ln.hook_normalized between the steps.
#include "kernels/variant.hpp"

namespace tmech {
namespace TM_ARCH {
using namespace tm_simd;

void row_stats(const float* x, int64_t n, float eps, float* mean, float* scale_out) {
  // Two passes (mean, then centered squares) as TransformerLens does: exact
  // enough in float32 for rows with a large common offset.
  vf acc = vzero();
  int64_t i = 0;
  for (; i + VL <= n; i += VL) acc = vadd(acc, vload(x + i));
  float s = vsum(acc);
  for (; i < n; ++i) s += x[i];
  const float mu = s / static_cast<float>(n);
  vf vmu = vset1(mu);
  acc = vzero();
  for (i = 0; i + VL <= n; i += VL) {
    vf d = vsub(vload(x + i), vmu);
    acc = vfma(d, d, acc);
  }
  float ss = vsum(acc);
  for (; i < n; ++i) ss += (x[i] - mu) * (x[i] - mu);
  *mean = mu;
  *scale_out = __builtin_sqrtf(ss / static_cast<float>(n) + eps);
}

void normalize(const float* x, float mean, float scale_v, const float* w, const float* b, float* out, int64_t n) {
  vf vmu = vset1(mean), vinv = vset1(1.f / scale_v);
  int64_t i = 0;
  for (; i + VL <= n; i += VL) {
    vf y = vmul(vsub(vload(x + i), vmu), vinv);
    if (w) y = vmul(y, vload(w + i));
    if (b) y = vadd(y, vload(b + i));
    vstore(out + i, y);
  }
  for (; i < n; ++i) {
    float y = (x[i] - mean) * (1.f / scale_v);
    if (w) y *= w[i];
    if (b) y += b[i];
    out[i] = y;
  }
}

}  // namespace TM_ARCH
}  // namespace tmech
