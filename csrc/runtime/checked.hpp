// Sizes computed from a file's or a caller's numbers (a config's n_ctx, a
// batch, the positions a KV cache is asked to hold): multiplied without
// wrapping around. Wrapped, a huge product becomes a small allocation that
// the next pass writes far past; a product beyond int64 is more than any
// memory holds, so it throws SizeOverflow instead (Python: _core.SizeOverflow,
// a MemoryError). Every size the core allocates from such numbers goes
// through checked_size.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace tmech {

struct SizeOverflow : std::length_error {
  using std::length_error::length_error;
};

// The product of the sizes in [first, last), none negative; SizeOverflow
// naming `what` and the factors when it exceeds int64.
template <class It>
int64_t checked_size(It first, It last, const char* what) {
  int64_t n = 1;
  bool zero = false, overflow = false;
  for (It it = first; it != last; ++it) {
    const int64_t f = *it;
    if (f < 0) throw std::invalid_argument(std::string(what) + ": negative size " + std::to_string(f));
    zero = zero || f == 0;
    if (f != 0 && n > std::numeric_limits<int64_t>::max() / f) overflow = true;
    if (!overflow) n *= f;
  }
  if (zero) return 0;
  if (overflow) {  // the message is built only here: checked_size runs in hot loops (attention's buffers)
    std::string factors;
    for (It it = first; it != last; ++it) factors += (factors.empty() ? "" : " x ") + std::to_string(*it);
    throw SizeOverflow(std::string(what) + ": " + factors + " is more than memory can hold");
  }
  return n;
}

inline int64_t checked_size(std::initializer_list<int64_t> sizes, const char* what) {
  return checked_size(sizes.begin(), sizes.end(), what);
}

inline int64_t checked_size(const std::vector<int64_t>& sizes, const char* what) {
  return checked_size(sizes.begin(), sizes.end(), what);
}

}  // namespace tmech
