// Native tests of the core, without Python: every kernel variant against a
// naive double-precision reference, and the forward pass's invariants
// (prefill = cached decode, thread counts agree, hooks keep shapes, bad input
// throws). CI runs this binary built with AddressSanitizer and UBSan.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "runtime/checked.hpp"
#include "runtime/default_threads.hpp"
#include "ops/dequantize.hpp"
#include "runtime/float_buffers.hpp"
#include "core/forward.hpp"
#include "core/hooks.hpp"
#include "kernels/kernels.hpp"
#include "runtime/owned_mutex.hpp"
#include "ops/matmul.hpp"
#include "sae/sae.hpp"
#include "sae/screen.hpp"
#include "runtime/threads.hpp"
#include "ops/sampling.hpp"
#include "ops/top_k.hpp"

using namespace tmech;

namespace {

int g_failed = 0, g_passed = 0;

void check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.f) {
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

// float32 -> bfloat16 bits, to nearest, ties to even (finite inputs).
uint16_t to_bf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}
float from_bf16(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// Every shape and flag, with float32 weights and with bfloat16 ones (whose
// matmuls of many rows round A to bfloat16 too where the variant has dot products).
void test_matmul(const char* variant, std::mt19937& rng) {
  const int64_t shapes[][3] = {{1, 1, 1},  {1, 7, 5},     {3, 64, 100}, {4, 300, 77},   {5, 17, 33},
                               {13, 257, 600}, {40, 40, 129}, {2, 513, 1000}, {25, 2, 70}, {12, 3, 32},
                               {9, 300, 97}, {16, 43, 1024}, {11, 5, 2048}};
  for (auto& s : shapes) {
    const int64_t M = s[0], K = s[1], N = s[2];
    for (int bf16 = 0; bf16 < 2; ++bf16)
      for (int transposed = 0; transposed < 2; ++transposed)
        for (int with_bias = 0; with_bias < 2; ++with_bias)
          for (int accumulate = 0; accumulate < 2; ++accumulate) {
            auto A = randn(M * K, rng), B = randn(K * N, rng), bias = randn(N, rng), C = randn(M * N, rng);
            std::vector<uint16_t> B16(B.size());
            for (size_t i = 0; i < B.size(); ++i) B16[i] = to_bf16(B[i]);
            const bool round_a = bf16 && kernels::active().bf16_dot_products && M > kMatmulSmallM;
            std::vector<double> ref(M * N);
            for (int64_t m = 0; m < M; ++m)
              for (int64_t n = 0; n < N; ++n) {
                double acc = accumulate ? C[m * N + n] : 0.0;
                if (with_bias) acc += bias[n];
                for (int64_t k = 0; k < K; ++k) {
                  const int64_t at = transposed ? n * K + k : k * N + n;
                  const float a = round_a ? from_bf16(to_bf16(A[m * K + k])) : A[m * K + k];
                  acc += double(a) * (bf16 ? from_bf16(B16[at]) : B[at]);
                }
                ref[m * N + n] = acc;
              }
            const Matrix Bm = bf16 ? Matrix(B16.data()) : Matrix(B.data());
            matmul(A.data(), M, K, K, Bm, N, transposed ? 1 : N, transposed ? K : 1,
                   with_bias ? bias.data() : nullptr, C.data(), N, accumulate);
            check(max_rel(C, ref) < 1e-5, std::string(variant) + " matmul " + std::to_string(M) + "x" +
                                              std::to_string(K) + "x" + std::to_string(N) +
                                              (bf16 ? " bf16" : "") + (transposed ? " NT" : " NN") +
                                              (with_bias ? " bias" : "") + (accumulate ? " acc" : ""));
          }
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

void test_vector_kernels(const char* variant, std::mt19937& rng) {
  const KernelTable& kt = kernels::active();
  for (int64_t n : {1, 3, 16, 31, 64, 100, 1001}) {
    auto a = randn(n, rng, 3.f), b = randn(n, rng);
    double d = 0;
    for (int64_t i = 0; i < n; ++i) d += double(a[i]) * b[i];
    check(std::abs(kt.dot(a.data(), b.data(), n) - d) < 1e-4 * (1 + std::abs(d)), std::string(variant) + " dot");

    std::vector<float> g(n);
    kt.gelu_new(a.data(), g.data(), n);
    std::vector<double> gref(n);
    for (int64_t i = 0; i < n; ++i) {
      double x = a[i];
      gref[i] = 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    }
    check(max_rel(g, gref) < 1e-5, std::string(variant) + " gelu_new");

    std::vector<float> s = a;
    kt.softmax(s.data(), n);
    double mx = a[0], sum = 0;
    for (float x : a) mx = std::max(mx, double(x));
    std::vector<double> sref(n);
    for (int64_t i = 0; i < n; ++i) sum += sref[i] = std::exp(a[i] - mx);
    for (auto& x : sref) x /= sum;
    check(max_rel(s, sref) < 1e-5, std::string(variant) + " softmax");
    const double lse = mx + std::log(sum);
    check(std::abs(kt.log_sum_exp(a.data(), n) - lse) < 1e-5 * (1 + std::abs(lse)), std::string(variant) + " log_sum_exp");
    std::vector<float> poisoned = a;
    poisoned[n - 1] = NAN;  // in the tail or the vector body, depending on n
    check(std::isnan(kt.log_sum_exp(poisoned.data(), n)), std::string(variant) + " log_sum_exp of a NaN");

    float mean, scale;
    kt.row_stats(a.data(), n, 1e-5f, &mean, &scale);
    double mu = 0, var = 0;
    for (float x : a) mu += x;
    mu /= n;
    for (float x : a) var += (x - mu) * (x - mu);
    var /= n;
    check(std::abs(mean - mu) < 1e-4 && std::abs(scale - std::sqrt(var + 1e-5)) < 1e-4 * std::sqrt(var + 1e-5),
          std::string(variant) + " row_stats");

    std::vector<float> sm(n);
    kt.silu_mul(a.data(), b.data(), sm.data(), n);
    std::vector<double> smref(n);
    for (int64_t i = 0; i < n; ++i) smref[i] = double(a[i]) / (1 + std::exp(-double(a[i]))) * b[i];
    check(max_rel(sm, smref) < 1e-5, std::string(variant) + " silu_mul");

    // rope rotates x[0, n) against x[n, 2n)
    auto x = randn(2 * n, rng), angle = randn(n, rng, 3.f);
    std::vector<float> cs(n), sn(n);
    for (int64_t i = 0; i < n; ++i) cs[i] = std::cos(angle[i]), sn[i] = std::sin(angle[i]);
    std::vector<double> rref(2 * n);
    for (int64_t i = 0; i < n; ++i) {
      rref[i] = double(x[i]) * cs[i] - double(x[n + i]) * sn[i];
      rref[n + i] = double(x[n + i]) * cs[i] + double(x[i]) * sn[i];
    }
    kt.rope(x.data(), cs.data(), sn.data(), n);
    check(max_rel(x, rref) < 1e-5, std::string(variant) + " rope");
  }
  std::vector<float> masked = {-INFINITY, 1.f, -INFINITY};
  kt.softmax(masked.data(), 3);
  check(masked[0] == 0.f && masked[1] == 1.f && masked[2] == 0.f, std::string(variant) + " softmax with -inf");
}

struct TinyModel {
  ModelConfig cfg;
  std::vector<std::vector<float>> store;
  ModelWeights w;

  // GPT-2-like, or Llama-like: RMSNorm, rotary, 2 key/value heads for 4
  // query heads, a gated MLP, [out, in] weights and no biases.
  TinyModel(std::mt19937& rng, bool llama) {
    cfg.n_layers = 2, cfg.d_model = 40, cfg.n_heads = 4, cfg.d_head = 10, cfg.d_mlp = 72;
    cfg.d_vocab = 53, cfg.n_ctx = 16, cfg.attn_scale = std::sqrt(10.f);
    if (llama) {
      cfg.normalization = Normalization::rms_norm, cfg.positions = Positions::rotary;
      cfg.layout = WeightLayout::out_in, cfg.act_fn = Activation::silu;
      cfg.n_key_value_heads = 2, cfg.gated_mlp = true, cfg.rotary_dim = cfg.d_head;
    }
    const int64_t D = cfg.d_model, F = cfg.d_mlp, V = cfg.d_vocab, Dqkv = cfg.d_qkv();
    auto make = [&](size_t n, float scale) {
      store.push_back(randn(n, rng, scale));
      return store.back().data();
    };
    store.reserve(64);
    auto bias = [&](size_t n) { return llama ? nullptr : make(n, 0.1f); };
    w.wte = make(V * D, 0.5f);
    if (llama) {
      store.emplace_back();
      for (int64_t i = 0; i < cfg.rotary_dim / 2; ++i) store.back().push_back(std::pow(100.f, -2.f * i / cfg.rotary_dim));
      w.rope_inv_freq = store.back().data();
    } else {
      w.wpe = make(cfg.n_ctx * D, 0.2f);
    }
    w.lnf_w = make(D, 1.f);
    w.lnf_b = bias(D);
    w.unembed = w.wte;
    for (int l = 0; l < cfg.n_layers; ++l) {
      LayerWeights lw;
      lw.ln1_w = make(D, 1.f), lw.ln1_b = bias(D);
      lw.qkv_w = make(D * Dqkv, 0.3f), lw.qkv_b = bias(Dqkv);
      lw.out_w = make(D * D, 0.2f), lw.out_b = bias(D);
      lw.ln2_w = make(D, 1.f), lw.ln2_b = bias(D);
      if (llama) lw.gate_w = make(D * F, 0.2f);
      lw.fc_w = make(D * F, 0.2f), lw.fc_b = bias(F);
      lw.proj_w = make(F * D, 0.2f), lw.proj_b = bias(D);
      w.layers.push_back(lw);
    }
  }
};

void test_forward(std::mt19937& rng, bool llama) {
  TinyModel tiny(rng, llama);
  const std::string arch = llama ? "llama: " : "gpt2: ";
  Model model(tiny.cfg, tiny.w);
  const int64_t B = 2, T = tiny.cfg.n_ctx, V = tiny.cfg.d_vocab;
  std::vector<int32_t> tokens(B * T);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % V);

  std::vector<float> full(B * T * V);
  KVCache c1 = model.new_cache(B);
  model.forward(&c1, tokens.data(), B, T, nullptr, LogitsMode::all, full.data());
  check(c1.n_past() == T, "prefill advances the cache");

  // Without a cache, keys and values are read in place: the same logits.
  std::vector<float> uncached(B * T * V);
  model.forward(nullptr, tokens.data(), B, T, nullptr, LogitsMode::all, uncached.data());
  check(uncached == full, arch + "a forward without a cache equals one with");
  bool refused = false;
  try {
    std::vector<int32_t> too_long(T + 1, 0);
    model.forward(nullptr, too_long.data(), 1, T + 1, nullptr, LogitsMode::none, nullptr);
  } catch (const std::out_of_range&) {
    refused = true;
  }
  check(refused, arch + "a forward without a cache refuses more tokens than the context");

  // Prefill 5 tokens, then decode one at a time: the last logits must match.
  KVCache c2 = model.new_cache(B);
  std::vector<int32_t> step(B);
  std::vector<float> prefix(B * 5 * V), last(B * V);
  std::vector<int32_t> head(B * 5);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < 5; ++t) head[b * 5 + t] = tokens[b * T + t];
  model.forward(&c2, head.data(), B, 5, nullptr, LogitsMode::all, prefix.data());
  double worst = 0;
  for (int64_t t = 5; t < T; ++t) {
    for (int64_t b = 0; b < B; ++b) step[b] = tokens[b * T + t];
    model.forward(&c2, step.data(), B, 1, nullptr, LogitsMode::last, last.data());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t v = 0; v < V; ++v)
        worst = std::max(worst, double(std::abs(last[b * V + v] - full[(b * T + t) * V + v])));
  }
  check(worst < 1e-4, arch + "cached decode equals prefill");

  // A plan touching every hook point with a capture, plus edits, must run and
  // keep TransformerLens shapes; the phased attention path must agree with the fused one.
  HookPlan plan(tiny.cfg.n_layers);
  const std::vector<int> ids = model.hook_ids();
  for (int id : ids) plan.add(id, Edit{});
  KVCache c3 = model.new_cache(B);
  std::vector<float> hooked(B * T * V);
  model.forward(&c3, tokens.data(), B, T, &plan, LogitsMode::all, hooked.data());
  double diff = 0;
  for (size_t i = 0; i < full.size(); ++i) diff = std::max(diff, double(std::abs(full[i] - hooked[i])));
  check(diff < 1e-4, arch + "capturing every hook point leaves the logits unchanged");
  check(plan.captured().size() == ids.size(), arch + "every hook point of the architecture captured");
  const int64_t kv_heads = tiny.cfg.kv_heads();
  for (size_t i = 0; i < plan.captured().size(); ++i) {
    auto& [id, c] = plan.captured()[i];
    check(id == ids[i], arch + "hook points reached in order");
    const std::string name = hook_name(id, tiny.cfg.n_layers);
    if (name.find("hook_k") != std::string::npos || name.find("hook_v") != std::string::npos ||
        name.find("hook_rot_k") != std::string::npos)
      check(c.shape == std::vector<int64_t>{B, T, kv_heads, tiny.cfg.d_head}, arch + name + " shape");
    if (name.find("hook_pattern") != std::string::npos) {
      check(c.shape == std::vector<int64_t>{B, tiny.cfg.n_heads, T, T}, "pattern shape");
      double row = 0;
      for (int64_t k = 0; k < T; ++k) row += c.data[(T - 1) * T + k];
      check(std::abs(row - 1) < 1e-5, "pattern rows sum to one");
    }
  }

  HookPlan edits(tiny.cfg.n_layers);
  Edit zero;
  zero.type = EditType::fill;
  zero.heads = {1, 3};
  edits.add(hook_id(HookKind::z, 0, 2), zero);
  Edit scale;
  scale.type = EditType::scale;
  scale.scalar = 0.5f;
  scale.positions = {2, 7};
  edits.add(hook_id(HookKind::pattern, 1, 2), scale);
  std::vector<float> steer(tiny.cfg.d_model, 0.25f);
  Edit add;
  add.type = EditType::add;
  add.values = steer.data();
  add.values_shape = {tiny.cfg.d_model};
  add.scalar = 2.f;
  edits.add(hook_id(HookKind::resid_pre, 1, 2), add);
  KVCache c4 = model.new_cache(B);
  model.forward(&c4, tokens.data(), B, T, &edits, LogitsMode::all, hooked.data());
  bool finite = true;
  for (float x : hooked) finite = finite && std::isfinite(x);
  check(finite, arch + "edited forward stays finite");

  Edit bad;
  bad.type = EditType::add;
  bad.values = steer.data();
  bad.values_shape = {7};
  HookPlan wrong(tiny.cfg.n_layers);
  wrong.add(hook_id(HookKind::mlp_out, 0, 2), bad);
  KVCache c5 = model.new_cache(B);
  bool threw = false;
  try {
    model.forward(&c5, tokens.data(), B, T, &wrong, LogitsMode::all, hooked.data());
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  check(threw && c5.n_past() == 0, "a mis-shaped edit throws and leaves the cache untouched");

  // Thread counts give the same numbers.
  for (int threads : {1, 3, 2}) {
    set_num_threads(threads);
    KVCache c = model.new_cache(B);
    std::vector<float> out(B * T * V);
    model.forward(&c, tokens.data(), B, T, nullptr, LogitsMode::all, out.data());
    double d = 0;
    for (size_t i = 0; i < out.size(); ++i) d = std::max(d, double(std::abs(out[i] - full[i])));
    check(d < 1e-5, arch + "same logits with " + std::to_string(threads) + " threads");
  }

  auto throws = [&](std::function<void()> fn) {
    try {
      fn();
    } catch (const std::exception&) {
      return true;
    }
    return false;
  };
  std::vector<int32_t> bad_tokens = {0, static_cast<int32_t>(V)};
  check(throws([&] {
          KVCache c = model.new_cache(1);
          model.forward(&c, bad_tokens.data(), 1, 2, nullptr, LogitsMode::all, full.data());
        }),
        "out-of-vocabulary token throws");
  check(throws([&] {
          KVCache c = model.new_cache(B);
          model.forward(&c, tokens.data(), B, T, nullptr, LogitsMode::none, nullptr);
          model.forward(&c, tokens.data(), B, 1, nullptr, LogitsMode::none, nullptr);
        }),
        "running past n_ctx throws");
}

}  // namespace

