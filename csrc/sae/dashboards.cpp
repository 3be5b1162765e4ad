#include "sae/dashboards.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <iterator>
#include <limits>
#include <stdexcept>
#include <tuple>
#include <utility>

#include "runtime/checked.hpp"
#include "runtime/threads.hpp"

namespace tmech {
namespace {

size_t sz(int64_t n) { return static_cast<size_t>(n); }
bool power_of_two(int64_t n) { return n >= 1 && (n & (n - 1)) == 0; }
const float kMaxActivation = std::ldexp(1.f, 127);  // R = 2^128 would not fit a float

// A nonzero value at a valid token, as a scan of the batch finds it.
struct Entry {
  int64_t t;  // the token within the batch
  int32_t f;
  float v;
};

// bin of v in [0, n) at range R > v: exact, n and R being powers of two
int64_t bin_of(float v, int64_t n, float R) { return static_cast<int64_t>(double(v) * double(n) / double(R)); }

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// One batch: its inputs, and its active entries gathered feature-major (tokens
// ascending within a feature) and, for co-occurrence, each token's features.
struct FeatureStats::Batch {
  const int32_t* idx = nullptr;  // sparse
  const float* val = nullptr;
  int64_t k = 0;
  const float* dense = nullptr;  // dense
  const uint8_t* valid = nullptr;
  int64_t n_tok = 0, first_row = 0, context = 0, F = 0;
  // [F + 1]: feature f's entries are [start[f], start[f + 1]), tokens ascending: its
  // activations > 0 at valid tokens, and for sparse input its other nonzero ones (windows show them)
  std::vector<int64_t> start;
  std::vector<int64_t> token;
  std::vector<float> value;
  // with co-occurrence, per token: its entries (in the chunks' lists), and the last that takes part
  std::vector<std::vector<Entry>> found;
  std::vector<const Entry*> first_entry;  // [n_tok]
  std::vector<int64_t> n_entries;         // [n_tok]
  std::vector<Entry> cut;                 // [n_tok]: an entry takes part if the cut does not rank before it

