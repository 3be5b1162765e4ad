// Native tests of the core, without Python: every kernel variant against the
// named references (kernels/reference.hpp), the forward pass's invariants
// (prefill = cached decode, thread counts agree, hooks keep shapes, bad input
// throws), the threaded ops, SAEs and the runtime. CI runs this binary built
// with AddressSanitizer and UBSan, and on 64-bit ARM under qemu.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "kernels/kernels.hpp"
#include "tests/native_tests.hpp"

namespace tmech::test {

namespace {
int g_failed = 0, g_passed = 0;
}  // namespace

void check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

std::vector<float> randn(size_t n, std::mt19937& rng, float scale) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double max_rel(const std::vector<float>& a, const std::vector<double>& ref) {
  double err = 0, scale = 1e-12;
  for (size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::abs(a[i] - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return err / scale;
}

}  // namespace tmech::test

int main() {
  using namespace tmech;
  using namespace tmech::test;
  std::mt19937 rng(1234);
  test_runtime();
  test_core();
  test_sae();
  test_ops(rng);
  test_train(rng);
  test_dashboards(rng);
  const KernelTable* variants[8];
  const int n = kernels::available(variants, 8);
  for (int i = 0; i < n && i < 8; ++i) {
    kernels::select(variants[i]->name);
    test_kernels(variants[i]->name, rng);
    test_sae_variant(variants[i]->name, rng);
    test_forward(rng, false);
    test_forward(rng, true);
    test_padding(rng, false);
    test_padding(rng, true);
    test_backward(rng, false);
    test_backward(rng, true);
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