// transpose and the SAE screen's test on ragged sizes, against plain loops.
void test_transpose_and_screen(const char* variant, std::mt19937& rng) {
  const KernelTable& kt = kernels::active();
  for (int64_t rows : {1, 5, 16, 33})
    for (int64_t cols : {1, 7, 16, 40}) {
      const auto x = randn(static_cast<size_t>(rows * cols), rng);
      std::vector<float> t(static_cast<size_t>(rows * cols));
      kt.transpose(x.data(), cols, rows, cols, t.data(), rows);
      bool same = true;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) same &= t[c * rows + r] == x[r * cols + c];
      check(same, std::string(variant) + " transpose " + std::to_string(rows) + "x" + std::to_string(cols));
    }
  for (int64_t n : {1, 15, 16, 17, 50}) {
    auto x = randn(static_cast<size_t>(n), rng), w = randn(static_cast<size_t>(n), rng),
         limit = randn(static_cast<size_t>(n), rng);
    x[static_cast<size_t>(n / 2)] = -INFINITY;
    std::vector<int32_t> got(static_cast<size_t>(n)), want;
    got.resize(static_cast<size_t>(kt.screen(x.data(), w.data(), 0.5f, limit.data(), n, got.data())));
    for (int64_t j = 0; j < n; ++j)
      if (!(std::fma(0.5f, w[j], x[j]) <= limit[j] && x[j] > -INFINITY)) want.push_back(static_cast<int32_t>(j));
    check(got == want, std::string(variant) + " screen " + std::to_string(n));
  }
}