  int64_t global(int64_t t) const { return first_row * context + t; }
  void check_value(float v, int64_t t, int64_t f) const {
    if (!std::isfinite(v) || v >= kMaxActivation)
      throw std::invalid_argument("the activation of feature " + std::to_string(f) + " at token " +
                                  std::to_string(global(t)) + " is " + std::to_string(v) +
                                  (std::isfinite(v) ? " (activations must be below 2^127)" : " (not finite)"));
  }
  // token t's active entries appended to out; every entry checked (seen: per feature, the last token listing it)
  void scan(int64_t t, std::vector<int64_t>& seen, std::vector<Entry>& out) const {
    if (dense) {
      for (int64_t f = 0; f < F; ++f) {
        const float v = dense[t * F + f];
        check_value(v, t, f);
        if (valid[t] && v > 0.f) out.push_back({t, static_cast<int32_t>(f), v});
      }
      return;
    }
    for (int64_t j = 0; j < k; ++j) {
      const int32_t f = idx[t * k + j];
      if (f == -1) continue;
      if (f < -1 || f >= F)
        throw std::invalid_argument("feature index " + std::to_string(f) + " at token " + std::to_string(global(t)) +
                                    " is outside [-1, " + std::to_string(F) + ")");
      if (seen[sz(f)] == t)
        throw std::invalid_argument("feature " + std::to_string(f) + " is listed twice at token " +
                                    std::to_string(global(t)));
      seen[sz(f)] = t;
      const float v = val[t * k + j];
      check_value(v, t, f);
      if (valid[t] && v != 0.f) out.push_back({t, f, v});
    }
  }
};

namespace {

// Ranks a token's entries for co-occurrence: the larger value first, ties to the smaller feature.
bool ranks_before(const Entry& a, const Entry& b) { return a.v > b.v || (a.v == b.v && a.f < b.f); }

// The last of the cap first-ranked of one token's entries, those taking part in
// co-occurrence (all of them when there are at most cap: a cut below any).
Entry cooc_cut(const Entry* first, const Entry* last, int64_t cap, std::vector<Entry>& buf) {
  buf.clear();
  std::copy_if(first, last, std::back_inserter(buf), [](const Entry& e) { return e.v > 0.f; });
  if (static_cast<int64_t>(buf.size()) <= cap) return {0, std::numeric_limits<int32_t>::max(), 0.f};
  std::nth_element(buf.begin(), buf.begin() + (cap - 1), buf.end(), ranks_before);
  return buf[sz(cap - 1)];
}

// Scans and checks the batch in chunks of tokens over the threads, then sorts its
// entries by feature (a counting sort: chunks taken in token order keep each
// feature's tokens ascending); with cap > 0, each token's co-occurring features.
void gather(FeatureStats::Batch& b, int64_t cap) {
  const int64_t F = b.F, n_chunks = std::max<int64_t>(1, std::min<int64_t>(b.n_tok, 4 * num_threads()));
  std::vector<std::vector<Entry>>& found = b.found;
  found.assign(sz(n_chunks), {});
  std::vector<int64_t> offset(cap > 0 ? sz(b.n_tok) : 0);  // token t's first entry in its chunk's list
  b.n_entries.resize(offset.size());
  std::vector<std::vector<int64_t>> at(sz(n_chunks));  // per chunk and feature: its first slot
  auto chunk_start = [&](int64_t c) { return b.n_tok * c / n_chunks; };
  b.cut.resize(cap > 0 ? sz(b.n_tok) : 0);
  // each chunk keeps its first error: the batch's first bad token is reported, whatever the threads
  std::vector<std::exception_ptr> errors(sz(n_chunks));
  parallel_for(n_chunks, [&](int64_t c0, int64_t c1, int) {
    std::vector<int64_t> seen(sz(F), -1);
    std::vector<Entry> buf;
    for (int64_t c = c0; c < c1; ++c) {
      std::vector<Entry>& out = found[sz(c)];
      at[sz(c)].assign(sz(F), 0);
      try {
        for (int64_t t = chunk_start(c); t < chunk_start(c + 1); ++t) {
          const size_t first = out.size();
          b.scan(t, seen, out);
          if (cap == 0) continue;
          b.cut[sz(t)] = cooc_cut(out.data() + first, out.data() + out.size(), cap, buf);
          offset[sz(t)] = static_cast<int64_t>(first);
          b.n_entries[sz(t)] = static_cast<int64_t>(out.size() - first);
        }
      } catch (...) {
        errors[sz(c)] = std::current_exception();
      }
      for (const Entry& e : out) ++at[sz(c)][sz(e.f)];
    }
  });
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
  b.start.assign(sz(F) + 1, 0);
  for (int64_t f = 0; f < F; ++f) {  // counts become first slots
    int64_t n = b.start[sz(f)];
    for (auto& a : at) n += std::exchange(a[sz(f)], n);
    b.start[sz(f) + 1] = n;
  }
  b.token.resize(sz(b.start[sz(F)]));
  b.value.resize(b.token.size());
  parallel_for(n_chunks, [&](int64_t c0, int64_t c1, int) {
    for (int64_t c = c0; c < c1; ++c)
      for (const Entry& e : found[sz(c)]) {
        const int64_t slot = at[sz(c)][sz(e.f)]++;
        b.token[sz(slot)] = e.t;
        b.value[sz(slot)] = e.v;
      }
  });
  b.first_entry.resize(offset.size());  // the lists are complete: pointers into them hold
  for (int64_t c = 0; c < n_chunks && cap > 0; ++c)
    for (int64_t t = chunk_start(c); t < chunk_start(c + 1); ++t)
      b.first_entry[sz(t)] = found[sz(c)].data() + offset[sz(t)];
}

// The state's arrays: name, shape, bytes per element.
struct Field {
  const char* name;
  std::vector<int64_t> shape;
  int64_t bytes;
};

std::vector<Field> fields(const FeatureStatsConfig& c) {
  const int64_t F = c.n_features, W = c.before + 1 + c.after, I = c.n_intervals, P = c.per_interval;
  return {{"count", {F}, 8},
          {"sum", {F}, 8},
          {"range", {F}, 4},
          {"hist", {F, c.n_bins}, 8},
          {"top_value", {F, c.top_k}, 4},
          {"top_row", {F, c.top_k}, 8},
          {"top_pos", {F, c.top_k}, 4},
          {"top_window", {F, c.top_k, W}, 4},
          {"sample_key", {F, I, P}, 8},
          {"sample_value", {F, I, P}, 4},
          {"sample_token", {F, I, P}, 8},
          {"sample_window", {F, I, P, W}, 4},
          {"cooc", c.cooccurrence ? std::vector<int64_t>{F, F} : std::vector<int64_t>{0}, 4}};
}

template <class T>
void resize(std::vector<T>& v, const std::vector<int64_t>& shape, T fill) {
  v.assign(sz(checked_size(shape, "feature statistics")), fill);
}

}  // namespace

FeatureStats::FeatureStats(const FeatureStatsConfig& c) : c_(c) {
  require(c.n_features >= 1 && c.n_features <= std::numeric_limits<int32_t>::max(),
          "n_features must be in [1, 2^31), not " + std::to_string(c.n_features));
  require(c.top_k >= 0, "top_k must be >= 0, not " + std::to_string(c.top_k));
  require(power_of_two(c.n_bins), "n_bins must be a power of two, not " + std::to_string(c.n_bins));
  require(power_of_two(c.n_intervals) && c.n_intervals <= c.n_bins,
          "n_intervals must be a power of two at most n_bins (" + std::to_string(c.n_bins) + "), not " +
              std::to_string(c.n_intervals));
  require(c.per_interval >= 0, "per_interval must be >= 0, not " + std::to_string(c.per_interval));
  require(c.before >= 0 && c.after >= 0 && c.before < (int64_t{1} << 30) && c.after < (int64_t{1} << 30),
          "before and after must be in [0, 2^30), not " + std::to_string(c.before) + " and " + std::to_string(c.after));
  require(!c.cooccurrence || c.cooc_cap >= 1,
          "cooc_cap must be at least 1 with cooccurrence, not " + std::to_string(c.cooc_cap));
  memory_bytes();  // SizeOverflow before allocating anything
  s_.visit([&](const char* name, auto& v) { resize(v, shape(name), {}); });
  std::fill(s_.top_row.begin(), s_.top_row.end(), -1);
  std::fill(s_.sample_token.begin(), s_.sample_token.end(), -1);
}

std::vector<int64_t> FeatureStats::shape(const std::string& name) const {
  for (const Field& f : fields(c_))
    if (name == f.name) return f.shape;
  throw std::invalid_argument("no array " + name + " in the feature statistics");
}

int64_t FeatureStats::memory_bytes() const {
  int64_t total = 0;
  for (const Field& f : fields(c_)) {
    std::vector<int64_t> factors = f.shape;
    factors.push_back(f.bytes);
    const int64_t bytes = checked_size(factors, f.name);
    if (bytes > std::numeric_limits<int64_t>::max() - total)
      throw SizeOverflow("feature statistics: more bytes than memory can hold");
    total += bytes;
  }
  return total;
}

void FeatureStats::load(FeatureState st) {
  bool sizes_ok = true;
  st.visit([&](const char* name, auto& v) {
    sizes_ok &= static_cast<int64_t>(v.size()) == checked_size(shape(name), name);
  });
  require(sizes_ok, "a feature statistics state of other sizes than this one's");
  require(st.n_rows >= 0 && st.context >= 0 && (st.context > 0 || st.n_rows == 0) &&
              st.n_rows <= std::numeric_limits<int64_t>::max() / std::max<int64_t>(1, st.context) && st.n_tokens >= 0 &&
              st.n_tokens <= st.n_rows * st.context,
          "a feature statistics state with bad totals (n_tokens, n_rows, context)");
  for (float R : st.range) {
    int e = 0;
    require(R == 0.f || (std::isfinite(R) && std::frexp(R, &e) == 0.5f),
            "a feature statistics state whose range is not a power of two: " + std::to_string(R));
  }
  for (int64_t r : st.top_row) require(r >= -1 && r < st.n_rows, "a top row outside the rows seen");
  for (int64_t t : st.sample_token)
    require(t >= -1 && t < st.n_rows * st.context, "a sample token outside the tokens seen");
  for (size_t i = 0; i < st.top_row.size(); ++i)
    require(st.top_row[i] < 0 || (st.top_pos[i] >= 0 && st.top_pos[i] < st.context), "a top position outside its row");
  // every active token is in one bin: a feature's bins add up to its count
  for (int64_t f = 0; f < c_.n_features; ++f) {
    int64_t left = st.count[sz(f)];
    require(left >= 0, "a negative count");
    for (int64_t j = 0; j < c_.n_bins; ++j) {
      const int64_t h = st.hist[sz(f * c_.n_bins + j)];
      require(h >= 0 && h <= left, "a histogram that does not add up to its feature's count");
      left -= h;
    }
    require(left == 0, "a histogram that does not add up to its feature's count");
  }
  s_ = std::move(st);
}

void FeatureStats::add_sparse(const int32_t* idx, const float* val, int64_t n_tok, int64_t k, const uint8_t* valid,
                              int64_t first_row, int64_t context) {
  require(k >= 0, "k must be >= 0");
  Batch b;
  b.idx = idx, b.val = val, b.k = k, b.valid = valid;
  b.n_tok = n_tok, b.first_row = first_row, b.context = context;
  add(b);
}

void FeatureStats::add_dense(const float* acts, int64_t n_tok, const uint8_t* valid, int64_t first_row,
                             int64_t context) {
  Batch b;
  b.dense = acts, b.valid = valid;
  b.n_tok = n_tok, b.first_row = first_row, b.context = context;
  add(b);
}

void FeatureStats::add(Batch& b) {
  require(b.context >= 1, "context must be at least 1, not " + std::to_string(b.context));
  require(s_.context == 0 || b.context == s_.context,
          "context " + std::to_string(b.context) + " differs from the first batch's " + std::to_string(s_.context));
  require(b.n_tok >= 0 && b.n_tok % b.context == 0,
          "a batch of " + std::to_string(b.n_tok) + " tokens is not whole rows of " + std::to_string(b.context));
  require(b.first_row == s_.n_rows, "the batch starts at row " + std::to_string(b.first_row) + ", not at row " +
                                        std::to_string(s_.n_rows) + " (rows come in order, none skipped)");
  const int64_t rows = b.n_tok / b.context;
  checked_size({s_.n_rows + rows, b.context}, "tokens seen");
  b.F = c_.n_features;
  gather(b, c_.cooccurrence ? c_.cooc_cap : 0);  // checks every entry: nothing changes before
  s_.context = b.context;
  parallel_for(c_.n_features, [&](int64_t f0, int64_t f1, int) {
    std::vector<int64_t> scratch;
    for (int64_t f = f0; f < f1; ++f) walk_feature(b, f, scratch);
  });
  int64_t valid = 0;
  for (int64_t t = 0; t < b.n_tok; ++t) valid += b.valid[t] != 0;
  s_.n_tokens += valid;
  s_.n_rows += rows;
}

// Feature f's entries of the batch, in token order.
void FeatureStats::walk_feature(const Batch& b, int64_t f, std::vector<int64_t>& scratch) {
  int64_t peak = -1;  // the entry of the row's peak so far
  for (int64_t e = b.start[sz(f)]; e < b.start[sz(f) + 1]; ++e) {
    const int64_t t = b.token[sz(e)];
    const float v = b.value[sz(e)];
    if (v <= 0.f) continue;  // shown in windows only
    ++s_.count[sz(f)];
    s_.sum[sz(f)] += v;
    if (v >= s_.range[sz(f)]) grow_range(f, v, scratch);
    ++s_.hist[sz(f * c_.n_bins + bin_of(v, c_.n_bins, s_.range[sz(f)]))];
    offer_sample(b, f, e);
    if (peak >= 0 && b.token[sz(peak)] / b.context != t / b.context) {  // a new row: the last one's peak is final
      offer_top(b, f, peak);
      peak = -1;
    }
    if (peak < 0 || v > b.value[sz(peak)]) peak = e;
  }
  if (peak >= 0) offer_top(b, f, peak);
  if (c_.cooccurrence) count_cooccurrence(b, f);
}

// R: the smallest power of two above v; the histogram's bins and the intervals
// merge 2^s to one, s the doublings.
void FeatureStats::grow_range(int64_t f, float v, std::vector<int64_t>& order) {
  float& R = s_.range[sz(f)];
  const int e = std::ilogb(v) + 1;
  const int s = R == 0.f ? 0 : std::min(62, e - std::ilogb(R));
  R = std::ldexp(1.f, e);
  if (s == 0) return;  // first activation: nothing to merge
  int64_t* h = &s_.hist[sz(f * c_.n_bins)];
  for (int64_t j = 1; j < c_.n_bins; ++j) h[j >> s] += std::exchange(h[j], 0);
  const int64_t P = c_.per_interval, W = window(), base = f * c_.n_intervals * P;
  if (P == 0) return;
  // every kept sample, by (new interval, key, token); each interval keeps its first P
  order.clear();
  for (int64_t i = 0; i < c_.n_intervals * P; ++i)
    if (s_.sample_token[sz(base + i)] >= 0) order.push_back(i);
  auto rank = [&](int64_t i) {
    return std::make_tuple((i / P) >> s, s_.sample_key[sz(base + i)], s_.sample_token[sz(base + i)]);
  };
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rank(a) < rank(b); });
  const std::vector<uint64_t> key(s_.sample_key.begin() + base, s_.sample_key.begin() + base + c_.n_intervals * P);
  const std::vector<float> value(s_.sample_value.begin() + base, s_.sample_value.begin() + base + c_.n_intervals * P);
  const std::vector<int64_t> token(s_.sample_token.begin() + base, s_.sample_token.begin() + base + c_.n_intervals * P);
  const std::vector<float> win(s_.sample_window.begin() + base * W,
                               s_.sample_window.begin() + (base + c_.n_intervals * P) * W);
  std::fill(s_.sample_token.begin() + base, s_.sample_token.begin() + base + c_.n_intervals * P, -1);
  std::fill(s_.sample_key.begin() + base, s_.sample_key.begin() + base + c_.n_intervals * P, 0);
  std::fill(s_.sample_value.begin() + base, s_.sample_value.begin() + base + c_.n_intervals * P, 0.f);
  std::fill(s_.sample_window.begin() + base * W, s_.sample_window.begin() + (base + c_.n_intervals * P) * W, 0.f);
  std::vector<int64_t> filled(sz(c_.n_intervals), 0);
  for (int64_t i : order) {
    const int64_t to = (i / P) >> s;
    if (filled[sz(to)] == P) continue;
    const int64_t slot = base + to * P + filled[sz(to)]++;
    s_.sample_key[sz(slot)] = key[sz(i)];
    s_.sample_value[sz(slot)] = value[sz(i)];
    s_.sample_token[sz(slot)] = token[sz(i)];
    std::copy(win.begin() + i * W, win.begin() + (i + 1) * W, s_.sample_window.begin() + slot * W);
  }
}

