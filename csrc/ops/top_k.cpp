#include "ops/top_k.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "runtime/threads.hpp"

namespace tmech {
namespace {

inline float rank_key(float v) { return std::isnan(v) ? -std::numeric_limits<float>::infinity() : v; }

// One row. Few wanted: one pass keeping the best k sorted (an entry goes in
// only if it beats the worst kept, which soon is rare); many wanted: a
// partial sort of the indices.
void top_k_row(const float* x, int64_t n, int64_t k, std::vector<int64_t>& kept, int64_t* indices) {
  auto before = [x](int64_t p, int64_t q) {
    const float a = rank_key(x[p]), b = rank_key(x[q]);
    return a > b || (a == b && p < q);
  };
  if (k * 16 >= n) {
    kept.resize(static_cast<size_t>(n));
    std::iota(kept.begin(), kept.end(), int64_t{0});
    std::partial_sort(kept.begin(), kept.begin() + k, kept.end(), before);
  } else {
    kept.resize(static_cast<size_t>(k));
    std::iota(kept.begin(), kept.end(), int64_t{0});
    std::sort(kept.begin(), kept.end(), before);
    float worst = rank_key(x[kept.back()]);
    for (int64_t j = k; j < n; ++j) {
      if (!(rank_key(x[j]) > worst)) continue;  // ties go to the earlier index, already kept
      auto at = std::upper_bound(kept.begin(), kept.end() - 1, j, before);
      std::move_backward(at, kept.end() - 1, kept.end());
      *at = j;
      worst = rank_key(x[kept.back()]);
    }
  }
  std::copy(kept.begin(), kept.begin() + k, indices);
}

}  // namespace

void top_k_rows(const float* x, int64_t rows, int64_t n, int64_t k, int64_t* indices, float* values) {
  if (k <= 0) return;
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    std::vector<int64_t> kept;
    for (int64_t r = r0; r < r1; ++r) {
      top_k_row(x + r * n, n, k, kept, indices + r * k);
      for (int64_t j = 0; j < k; ++j) values[r * k + j] = x[r * n + indices[r * k + j]];
    }
  });
}

}  // namespace tmech
