#include "sae/screen.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/kernels.hpp"
#include "ops/matmul.hpp"
#include "runtime/threads.hpp"
#include "sae/sae.hpp"

namespace tmech {
namespace {

// Features screened per step: their float32 weights (transposed), bfloat16
// weights and the rows' scores stay in L2 while the survivors are recomputed.
constexpr int64_t kColumns = 128;
// Rows screened per pass, bounding the scores buffer.
constexpr int64_t kRows = 1024;
// Far below any bound that matters, far above what flushing subnormals to
// zero can move a sum by (2K 2^-126).
constexpr float kTiny = 0x1p-100f;
// Relative slack for rounding a bias, a threshold or a bound into a test (16 ulp).
constexpr float kSlack = 0x1p-20f;

struct Hit {
  int32_t row, feature;
  float value;
};

// c in |screened - float32| <= c ‖a‖‖w‖ (see the header), with room for the
// float32 rounding of the norms, of the test and of the recomputed sum.
float bound_factor(int64_t K) {
  const double u = std::ldexp(1.0, -8), u32 = std::ldexp(1.0, -24);
  const double gamma = static_cast<double>(K) * u32 / (1 - static_cast<double>(K) * u32);
  return static_cast<float>((2 * u + u * u + 3 * gamma + kSlack) * 1.01);
}

float threshold_of(const ScreenedEncoder& e, int64_t j) { return e.threshold ? std::max(e.threshold[j], 0.f) : 0.f; }

// Per-thread buffers, carved from the thread's scratch after the matmul's.
struct Buffers {
  float* matmul;      // matmul_scratch_floats()
  float* w_t;         // [kColumns, K] float32: the chunk's weights, one feature per row
  uint16_t* w16;      // [kColumns, K] the same in bfloat16
  float* scores;      // [kRows, kColumns]
  float* w_norm;      // [kColumns]
  float* limit;       // [kColumns]: threshold - bias, less the rounding slack
  int32_t* passed;    // [kColumns]: one row's survivors
  float* col_margin;  // [kColumns], TopK: the bound's factor of the row's ‖a‖ margin
  float* col_slack;   // [kColumns], TopK: the bias's rounding slack
  static int64_t floats(int64_t K) {
    return matmul_scratch_floats() + kColumns * K + (kColumns * K + 1) / 2 + kRows * kColumns + 5 * kColumns;
  }
  Buffers(float* s, int64_t K)
      : matmul(s),
        w_t(s + matmul_scratch_floats()),
        w16(reinterpret_cast<uint16_t*>(w_t + kColumns * K)),
        scores(w_t + kColumns * K + (kColumns * K + 1) / 2),
        w_norm(scores + kRows * kColumns),
        limit(w_norm + kColumns),
        passed(reinterpret_cast<int32_t*>(limit + kColumns)),
        col_margin(limit + 2 * kColumns),
        col_slack(limit + 3 * kColumns) {}
};

// Features [n0, n0 + nc): their float32 weights transposed into b.w_t (one
// feature per row, for the float32 recomputation), rounded into b.w16, their
// norms into b.w_norm; and the screened dot products round(a)·round(w) of
// rows [0, rows) into b.scores ([rows, nc]). in_pairs: those rows already
// rounded (round_to_pairs), or null.
void screen_chunk(const ScreenedEncoder& e, const float* in, const uint32_t* in_pairs, int64_t rows, int64_t n0,
                  int64_t nc, const Buffers& b) {
  const KernelTable& kt = kernels::active();
  const int64_t K = e.d_in;
  kt.transpose(e.W_enc + n0, e.d_sae, K, nc, b.w_t, K);
  kt.round_bf16(b.w_t, b.w16, nc * K);
  for (int64_t j = 0; j < nc; ++j) b.w_norm[j] = std::sqrt(kt.dot(b.w_t + j * K, b.w_t + j * K, K)) + kTiny;
  MatmulArgs a{rows, nc, K, in, K, nullptr, 1, K, nullptr, b.scores, nc, false, b.matmul, b.w16, in_pairs};
  // The next chunk's weights (this thread's next, but at the end of its
  // range), strided reads from memory that would stall their transposition,
  // fetched during the matmul: a 512-row encode ran ~2.5 % faster.
  const int64_t next = n0 + nc, next_nc = std::min(kColumns, e.d_sae - next);
  if (next_nc > 0)
    a.prefetch_after = {e.W_enc + next, K, next_nc * static_cast<int64_t>(sizeof(float)),
                        e.d_sae * static_cast<int64_t>(sizeof(float))};
  kt.matmul_cols(a, 0, nc);
}

// The float32 pre-activation of feature n0 + j (its weights in b.w_t) for one row.
float recompute(const ScreenedEncoder& e, const float* row, const Buffers& b, int64_t n0, int64_t j) {
  return e.b_enc[n0 + j] + kernels::active().dot(row, b.w_t + j * e.d_in, e.d_in);
}

// ReLU / JumpReLU, features [n0, n0 + nc) of rows [0, rows): those whose
// float32 pre-activation passes their threshold, into hits.
void screen_columns(const ScreenedEncoder& e, const float* in, const uint32_t* in_pairs, int64_t rows,
                    const float* row_margin, int64_t n0, int64_t nc, const Buffers& b, std::vector<Hit>& hits) {
  const KernelTable& kt = kernels::active();
  screen_chunk(e, in, in_pairs, rows, n0, nc, b);
  for (int64_t j = 0; j < nc; ++j) {
    const float thr = threshold_of(e, n0 + j), bias = e.b_enc[n0 + j];
    // less a slack for rounding the bias and the threshold into the test
    b.limit[j] = (thr - bias) - ((std::fabs(thr) + std::fabs(bias)) * kSlack + kTiny);
  }
  for (int64_t m = 0; m < rows; ++m) {
    const int64_t count = kt.screen(b.scores + m * nc, b.w_norm, row_margin[m], b.limit, nc, b.passed);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t j = b.passed[i];
      const float pre = recompute(e, in + m * e.d_in, b, n0, j);
      if (pre > threshold_of(e, n0 + j)) hits.push_back({static_cast<int32_t>(m), static_cast<int32_t>(n0 + j), pre});
    }
  }
}

// Appends the hits of `rows` rows, each chunk's sorted by (row, feature) and
// the chunks in feature order, to codes.
void append_codes(const std::vector<std::vector<Hit>>& chunks, int64_t rows, SparseCodes& codes) {
  std::vector<int64_t> cursor(static_cast<size_t>(rows), 0);
  for (const auto& hits : chunks)
    for (const Hit& h : hits) ++cursor[static_cast<size_t>(h.row)];
  for (size_t r = 0; r < cursor.size(); ++r) {
    const int64_t count = cursor[r];
    cursor[r] = codes.offsets.back();
    codes.offsets.push_back(codes.offsets.back() + count);
  }
  codes.indices.resize(static_cast<size_t>(codes.offsets.back()));
  codes.values.resize(codes.indices.size());
  for (const auto& hits : chunks)
    for (const Hit& h : hits) {
      const auto o = static_cast<size_t>(cursor[static_cast<size_t>(h.row)]++);
      codes.indices[o] = h.feature;
      codes.values[o] = h.value;
    }
  codes.rows += rows;
}

// Drops the rows appended after the first `rows`.
void truncate(SparseCodes& codes, int64_t rows) {
  codes.rows = rows;
  codes.offsets.resize(static_cast<size_t>(rows) + 1);
  codes.indices.resize(static_cast<size_t>(codes.offsets.back()));
  codes.values.resize(codes.indices.size());
}

// ---- TopK -----------------------------------------------------------------------
//
// A row keeps its k largest values v_j = pre-activation_j * dn_j (dn: the
// decoder norms when the SAE rescales by them, else 1), ReLU'd. The screen
// bounds each v_j to v'_j ± M_j. Each thread keeps, per row, the k largest
// lower bounds it has seen: their smallest is at most the row's k-th largest
// v, so a feature whose upper bound is below it cannot be kept. The others
// are recomputed in float32 while their weights are in cache. At the end the
// candidates whose upper bound reaches the best thread's bound are ranked by
// their float32 values (ties to the lower index, as the float32 path does).

struct Candidate {
  int32_t feature;
  float value, upper;
};

// One thread's view of a block of rows.
struct TopkState {
  std::vector<std::vector<float>> lower;           // per row: min-heap of the k largest lower bounds seen
  std::vector<std::vector<Candidate>> candidates;  // per row, in feature order
  bool finite = true;                              // every bound finite (else the float32 path runs)
};

float decoder_norm(const ScreenedEncoder& e, int64_t j) { return e.dec_norm ? e.dec_norm[j] : 1.f; }

// Feature n0 + j of row m: its bounds against the thread's heap; recomputed if it may be kept.
void topk_feature(const ScreenedEncoder& e, const float* row, float row_margin, float score, int64_t n0, int64_t j,
                  const Buffers& b, std::vector<float>& heap, std::vector<Candidate>& out, bool& finite) {
  const float dn = decoder_norm(e, n0 + j);
  const float v = (score + e.b_enc[n0 + j]) * dn, margin = row_margin * b.col_margin[j] + b.col_slack[j];
  if (!(std::fabs(v) + margin < INFINITY)) {  // no ordering to keep a heap by
    finite = false;
    return;
  }
  const float lower = v - margin;
  if (heap.size() < static_cast<size_t>(e.k)) {
    heap.push_back(lower);
    std::push_heap(heap.begin(), heap.end(), std::greater<float>());
  } else if (lower > heap.front()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<float>());
    heap.back() = lower;
    std::push_heap(heap.begin(), heap.end(), std::greater<float>());
  }
  if (heap.size() == static_cast<size_t>(e.k) && v + margin < heap.front()) return;
  out.push_back({static_cast<int32_t>(n0 + j), recompute(e, row, b, n0, j) * dn, v + margin});
}

