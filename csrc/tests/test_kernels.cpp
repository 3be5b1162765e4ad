// Every entry of the active kernel variant's table against its named
// reference twin (kernels/reference.hpp), on ragged sizes that exercise the
// vector bodies and the tails; the matmul also through its threaded driver.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/kernels.hpp"
#include "kernels/reference.hpp"
#include "ops/matmul.hpp"
#include "tests/native_tests.hpp"

namespace tmech::test {
namespace {

std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> out(x.size());
  ref_round_bf16(x.data(), out.data(), static_cast<int64_t>(x.size()));
  return out;
}

std::vector<float> from_bf16(const std::vector<uint16_t>& h) {
  std::vector<float> out(h.size());
  for (size_t i = 0; i < h.size(); ++i) {
    const uint32_t bits = static_cast<uint32_t>(h[i]) << 16;
    std::memcpy(&out[i], &bits, sizeof bits);
  }
  return out;
}

// Every shape and flag, with float32 weights and with bfloat16 ones (whose
// matmuls of many rows round A to bfloat16 too where the variant has dot
// products), through the threaded driver.
void test_matmul(const char* variant, std::mt19937& rng) {
  const int64_t shapes[][3] = {{1, 1, 1},     {1, 7, 5},      {3, 64, 100}, {4, 300, 77},  {5, 17, 33},  {13, 257, 600},
                               {40, 40, 129}, {2, 513, 1000}, {25, 2, 70},  {12, 3, 32},   {9, 300, 97}, {16, 43, 1024},
                               {11, 5, 2048}, {8, 50, 40},    {14, 33, 70}, {26, 100, 48}, {15, 70, 90}, {27, 40, 33}};
  for (auto& s : shapes) {
    const int64_t M = s[0], K = s[1], N = s[2];
    for (int bf16 = 0; bf16 < 2; ++bf16)
      for (int transposed = 0; transposed < 2; ++transposed)
        for (int with_bias = 0; with_bias < 2; ++with_bias)
          for (int accumulate = 0; accumulate < 2; ++accumulate) {
            auto A = randn(M * K, rng), B = randn(K * N, rng), bias = randn(N, rng), C = randn(M * N, rng);
            const std::vector<uint16_t> B16 = to_bf16(B);
            const bool round_a = bf16 && kernels::active().bf16_dot_products && M > kMatmulSmallM;
            const std::vector<float> A_used = round_a ? from_bf16(to_bf16(A)) : A;
            MatmulArgs args{M,
                            N,
                            K,
                            A_used.data(),
                            K,
                            B.data(),
                            transposed ? 1 : N,
                            transposed ? K : 1,
                            with_bias ? bias.data() : nullptr,
                            C.data(),
                            N,
                            accumulate != 0,
                            nullptr};
            if (bf16) args.B16 = B16.data();
            std::vector<double> ref(M * N);
            ref_matmul_cols(args, 0, N, ref.data());
            const Matrix Bm = bf16 ? Matrix(B16.data()) : Matrix(B.data());
            matmul(A.data(), M, K, K, Bm, N, args.b_stride_k, args.b_stride_n, args.bias, C.data(), N, accumulate);
            check(max_rel(C, ref) < 1e-5, std::string(variant) + " matmul " + std::to_string(M) + "x" +
                                              std::to_string(K) + "x" + std::to_string(N) + (bf16 ? " bf16" : "") +
                                              (transposed ? " NT" : " NN") + (with_bias ? " bias" : "") +
                                              (accumulate ? " acc" : ""));
          }
  }
}

// The kernel itself on a range of columns that starts and ends off any panel
// boundary: those columns right, the others untouched.
void test_matmul_cols(const char* variant, std::mt19937& rng) {
  const KernelTable& kt = kernels::active();
  for (int64_t M : {2, 7, 30}) {
    const int64_t K = 70, N = 150, n_begin = 3, n_end = 141;
    auto A = randn(M * K, rng), B = randn(K * N, rng), bias = randn(N, rng);
    std::vector<float> C(M * N, 7.f), scratch(matmul_scratch_floats());
    MatmulArgs a{M, N, K, A.data(), K, B.data(), N, 1, bias.data(), C.data(), N, false, scratch.data()};
    std::vector<double> ref(M * N, 7.0);
    ref_matmul_cols(a, n_begin, n_end, ref.data());
    kt.matmul_cols(a, n_begin, n_end);
    check(max_rel(C, ref) < 1e-5, std::string(variant) + " matmul_cols [3, 141) of " + std::to_string(M) + " rows");
  }
}

// A caller's prefetch region is only a hint: the products are the same with
// one that runs past the end of its memory (a prefetch never faults).
void test_matmul_prefetch_after(const char* variant, std::mt19937& rng) {
  const KernelTable& kt = kernels::active();
  const int64_t M = 30, K = 300, N = 70;
  auto A = randn(M * K, rng), B = randn(K * N, rng), near = randn(100, rng);
  std::vector<float> plain(M * N), hinted(M * N);
  std::vector<float> scratch(matmul_scratch_floats());
  MatmulArgs a{M, N, K, A.data(), K, B.data(), N, 1, nullptr, plain.data(), N, false, scratch.data()};
  kt.matmul_cols(a, 0, N);
  a.C = hinted.data();
  a.prefetch_after = {near.data(), 50, 1 << 16, 1 << 20};
  kt.matmul_cols(a, 0, N);
  check(plain == hinted, std::string(variant) + " matmul with a prefetch region");
}

// The elementwise and row kernels on lengths around every vector width.
void test_vector_kernels(const char* variant, std::mt19937& rng) {
  const KernelTable& kt = kernels::active();
  for (int64_t n : {1, 3, 16, 31, 64, 100, 1001}) {
    const std::string at = std::string(variant) + " n=" + std::to_string(n) + " ";
    const auto a = randn(n, rng, 3.f), b = randn(n, rng);
    std::vector<float> got(n);
    std::vector<double> want(n);

    const double d = ref_dot(a.data(), b.data(), n);
    check(std::abs(kt.dot(a.data(), b.data(), n) - d) < 1e-4 * (1 + std::abs(d)), at + "dot");

    got = b;
    kt.axpy(got.data(), 0.7f, a.data(), n);
    ref_axpy(b.data(), 0.7f, a.data(), n, want.data());
    check(max_rel(got, want) < 1e-6, at + "axpy");

    kt.add(got.data(), a.data(), b.data(), n);
    ref_add(want.data(), a.data(), b.data(), n);
    check(max_rel(got, want) < 1e-6, at + "add");

    got = a;
    kt.scale(got.data(), -1.3f, n);
    ref_scale(a.data(), -1.3f, n, want.data());
    check(max_rel(got, want) < 1e-6, at + "scale");

    kt.exp(a.data(), got.data(), n);
    ref_exp(a.data(), want.data(), n);
    check(max_rel(got, want) < 1e-5, at + "exp");

    kt.gelu_new(a.data(), got.data(), n);
    ref_gelu_new(a.data(), want.data(), n);
    check(max_rel(got, want) < 1e-5, at + "gelu_new");

    got = a;
    kt.softmax(got.data(), n);
    ref_softmax(a.data(), n, want.data());
    check(max_rel(got, want) < 1e-5, at + "softmax");

    const double lse = ref_log_sum_exp(a.data(), n);
    check(std::abs(kt.log_sum_exp(a.data(), n) - lse) < 1e-5 * (1 + std::abs(lse)), at + "log_sum_exp");
    std::vector<float> poisoned = a;
    poisoned[n - 1] = NAN;  // in the tail or the vector body, depending on n
    check(std::isnan(kt.log_sum_exp(poisoned.data(), n)) && std::isnan(ref_log_sum_exp(poisoned.data(), n)),
          at + "log_sum_exp of a NaN");

    float mean, scale;
    double ref_mean, ref_scale_v;
    kt.row_stats(a.data(), n, 1e-5f, &mean, &scale);
    ref_row_stats(a.data(), n, 1e-5f, &ref_mean, &ref_scale_v);
    check(std::abs(mean - ref_mean) < 1e-4 && std::abs(scale - ref_scale_v) < 1e-4 * ref_scale_v, at + "row_stats");

    const auto w = randn(n, rng), bias = randn(n, rng);
    for (bool affine : {false, true}) {
      const float* wp = affine ? w.data() : nullptr;
      const float* bp = affine ? bias.data() : nullptr;
      kt.normalize(a.data(), mean, scale, wp, bp, got.data(), n);
      ref_normalize(a.data(), mean, scale, wp, bp, want.data(), n);
      check(max_rel(got, want) < 1e-5, at + (affine ? "normalize" : "normalize without w, b"));
    }

    kt.silu_mul(a.data(), b.data(), got.data(), n);
    ref_silu_mul(a.data(), b.data(), want.data(), n);
    check(max_rel(got, want) < 1e-5, at + "silu_mul");

    // rope rotates x[0, n) against x[n, 2n)
    auto x = randn(2 * n, rng), angle = randn(n, rng, 3.f);
    std::vector<float> cs(n), sn(n);
    for (int64_t i = 0; i < n; ++i) cs[i] = std::cos(angle[i]), sn[i] = std::sin(angle[i]);
    std::vector<double> rotated(2 * n);
    ref_rope(x.data(), cs.data(), sn.data(), n, rotated.data());
    kt.rope(x.data(), cs.data(), sn.data(), n);
    check(max_rel(x, rotated) < 1e-5, at + "rope");
  }
  std::vector<float> masked = {-INFINITY, 1.f, -INFINITY}, all_masked(3, -INFINITY);
  kt.softmax(masked.data(), 3);
  kt.softmax(all_masked.data(), 3);
  check(masked == std::vector<float>{0.f, 1.f, 0.f} && all_masked == std::vector<float>(3, 0.f),
        std::string(variant) + " softmax with -inf");
}

// bfloat16 rounding, bit for bit: random values of many scales, ties both
// ways, the largest floats (to infinity), infinities. NaN stays NaN.
// (Subnormals are left out: AVX512-BF16 flushes them to zero.)
void test_round_bf16(const char* variant, std::mt19937& rng) {
  const KernelTable& kt = kernels::active();
  std::vector<float> x = randn(1000, rng);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::ldexp(x[i], static_cast<int>(i % 60) - 30);
  const float largest = std::numeric_limits<float>::max();
  for (float v : {1.f + 0x1p-8f, 1.f + 0x3p-8f, -(1.f + 0x1p-8f), largest, -largest, INFINITY, -INFINITY, 0.f, -0.f})
    x.push_back(v);
  std::vector<uint16_t> got(x.size()), want(x.size());
  kt.round_bf16(x.data(), got.data(), static_cast<int64_t>(x.size()));
  ref_round_bf16(x.data(), want.data(), static_cast<int64_t>(x.size()));
  check(got == want, std::string(variant) + " round_bf16");
  const float nan = NAN;
  uint16_t h = 0;
  kt.round_bf16(&nan, &h, 1);
  check(std::isnan(from_bf16({h})[0]), std::string(variant) + " round_bf16 of NaN");
}

// A's rows [m_begin, m_end) as bfloat16 pairs, over blocks of kMatmulKC
// columns with an odd last block.
void test_round_a_pairs(const char* variant, std::mt19937& rng) {
  const KernelTable& kt = kernels::active();
  const int64_t M = 9, K = 2 * kMatmulKC + 89, lda = K + 3, m_begin = 2, m_end = 7;
  const auto A = randn(M * lda, rng);
  const int64_t words = matmul_a_pairs_words(M, K);
  std::vector<uint32_t> got(words, 0xDEADBEEF), want(words, 0xDEADBEEF);
  kt.round_a_pairs(A.data(), lda, M, K, m_begin, m_end, got.data());
  ref_round_a_pairs(A.data(), lda, M, K, m_begin, m_end, want.data());
  check(got == want, std::string(variant) + " round_a_pairs");
}

// transpose and the SAE screen's test on ragged sizes.
void test_transpose_and_screen(const char* variant, std::mt19937& rng) {
  const KernelTable& kt = kernels::active();
  for (int64_t rows : {1, 5, 16, 33})
    for (int64_t cols : {1, 7, 16, 40}) {
      const auto x = randn(static_cast<size_t>(rows * cols), rng);
      std::vector<float> got(static_cast<size_t>(rows * cols)), want(got.size());
      kt.transpose(x.data(), cols, rows, cols, got.data(), rows);
      ref_transpose(x.data(), cols, rows, cols, want.data(), rows);
      check(got == want, std::string(variant) + " transpose " + std::to_string(rows) + "x" + std::to_string(cols));
    }
  for (int64_t n : {1, 15, 16, 17, 50}) {
    auto x = randn(static_cast<size_t>(n), rng), w = randn(static_cast<size_t>(n), rng),
         limit = randn(static_cast<size_t>(n), rng);
    x[static_cast<size_t>(n / 2)] = -INFINITY;
    std::vector<int32_t> got(static_cast<size_t>(n)), want(got.size());
    got.resize(static_cast<size_t>(kt.screen(x.data(), w.data(), 0.5f, limit.data(), n, got.data())));
    want.resize(static_cast<size_t>(ref_screen(x.data(), w.data(), 0.5f, limit.data(), n, want.data())));
    check(got == want, std::string(variant) + " screen " + std::to_string(n));
  }
}

// The int16 screen's kernels: quantization within its bound (|x - s q| <= s/2
// + rounding, |q| <= Q, sum |q| returned, zeros for tiny or non-finite rows),
// packing, and the integer matmul against exact sums, ragged shapes and
// extreme values included.
void test_int16_screen(const char* variant, std::mt19937& rng) {
  const KernelTable& kt = kernels::active();
  const std::string name = variant;
  bool ok = true;
  for (int64_t n : {1, 7, 16, 33, 100}) {
    auto x = randn(static_cast<size_t>(n), rng);
    x[0] = 40.f;                                            // an outlier dimension
    std::vector<int16_t> q(static_cast<size_t>(n + 4), 7);  // room for the 3-element rows below
    float scale, max_abs;
    const int64_t l1 = kt.quantize_i16(x.data(), n, 1000, 1 << 30, q.data(), &scale, &max_abs);
    int64_t sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      ok &= std::abs(q[i]) <= 1000 && std::abs(double(x[i]) - double(scale) * q[i]) <= 0.501 * scale;
      sum += std::abs(q[i]);
    }
    ok &= sum == l1 && max_abs == 40.f && (n % 2 == 0 || q[static_cast<size_t>(n)] == 0);
    // a budget for sum |q| lowers Q
    const int64_t tight = kt.quantize_i16(x.data(), n, 32767, 200, q.data(), &scale, &max_abs);
    ok &= tight <= 200 && scale >= 40.f / 32767;
    const float tiny[3] = {1e-30f, 0.f, -2e-30f}, bad[3] = {1.f, NAN, 2.f};
    ok &= kt.quantize_i16(tiny, 3, 1000, 1 << 30, q.data(), &scale, &max_abs) == 0 && scale == 0.f &&
          max_abs == 2e-30f && q[0] == 0 && q[2] == 0;
    ok &= kt.quantize_i16(bad, 3, 1000, 1 << 30, q.data(), &scale, &max_abs) == 0 && !std::isfinite(scale) && q[0] == 0;
  }
  check(ok, name + " quantize_i16");
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 2}, {5, 17, 6}, {13, 40, 34}, {7, 16, 96}}) {
    std::uniform_int_distribution<int> val(-32767, 32767);
    std::vector<int16_t> A(static_cast<size_t>(M * K)), B(static_cast<size_t>(N * K));
    for (auto& v : A) v = static_cast<int16_t>(val(rng));
    for (auto& v : B) v = static_cast<int16_t>(val(rng) / 64);  // |sums| < 2^31 for K <= 96
    A[0] = B[0] = 32767;
    const int64_t panels = (N + kI16Panel - 1) / kI16Panel;
    std::vector<int16_t> packed(static_cast<size_t>(panels * kI16Panel * K)), want_packed(packed.size());
    kt.pack_i16(B.data(), K, N, K, packed.data());
    ref_pack_i16(B.data(), K, N, K, want_packed.data());
    std::vector<float> rs(static_cast<size_t>(M)), cs(static_cast<size_t>(N)), C(static_cast<size_t>(M * N));
    for (auto& v : rs) v = std::uniform_real_distribution<float>(0.5f, 2.f)(rng);
    for (auto& v : cs) v = std::uniform_real_distribution<float>(1e-4f, 1e-3f)(rng);
    kt.matmul_i16(A.data(), K, M, packed.data(), N, K, rs.data(), cs.data(), C.data(), N);
    std::vector<double> want(C.size());
    ref_matmul_i16(A.data(), K, M, B.data(), K, N, K, rs.data(), cs.data(), want.data());
    bool same = packed == want_packed;
    for (size_t i = 0; i < C.size(); ++i) same &= std::abs(C[i] - want[i]) <= 4e-7 * std::abs(want[i]);  // 3 roundings
    if (kernels::use_avx_vnni) {  // the tile without AVX-VNNI gives the same bits
      kernels::use_avx_vnni = false;
      std::vector<float> plain(C.size());
      kt.matmul_i16(A.data(), K, M, packed.data(), N, K, rs.data(), cs.data(), plain.data(), N);
      kernels::use_avx_vnni = true;
      same &= plain == C;
    }
    check(same,
          name + " pack_i16 / matmul_i16 " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K));
  }
}

