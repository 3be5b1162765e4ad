#include "core/kv_cache.hpp"

#include <algorithm>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "runtime/checked.hpp"

namespace tmech {

KVCache::KVCache(int64_t n_layers, int64_t batch, int64_t d_kv, int64_t n_ctx)
    : n_layers_(n_layers), batch_(batch), d_kv_(d_kv), n_ctx_(n_ctx) {
  if (n_layers <= 0 || batch <= 0 || d_kv <= 0 || n_ctx <= 0)
    throw std::invalid_argument("KV cache sizes must be positive");
}

void KVCache::truncate(int64_t n) {
  if (n < 0 || n > n_past_)
    throw std::out_of_range("cannot truncate a cache of " + std::to_string(n_past_) + " positions to " +
                            std::to_string(n));
  n_past_ = n;
  for (int64_t& pad : left_padding_) pad = std::min(pad, n);  // a row cut inside its padding holds padding only
  if (n == 0) left_padding_.clear();
}

KVCache::Buffer KVCache::relaid(const Buffer& from, int64_t from_cap, int64_t cap) const {
  const int64_t floats =
      checked_size({n_layers_, batch_, cap, d_kv_}, "a KV cache of layers x batch x positions x width");
  Buffer fresh(static_cast<float*>(std::calloc(static_cast<size_t>(floats), sizeof(float))));
  if (!fresh) throw std::bad_alloc();
  for (int64_t lb = 0; lb < n_layers_ * batch_ && n_past_ > 0; ++lb)
    std::memcpy(fresh.get() + lb * cap * d_kv_, from.get() + lb * from_cap * d_kv_,
                static_cast<size_t>(n_past_ * d_kv_) * sizeof(float));
  return fresh;
}

void check_fits_context(int64_t positions, int64_t n_ctx) {
  if (positions > n_ctx)
    throw ContextOverflow("sequence of " + std::to_string(positions) + " positions exceeds the context length " +
                          std::to_string(n_ctx));
}

void KVCache::reserve(int64_t positions) {
  check_fits_context(positions, n_ctx_);
  if (positions <= capacity_) return;
  const int64_t cap = std::min(n_ctx_, std::max(positions, std::max<int64_t>(16, 2 * capacity_)));
  Buffer k = relaid(k_, capacity_, cap), v = relaid(v_, capacity_, cap);  // both, before either is kept
  k_ = std::move(k), v_ = std::move(v);
  capacity_ = cap;
}

void KVCache::make_room(int64_t positions) {
  check_fits_context(positions, n_ctx_);
  if (positions <= capacity_) return;
  try {
    reserve(positions + std::min(positions, n_ctx_ - positions));
  } catch (const std::exception&) {  // SizeOverflow or bad_alloc: the room alone may still fit
    reserve(positions);
  }
}

KVCache KVCache::fork() const {
  KVCache copy(n_layers_, batch_, d_kv_, n_ctx_);
  copy.owner_ = owner_;
  copy.n_past_ = n_past_;
  copy.left_padding_ = left_padding_;
  if (capacity_ > 0) {
    copy.k_ = relaid(k_, capacity_, capacity_);
    copy.v_ = relaid(v_, capacity_, capacity_);
    copy.capacity_ = capacity_;
  }
  return copy;
}

}  // namespace tmech