// Features [n0, n0 + nc) of rows [0, rows) of in, which are the block's rows
// [m0, m0 + rows), against this thread's heaps.
void topk_columns(const ScreenedEncoder& e, const float* in, const uint32_t* in_pairs, int64_t rows, int64_t m0,
                  const float* row_margin, int64_t n0, int64_t nc, const Buffers& b, TopkState& st) {
  screen_chunk(e, in, in_pairs, rows, n0, nc, b);
  for (int64_t j = 0; j < nc; ++j) {
    // the bound and the bias's slack, scaled by dn, with 1 % for rounding them and v
    const float dn = decoder_norm(e, n0 + j);
    b.col_margin[j] = b.w_norm[j] * dn * 1.01f;
    b.col_slack[j] = (std::fabs(e.b_enc[n0 + j]) * kSlack + kTiny) * dn * 1.01f;
  }
  const KernelTable& kt = kernels::active();
  for (int64_t m = 0; m < rows; ++m) {
    auto& heap = st.lower[static_cast<size_t>(m0 + m)];
    auto& out = st.candidates[static_cast<size_t>(m0 + m)];
    const float* s = b.scores + m * nc;
    const float* row = in + m * e.d_in;
    if (heap.size() < static_cast<size_t>(e.k) || e.dec_norm) {
      for (int64_t j = 0; j < nc; ++j) topk_feature(e, row, row_margin[m], s[j], n0, j, b, heap, out, st.finite);
      continue;
    }
    // Only features whose upper bound reaches the heap's smallest can change
    // the heap or be kept: with dn = 1, s + ‖a‖-margin > L - bias - slack,
    // less a slack for rounding this test (the exact test follows).
    const float L = heap.front();
    for (int64_t j = 0; j < nc; ++j) {
      const float bias = e.b_enc[n0 + j], lim = L - bias - b.col_slack[j];
      b.limit[j] = lim - ((std::fabs(L) + std::fabs(bias) + b.col_slack[j]) * kSlack + kTiny);
    }
    const int64_t count = kt.screen(s, b.col_margin, row_margin[m], b.limit, nc, b.passed);
    for (int64_t i = 0; i < count; ++i)
      topk_feature(e, row, row_margin[m], s[b.passed[i]], n0, b.passed[i], b, heap, out, st.finite);
  }
}

