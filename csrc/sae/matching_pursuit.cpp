#include "sae/matching_pursuit.hpp"

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/kernels.hpp"
#include "runtime/threads.hpp"

namespace tmech {
namespace {

// The feature whose decoder row has the largest ReLU'd dot product with r, and that
// product: torch's max over relu(r · W_decᵀ), which returns the first of equal
// values and a NaN wherever there is one.
struct Pick {
  int64_t feature;
  float value;
};

Pick best_feature(const KernelTable& kt, const float* W_dec, int64_t d_in, int64_t d_sae, const float* r) {
  Pick best{0, 0.f};
  for (int64_t f = 0; f < d_sae; ++f) {
    const float s = kt.dot(r, W_dec + f * d_in, d_in);
    if (std::isnan(s)) return {f, s};
    const float v = s > 0.f ? s : 0.f;
    if (f == 0 || v > best.value) best = {f, v};
  }
  return best;
}

float norm(const float* r, int64_t n) {
  double ss = 0;
  for (int64_t j = 0; j < n; ++j) ss += static_cast<double>(r[j]) * r[j];
  return static_cast<float>(std::sqrt(ss));
}

}  // namespace

void matching_pursuit(const MatchingPursuitConfig& c, const float* W_dec, int64_t d_in, int64_t d_sae,
                      const float* sae_in, int64_t rows, float* acts) {
  const KernelTable& kt = kernels::active();
  const bool stop_on_threshold = c.residual_threshold > 0.f;
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    std::vector<float> residual(static_cast<size_t>(d_in));
    for (int64_t r = r0; r < r1; ++r) {
      float* a = acts + r * d_sae;
      std::memset(a, 0, static_cast<size_t>(d_sae) * sizeof(float));
      std::memcpy(residual.data(), sae_in + r * d_in, static_cast<size_t>(d_in) * sizeof(float));
      for (int64_t it = 0; it < c.max_iterations; ++it) {
        const Pick p = best_feature(kt, W_dec, d_in, d_sae, residual.data());
        // a zero pick changes nothing, so every later iteration would repeat it
        if (p.value == 0.f) break;
        const bool grew = a[p.feature] == 0.f;  // values are >= 0: a feature once active stays active
        a[p.feature] += p.value;
        kt.axpy(residual.data(), -p.value, W_dec + p.feature * d_in, d_in);
        if (c.stop_on_duplicate_support && !grew) break;
        if (stop_on_threshold && norm(residual.data(), d_in) < c.residual_threshold) break;
      }
    }
  });
}

}  // namespace tmech
