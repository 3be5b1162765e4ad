#include "kv_cache.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace tmech {

KVCache::KVCache(int64_t n_layers, int64_t batch, int64_t d_kv, int64_t n_ctx)
    : n_layers_(n_layers), batch_(batch), d_kv_(d_kv), n_ctx_(n_ctx) {
  if (n_layers <= 0 || batch <= 0 || d_kv <= 0 || n_ctx <= 0)
    throw std::invalid_argument("KV cache sizes must be positive");
}

void KVCache::truncate(int64_t n) {
  if (n < 0 || n > n_past_)
    throw std::out_of_range("cannot truncate a cache of " + std::to_string(n_past_) +
                            " positions to " + std::to_string(n));
  n_past_ = n;
}

void KVCache::reserve(int64_t positions) {
  if (positions > n_ctx_)
    throw std::out_of_range("sequence of " + std::to_string(positions) +
                            " positions exceeds the context length " + std::to_string(n_ctx_));
  if (positions <= capacity_) return;
  const int64_t cap = std::min(n_ctx_, std::max(positions, std::max<int64_t>(16, 2 * capacity_)));
  // Re-lay out each [layer][batch] block at the new capacity, keeping n_past rows.
  auto grow = [&](std::vector<float>& old) {
    std::vector<float> fresh(static_cast<size_t>(n_layers_ * batch_ * cap * d_kv_));
    for (int64_t lb = 0; lb < n_layers_ * batch_; ++lb)
      if (n_past_ > 0)
        std::memcpy(fresh.data() + lb * cap * d_kv_, old.data() + lb * capacity_ * d_kv_,
                    static_cast<size_t>(n_past_ * d_kv_) * sizeof(float));
    old.swap(fresh);
  };
  grow(k_);
  grow(v_);
  capacity_ = cap;
}

}  // namespace tmech