// Every thread's heaps and candidates for a block of rows. A seed of the
// first features (about 32 k of them), split over the rows, gives every
// row's heap a strong start, which each thread then copies: far fewer
// features pass an early, weak bound only to be recomputed for nothing.
std::vector<TopkState> topk_block(const ScreenedEncoder& e, const float* x, const uint32_t* x_pairs, int64_t rows,
                                  const float* margin, int64_t n_chunks) {
  const int64_t K = e.d_in;
  const int64_t seed = std::min(n_chunks / 4, (32 * e.k + kColumns - 1) / kColumns);
  std::vector<TopkState> states(static_cast<size_t>(num_threads()));
  for (auto& st : states) {
    st.lower.resize(static_cast<size_t>(rows));
    st.candidates.resize(static_cast<size_t>(rows));
  }
  const auto columns = [&](int64_t ch) { return std::min(kColumns, e.d_sae - ch * kColumns); };
  if (seed > 0) {
    parallel_for(rows, [&](int64_t r0, int64_t r1, int t) {
      const Buffers b(thread_scratch(t, Buffers::floats(K)), K);
      auto& st = states[static_cast<size_t>(t)];
      for (int64_t ch = 0; ch < seed; ++ch)
        topk_columns(e, x + r0 * K, nullptr, r1 - r0, r0, margin + r0, ch * kColumns, columns(ch), b, st);
      for (int64_t m = r0; m < r1; ++m)  // the seed's heaps, for every thread to go on from
        for (auto& other : states)
          if (&other != &st) other.lower[static_cast<size_t>(m)] = st.lower[static_cast<size_t>(m)];
    });
  }
  parallel_for(n_chunks - seed, [&](int64_t c0, int64_t c1, int t) {
    const Buffers b(thread_scratch(t, Buffers::floats(K)), K);
    for (int64_t ch = seed + c0; ch < seed + c1; ++ch)
      topk_columns(e, x, x_pairs, rows, 0, margin, ch * kColumns, columns(ch), b, states[static_cast<size_t>(t)]);
  });
  return states;
}

