#include "ops/rows.hpp"

#include <stdexcept>
#include <string>

#include "kernels/kernels.hpp"
#include "runtime/threads.hpp"

namespace tmech {
namespace {
constexpr int64_t kElementGrain = 4096;  // below this, splitting costs more than it saves
}  // namespace

void layernorm_rows(const float* x, int64_t rows, int64_t n, float eps, const float* w, const float* b, float* out) {
  const KernelTable& kt = kernels::active();
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      float mean, scale;
      kt.row_stats(x + r * n, n, eps, &mean, &scale);
      kt.normalize(x + r * n, mean, scale, w, b, out + r * n, n);
    }
  });
}

void log_sum_exp_rows(const float* x, int64_t rows, int64_t n, float* out) {
  const KernelTable& kt = kernels::active();
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) out[r] = kt.log_sum_exp(x + r * n, n);
  });
}

void token_losses(const float* logits, const int32_t* tokens, int64_t B, int64_t T, int64_t V, float* out) {
  if (V == 0 && T > 1) throw std::invalid_argument("logits over an empty vocabulary");
  for (int64_t i = 0; i < B * T; ++i)
    if (tokens[i] < 0 || tokens[i] >= V)
      throw std::out_of_range("token id " + std::to_string(tokens[i]) + " is outside the logits' " + std::to_string(V) +
                              " entries");
  if (T < 2) return;
  const KernelTable& kt = kernels::active();
  parallel_for(B * (T - 1), [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / (T - 1), t = r % (T - 1);
      const float* row = logits + (b * T + t) * V;
      out[r] = kt.log_sum_exp(row, V) - row[tokens[b * T + t + 1]];
    }
  });
}

void gelu_new_rows(float* x, int64_t count) {
  const KernelTable& kt = kernels::active();
  parallel_for(count, [&](int64_t i0, int64_t i1, int) { kt.gelu_new(x + i0, x + i0, i1 - i0); }, kElementGrain);
}

void add_inplace(float* x, const float* y, int64_t count) {
  const KernelTable& kt = kernels::active();
  parallel_for(count, [&](int64_t i0, int64_t i1, int) { kt.add(x + i0, x + i0, y + i0, i1 - i0); }, kElementGrain);
}

}  // namespace tmech