// A ReLU SAE's codes, screened and not, against double-precision
// pre-activations: every feature clearly above zero is kept with its value,
// none clearly below is.
void test_sae_encode(const char* variant, std::mt19937& rng) {
  for (ScreenMode mode : {ScreenMode::always, ScreenMode::never}) {
    set_screen_mode(mode);
    for (auto [d_in, d_sae, rows] : {std::tuple<int64_t, int64_t, int64_t>{77, 300, 37}, {130, 129, 1030}, {16, 40, 3}}) {
      const auto W_enc = randn(static_cast<size_t>(d_in * d_sae), rng, 1.f / std::sqrt(float(d_in)));
      const auto W_dec = randn(static_cast<size_t>(d_sae * d_in), rng);
      const std::vector<float> b_enc(static_cast<size_t>(d_sae), -2.f), b_dec(static_cast<size_t>(d_in), 0.f);
      SaeConfig cfg;
      cfg.d_in = cfg.d_out = d_in;
      cfg.d_sae = d_sae;
      const Sae sae(cfg, SaeWeights{W_enc.data(), b_enc.data(), W_dec.data(), b_dec.data()});
      const auto x = randn(static_cast<size_t>(rows * d_in), rng);
      SparseCodes codes;
      sae.encode(x.data(), rows, &codes, nullptr, nullptr, nullptr);
      bool ok = codes.rows == rows;
      for (int64_t r = 0; r < rows && ok; ++r) {
        std::vector<double> pre(static_cast<size_t>(d_sae), -2.0);
        for (int64_t i = 0; i < d_in; ++i)
          for (int64_t j = 0; j < d_sae; ++j) pre[j] += double(x[r * d_in + i]) * W_enc[i * d_sae + j];
        std::vector<float> got(static_cast<size_t>(d_sae), 0.f);
        for (auto o = codes.offsets[r]; o < codes.offsets[r + 1]; ++o) got[codes.indices[o]] = codes.values[o];
        for (int64_t j = 0; j < d_sae; ++j)
          ok &= pre[j] > 1e-4 ? std::abs(got[j] - pre[j]) < 1e-4 : (pre[j] < -1e-4 ? got[j] == 0.f : true);
      }
      check(ok, std::string(variant) + (mode == ScreenMode::always ? " screened" : "") + " SAE codes " +
                    std::to_string(rows) + " rows");
    }
  }
  set_screen_mode(ScreenMode::where_it_pays);
}

