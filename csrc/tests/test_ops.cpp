// The threaded ops beside the matmul: top-k, sampling, GGML dequantizing.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "ops/dequantize.hpp"
#include "ops/sampling.hpp"
#include "ops/top_k.hpp"
#include "tests/native_tests.hpp"

namespace tmech::test {
namespace {

// top_k_rows against a stable descending sort: ties by index, NaN as -inf,
// k small against the row (one pass) and large (a partial sort).
void test_top_k(std::mt19937& rng) {
  std::uniform_int_distribution<int> small(-4, 4);
  for (auto [rows, n, k] : {std::tuple<int64_t, int64_t, int64_t>{5, 100, 3},
                            {3, 17, 17},
                            {4, 64, 4},
                            {2, 1, 1},
                            {7, 1000, 10},
                            {3, 9, 0}}) {
    std::vector<float> x(static_cast<size_t>(rows * n));
    for (auto& v : x) v = static_cast<float>(small(rng));
    x[0] = NAN;
    std::vector<int64_t> idx(static_cast<size_t>(rows * k));
    std::vector<float> val(static_cast<size_t>(rows * k));
    top_k_rows(x.data(), rows, n, k, idx.data(), val.data());
    bool ok = true;
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<int64_t> order(static_cast<size_t>(n));
      for (int64_t j = 0; j < n; ++j) order[j] = j;
      auto key = [&](int64_t j) { return std::isnan(x[r * n + j]) ? -INFINITY : x[r * n + j]; };
      std::stable_sort(order.begin(), order.end(), [&](int64_t p, int64_t q) { return key(p) > key(q); });
      for (int64_t j = 0; j < k; ++j) {
        const float want = x[r * n + order[j]], got = val[r * k + j];
        ok = ok && idx[r * k + j] == order[j] && (got == want || (std::isnan(got) && std::isnan(want)));
      }
    }
    check(ok, "top_k_rows " + std::to_string(rows) + "x" + std::to_string(n) + " k=" + std::to_string(k));
  }
}

// Draws from rows wide enough that the nucleus outgrows the first candidates;
// u = 0 picks the most probable kept token, a masked one is never drawn.
void test_sampling(std::mt19937& rng) {
  const int64_t rows = 4, n = 3000;
  std::vector<float> z = randn(rows * n, rng, 0.5f);
  for (int64_t r = 0; r < rows; ++r) z[r * n + 7] = -INFINITY, z[r * n + 11] = 3.f;
  std::vector<double> u = {0.0, 0.3, 0.7, 0.999999};
  std::vector<int64_t> out(rows);
  bool ok = true;
  for (SamplingParams p : {SamplingParams{1.f, 0, 0.95}, SamplingParams{0.5f, 100, 0.9}, SamplingParams{2.f, 0, 1.0},
                           SamplingParams{1.f, 5, 1.0}}) {
    sample_rows(z.data(), rows, n, p, u.data(), out.data());
    for (int64_t r = 0; r < rows; ++r) ok = ok && out[r] >= 0 && out[r] < n && out[r] != 7;
    if (p.top_k > 0 || p.top_p < 1.0) ok = ok && out[0] == 11;
  }
  check(ok, "sample_rows");
  bool refused = false;
  try {
    std::vector<float> bad = {NAN, 1.f};
    sample_rows(bad.data(), 1, 2, {}, u.data(), out.data());
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  check(refused, "sample_rows refuses NaN logits");
}

// One block of each GGML type: d = 0.5 (f16 0x3800), m = -1 (0xBC00).
void test_dequantize() {
  std::vector<uint8_t> q4_0(18), q4_1(20), q8_0(34);
  q4_0[0] = 0x00, q4_0[1] = 0x38, q4_0[2] = 0xA3;  // values 0 and 16: nibbles 3 and 10
  q4_1[0] = 0x00, q4_1[1] = 0x38, q4_1[2] = 0x00, q4_1[3] = 0xBC, q4_1[4] = 0xF1;
  q8_0[0] = 0x00, q8_0[1] = 0x38, q8_0[2] = 0x80, q8_0[33] = 0x7F;
  std::vector<float> out(32);
  dequantize_blocks(2, q4_0.data(), 1, out.data());
  bool ok = out[0] == 0.5f * (3 - 8) && out[16] == 0.5f * (10 - 8) && out[1] == -4.f;
  dequantize_blocks(3, q4_1.data(), 1, out.data());
  ok = ok && out[0] == 0.5f * 1 - 1.f && out[16] == 0.5f * 15 - 1.f && out[5] == -1.f;
  dequantize_blocks(8, q8_0.data(), 1, out.data());
  ok = ok && out[0] == -64.f && out[31] == 63.5f && out[1] == 0.f;
  std::vector<uint8_t> q4_k(144), q6_k(210);
  std::vector<float> wide(256);
  q4_k[1] = 0x38, q4_k[3] = 0x3C, q4_k[4] = 2, q4_k[8] = 3, q4_k[16] = 0x75;  // d 0.5, dmin 1, scale 2, min 3
  dequantize_blocks(12, q4_k.data(), 1, wide.data());
  ok = ok && wide[0] == 0.5f * 2 * 5 - 3.f && wide[32] == 0.f && wide[1] == -3.f;
  q6_k[192] = 1, q6_k[193] = static_cast<uint8_t>(-2), q6_k[209] = 0x38, q6_k[0] = 0x0F, q6_k[128] = 0x03;
  dequantize_blocks(14, q6_k.data(), 1, wide.data());
  ok = ok && wide[0] == 0.5f * 1 * (63 - 32) && wide[1] == -16.f && wide[16] == 0.5f * -2 * -32;
  ok = ok && half_to_float(0x0001) == 5.9604644775390625e-8f && std::isinf(half_to_float(0xFC00)) &&
       std::isnan(half_to_float(0x7E00)) && half_to_float(0x3C00) == 1.f;
  check(ok, "dequantize_blocks Q4_0 / Q4_1 / Q8_0 / Q4_K / Q6_K and half_to_float");
}

}  // namespace

void test_ops(std::mt19937& rng) {
  test_top_k(rng);
  test_sampling(rng);
  test_dequantize();
}

}  // namespace tmech::test
