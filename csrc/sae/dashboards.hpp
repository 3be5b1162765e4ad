// Feature dashboards' accumulator: one pass over a corpus of rows of `context`
// tokens gathers, per feature, its count and sum, an activation histogram, its
// top rows (by their peak), samples per activation interval (a hash of the token
// decides which), the activation windows around those, and optionally how
// often each pair of features fires on the same token. Each thread owns a range
// of features, so the result has the same bits for any thread count, and it
// equals a brute force over the whole corpus (the histogram's and intervals'
// range R grows by doubling, merging bins, which loses nothing).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tmech {

struct FeatureStatsConfig {
  int64_t n_features = 1, top_k = 0, n_intervals = 1, per_interval = 0, n_bins = 1, before = 0, after = 0;
  bool cooccurrence = false;
  int64_t cooc_cap = 0;  // at most this many of a token's largest features count together (>= 1 with cooccurrence)
  uint64_t seed = 0;
};

// Everything accumulated so far (what a checkpoint saves); arrays row-major
// with the shapes FeatureStats::shape names. Empty slots: row/token -1, value 0.
struct FeatureState {
  int64_t n_tokens = 0, n_rows = 0, context = 0;
  std::vector<int64_t> count;         // [F]
  std::vector<double> sum;            // [F]
  std::vector<float> range;           // [F] R: a power of two above the max, 0 if never active
  std::vector<int64_t> hist;          // [F, n_bins]
  std::vector<float> top_value;       // [F, top_k]
  std::vector<int64_t> top_row;       // [F, top_k]
  std::vector<int32_t> top_pos;       // [F, top_k]
  std::vector<float> top_window;      // [F, top_k, W]
  std::vector<uint64_t> sample_key;   // [F, n_intervals, per_interval]
  std::vector<float> sample_value;    // [F, n_intervals, per_interval]
  std::vector<int64_t> sample_token;  // [F, n_intervals, per_interval]
  std::vector<float> sample_window;   // [F, n_intervals, per_interval, W]
  std::vector<uint32_t> cooc;         // [F, F] with cooccurrence, else empty

  // fn(name, vector) for each array, in the order above
  template <class Fn>
  void visit(Fn&& fn) {
    fn("count", count), fn("sum", sum), fn("range", range), fn("hist", hist);
    fn("top_value", top_value), fn("top_row", top_row), fn("top_pos", top_pos), fn("top_window", top_window);
    fn("sample_key", sample_key), fn("sample_value", sample_value), fn("sample_token", sample_token);
    fn("sample_window", sample_window), fn("cooc", cooc);
  }
};

uint64_t splitmix64(uint64_t z);

class FeatureStats {
 public:
  explicit FeatureStats(const FeatureStatsConfig& config);  // std::invalid_argument, SizeOverflow

  // A batch of whole rows, n_tok = rows * context tokens, the first being row
  // first_row (= the rows seen so far). idx [n_tok, k] (-1: no entry), val [n_tok, k];
  // valid [n_tok] (0: a position that counts for nothing). Bad input throws
  // std::invalid_argument and changes nothing.
  void add_sparse(const int32_t* idx, const float* val, int64_t n_tok, int64_t k, const uint8_t* valid,
                  int64_t first_row, int64_t context);
  // acts [n_tok, F]
  void add_dense(const float* acts, int64_t n_tok, const uint8_t* valid, int64_t first_row, int64_t context);

  const FeatureStatsConfig& config() const { return c_; }
  const FeatureState& state() const { return s_; }
  std::vector<int64_t> shape(const std::string& name) const;  // an array's shape in the state
  void load(FeatureState state);  // a saved state back, its sizes and ranges checked (std::invalid_argument)
  int64_t memory_bytes() const;
  int64_t window() const { return c_.before + 1 + c_.after; }

  struct Batch;  // one batch's inputs and entries (dashboards.cpp)

 private:
  void add(Batch& b);
  void walk_feature(const Batch& b, int64_t f, std::vector<int64_t>& scratch);
  void grow_range(int64_t f, float v, std::vector<int64_t>& scratch);
  void capture(const Batch& b, int64_t f, int64_t e, float* out) const;  // e: an entry of f in the batch
  void offer_top(const Batch& b, int64_t f, int64_t e);
  void offer_sample(const Batch& b, int64_t f, int64_t e);
  void count_cooccurrence(const Batch& b, int64_t f);

  FeatureStatsConfig c_;
  FeatureState s_;
};

}  // namespace tmech