namespace {

// The slot a new entry takes in a sorted list of n slots (n: none, it ranks below
// them all); ahead(i): whether slot i's entry stays ahead of it (an empty one does not).
template <class Ahead>
int64_t slot_for(int64_t n, Ahead ahead) {
  int64_t at = 0;
  while (at < n && ahead(at)) ++at;
  return at;
}

// Slot `at` of the sorted lists of n slots at base made free: the slots from there
// shift one down, the last one dropped (windows: `width` floats a slot).
template <class... Lists>
void open_slot(int64_t base, int64_t at, int64_t n, int64_t width, std::vector<float>& windows, Lists&... lists) {
  auto shift = [&](auto& v, int64_t w) {
    std::copy_backward(v.begin() + (base + at) * w, v.begin() + (base + n - 1) * w, v.begin() + (base + n) * w);
  };
  shift(windows, width);
  (shift(lists, 1), ...);
}

}  // namespace

// The window of feature f around its entry e, within e's row: from the dense
// input, or from f's entries next to e.
void FeatureStats::capture(const Batch& b, int64_t f, int64_t e, float* out) const {
  const int64_t t = b.token[sz(e)], row = t - t % b.context;
  const int64_t lo = std::max(row, t - c_.before), hi = std::min(row + b.context - 1, t + c_.after);
  std::fill(out, out + window(), 0.f);
  if (b.dense) {
    for (int64_t u = lo; u <= hi; ++u) out[u - t + c_.before] = b.valid[u] ? b.dense[u * b.F + f] : 0.f;
    return;
  }
  for (int64_t i = e; i >= b.start[sz(f)] && b.token[sz(i)] >= lo; --i)
    out[b.token[sz(i)] - t + c_.before] = b.value[sz(i)];
  for (int64_t i = e + 1; i < b.start[sz(f) + 1] && b.token[sz(i)] <= hi; ++i)
    out[b.token[sz(i)] - t + c_.before] = b.value[sz(i)];
}