// A TopK SAE, screened, keeps the features the scalar variant's float32 path
// keeps, with the same values.
void test_sae_topk(const char* variant, std::mt19937& rng) {
  for (bool rescale : {false, true}) {
    const int64_t d_in = 45, d_sae = 1100, rows = 300, k = 7;  // 9 chunks of features: a seed of 2
    const auto W_enc = randn(static_cast<size_t>(d_in * d_sae), rng, 1.f / std::sqrt(float(d_in)));
    const auto W_dec = randn(static_cast<size_t>(d_sae * d_in), rng);
    const auto b_enc = randn(static_cast<size_t>(d_sae), rng);
    const std::vector<float> b_dec(static_cast<size_t>(d_in), 0.f);
    SaeConfig cfg;
    cfg.d_in = cfg.d_out = d_in;
    cfg.d_sae = d_sae;
    cfg.activation = SaeActivation::topk;
    cfg.k = k;
    cfg.rescale_acts_by_decoder_norm = rescale;
    const Sae sae(cfg, SaeWeights{W_enc.data(), b_enc.data(), W_dec.data(), b_dec.data()});
    const auto x = randn(static_cast<size_t>(rows * d_in), rng);
    SparseCodes ours, ref;
    set_screen_mode(ScreenMode::always);
    sae.encode(x.data(), rows, &ours, nullptr, nullptr, nullptr);
    kernels::select("scalar");
    set_screen_mode(ScreenMode::never);
    sae.encode(x.data(), rows, &ref, nullptr, nullptr, nullptr);
    kernels::select(variant);
    set_screen_mode(ScreenMode::where_it_pays);
    bool ok = ours.offsets == ref.offsets && ours.indices == ref.indices;
    for (size_t i = 0; ok && i < ref.values.size(); ++i) ok = std::abs(ours.values[i] - ref.values[i]) < 1e-4f;
    check(ok, std::string(variant) + " TopK SAE codes" + (rescale ? ", rescaled" : ""));
  }
}

