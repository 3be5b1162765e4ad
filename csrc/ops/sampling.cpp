#include "ops/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "kernels/kernels.hpp"
#include "ops/top_k.hpp"

namespace tmech {
namespace {

// Candidates (token ids) and their weights exp((z - max) / temperature).
struct Candidates {
  std::vector<int64_t> ids;
  std::vector<float> scaled, weight;
  std::vector<float> top_values;
};

// The `count` most probable tokens, most probable first.
void most_probable(const float* z, int64_t n, int64_t count, Candidates& c) {
  c.ids.resize(static_cast<size_t>(count));
  c.top_values.resize(static_cast<size_t>(count));
  top_k_rows(z, 1, n, count, c.ids.data(), c.top_values.data());
}

int64_t sample_row(const float* z, int64_t n, const SamplingParams& p, double u, Candidates& c) {
  const KernelTable& kt = kernels::active();
  const float* best = std::max_element(z, z + n, [](float a, float b) { return a < b || std::isnan(b); });
  const float zmax = *best;
  if (!std::isfinite(zmax)) throw std::invalid_argument("logits hold NaN or +inf, or are all -inf: cannot sample");
  const float inv_t = 1.f / p.temperature;
  if (!std::isfinite(inv_t)) return best - z;  // a temperature this close to 0 leaves only the top token
  // weights of every token, in order: exp((z - max) / T) <= 1, the top token's 1
  c.scaled.resize(static_cast<size_t>(n));
  c.weight.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) c.scaled[j] = (z[j] - zmax) * inv_t;
  kt.exp(c.scaled.data(), c.weight.data(), n);
  const bool top_k = p.top_k > 0 && p.top_k < n, top_p = p.top_p < 1.0;
  if (!top_k && !top_p) {  // draw over every token in index order
    double total = 0;
    for (float w : c.weight) total += w;
    double acc = 0, target = u * total;
    for (int64_t j = 0; j < n; ++j)
      if ((acc += c.weight[j]) > target && c.weight[j] > 0) return j;
    for (int64_t j = n - 1; j >= 0; --j)  // rounding left the target unreached: the last token with weight
      if (c.weight[j] > 0) return j;
    return best - z;
  }
  // the kept tokens, most probable first: the top k, then the nucleus of those
  int64_t count = top_k ? p.top_k : std::min<int64_t>(n, 64);
  double total = 0;
  if (!top_k)
    for (float w : c.weight) total += w;
  for (;;) {
    most_probable(z, n, count, c);
    if (top_k) {
      total = 0;
      for (int64_t i = 0; i < count; ++i) total += c.weight[c.ids[i]];
    }
    if (!top_p) break;
    double acc = 0;
    int64_t kept = count;
    for (int64_t i = 0; i < count; ++i)
      if ((acc += c.weight[c.ids[i]]) >= p.top_p * total) {
        kept = i + 1;
        break;
      }
    if (kept < count || count == n || top_k) {
      count = kept;
      break;
    }
    count = std::min(n, count * 8);  // the nucleus is wider than the candidates so far
  }
  double mass = 0;
  for (int64_t i = 0; i < count; ++i) mass += c.weight[c.ids[i]];
  double acc = 0, target = u * mass;
  for (int64_t i = 0; i < count; ++i)
    if ((acc += c.weight[c.ids[i]]) > target) return c.ids[i];
  return c.ids[0];
}

}  // namespace

void sample_rows(const float* logits, int64_t rows, int64_t n, const SamplingParams& params, const double* u,
                 int64_t* out) {
  if (n <= 0) throw std::invalid_argument("cannot sample from an empty vocabulary");
  if (!(params.temperature > 0.f)) throw std::invalid_argument("sampling needs a temperature > 0");
  if (!(params.top_p > 0.0 && params.top_p <= 1.0)) throw std::invalid_argument("top_p must be in (0, 1]");
  if (params.top_k < 0) throw std::invalid_argument("top_k must be >= 0");
  Candidates c;
  for (int64_t r = 0; r < rows; ++r) out[r] = sample_row(logits + r * n, n, params, u[r], c);
}

}  // namespace tmech