// Per row of the block: the k largest float32 values among the candidates
// whose upper bound reaches the best k-th lower bound of any thread, ReLU'd,
// by feature. (Each thread's k-th lower bound is at most the row's k-th value.)
std::vector<std::vector<Hit>> choose_topk(const std::vector<TopkState>& states, int64_t rows, int64_t k) {
  std::vector<std::vector<Hit>> out(static_cast<size_t>(rows));
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    std::vector<Candidate> cands;
    for (int64_t m = r0; m < r1; ++m) {
      const auto r = static_cast<size_t>(m);
      float kth_lower = -INFINITY;
      for (const auto& st : states)
        if (st.lower[r].size() == static_cast<size_t>(k)) kth_lower = std::max(kth_lower, st.lower[r].front());
      cands.clear();
      for (const auto& st : states)
        for (const Candidate& c : st.candidates[r])
          if (c.upper >= kth_lower) cands.push_back(c);
      const auto keep = std::min<size_t>(cands.size(), static_cast<size_t>(k));
      std::partial_sort(cands.begin(), cands.begin() + static_cast<std::ptrdiff_t>(keep), cands.end(),
                        [](const Candidate& p, const Candidate& q) {
                          return p.value > q.value || (p.value == q.value && p.feature < q.feature);
                        });
      cands.resize(keep);
      std::sort(cands.begin(), cands.end(),
                [](const Candidate& p, const Candidate& q) { return p.feature < q.feature; });
      for (const Candidate& c : cands)
        if (c.value > 0.f) out[r].push_back({static_cast<int32_t>(m), c.feature, c.value});
    }
  });
  return out;
}

}  // namespace

namespace {
std::atomic<ScreenMode> g_mode{ScreenMode::where_it_pays};
}  // namespace

void set_screen_mode(ScreenMode mode) { g_mode = mode; }
ScreenMode screen_mode() { return g_mode; }

ScreenMode parse_screen_mode(const std::string& name) {
  if (name == "auto") return ScreenMode::where_it_pays;
  if (name == "always") return ScreenMode::always;
  if (name == "never") return ScreenMode::never;
  throw std::invalid_argument("the SAE screen mode is 'auto', 'always' or 'never', not '" + name + "'");
}

const char* screen_mode_name(ScreenMode mode) {
  return mode == ScreenMode::always ? "always" : mode == ScreenMode::never ? "never" : "auto";
}

bool screening_applies(int64_t rows, int64_t d_in) {
  if (d_in >= (int64_t{1} << 20)) return false;  // keeps γ_K tiny (and the bound meaningful)
  switch (g_mode.load()) {
    case ScreenMode::always: return true;
    case ScreenMode::never: return false;
    default: return kernels::active().bf16_dot_products && rows > kMatmulSmallM;
  }
}

bool screened_encode(const ScreenedEncoder& e, const float* in, int64_t rows, SparseCodes& codes) {
  const KernelTable& kt = kernels::active();
  const int64_t K = e.d_in, n_chunks = (e.d_sae + kColumns - 1) / kColumns;
  const float c = bound_factor(K);
  std::vector<float> row_margin(static_cast<size_t>(rows));
  for (int64_t m = 0; m < rows; ++m) row_margin[m] = c * std::sqrt(kt.dot(in + m * K, in + m * K, K)) + kTiny;
  const int64_t rows_before = codes.rows;
  std::vector<uint32_t> pairs;
  if (e.k > 0 &&
      (e.k >= e.d_sae || !std::all_of(row_margin.begin(), row_margin.end(), [](float v) { return std::isfinite(v); })))
    return false;  // TopK ranks values against each other: only finite ones are vouched for
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t rc = std::min(kRows, rows - r0);
    const float* x = in + r0 * K;
    const float* margin = row_margin.data() + r0;
    std::vector<std::vector<Hit>> hits;
    // every chunk's matmul reads all the block's rows: rounded once
    const uint32_t* x_pairs = round_to_pairs(x, rc, K, K, pairs);
    if (e.k > 0) {
      auto states = topk_block(e, x, x_pairs, rc, margin, n_chunks);
      if (!std::all_of(states.begin(), states.end(), [](const TopkState& st) { return st.finite; })) {
        truncate(codes, rows_before);
        return false;
      }
      hits = choose_topk(states, rc, e.k);
    } else {
      hits.resize(static_cast<size_t>(n_chunks));
      parallel_for(n_chunks, [&](int64_t c0, int64_t c1, int t) {
        const Buffers b(thread_scratch(t, Buffers::floats(K)), K);
        for (int64_t ch = c0; ch < c1; ++ch)
          screen_columns(e, x, x_pairs, rc, margin, ch * kColumns, std::min(kColumns, e.d_sae - ch * kColumns), b,
                         hits[static_cast<size_t>(ch)]);
      });
    }
    append_codes(hits, rc, codes);
  }
  return true;
}

}  // namespace tmech