// The benchmark probes compute what they say, and count the work of every lane.
void test_probes(const char* variant) {
  const KernelTable& kt = kernels::active();
  const std::string name = variant;
  const int64_t lanes = name == "scalar" ? 1 : name == "neon" ? 4 : name == "avx2" ? 8 : 16;
  const int64_t iters = 1000;
  const double fma = ref_fma_chains(iters, lanes);
  check(std::abs(kt.fma_chains(iters) - fma) < 1e-4 * fma &&
            kt.fma_chains_flops(iters) == ref_fma_chains_flops(iters, lanes),
        name + " fma_chains");
  // Small integers: every order of summation gives the exact sum.
  std::vector<float> x(1000);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7) - 3.f;
  for (int64_t n : {0, 1, 7, 64, 999, 1000})
    for (int stretches : {0, 1, 2, 3, 5, 6, 8, 9}) {
      double sum = 0;
      for (int64_t i = 0; i < n; ++i) sum += x[i];
      check(kt.read_stretches(x.data(), n, stretches) == sum,
            name + " read_stretches n=" + std::to_string(n) + " stretches=" + std::to_string(stretches));
    }
  if (!kt.bf16_dot_chains) return;
  const double dots = ref_bf16_dot_chains(iters, lanes);
  check(std::abs(kt.bf16_dot_chains(iters) - dots) < 1e-4 * dots &&
            kt.bf16_dot_chains_flops(iters) == ref_bf16_dot_chains_flops(iters, lanes),
        name + " bf16_dot_chains");
}

}  // namespace

void test_kernels(const char* variant, std::mt19937& rng) {
  test_matmul(variant, rng);
  test_matmul_cols(variant, rng);
  test_matmul_prefetch_after(variant, rng);
  test_vector_kernels(variant, rng);
  test_round_bf16(variant, rng);
  test_round_a_pairs(variant, rng);
  test_transpose_and_screen(variant, rng);
  test_int16_screen(variant, rng);
  test_probes(variant);
}

}  // namespace tmech::test
