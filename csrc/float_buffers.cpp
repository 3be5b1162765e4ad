#include "float_buffers.hpp"

#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>

namespace tmech {
namespace {

// Each buffer starts kHeader bytes into its block, after its size.
constexpr size_t kHeader = 64;

struct Pool {
  std::mutex mutex;
  std::unordered_multimap<size_t, void*> free_blocks;  // by buffer size in bytes
  size_t bytes = 0;
};

// Never destroyed: numpy may free captured arrays during interpreter shutdown.
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

size_t& size_of(void* block) { return *static_cast<size_t*>(block); }
float* buffer_of(void* block) { return reinterpret_cast<float*>(static_cast<char*>(block) + kHeader); }

}  // namespace

FloatBuffer alloc_floats(int64_t n) {
  const size_t bytes = static_cast<size_t>(n > 0 ? n : 1) * sizeof(float);
  if (bytes >= static_cast<size_t>(kPooledBytes)) {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    const auto it = p.free_blocks.find(bytes);
    if (it != p.free_blocks.end()) {
      void* block = it->second;
      p.free_blocks.erase(it);
      p.bytes -= bytes;
      return FloatBuffer(buffer_of(block));
    }
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
      p.free_blocks.emplace(bytes, block);
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
  for (auto& [bytes, block] : p.free_blocks) std::free(block);
  p.free_blocks.clear();
  p.bytes = 0;
  return released;
}

}  // namespace tmech
