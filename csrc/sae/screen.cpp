#include "sae/screen.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/kernels.hpp"
#include "ops/matmul.hpp"
#include "runtime/threads.hpp"
#include "sae/sae.hpp"

namespace tmech {
namespace {

// Features screened per step: their float32 weights (transposed), rounded
// weights and the rows' scores stay in L2 while the survivors are recomputed.
constexpr int64_t kColumns = 128;
// Rows screened per pass, bounding the scores buffer.
constexpr int64_t kRows = 1024;
// Far below any bound that matters, far above what flushing subnormals to
// zero can move a sum by (2K 2^-126).
constexpr float kTiny = 0x1p-100f;
// Relative slack for rounding a bias, a threshold or a bound into a test (16 ulp).
constexpr float kSlack = 0x1p-20f;
constexpr double kU = 0x1p-24;  // float32's unit roundoff

// Features screened and recomputed (for measuring the screens' pass rates).
std::atomic<int64_t> g_screened{0}, g_recomputed{0};

struct Hit {
  int32_t row, feature;
  float value;
};

// γ_K = K u / (1 - K u): float32 sums of K products err by at most γ_K Σ|a_i w_i|.
double gamma(int64_t K) { return static_cast<double>(K) * kU / (1 - static_cast<double>(K) * kU); }

// c in |screened - float32| <= c ‖a‖‖w‖ for the bfloat16 screen (see the
// header), with room for the float32 rounding of the norms, of the test and
// of the recomputed sum.
float bf16_bound_factor(int64_t K) {
  const double u = std::ldexp(1.0, -8);
  return static_cast<float>((2 * u + u * u + 3 * gamma(K) + kSlack) * 1.01);
}

// int16 screen: the weights' quantization bound Q_w (then sum |q_a| <= kI16Budget / Q_w
// keeps every sum within int32; see the header for the choice).
int32_t int16_q_w(int64_t K) {
  return static_cast<int32_t>(std::min(32767.0, std::floor(std::sqrt(0x1p33 / static_cast<double>(K)))));
}
constexpr int64_t kI16Budget = (int64_t{1} << 31) - 1;
// The per-element quantization error bound e = s/2 + 3.01 u max|x| (max|x| itself
// where the quantizer gave zeros for a tiny x), padded.
float quantization_error(float scale, float max_abs) {
  if (scale == 0.f) return max_abs;
  return static_cast<float>((0.5 * scale + 3.02 * kU * max_abs) * (1 + 4 * kU));
}
int64_t padded(int64_t K) { return K + (K & 1); }

float threshold_of(const ScreenedEncoder& e, int64_t j) { return e.threshold ? std::max(e.threshold[j], 0.f) : 0.f; }

// A block's rows as a screen reads them, and the factors of each row's error
// bound: |score - pre-activation| <= Σ_t f[t][m] c_t[j] (the columns' c_t from screen_chunk).
struct Rows {
  const float* x = nullptr;         // [rows, K] float32
  const uint32_t* pairs = nullptr;  // bf16: the whole block rounded once (round_to_pairs), or null
  const int16_t* q = nullptr;       // int16: [rows, padded(K)]
  const float* scale = nullptr;     // int16: each row's scale
  const float* f[3] = {};
  Rows from(int64_t r, int64_t K) const {
    Rows v = *this;
    v.x += r * K;
    v.pairs = nullptr;  // round_to_pairs lays the block out in panels: not sliceable
    if (q) v.q += r * padded(K), v.scale += r;
    for (auto& p : v.f) p += r;
    return v;
  }
};

// Per-thread buffers, carved from the thread's scratch after the matmul's.
struct Buffers {
  float* matmul;     // matmul_scratch_floats()
  float* w_t;        // [kColumns, K] float32: the chunk's weights transposed here, one feature per row
  uint16_t* w16;     // [kColumns, padded(K)]: the same in bfloat16, or quantized to int16
  int16_t* packed;   // [kColumns, padded(K)]: the int16 weights packed for matmul_i16
  float* scores;     // [kRows, kColumns]
  float* c[3];       // [kColumns] each: the columns' bound factors
  float* col_scale;  // [kColumns]: int16 scales
  float* limit;      // [kColumns]: threshold - bias, less the rounding slack
  float* row_limit;  // [kColumns]: limit less the bound's terms after the first
  int32_t* passed;   // [kColumns]: one row's survivors
  float* m[3];       // [kColumns] each, TopK: c scaled by the decoder norm, with 1 % for rounding
  float* col_slack;  // [kColumns], TopK: the bias's rounding slack
  // The chunk's weights, one feature per row: w_t, or rows of the SAE's own
  // transposed encoder (set by screen_chunk for the chunk at hand).
  mutable const float* w = nullptr;
  static int64_t halves(int64_t K) { return (kColumns * padded(K) + 1) / 2; }
  static int64_t floats(int64_t K) {
    return matmul_scratch_floats() + kColumns * K + 2 * halves(K) + kRows * kColumns + 12 * kColumns;
  }
  Buffers(float* s, int64_t K)
      : matmul(s),
        w_t(s + matmul_scratch_floats()),
        w16(reinterpret_cast<uint16_t*>(w_t + kColumns * K)),
        packed(reinterpret_cast<int16_t*>(w_t + kColumns * K + halves(K))),
        scores(w_t + kColumns * K + 2 * halves(K)) {
    float* p = scores + kRows * kColumns;
    for (auto& v : c) v = p, p += kColumns;
    col_scale = p, limit = p + kColumns, row_limit = p + 2 * kColumns;
    passed = reinterpret_cast<int32_t*>(p + 3 * kColumns);
    p += 4 * kColumns;
    for (auto& v : m) v = p, p += kColumns;
    col_slack = p;
  }
};

// Features [n0, n0 + nc): their float32 weights, one feature per row (for the
// float32 recomputation), in b.w (transposed into b.w_t unless the SAE keeps
// its encoder transposed), rounded (bfloat16) or
// quantized (int16), their bound factors into b.c; and the screened dot
// products of the rows into b.scores ([rows, nc]).
void screen_chunk(const ScreenedEncoder& e, ScreenKind kind, const Rows& in, int64_t rows, int64_t n0, int64_t nc,
                  const Buffers& b) {
  const KernelTable& kt = kernels::active();
  const int64_t K = e.d_in, Kp = padded(K);
  if (e.W_enc_t) {
    b.w = e.W_enc_t + n0 * K;
  } else {
    kt.transpose(e.W_enc + n0, e.d_sae, K, nc, b.w_t, K);
    b.w = b.w_t;
  }
  const float norm_pad = static_cast<float>((1 + gamma(K)) * 1.01);
  if (kind == ScreenKind::int16) {
    auto* q = reinterpret_cast<int16_t*>(b.w16);
    const int32_t q_w = int16_q_w(K);
    for (int64_t j = 0; j < nc; ++j) {
      const float* w = b.w + j * K;
      float scale, max_abs;
      const int64_t l1 = kt.quantize_i16(w, K, q_w, std::numeric_limits<int64_t>::max(), q + j * Kp, &scale, &max_abs);
      const float err = quantization_error(scale, max_abs);
      b.col_scale[j] = scale;
      // ‖w‖₁ <= s ‖q‖₁ + K e; the quantization error's; the conversion's; ‖w‖₂ (+ what underflow may hide)
      b.c[0][j] = (scale * static_cast<float>(l1) + static_cast<float>(K) * err) * 1.01f;
      b.c[1][j] = static_cast<float>((err + 3.02 * kU * max_abs) * 1.01);
      b.c[2][j] = (std::sqrt(kt.dot(w, w, K)) + std::sqrt(static_cast<float>(K)) * 0x1p-74f) * norm_pad;
    }
    kt.pack_i16(q, Kp, nc, Kp, b.packed);
    kt.matmul_i16(in.q, Kp, rows, b.packed, nc, Kp, in.scale, b.col_scale, b.scores, nc);
    return;
  }
  kt.round_bf16(b.w, b.w16, nc * K);
  for (int64_t j = 0; j < nc; ++j) {
    b.c[0][j] = std::sqrt(kt.dot(b.w + j * K, b.w + j * K, K)) + kTiny;
    b.c[1][j] = b.c[2][j] = 0.f;
  }
  MatmulArgs a{rows, nc, K, in.x, K, nullptr, 1, K, nullptr, b.scores, nc, false, b.matmul, b.w16, in.pairs};
  // The next chunk's weights (this thread's next, but at the end of its
  // range), strided reads from memory that would stall their transposition,
  // fetched during the matmul: a 512-row encode ran ~2.5 % faster. (Rows of a
  // transposed encoder are contiguous: the hardware fetches those.)
  const int64_t next = n0 + nc, next_nc = std::min(kColumns, e.d_sae - next);
  if (next_nc > 0 && !e.W_enc_t)
    a.prefetch_after = {e.W_enc + next, K, next_nc * static_cast<int64_t>(sizeof(float)),
                        e.d_sae * static_cast<int64_t>(sizeof(float))};
  kt.matmul_cols(a, 0, nc);
}

// The float32 pre-activation of feature n0 + j (its weights in b.w) for one row.
float recompute(const ScreenedEncoder& e, const float* row, const Buffers& b, int64_t n0, int64_t j) {
  return e.b_enc[n0 + j] + kernels::active().dot(row, b.w + j * e.d_in, e.d_in);
}

// limit[j] less row m's bound terms after the first (f[1] c[1] + f[2] c[2]),
// and the slack for rounding that, into out.
void less_later_terms(const Rows& in, int64_t m, float* const c[3], const float* limit, int64_t nc, float* out) {
  const float f1 = in.f[1][m], f2 = in.f[2][m];
  if (f1 == 0.f && f2 == 0.f) {
    std::copy(limit, limit + nc, out);
    return;
  }
  for (int64_t j = 0; j < nc; ++j) {
    const float t = f1 * c[1][j] + f2 * c[2][j];
    out[j] = (limit[j] - t) - (t * kSlack + kTiny);
  }
}

// ReLU / JumpReLU, features [n0, n0 + nc) of rows [0, rows): those whose
// float32 pre-activation passes their threshold, into hits.
void screen_columns(const ScreenedEncoder& e, ScreenKind kind, const Rows& in, int64_t rows, int64_t n0, int64_t nc,
                    const Buffers& b, std::vector<Hit>& hits) {
  const KernelTable& kt = kernels::active();
  screen_chunk(e, kind, in, rows, n0, nc, b);
  for (int64_t j = 0; j < nc; ++j) {
    const float thr = threshold_of(e, n0 + j), bias = e.b_enc[n0 + j];
    // less a slack for rounding the bias and the threshold into the test
    b.limit[j] = (thr - bias) - ((std::fabs(thr) + std::fabs(bias)) * kSlack + kTiny);
  }
  int64_t recomputed = 0;
  for (int64_t m = 0; m < rows; ++m) {
    less_later_terms(in, m, b.c, b.limit, nc, b.row_limit);
    const int64_t count = kt.screen(b.scores + m * nc, b.c[0], in.f[0][m], b.row_limit, nc, b.passed);
    recomputed += count;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t j = b.passed[i];
      const float pre = recompute(e, in.x + m * e.d_in, b, n0, j);
      if (pre > threshold_of(e, n0 + j)) hits.push_back({static_cast<int32_t>(m), static_cast<int32_t>(n0 + j), pre});
    }
  }
  g_screened += rows * nc;
  g_recomputed += recomputed;
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
void topk_feature(const ScreenedEncoder& e, const Rows& in, int64_t m, float score, int64_t n0, int64_t j,
                  const Buffers& b, std::vector<float>& heap, std::vector<Candidate>& out, bool& finite) {
  const float dn = decoder_norm(e, n0 + j);
  const float v = (score + e.b_enc[n0 + j]) * dn;
  const float margin = in.f[0][m] * b.m[0][j] + in.f[1][m] * b.m[1][j] + in.f[2][m] * b.m[2][j] + b.col_slack[j];
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
  out.push_back({static_cast<int32_t>(n0 + j), recompute(e, in.x + m * e.d_in, b, n0, j) * dn, v + margin});
  ++g_recomputed;
}

// Features [n0, n0 + nc) of rows [0, rows) of in, which are the block's rows
// [m0, m0 + rows), against this thread's heaps.
void topk_columns(const ScreenedEncoder& e, ScreenKind kind, const Rows& in, int64_t rows, int64_t m0, int64_t n0,
                  int64_t nc, const Buffers& b, TopkState& st) {
  screen_chunk(e, kind, in, rows, n0, nc, b);
  g_screened += rows * nc;
  for (int64_t j = 0; j < nc; ++j) {
    // the bound and the bias's slack, scaled by dn, with 1 % for rounding them and v
    const float dn = decoder_norm(e, n0 + j);
    for (int t = 0; t < 3; ++t) b.m[t][j] = b.c[t][j] * dn * 1.01f;
    b.col_slack[j] = (std::fabs(e.b_enc[n0 + j]) * kSlack + kTiny) * dn * 1.01f;
  }
  const KernelTable& kt = kernels::active();
  for (int64_t m = 0; m < rows; ++m) {
    auto& heap = st.lower[static_cast<size_t>(m0 + m)];
    auto& out = st.candidates[static_cast<size_t>(m0 + m)];
    const float* s = b.scores + m * nc;
    if (heap.size() < static_cast<size_t>(e.k) || e.dec_norm) {
      for (int64_t j = 0; j < nc; ++j) topk_feature(e, in, m, s[j], n0, j, b, heap, out, st.finite);
      continue;
    }
    // Only features whose upper bound reaches the heap's smallest can change
    // the heap or be kept: with dn = 1, s + margin > L - bias - slack, less
    // a slack for rounding this test (the exact test follows).
    const float L = heap.front();
    for (int64_t j = 0; j < nc; ++j) {
      const float bias = e.b_enc[n0 + j], lim = L - bias - b.col_slack[j];
      b.limit[j] = lim - ((std::fabs(L) + std::fabs(bias) + b.col_slack[j]) * kSlack + kTiny);
    }
    less_later_terms(in, m, b.m, b.limit, nc, b.row_limit);
    const int64_t count = kt.screen(s, b.m[0], in.f[0][m], b.row_limit, nc, b.passed);
    for (int64_t i = 0; i < count; ++i)
      topk_feature(e, in, m, s[b.passed[i]], n0, b.passed[i], b, heap, out, st.finite);
  }
}

// Every thread's heaps and candidates for a block of rows. A seed of the
// first features (about 32 k of them), split over the rows, gives every
// row's heap a strong start, which each thread then copies: far fewer
// features pass an early, weak bound only to be recomputed for nothing.
std::vector<TopkState> topk_block(const ScreenedEncoder& e, ScreenKind kind, const Rows& in, int64_t rows,
                                  int64_t n_chunks) {
  const int64_t K = e.d_in;
  const int64_t seed = std::min(n_chunks / 4, (32 * e.k + kColumns - 1) / kColumns);
  const ThreadCountHold hold;  // one state per thread: the pool keeps this size meanwhile
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
        topk_columns(e, kind, in.from(r0, K), r1 - r0, r0, ch * kColumns, columns(ch), b, st);
      for (int64_t m = r0; m < r1; ++m)  // the seed's heaps, for every thread to go on from
        for (auto& other : states)
          if (&other != &st) other.lower[static_cast<size_t>(m)] = st.lower[static_cast<size_t>(m)];
    });
  }
  parallel_for(n_chunks - seed, [&](int64_t c0, int64_t c1, int t) {
    const Buffers b(thread_scratch(t, Buffers::floats(K)), K);
    for (int64_t ch = seed + c0; ch < seed + c1; ++ch)
      topk_columns(e, kind, in, rows, 0, ch * kColumns, columns(ch), b, states[static_cast<size_t>(t)]);
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

// Rows [r0, r0 + rc) of in quantized to int16 (into q, scale) and their bound
// factors (into f): the quantization error times ‖w‖₁; s_a ‖q_a‖₁ times the
// weights' quantization and conversion errors; the float32 sums' 2 γ_K ‖a‖₂ ‖w‖₂.
void quantize_rows(const float* in, int64_t r0, int64_t rc, int64_t K, const float* norm, std::vector<int16_t>& q,
                   std::vector<float>& scale, std::vector<float> (&f)[3]) {
  const int64_t Kp = padded(K), budget = kI16Budget / int16_q_w(K);
  q.resize(static_cast<size_t>(rc * Kp));
  scale.resize(static_cast<size_t>(rc));
  for (auto& v : f) v.resize(static_cast<size_t>(rc));
  const float g = static_cast<float>(2 * gamma(K) * (1 + gamma(K)) * 1.01), tiny = std::sqrt(float(K)) * 0x1p-74f;
  parallel_for(rc, [&](int64_t m0, int64_t m1, int) {
    const KernelTable& kt = kernels::active();
    for (int64_t m = m0; m < m1; ++m) {
      const auto i = static_cast<size_t>(m);
      float max_abs;
      const int64_t l1 = kt.quantize_i16(in + (r0 + m) * K, K, 32767, budget, q.data() + m * Kp, &scale[i], &max_abs);
      if (l1 > budget) {  // a sum might overflow int32: every feature passes
        f[0][i] = f[1][i] = f[2][i] = INFINITY;
        continue;
      }
      f[0][i] = quantization_error(scale[i], max_abs);
      f[1][i] = scale[i] * static_cast<float>(l1);
      f[2][i] = g * (norm[r0 + m] + tiny);
    }
  });
}
}  // namespace

void set_screen_mode(ScreenMode mode) { g_mode = mode; }
ScreenMode screen_mode() { return g_mode; }

ScreenMode parse_screen_mode(const std::string& name) {
  if (name == "auto") return ScreenMode::where_it_pays;
  if (name == "always") return ScreenMode::always;
  if (name == "bf16") return ScreenMode::always_bf16;
  if (name == "int16") return ScreenMode::always_int16;
  if (name == "never") return ScreenMode::never;
  throw std::invalid_argument("the SAE screen mode is 'auto', 'always', 'bf16', 'int16' or 'never', not '" + name +
                              "'");
}

const char* screen_mode_name(ScreenMode mode) {
  switch (mode) {
    case ScreenMode::always: return "always";
    case ScreenMode::always_bf16: return "bf16";
    case ScreenMode::always_int16: return "int16";
    case ScreenMode::never: return "never";
    default: return "auto";
  }
}

ScreenKind screen_kind(int64_t rows, int64_t d_in) {
  if (d_in >= (int64_t{1} << 20)) return ScreenKind::none;  // keeps γ_K tiny (and the bound meaningful)
  const KernelTable& kt = kernels::active();
  const bool int16_fits = d_in <= kInt16MaxDIn;
  switch (g_mode.load()) {
    case ScreenMode::always: return kt.bf16_dot_products || !int16_fits ? ScreenKind::bf16 : ScreenKind::int16;
    case ScreenMode::always_bf16: return ScreenKind::bf16;
    case ScreenMode::always_int16: return int16_fits ? ScreenKind::int16 : ScreenKind::bf16;
    case ScreenMode::never: return ScreenKind::none;
    default:
      if (rows <= kMatmulSmallM) return ScreenKind::none;
      if (kt.bf16_dot_products) return ScreenKind::bf16;
      return kt.int16_screen_pays && int16_fits ? ScreenKind::int16 : ScreenKind::none;
  }
}

ScreenCounts take_screen_counts() { return {g_screened.exchange(0), g_recomputed.exchange(0)}; }

bool screening_applies(int64_t rows, int64_t d_in) { return screen_kind(rows, d_in) != ScreenKind::none; }

bool screened_encode(const ScreenedEncoder& encoder, const float* in, int64_t rows, SparseCodes& codes) {
  ScreenedEncoder e = encoder;
  const KernelTable& kt = kernels::active();
  const int64_t K = e.d_in, n_chunks = (e.d_sae + kColumns - 1) / kColumns;
  const ScreenKind kind = screen_kind(rows, K) == ScreenKind::int16 ? ScreenKind::int16 : ScreenKind::bf16;
  std::vector<float> norm(static_cast<size_t>(rows));
  for (int64_t m = 0; m < rows; ++m) norm[m] = std::sqrt(kt.dot(in + m * K, in + m * K, K));
  const int64_t rows_before = codes.rows;
  if (e.k > 0 && (e.k >= e.d_sae || !std::all_of(norm.begin(), norm.end(), [](float v) { return std::isfinite(v); })))
    return false;  // TopK ranks values against each other: only finite ones are vouched for
  if (e.transposed) e.W_enc_t = e.transposed();  // the screen runs: a copy kept for it is worth making
  std::vector<uint32_t> pairs;
  std::vector<int16_t> q;
  std::vector<float> scale, f[3];
  const float c = bf16_bound_factor(K);
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t rc = std::min(kRows, rows - r0);
    Rows block;
    block.x = in + r0 * K;
    if (kind == ScreenKind::int16) {
      quantize_rows(in, r0, rc, K, norm.data(), q, scale, f);
      block.q = q.data();
      block.scale = scale.data();
    } else {
      block.pairs = round_to_pairs(block.x, rc, K, K, pairs);  // every chunk's matmul reads all the block's rows
      for (auto& v : f) v.assign(static_cast<size_t>(rc), 0.f);
      for (int64_t m = 0; m < rc; ++m) f[0][static_cast<size_t>(m)] = c * norm[r0 + m] + kTiny;
    }
    for (int t = 0; t < 3; ++t) block.f[t] = f[t].data();
    std::vector<std::vector<Hit>> hits;
    if (e.k > 0) {
      auto states = topk_block(e, kind, block, rc, n_chunks);
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
          screen_columns(e, kind, block, rc, ch * kColumns, std::min(kColumns, e.d_sae - ch * kColumns), b,
                         hits[static_cast<size_t>(ch)]);
      });
    }
    append_codes(hits, rc, codes);
  }
  return true;
}

}  // namespace tmech
