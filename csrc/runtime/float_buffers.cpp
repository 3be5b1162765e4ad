#include "runtime/float_buffers.hpp"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>

#include "runtime/checked.hpp"

namespace tmech {
namespace {

// Each buffer starts kHeader bytes into its block, after its size.
constexpr size_t kHeader = 64;

// A kept block goes back to the system once this many requests have missed
// the pool since it was freed: a loop over inputs of changing lengths asks for
// new sizes each time and would otherwise keep every old size (up to the cap),
// while a loop of one shape never misses, so keeps all it reuses. A GPT-2
// small run_with_cache of every hook makes ~200 buffers: inputs of two lengths
// in turn still reuse theirs.
constexpr uint64_t kMissWindow = 256;
constexpr uint64_t kSweepEvery = 64;  // misses between sweeps for stale blocks

struct Kept {
  void* block;
  uint64_t misses_then;  // the pool's miss count when it was freed
};

struct Pool {
  std::mutex mutex;
  std::unordered_multimap<size_t, Kept> free_blocks;  // by buffer size in bytes
  size_t bytes = 0;
  uint64_t misses = 0;  // requests of a pooled size that found no block
};

// Never destroyed: numpy may free captured arrays during interpreter shutdown.
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

size_t& size_of(void* block) { return *static_cast<size_t*>(block); }
float* buffer_of(void* block) { return reinterpret_cast<float*>(static_cast<char*>(block) + kHeader); }

// Frees the kept blocks no request has taken within the last kMissWindow misses.
void free_stale(Pool& p) {
  for (auto it = p.free_blocks.begin(); it != p.free_blocks.end();) {
    if (p.misses - it->second.misses_then > kMissWindow) {
      std::free(it->second.block);
      p.bytes -= it->first;
      it = p.free_blocks.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace

FloatBuffer alloc_floats(int64_t n) {
  const auto bytes = static_cast<size_t>(checked_size({std::max<int64_t>(n, 1), sizeof(float)}, "a buffer"));
  if (bytes >= static_cast<size_t>(kPooledBytes)) {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    const auto it = p.free_blocks.find(bytes);
    if (it != p.free_blocks.end()) {
      void* block = it->second.block;
      p.free_blocks.erase(it);
      p.bytes -= bytes;
      return FloatBuffer(buffer_of(block));
    }
    if (++p.misses % kSweepEvery == 0) free_stale(p);
  }
  void* block = std::malloc(kHeader + bytes);
  if (!block) throw std::bad_alloc();
  size_of(block) = bytes;
  return FloatBuffer(buffer_of(block));
}

void FreeFloats::operator()(float* buffer) const {
  if (!buffer) return;
  void* block = reinterpret_cast<char*>(buffer) - kHeader;
  const size_t bytes = size_of(block);
  if (bytes >= static_cast<size_t>(kPooledBytes)) {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    if (p.bytes + bytes <= static_cast<size_t>(kPoolCapBytes)) {
      p.free_blocks.emplace(bytes, Kept{block, p.misses});
      p.bytes += bytes;
      return;
    }
  }
  std::free(block);
}

int64_t pooled_bytes() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  return static_cast<int64_t>(p.bytes);
}

int64_t release_pooled_buffers() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  const auto released = static_cast<int64_t>(p.bytes);
  for (auto& [bytes, kept] : p.free_blocks) std::free(kept.block);
  p.free_blocks.clear();
  p.bytes = 0;
  return released;
}

}  // namespace tmech
