// Buffers for captured activations, handed to numpy without a copy.
//
// A fresh page costs about 2 µs to fault in on a virtual machine, more than
// computing what goes into it, and a run_with_cache of 512 GPT-2 tokens fills
// ~650 MB of them; glibc gives such large blocks back to the system as soon as
// they are freed. So freed buffers of at least kPooledBytes are kept (up to
// kPoolCapBytes in all) and handed out again for the same size: a loop of
// run_with_cache calls reuses the memory of the caches it has dropped. A kept
// buffer no request has wanted for a while (inputs changed length) is freed;
// release_pooled_buffers() gives all the kept memory back.
#pragma once
#include <cstdint>
#include <memory>

namespace tmech {

constexpr int64_t kPooledBytes = int64_t{1} << 16;
constexpr int64_t kPoolCapBytes = int64_t{1} << 30;

struct FreeFloats {
  void operator()(float* p) const;
};
using FloatBuffer = std::unique_ptr<float[], FreeFloats>;

// n floats (SizeOverflow past int64 bytes), uninitialized (zeroing them first would cost as much as the copy
// that fills them). (Transparent huge pages were tried: slower here, and
// erratic, compaction on fault.)
FloatBuffer alloc_floats(int64_t n);

int64_t pooled_bytes();
// Frees every kept buffer; returns the bytes given back.
int64_t release_pooled_buffers();

}  // namespace tmech
