// Per-layer key/value storage for decoding: K and V of every position seen so
// far, laid out [layer][batch][capacity][d_kv]. Capacity grows by doubling up
// to n_ctx; truncate() forgets a suffix, fork() copies for branching. The
// storage comes zero-filled from calloc, whose pages are only made resident
// when written: capacity beyond the positions held costs no memory.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <vector>

#include "runtime/owned_mutex.hpp"

namespace tmech {

// A sequence longer than the context (Python: _core.ContextOverflow, an IndexError).
struct ContextOverflow : std::out_of_range {
  using std::out_of_range::out_of_range;
};

// A KV cache that does not fit the pass given it (Python: _core.CacheMismatch, a ValueError).
struct CacheMismatch : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// Throws ContextOverflow when a sequence of `positions` does not fit a context of n_ctx.
void check_fits_context(int64_t positions, int64_t n_ctx);

class KVCache {
 public:
  KVCache(int64_t n_layers, int64_t batch, int64_t d_kv, int64_t n_ctx);

  int64_t batch() const { return batch_; }
  int64_t n_past() const { return n_past_; }
  int64_t capacity() const { return capacity_; }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t d_kv() const { return d_kv_; }
  int64_t n_layers() const { return n_layers_; }

  // The id of the model that made the cache (0: any model of its shape may
  // use it). Ids are never reused, unlike the address of a freed model.
  uint64_t owner() const { return owner_; }
  void set_owner(uint64_t model_id) { owner_ = model_id; }

  void reset() {
    n_past_ = 0;
    left_padding_.clear();
  }
  void truncate(int64_t n);  // keep the first n positions
  KVCache fork() const;
  // Makes room for this many positions in all: ContextOverflow past n_ctx,
  // SizeOverflow or std::bad_alloc where memory cannot hold them.
  void reserve(int64_t positions);
  // reserve() for a forward pass: when the cache must grow, it takes room for
  // twice the positions (up to n_ctx), so the decoding steps after a prompt
  // do not copy the cache to a larger one (GPT-2 small, 128 positions: the
  // first step took 20-22 ms instead of 14). The room costs no memory until
  // written; where it cannot be had, exactly `positions`.
  void make_room(int64_t positions);
  void advance(int64_t t) { n_past_ += t; }

  // Row b's left padding: the positions before its first real token, which
  // later passes keep masking (a row of padding only holds n_past). Empty
  // until a padded pass sets it (a batch of 2^62 rows may be declared).
  int64_t left_padding(int64_t b) const { return left_padding_.empty() ? 0 : left_padding_[b]; }
  bool padded() const { return !left_padding_.empty(); }
  void set_left_padding(std::vector<int64_t> rows) { left_padding_ = std::move(rows); }

  float* k(int64_t layer, int64_t b, int64_t pos) { return at(k_, layer, b, pos); }
  // Held by whoever reads or changes the cache (a forward pass, the Python
  // methods), so that two threads sharing a cache take turns.
  OwnedMutex& mutex() { return mutex_; }
  // What a thread asking for the mutex it holds already is told.
  static constexpr const char* kInUse =
      "this KV cache is already in use by a forward pass on this thread: "
      "a hook cannot run a pass on it or change it";
  float* v(int64_t layer, int64_t b, int64_t pos) { return at(v_, layer, b, pos); }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  using Buffer = std::unique_ptr<float[], Free>;
  float* at(const Buffer& buf, int64_t layer, int64_t b, int64_t pos) {
    return buf.get() + ((layer * batch_ + b) * capacity_ + pos) * d_kv_;
  }
  // A zero-filled buffer for `cap` positions holding this cache's first n_past
  // positions of `from` (laid out at capacity from_cap).
  Buffer relaid(const Buffer& from, int64_t from_cap, int64_t cap) const;
  int64_t n_layers_, batch_, d_kv_, n_ctx_;
  int64_t capacity_ = 0, n_past_ = 0;
  Buffer k_, v_;
  std::vector<int64_t> left_padding_;  // [batch] or empty: no row padded
  uint64_t owner_ = 0;
  OwnedMutex mutex_{"KV cache"};
};

}  // namespace tmech
