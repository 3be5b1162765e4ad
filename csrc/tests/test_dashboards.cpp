// Feature dashboards' accumulator: fed batch by batch, sparse and dense, on 1,
// 2 and 3 threads, its state equals a brute force over the whole corpus (ranges
// that double on the way, tied values, excluded positions); bad batches throw
// and change nothing.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/threads.hpp"
#include "sae/dashboards.hpp"
#include "tests/native_tests.hpp"

namespace tmech::test {
namespace {

constexpr int64_t F = 23, CTX = 4, ROWS = 30, K = 5;

FeatureStatsConfig config() {
  FeatureStatsConfig c;
  c.n_features = F, c.top_k = 3, c.n_intervals = 4, c.per_interval = 2, c.n_bins = 8, c.before = 1, c.after = 2;
  c.cooccurrence = true, c.cooc_cap = 3, c.seed = 99;
  return c;
}

// A corpus: x [n, F] raw values (growing by row; a few values only, so ties), valid [n],
// and the sparse idx/val [n, K] listing each token's nonzero values.
struct Corpus {
  std::vector<float> x, val;
  std::vector<int32_t> idx;
  std::vector<uint8_t> valid;
};

Corpus make_corpus(std::mt19937& rng) {
  const int64_t n = ROWS * CTX;
  Corpus c{std::vector<float>(size_t(n * F), 0.f), std::vector<float>(size_t(n * K), 0.f),
           std::vector<int32_t>(size_t(n * K), -1), std::vector<uint8_t>(size_t(n), 1)};
  const float grid[] = {-1.f, 0.5f, 1.f, 1.f, 1.5f};
  for (int64_t t = 0; t < n; ++t) {
    c.valid[size_t(t)] = rng() % 5 != 0;
    std::vector<int32_t> feats(F);
    for (int32_t f = 0; f < F; ++f) feats[size_t(f)] = f;
    std::shuffle(feats.begin(), feats.end(), rng);
    const int64_t m = rng() % (K + 1);
    for (int64_t j = 0; j < m; ++j) {
      const float v = grid[rng() % 5] * std::ldexp(1.f, int(t / CTX / 6));  // doubles every 6 rows
      c.idx[size_t(t * K + j)] = feats[size_t(j)];
      c.val[size_t(t * K + j)] = v;
      c.x[size_t(t * F + feats[size_t(j)])] = v;
    }
  }
  return c;
}

// The state computed from the whole corpus at once, as the brute force of the specification.
FeatureState brute_force(const FeatureStatsConfig& c, const Corpus& d) {
  FeatureStats empty(c);
  FeatureState s = empty.state();
  const int64_t n = ROWS * CTX, W = c.before + 1 + c.after, P = c.per_interval;
  s.n_rows = ROWS, s.context = CTX;
  auto active = [&](int64_t t, int64_t f) { return d.valid[size_t(t)] && d.x[size_t(t * F + f)] > 0.f; };
  auto window = [&](int64_t f, int64_t t, float* out) {
    for (int64_t w = 0; w < W; ++w) {
      const int64_t p = t % CTX - c.before + w, u = t - t % CTX + p;
      out[w] = p >= 0 && p < CTX && d.valid[size_t(u)] ? d.x[size_t(u * F + f)] : 0.f;
    }
  };
  for (int64_t t = 0; t < n; ++t) s.n_tokens += d.valid[size_t(t)];
  for (int64_t f = 0; f < F; ++f) {
    float mx = 0.f;
    std::vector<std::tuple<float, int64_t, int64_t>> peaks;  // (-peak, row, t)
    for (int64_t t = 0; t < n; ++t) {
      if (!active(t, f)) continue;
      const float v = d.x[size_t(t * F + f)];
      ++s.count[size_t(f)], s.sum[size_t(f)] += v, mx = std::max(mx, v);
      if (peaks.empty() || std::get<1>(peaks.back()) != t / CTX)
        peaks.emplace_back(-v, t / CTX, t);
      else if (-v < std::get<0>(peaks.back()))
        peaks.back() = {-v, t / CTX, t};
    }
    if (mx == 0.f) continue;
    int e = 0;
    std::frexp(mx, &e);
    const float R = s.range[size_t(f)] = std::ldexp(1.f, e);
    std::sort(peaks.begin(), peaks.end(), [](auto& a, auto& b) {
      return std::make_pair(std::get<0>(a), std::get<1>(a)) < std::make_pair(std::get<0>(b), std::get<1>(b));
    });
    for (int64_t j = 0; j < std::min<int64_t>(c.top_k, int64_t(peaks.size())); ++j) {
      const auto [neg, row, t] = peaks[size_t(j)];
      const size_t at = size_t(f * c.top_k + j);
      s.top_value[at] = -neg, s.top_row[at] = row, s.top_pos[at] = int32_t(t % CTX);
      window(f, t, &s.top_window[at * size_t(W)]);
    }
    std::vector<std::tuple<int64_t, uint64_t, int64_t>> keyed;  // (interval, key, t)
    for (int64_t t = 0; t < n; ++t) {
      if (!active(t, f)) continue;
      const double v = d.x[size_t(t * F + f)];
      ++s.hist[size_t(f * c.n_bins + int64_t(std::floor(v * c.n_bins / R)))];
      keyed.emplace_back(int64_t(std::floor(v * c.n_intervals / R)),
                         splitmix64(splitmix64(c.seed ^ uint64_t(f)) ^ uint64_t(t)), t);
    }
    std::sort(keyed.begin(), keyed.end());
    std::vector<int64_t> filled(size_t(c.n_intervals), 0);
    for (const auto& [i, key, t] : keyed) {
      if (filled[size_t(i)] == P) continue;
      const size_t at = size_t((f * c.n_intervals + i) * P + filled[size_t(i)]++);
      s.sample_key[at] = key, s.sample_value[at] = d.x[size_t(t * F + f)], s.sample_token[at] = t;
      window(f, t, &s.sample_window[at * size_t(W)]);
    }
  }
  for (int64_t t = 0; t < n; ++t) {
    std::vector<std::pair<float, int64_t>> on;  // (-value, feature)
    for (int64_t f = 0; f < F; ++f)
      if (active(t, f)) on.emplace_back(-d.x[size_t(t * F + f)], f);
    std::sort(on.begin(), on.end());
    on.resize(std::min<size_t>(on.size(), size_t(c.cooc_cap)));
    for (auto [vf, f] : on)
      for (auto [vg, g] : on)
        if (f != g) ++s.cooc[size_t(f * F + g)];
  }
  return s;
}

bool same(const FeatureState& a, const FeatureState& b) {
  return a.n_tokens == b.n_tokens && a.n_rows == b.n_rows && a.context == b.context && a.count == b.count &&
         a.sum == b.sum && a.range == b.range && a.hist == b.hist && a.top_value == b.top_value &&
         a.top_row == b.top_row && a.top_pos == b.top_pos && a.top_window == b.top_window &&
         a.sample_key == b.sample_key && a.sample_value == b.sample_value && a.sample_token == b.sample_token &&
         a.sample_window == b.sample_window && a.cooc == b.cooc;
}

void feed(FeatureStats& fs, const Corpus& d, bool sparse, int64_t rows_per_batch) {
  for (int64_t r = 0; r < ROWS; r += rows_per_batch) {
    const int64_t t0 = r * CTX, n = std::min(rows_per_batch, ROWS - r) * CTX;
    if (sparse)
      fs.add_sparse(&d.idx[size_t(t0 * K)], &d.val[size_t(t0 * K)], n, K, &d.valid[size_t(t0)], r, CTX);
    else
      fs.add_dense(&d.x[size_t(t0 * F)], n, &d.valid[size_t(t0)], r, CTX);
  }
}

template <class Fn>
bool throws_and_keeps(FeatureStats& fs, Fn fn) {
  const FeatureState before = fs.state();
  try {
    fn();
  } catch (const std::invalid_argument&) {
    return same(fs.state(), before);
  }
  return false;
}

void test_bad_batches(const Corpus& d) {
  FeatureStats fs(config());
  feed(fs, d, true, 7);
  std::vector<int32_t> idx(d.idx.begin(), d.idx.begin() + CTX * K);
  std::vector<float> val(d.val.begin(), d.val.begin() + CTX * K);
  const uint8_t* ok = d.valid.data();
  auto add = [&](int64_t first_row, int64_t ctx) { fs.add_sparse(idx.data(), val.data(), CTX, K, ok, first_row, ctx); };
  check(throws_and_keeps(fs, [&] { add(ROWS - 1, CTX); }), "dashboards: a skipped or repeated row throws");
  check(throws_and_keeps(fs, [&] { add(ROWS, 2); }), "dashboards: another context throws");
  const int32_t token1[K] = {7, 7, -1, -1, -1};  // token 1 lists feature 7 twice
  std::copy(token1, token1 + K, idx.begin() + K);
  check(throws_and_keeps(fs, [&] { add(ROWS, CTX); }), "dashboards: a feature listed twice throws");
  idx[K + 1] = F;
  check(throws_and_keeps(fs, [&] { add(ROWS, CTX); }), "dashboards: a feature index out of range throws");
  idx[K + 1] = 8, val[K + 1] = std::nanf("");
  check(throws_and_keeps(fs, [&] { add(ROWS, CTX); }), "dashboards: a non-finite activation throws");
  val[K + 1] = 1.f, val[K + 2] = std::nanf("");  // on an idx of -1: no activation
  add(ROWS, CTX);
  check(fs.state().n_rows == ROWS + 1, "dashboards: a value without a feature is ignored");
  std::vector<float> dense(size_t(CTX * F), 0.f);
  dense[7] = INFINITY;
  const std::vector<uint8_t> none(CTX, 0);
  check(throws_and_keeps(fs, [&] { fs.add_dense(dense.data(), CTX, none.data(), ROWS + 1, CTX); }),
        "dashboards: a non-finite activation at an excluded position throws");
  FeatureStatsConfig big = config();
  big.n_features = int64_t{1} << 30, big.top_k = int64_t{1} << 40;
  bool overflow = false;
  try {
    FeatureStats huge(big);
  } catch (const std::length_error&) {
    overflow = true;
  }
  check(overflow, "dashboards: an absurd size is a length_error");
}

}  // namespace

void test_dashboards(std::mt19937& rng) {
  const Corpus d = make_corpus(rng);
  const FeatureState want = brute_force(config(), d);
  const int threads = num_threads();
  for (bool sparse : {true, false})
    for (int64_t rows : {1, 4})
      for (int n : {1, 2, 3}) {
        set_num_threads(n);
        FeatureStats fs(config());
        feed(fs, d, sparse, rows);
        check(same(fs.state(), want), std::string("dashboards: ") + (sparse ? "sparse" : "dense") + ", batches of " +
                                          std::to_string(rows) + " rows, " + std::to_string(n) +
                                          " threads = the brute force");
      }
  set_num_threads(threads);
  FeatureStats half(config()), resumed(config());
  for (int64_t r = 0; r < ROWS / 2; ++r)
    half.add_dense(&d.x[size_t(r * CTX * F)], CTX, &d.valid[size_t(r * CTX)], r, CTX);
  resumed.load(half.state());
  for (int64_t r = ROWS / 2; r < ROWS; ++r)
    resumed.add_dense(&d.x[size_t(r * CTX * F)], CTX, &d.valid[size_t(r * CTX)], r, CTX);
  check(same(resumed.state(), want), "dashboards: a loaded state goes on as the uninterrupted one");
  test_bad_batches(d);
}

}  // namespace tmech::test