void FeatureStats::offer_top(const Batch& b, int64_t f, int64_t e) {
  const float peak = b.value[sz(e)];
  const int64_t K = c_.top_k, base = f * K, row = b.first_row + b.token[sz(e)] / b.context;
  const int64_t at = slot_for(K, [&](int64_t i) {  // by value descending, then row
    const int64_t r = s_.top_row[sz(base + i)];
    return r >= 0 && std::make_pair(-s_.top_value[sz(base + i)], r) < std::make_pair(-peak, row);
  });
  if (at == K) return;
  open_slot(base, at, K, window(), s_.top_window, s_.top_value, s_.top_row, s_.top_pos);
  s_.top_value[sz(base + at)] = peak;
  s_.top_row[sz(base + at)] = row;
  s_.top_pos[sz(base + at)] = static_cast<int32_t>(b.token[sz(e)] % b.context);
  capture(b, f, e, &s_.top_window[sz((base + at) * window())]);
}

void FeatureStats::offer_sample(const Batch& b, int64_t f, int64_t e) {
  const int64_t P = c_.per_interval;
  const float v = b.value[sz(e)];
  const int64_t tg = b.global(b.token[sz(e)]);
  const int64_t base = (f * c_.n_intervals + bin_of(v, c_.n_intervals, s_.range[sz(f)])) * P;
  const uint64_t key = splitmix64(splitmix64(c_.seed ^ static_cast<uint64_t>(f)) ^ static_cast<uint64_t>(tg));
  const int64_t at = slot_for(P, [&](int64_t i) {  // by key, then token
    const int64_t t = s_.sample_token[sz(base + i)];
    return t >= 0 && std::make_pair(s_.sample_key[sz(base + i)], t) < std::make_pair(key, tg);
  });
  if (at == P) return;
  open_slot(base, at, P, window(), s_.sample_window, s_.sample_key, s_.sample_value, s_.sample_token);
  s_.sample_key[sz(base + at)] = key;
  s_.sample_value[sz(base + at)] = v;
  s_.sample_token[sz(base + at)] = tg;
  capture(b, f, e, &s_.sample_window[sz((base + at) * window())]);
}

// Row f of the co-occurrence counts, over f's tokens (the row stays in cache):
// where f takes part, each other feature taking part counts.
void FeatureStats::count_cooccurrence(const Batch& b, int64_t f) {
  uint32_t* row = &s_.cooc[sz(f * c_.n_features)];
  const uint32_t diagonal = row[f];
  for (int64_t e = b.start[sz(f)]; e < b.start[sz(f) + 1]; ++e) {
    const int64_t t = b.token[sz(e)];
    if (ranks_before(b.cut[sz(t)], {t, static_cast<int32_t>(f), b.value[sz(e)]})) continue;
    const Entry* first = b.first_entry[sz(t)];
    for (const Entry* g = first; g != first + b.n_entries[sz(t)]; ++g)
      if (!ranks_before(b.cut[sz(t)], *g)) row[g->f] += row[g->f] != std::numeric_limits<uint32_t>::max();
  }
  row[f] = diagonal;  // counted along with the others
}

}  // namespace tmech
