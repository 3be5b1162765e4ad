// Picks the best kernel variant for the running CPU, once, at first use.
#include <cstring>

#include "kernels/kernels.hpp"

namespace tmech {
#define TM_DECLARE_VARIANT(ns) \
  namespace ns {               \
  const KernelTable& table();  \
  }
#if TM_HAVE_AVX512_BF16
TM_DECLARE_VARIANT(avx512_bf16)
#endif
#if TM_HAVE_AVX512
TM_DECLARE_VARIANT(avx512)
#endif
#if TM_HAVE_AVX2
TM_DECLARE_VARIANT(avx2)
#endif
#if TM_HAVE_NEON
TM_DECLARE_VARIANT(neon)
#endif
TM_DECLARE_VARIANT(scalar)

namespace kernels {
namespace {

#if TM_HAVE_AVX512
bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
}
#endif

// Best first.
int supported_variants(const KernelTable** out, int capacity) {
  int n = 0;
  auto push = [&](const KernelTable& t) {
    if (n < capacity) out[n] = &t;
    ++n;
  };
#if TM_HAVE_AVX512_BF16
  if (has_avx512() && __builtin_cpu_supports("avx512bf16")) push(avx512_bf16::table());
#endif
#if TM_HAVE_AVX512
  if (has_avx512()) push(avx512::table());
#endif
#if TM_HAVE_AVX2
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    push(avx2::table());
#endif
#if TM_HAVE_NEON
  push(neon::table());
#endif
  push(scalar::table());
  return n;
}

const KernelTable*& current() {
  static const KernelTable* chosen = [] {
    const KernelTable* best[1];
    supported_variants(best, 1);
    return best[0];
  }();
  return chosen;
}

}  // namespace

const KernelTable& active() { return *current(); }

#if TM_HAVE_AVX_VNNI
bool use_avx_vnni = [] {
  __builtin_cpu_init();  // this runs among the static initializers
  return __builtin_cpu_supports("avxvnni") != 0;
}();
#else
bool use_avx_vnni = false;
#endif

int available(const KernelTable** out, int capacity) { return supported_variants(out, capacity); }

bool select(const char* name) {
  const KernelTable* all[8];
  int n = supported_variants(all, 8);
  for (int i = 0; i < n && i < 8; ++i)
    if (std::strcmp(all[i]->name, name) == 0) {
      current() = all[i];
      return true;
    }
  return false;
}

}  // namespace kernels
}  // namespace tmech