// Capture buffers: large ones come back for the same size, small ones are
// freed at once, and release gives the kept memory back.
// A transcoder's splice shared by two plans whose passes interleave (two
// threads, or a pass inside a hook): each output hook gets the reconstruction
// of its own pass's input; an output hook met before the input hook throws.
void test_splice_state_per_plan() {
  const int64_t d = 4, n_layers = 2;
  std::vector<float> eye(static_cast<size_t>(d * d), 0.f), zero(static_cast<size_t>(d), 0.f);
  for (int64_t i = 0; i < d; ++i) eye[static_cast<size_t>(i * d + i)] = 1.f;
  SaeConfig cfg;
  cfg.d_in = cfg.d_sae = cfg.d_out = d;
  auto sae = std::make_shared<const Sae>(cfg, SaeWeights{eye.data(), zero.data(), eye.data(), zero.data()});
  const int in = hook_id(HookKind::resid_pre, 0, n_layers), out = hook_id(HookKind::resid_post, 1, n_layers);
  auto splice = std::make_shared<SaeSplice>(sae, false, hook_name(in, n_layers), hook_name(out, n_layers));
  auto plan = [&] {
    HookPlan p(n_layers);
    for (int id : {in, out}) {
      Edit e;
      e.type = EditType::callback;
      e.callback = splice;
      p.add(id, e);
    }
    return p;
  };
  auto view = [&](std::vector<float>& buf) {  // [1, 1, d]
    View v;
    v.data = buf.data();
    v.shape[0] = v.shape[1] = 1;
    v.shape[2] = d;
    v.stride[0] = v.stride[1] = d;
    v.stride[2] = 1;
    return v;
  };
  HookPlan a = plan(), b = plan();
  std::vector<float> a_in{1, 2, 3, 4}, b_in{5, 6, 7, 8}, a_out(4, 0.f), b_out(4, 0.f);
  a.apply(in, view(a_in));
  b.apply(in, view(b_in));
  a.apply(out, view(a_out));
  b.apply(out, view(b_out));
  check(a_out == a_in && b_out == b_in, "a transcoder's splice shared by two plans keeps each pass's input");
  HookPlan c = plan();
  bool threw = false;
  try {
    c.apply(out, view(a_out));
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  check(threw, "a transcoder's output hook without its input hook throws");
}

void test_float_buffers() {
  release_pooled_buffers();
  const int64_t big = kPooledBytes / 4 + 3, small = 100;
  float* first = nullptr;
  {
    FloatBuffer a = alloc_floats(big), b = alloc_floats(small);
    a[big - 1] = 1.f;  // the whole size is usable
    b[small - 1] = 1.f;
    first = a.get();
  }
  check(pooled_bytes() == big * 4, "a freed large buffer is kept");
  FloatBuffer again = alloc_floats(big), other = alloc_floats(big + 1);
  check(again.get() == first && other.get() != first && pooled_bytes() == 0, "and handed out for its size only");
  again.reset();
  other.reset();
  check(release_pooled_buffers() == (2 * big + 1) * 4 && pooled_bytes() == 0, "release frees what was kept");
}

// Every index of every parallel_for is visited exactly once, whatever the
// thread count, size and alignment, including calls nested inside a task and
// calls back to back (workers joining late must not rerun or miss chunks).
void test_parallel_for() {
  for (int threads : {1, 2, 3, 5}) {
    set_num_threads(threads);
    std::atomic<bool> ok{true};
    for (int64_t n : {1, 2, 7, 64, 65, 1000, 4097})
      for (int64_t align : {1, 3, 64}) {
        for (int rep = 0; rep < 20; ++rep) {
          std::vector<int> seen(static_cast<size_t>(n), 0);
          std::vector<int> busy(static_cast<size_t>(threads), 0);
          parallel_for(n, [&](int64_t b, int64_t e, int t) {
            if (t < 0 || t >= threads || busy[static_cast<size_t>(t)]++ != 0) ok = false;  // one chunk per index at a time
            if (b % align != 0) ok = false;
            for (int64_t i = b; i < e; ++i) ++seen[static_cast<size_t>(i)];
            parallel_for(3, [&](int64_t, int64_t, int inner) { if (inner != t) ok = false; });  // nested: inline
            --busy[static_cast<size_t>(t)];
          }, align);
          for (int v : seen)
            if (v != 1) ok = false;
        }
      }
    check(ok, "parallel_for covers every index once with " + std::to_string(threads) + " threads");
  }
  set_num_threads(0);
}

// A chunk that throws, on a worker or on the calling thread: the job drains
// (no chunk runs after parallel_for returns: they may use its caller's stack)
// and the first exception comes out; the pool works on.
void test_parallel_for_exceptions() {
  set_num_threads(3);
  for (int thrower : {0, 1, 2}) {
    std::atomic<int> running{0}, ran{0};
    std::atomic<bool> threw{false};
    bool caught = false;
    try {
      parallel_for(3, [&](int64_t, int64_t, int t) {
        ++running;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        ++ran;
        --running;
        if (t == thrower) {
          threw = true;
          throw std::bad_alloc();
        }
      });
    } catch (const std::bad_alloc&) {
      caught = true;
    }
    const int running_at_return = running, ran_at_return = ran;
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    // (thread `thrower` may have taken no chunk, its share run by the others: then nothing throws)
    check(caught == threw && running_at_return == 0 && ran == ran_at_return,
          "parallel_for: thread " + std::to_string(thrower) + "'s chunk throws, the job drains, its exception out");
  }
  std::atomic<int64_t> sum{0};
  parallel_for(1000, [&](int64_t b, int64_t e, int) { sum += e - b; });
  check(sum == 1000, "parallel_for works after a chunk threw");
  set_num_threads(1);
  bool threw = false;
  try {
    parallel_for(4, [](int64_t, int64_t, int) { throw std::bad_alloc(); });
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  set_num_threads(2);
  std::atomic<int> chunks{0};
  parallel_for(1000, [&](int64_t, int64_t, int) { ++chunks; });
  check(threw && chunks == 2, "a single-threaded job that threw leaves the thread outside the pool (jobs split again)");
  set_num_threads(0);
}

// Sizes from a config or a caller that do not fit int64 throw instead of wrapping.
void test_checked_sizes() {
  auto overflows = [](std::function<void()> fn) {
    try {
      fn();
    } catch (const SizeOverflow&) {
      return true;
    }
    return false;
  };
  check(checked_size({3, 4, 5}, "x") == 60 && checked_size({int64_t{1} << 62, 0, 8}, "x") == 0,
        "checked_size multiplies");
  check(overflows([] { checked_size({int64_t{1} << 32, int64_t{1} << 31}, "x"); }), "checked_size: 2^63 overflows");
  KVCache wide(2, int64_t{1} << 62, 32, 1024);  // 2 x 2^62 x 16 x 32 floats wrap to 0
  check(overflows([&] { wide.reserve(4); }) && wide.capacity() == 0, "a KV cache too wide for int64 is refused");
  std::mt19937 rng(7);
  TinyModel tiny(rng, true);
  tiny.cfg.n_ctx = int64_t{1} << 61;  // max_position_embeddings of 2^61: a KV cache of 2^70 bytes
  check(overflows([&] { Model model(tiny.cfg, tiny.w); }), "a config whose KV cache could never fit is refused");
}

// A KV cache names its model by an id never reused: a model made where a
// freed one was (the same address) refuses the freed one's cache.
void test_cache_owner() {
  std::mt19937 rng(8);
  TinyModel tiny(rng, false);
  std::vector<int32_t> tokens = {1, 2, 3};
  std::vector<float> logits(3 * tiny.cfg.d_vocab);
  auto first = std::make_unique<Model>(tiny.cfg, tiny.w);
  KVCache cache = first->new_cache(1);
  first->forward(&cache, tokens.data(), 1, 3, nullptr, LogitsMode::all, logits.data());
  first.reset();
  auto second = std::make_unique<Model>(tiny.cfg, tiny.w);
  bool refused = false;
  try {
    second->forward(&cache, tokens.data(), 1, 3, nullptr, LogitsMode::all, logits.data());
  } catch (const CacheMismatch&) {
    refused = true;
  }
  check(refused && cache.n_past() == 3, "a freed model's KV cache is refused by the next model");
}

// Two threads each holding a mutex and asking for the other's (hooks running
// each other's models): one is refused, the other gets it; nothing hangs.
void test_deadlock_refused() {
  OwnedMutex a("model"), b("model");
  std::atomic<int> holding{0}, refused{0}, locked{0};
  auto run = [&](OwnedMutex& mine, OwnedMutex& other) {
    OwnedLock hold(mine, "reentry");
    ++holding;
    while (holding < 2) std::this_thread::yield();
    try {
      OwnedLock both(other, "reentry");
      ++locked;
    } catch (const std::logic_error& e) {
      refused += std::string(e.what()).find("would deadlock") != std::string::npos;
    }
  };
  auto done = std::async(std::launch::async, [&] {
    std::thread t1(run, std::ref(a), std::ref(b)), t2(run, std::ref(b), std::ref(a));
    t1.join();
    t2.join();
  });
  if (done.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    std::printf("FAIL: two threads waiting for each other's mutex deadlocked\n");
    std::_Exit(1);
  }
  check(refused == 1 && locked == 1, "of two threads waiting for each other's mutex, one is refused");
  bool reentry = false;
  {
    OwnedLock hold(a, "reentry");
    try {
      OwnedLock again(a, "reentry");
    } catch (const std::logic_error& e) {
      reentry = std::string(e.what()) == "reentry";
    }
  }
  check(reentry, "a thread asking for a mutex it holds is refused");
}

// A pass stopped between blocks (Ctrl-C) unwinds, leaving the cache at its
// length, and the model gives the same logits afterwards.
int g_checks_left = 0;
void interrupt_after_some_checks() {
  if (--g_checks_left == 0) throw std::runtime_error("interrupted");
}

void test_interrupted_pass() {
  std::mt19937 rng(9);
  TinyModel tiny(rng, true);
  Model model(tiny.cfg, tiny.w);
  const int64_t V = tiny.cfg.d_vocab;
  std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6};
  std::vector<float> before(6 * V), after(6 * V), rest(3 * V);
  model.forward(nullptr, tokens.data(), 1, 6, nullptr, LogitsMode::all, before.data());
  KVCache cache = model.new_cache(1);
  model.forward(&cache, tokens.data(), 1, 3, nullptr, LogitsMode::none, nullptr);
  set_interrupt_check(interrupt_after_some_checks);
  g_checks_left = 2;  // before block 0, then before block 1
  bool stopped = false;
  try {
    model.forward(&cache, tokens.data() + 3, 1, 3, nullptr, LogitsMode::all, rest.data());
  } catch (const std::runtime_error&) {
    stopped = true;
  }
  set_interrupt_check(nullptr);
  check(stopped && cache.n_past() == 3, "an interrupted pass leaves its KV cache at its length");
  model.forward(&cache, tokens.data() + 3, 1, 3, nullptr, LogitsMode::all, rest.data());
  model.forward(nullptr, tokens.data(), 1, 6, nullptr, LogitsMode::all, after.data());
  double d = 0;
  for (int64_t i = 0; i < 3 * V; ++i) d = std::max(d, double(std::abs(rest[i] - before[3 * V + i])));
  check(after == before && d < 1e-4, "the model works as before after an interrupted pass");
}

// Thread counts from the environment: a positive whole number, or the first
// of OMP_NUM_THREADS's comma-separated list; anything else is ignored.
void test_thread_count_parse() {
  const std::pair<const char*, int> cases[] = {{"4", 4}, {"1", 1}, {"16,2", 16}, {"0", 0}, {"-2", 0}, {"", 0},
                                               {"abc", 0}, {"3x", 0}, {" 2", 0}, {"99999999999", 0}, {nullptr, 0},
                                               {"1024", 1024}, {"1025", 0}, {"4000", 0}};  // set_num_threads' limit
  for (const auto& [text, want] : cases)
    check(parse_thread_count(text) == want, std::string("parse_thread_count(\"") + (text ? text : "null") + "\")");
  check(default_thread_count() >= 1, "default_thread_count() >= 1");
}

// top_k_rows against a stable descending sort: ties by index, NaN as -inf,
// k small against the row (one pass) and large (a partial sort).
void test_top_k(std::mt19937& rng) {
  std::uniform_int_distribution<int> small(-4, 4);
  for (auto [rows, n, k] : {std::tuple<int64_t, int64_t, int64_t>{5, 100, 3}, {3, 17, 17}, {4, 64, 4}, {2, 1, 1},
                            {7, 1000, 10}, {3, 9, 0}}) {
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

int main() {
  std::mt19937 rng(1234);
  test_thread_count_parse();
  test_parallel_for();
  test_parallel_for_exceptions();
  test_checked_sizes();
  test_cache_owner();
  test_deadlock_refused();
  test_interrupted_pass();
  test_float_buffers();
  test_splice_state_per_plan();
  test_top_k(rng);
  test_sampling(rng);
  test_dequantize();
  const KernelTable* variants[8];
  const int n = kernels::available(variants, 8);
  for (int i = 0; i < n && i < 8; ++i) {
    kernels::select(variants[i]->name);
    test_matmul(variants[i]->name, rng);
    test_matmul_prefetch_after(variants[i]->name, rng);
    test_vector_kernels(variants[i]->name, rng);
    test_transpose_and_screen(variants[i]->name, rng);
    test_sae_encode(variants[i]->name, rng);
    test_sae_topk(variants[i]->name, rng);
    test_forward(rng, false);
    test_forward(rng, true);
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
