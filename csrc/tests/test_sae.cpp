// SAEs: encoding on every kernel variant, screened and not, against
// double-precision pre-activations and against the scalar float32 path; a
// transcoder's splice shared by two plans.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "core/hooks.hpp"
#include "kernels/kernels.hpp"
#include "kernels/reference.hpp"
#include "sae/sae.hpp"
#include "sae/screen.hpp"
#include "tests/native_tests.hpp"

namespace tmech::test {
namespace {

// A ReLU SAE's codes, screened and not, against double-precision
// pre-activations: every feature clearly above zero is kept with its value,
// none clearly below is.
void test_sae_encode(const char* variant, std::mt19937& rng) {
  for (ScreenMode mode : {ScreenMode::always_bf16, ScreenMode::always_int16, ScreenMode::never}) {
    set_screen_mode(mode);
    for (auto [d_in, d_sae, rows] :
         {std::tuple<int64_t, int64_t, int64_t>{77, 300, 37}, {130, 129, 1030}, {16, 40, 3}}) {
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
      // pre = x · W_enc + b_enc
      std::vector<double> pre(static_cast<size_t>(rows * d_sae));
      const MatmulArgs enc{rows, d_sae,        d_in,    x.data(), d_in,  W_enc.data(), d_sae,
                           1,    b_enc.data(), nullptr, d_sae,    false, nullptr};
      ref_matmul_cols(enc, 0, d_sae, pre.data());
      bool ok = codes.rows == rows;
      for (int64_t r = 0; r < rows && ok; ++r) {
        std::vector<float> got(static_cast<size_t>(d_sae), 0.f);
        for (auto o = codes.offsets[r]; o < codes.offsets[r + 1]; ++o) got[codes.indices[o]] = codes.values[o];
        for (int64_t j = 0; j < d_sae; ++j) {
          const double p = pre[r * d_sae + j];
          ok &= p > 1e-4 ? std::abs(got[j] - p) < 1e-4 : (p < -1e-4 ? got[j] == 0.f : true);
        }
      }
      check(ok, std::string(variant) + " " + screen_mode_name(mode) + " SAE codes " + std::to_string(rows) + " rows");
      SaeConfig fixed = cfg;  // W_enc kept transposed: the same codes, bit for bit
      fixed.fixed_encoder = true;
      const Sae kept(fixed, SaeWeights{W_enc.data(), b_enc.data(), W_dec.data(), b_dec.data()});
      SparseCodes kept_codes;
      kept.encode(x.data(), rows, &kept_codes, nullptr, nullptr, nullptr);
      check(kept_codes.offsets == codes.offsets && kept_codes.indices == codes.indices &&
                kept_codes.values == codes.values &&
                kept.keeps_transposed_encoder() == (mode != ScreenMode::never),  // made by the screen only
            std::string(variant) + " " + screen_mode_name(mode) + " SAE codes with W_enc kept transposed");
      const float* t = kept.transposed_encoder();
      bool same = true;
      for (int64_t j = 0; j < d_sae; ++j)
        for (int64_t i = 0; i < d_in; ++i) same &= t[j * d_in + i] == W_enc[static_cast<size_t>(i * d_sae + j)];
      check(same, std::string(variant) + " the kept encoder is W_enc transposed");
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
    SparseCodes ref;
    kernels::select("scalar");
    set_screen_mode(ScreenMode::never);
    sae.encode(x.data(), rows, &ref, nullptr, nullptr, nullptr);
    kernels::select(variant);
    for (ScreenMode mode : {ScreenMode::always_bf16, ScreenMode::always_int16}) {
      SparseCodes ours;
      set_screen_mode(mode);
      sae.encode(x.data(), rows, &ours, nullptr, nullptr, nullptr);
      bool ok = ours.offsets == ref.offsets && ours.indices == ref.indices;
      for (size_t i = 0; ok && i < ref.values.size(); ++i) ok = std::abs(ours.values[i] - ref.values[i]) < 1e-4f;
      check(ok,
            std::string(variant) + " " + screen_mode_name(mode) + " TopK SAE codes" + (rescale ? ", rescaled" : ""));
    }
    set_screen_mode(ScreenMode::where_it_pays);
  }
}

// A gated SAE (screen or not, which it must skip): a feature is its magnitude
// x·(W_enc·exp(r_mag)) + b_mag, ReLU'd, where its gate x·W_enc + b_gate is
// open, against double precision; its recorded pre-activations are the
// magnitudes. Missing or overflowing magnitude weights are refused.
void test_sae_gated(const char* variant, std::mt19937& rng) {
  const int64_t d_in = 33, d_sae = 70, rows = 9;
  const auto W_enc = randn(static_cast<size_t>(d_in * d_sae), rng, 1.f / std::sqrt(float(d_in)));
  const auto W_dec = randn(static_cast<size_t>(d_sae * d_in), rng);
  const auto b_gate = randn(static_cast<size_t>(d_sae), rng), b_mag = randn(static_cast<size_t>(d_sae), rng);
  auto r_mag = randn(static_cast<size_t>(d_sae), rng, 0.5f);
  const std::vector<float> b_dec(static_cast<size_t>(d_in), 0.f);
  SaeConfig cfg;
  cfg.d_in = cfg.d_out = d_in;
  cfg.d_sae = d_sae;
  cfg.activation = SaeActivation::gated;
  SaeWeights w{W_enc.data(), b_gate.data(), W_dec.data(), b_dec.data()};
  w.r_mag = r_mag.data();
  w.b_mag = b_mag.data();
  const auto x = randn(static_cast<size_t>(rows * d_in), rng);
  std::vector<double> gate(static_cast<size_t>(rows * d_sae));
  const MatmulArgs enc{rows, d_sae,         d_in,    x.data(), d_in,  W_enc.data(), d_sae,
                       1,    b_gate.data(), nullptr, d_sae,    false, nullptr};
  ref_matmul_cols(enc, 0, d_sae, gate.data());
  const Sae sae(cfg, w);
  for (ScreenMode mode : {ScreenMode::always, ScreenMode::never}) {
    set_screen_mode(mode);
    std::vector<float> acts(static_cast<size_t>(rows * d_sae)), pre(acts.size()), screened(acts.size());
    sae.encode(x.data(), rows, nullptr, acts.data(), pre.data(), nullptr);
    sae.encode(x.data(), rows, nullptr, screened.data(), nullptr, nullptr);
    bool ok = screened == acts;
    for (int64_t i = 0; i < rows * d_sae; ++i) {
      const int64_t j = i % d_sae;
      const double g = gate[i], m = (g - b_gate[j]) * std::exp(double(r_mag[j])) + b_mag[j];
      ok &= std::abs(pre[i] - m) < 1e-4 * (1 + std::abs(m));
      if (g > 1e-4 && m > 1e-4) ok &= std::abs(acts[i] - m) < 1e-4 * (1 + m);
      if (g < -1e-4 || m < -1e-4) ok &= acts[i] == 0.f;
    }
    check(ok, std::string(variant) + (mode == ScreenMode::always ? " screened" : "") + " gated SAE codes");
  }
  set_screen_mode(ScreenMode::where_it_pays);
  auto refused = [&](SaeWeights bad) {
    try {
      Sae s(cfg, bad);
    } catch (const std::invalid_argument&) {
      return true;
    }
    return false;
  };
  SaeWeights no_mag = w;
  no_mag.b_mag = nullptr;
  r_mag[3] = 100.f;  // exp overflows float32
  check(refused(no_mag) && refused(w), "a gated SAE without b_mag, or with an r_mag too large for exp, is refused");
}

// An AbsTopK SAE (screen or not, which it must skip) keeps each row's k
// pre-activations largest in absolute value, signed: the k-th largest absolute
// value, from double precision, bounds what is kept and what is not.
void test_sae_abstopk(const char* variant, std::mt19937& rng) {
  const int64_t d_in = 30, d_sae = 200, rows = 11, k = 6;
  const auto W_enc = randn(static_cast<size_t>(d_in * d_sae), rng, 1.f / std::sqrt(float(d_in)));
  const auto W_dec = randn(static_cast<size_t>(d_sae * d_in), rng);
  const auto b_enc = randn(static_cast<size_t>(d_sae), rng);
  const std::vector<float> b_dec(static_cast<size_t>(d_in), 0.f);
  SaeConfig cfg;
  cfg.d_in = cfg.d_out = d_in;
  cfg.d_sae = d_sae;
  cfg.activation = SaeActivation::abstopk;
  cfg.k = k;
  const Sae sae(cfg, SaeWeights{W_enc.data(), b_enc.data(), W_dec.data(), b_dec.data()});
  const auto x = randn(static_cast<size_t>(rows * d_in), rng);
  std::vector<double> pre(static_cast<size_t>(rows * d_sae));
  const MatmulArgs enc{rows, d_sae,        d_in,    x.data(), d_in,  W_enc.data(), d_sae,
                       1,    b_enc.data(), nullptr, d_sae,    false, nullptr};
  ref_matmul_cols(enc, 0, d_sae, pre.data());
  for (ScreenMode mode : {ScreenMode::always, ScreenMode::never}) {
    set_screen_mode(mode);
    std::vector<float> acts(static_cast<size_t>(rows * d_sae));
    sae.encode(x.data(), rows, nullptr, acts.data(), nullptr, nullptr);
    bool ok = true, negative = false;
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<double> mags(static_cast<size_t>(d_sae));
      for (int64_t j = 0; j < d_sae; ++j) mags[static_cast<size_t>(j)] = std::abs(pre[r * d_sae + j]);
      std::nth_element(mags.begin(), mags.begin() + (k - 1), mags.end(), std::greater<double>());
      const double kth = mags[static_cast<size_t>(k - 1)];
      int64_t kept = 0;
      for (int64_t j = 0; j < d_sae; ++j) {
        const double p = pre[r * d_sae + j];
        const float got = acts[static_cast<size_t>(r * d_sae + j)];
        kept += got != 0.f;
        negative |= got < 0.f;
        if (std::abs(p) > kth + 1e-4) ok &= std::abs(got - p) < 1e-4;
        if (std::abs(p) < kth - 1e-4) ok &= got == 0.f;
      }
      ok &= kept == k;
    }
    check(ok && negative, std::string(variant) + (mode == ScreenMode::always ? " screened" : "") + " AbsTopK SAE");
  }
  set_screen_mode(ScreenMode::where_it_pays);
}

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

  // set_sae: the next call runs the new SAE (here one that doubles), so a transcoder's pass
  // begun before encodes and decodes with it at its output hook; an SAE of other sizes is refused
  std::vector<float> twice(eye);
  for (float& v : twice) v *= 2.f;
  HookPlan after = plan();
  a.apply(in, view(a_in));  // a pass begun before the change
  splice->set_sae(std::make_shared<const Sae>(cfg, SaeWeights{eye.data(), zero.data(), twice.data(), zero.data()}));
  after.apply(in, view(b_in));
  after.apply(out, view(b_out));
  a.apply(out, view(a_out));
  check(b_out == std::vector<float>{10, 12, 14, 16}, "a splice runs the SAE set_sae gave it");
  check(a_out == std::vector<float>{2, 4, 6, 8}, "set_sae: the new SAE from the output of a pass under way");
  SaeConfig wider = cfg, taller = cfg;
  wider.d_sae = taller.d_out = 2 * d;
  std::vector<float> wide(static_cast<size_t>(2 * d * d), 0.f), wide_b(static_cast<size_t>(2 * d), 0.f);
  int refused = 0;
  for (const auto& other :
       {std::make_shared<const Sae>(wider, SaeWeights{wide.data(), wide_b.data(), wide.data(), zero.data()}),
        std::make_shared<const Sae>(taller, SaeWeights{eye.data(), zero.data(), wide.data(), wide_b.data()})}) {
    try {
      splice->set_sae(other);
    } catch (const std::invalid_argument&) {
      ++refused;
    }
  }
  check(refused == 2, "set_sae refuses an SAE of another d_sae or d_out");
}

// Sparse codes from a caller: offsets from 0 to nnz, never decreasing; an
// index outside [0, d_sae) refused before it is narrowed to int32.
void test_sparse_codes() {
  const std::vector<float> values = {1.f, 2.f, 3.f};
  auto refused = [&](std::vector<int64_t> offsets, std::vector<int64_t> indices) {
    try {
      sparse_codes(offsets.data(), static_cast<int64_t>(offsets.size()) - 1, indices.data(), values.data(),
                   static_cast<int64_t>(indices.size()), 40);
    } catch (const std::out_of_range&) {
      return 2;
    } catch (const std::invalid_argument&) {
      return 1;
    }
    return 0;
  };
  const std::vector<int64_t> offsets = {0, 2, 3}, indices = {5, 39, 0};
  const SparseCodes c = sparse_codes(offsets.data(), 2, indices.data(), values.data(), 3, 40);
  check(c.rows == 2 && c.offsets == offsets && c.indices == std::vector<int32_t>{5, 39, 0} && c.values == values,
        "sparse_codes keeps valid codes");
  check(refused({1, 2, 3}, {5, 39, 0}) == 1 && refused({0, 2, 2}, {5, 39, 0}) == 1 &&
            refused({0, 2, 1, 3}, {5, 39, 0}) == 1 && refused({0, 2, 3}, {5, 40, 0}) == 2 &&
            refused({0, 2, 3}, {5, (int64_t{1} << 32) + 5, 0}) == 2 && refused({0, 2, 3}, {-1, 3, 0}) == 2,
        "sparse_codes refuses bad offsets and out-of-range indices");
}

// SAELens's matching-pursuit loop transcribed in double precision, batched as
// it is written: every row iterates until all are done, a done row adding zero.
std::vector<double> matching_pursuit_reference(const MatchingPursuitConfig& c, const std::vector<float>& W_dec,
                                               int64_t d_in, int64_t d_sae, const std::vector<float>& x, int64_t rows) {
  std::vector<double> acts(static_cast<size_t>(rows * d_sae), 0.0), res(x.begin(), x.end());
  std::vector<uint8_t> done(static_cast<size_t>(rows), 0), prev(acts.size(), 0);
  for (int64_t it = 0; it < c.max_iterations; ++it) {
    bool all_done = true;
    for (int64_t r = 0; r < rows; ++r) {
      double* rr = res.data() + r * d_in;
      int64_t best = 0;
      double best_v = -1;
      for (int64_t f = 0; f < d_sae; ++f) {
        double s = 0;
        for (int64_t j = 0; j < d_in; ++j) s += rr[j] * W_dec[static_cast<size_t>(f * d_in + j)];
        if (std::max(s, 0.0) > best_v) best = f, best_v = std::max(s, 0.0);
      }
      const double v = done[static_cast<size_t>(r)] ? 0.0 : best_v;
      acts[static_cast<size_t>(r * d_sae + best)] += v;
      double ss = 0;
      for (int64_t j = 0; j < d_in; ++j) {
        rr[j] -= v * W_dec[static_cast<size_t>(best * d_in + j)];
        ss += rr[j] * rr[j];
      }
      bool same = true;
      for (int64_t f = 0; f < d_sae; ++f) {
        const auto i = static_cast<size_t>(r * d_sae + f);
        same &= (acts[i] != 0) == (prev[i] != 0);
        prev[i] = acts[i] != 0;
      }
      if (c.stop_on_duplicate_support && same) done[static_cast<size_t>(r)] = 1;
      if (c.residual_threshold > 0 && std::sqrt(ss) < c.residual_threshold) done[static_cast<size_t>(r)] = 1;
      all_done &= done[static_cast<size_t>(r)] != 0;
    }
    if (all_done) break;
  }
  return acts;
}

// Matching pursuit against the batched reference under each stopping rule (the
// same features picked, the same values), over many rows and threads; equal
// decoder rows: the first is picked; a tied SAE decodes without b_dec unless
// it subtracted it.
void test_matching_pursuit(const char* variant, std::mt19937& rng) {
  const int64_t d_in = 19, d_sae = 53, rows = 67;
  auto W_dec = randn(static_cast<size_t>(d_sae * d_in), rng, 0.3f);
  const auto x = randn(static_cast<size_t>(rows * d_in), rng);
  for (auto [threshold, iterations, stop] :
       {std::tuple<float, int64_t, bool>{1e-2f, d_in, true}, {1.5f, 40, false}, {0.f, 4, true}, {0.f, 25, false}}) {
    const MatchingPursuitConfig c{threshold, iterations, stop};
    std::vector<float> acts(static_cast<size_t>(rows * d_sae), -1.f);
    matching_pursuit(c, W_dec.data(), d_in, d_sae, x.data(), rows, acts.data());
    const auto ref = matching_pursuit_reference(c, W_dec, d_in, d_sae, x, rows);
    bool ok = true;
    for (size_t i = 0; i < acts.size(); ++i)
      ok &= (acts[i] != 0) == (ref[i] != 0) && std::abs(acts[i] - ref[i]) < 1e-4 * (1 + std::abs(ref[i]));
    check(ok, std::string(variant) + " matching pursuit, threshold " + std::to_string(threshold) + ", " +
                  std::to_string(iterations) + " iterations" + (stop ? ", stopping on a repeated support" : ""));
  }
  std::copy(W_dec.begin() + 2 * d_in, W_dec.begin() + 3 * d_in, W_dec.begin() + 9 * d_in);  // row 9 = row 2
  std::vector<float> one(W_dec.begin() + 2 * d_in, W_dec.begin() + 3 * d_in), acts(static_cast<size_t>(d_sae));
  matching_pursuit(MatchingPursuitConfig{0.f, 1, true}, W_dec.data(), d_in, d_sae, one.data(), 1, acts.data());
  check(acts[2] > 0 && acts[9] == 0, std::string(variant) + " matching pursuit picks the first of equal rows");

  SaeConfig cfg;
  cfg.d_in = cfg.d_out = d_in;
  cfg.d_sae = d_sae;
  cfg.activation = SaeActivation::matching_pursuit;
  cfg.matching_pursuit = MatchingPursuitConfig{1e-2f, d_in, true};
  cfg.decode_bias = false;
  std::vector<float> W_enc(static_cast<size_t>(d_in * d_sae)), b_enc(static_cast<size_t>(d_sae), 0.f);
  for (int64_t f = 0; f < d_sae; ++f)
    for (int64_t j = 0; j < d_in; ++j)
      W_enc[static_cast<size_t>(j * d_sae + f)] = W_dec[static_cast<size_t>(f * d_in + j)];
  const std::vector<float> b_dec(static_cast<size_t>(d_in), 5.f);
  const Sae sae(cfg, SaeWeights{W_enc.data(), b_enc.data(), W_dec.data(), b_dec.data()});
  SparseCodes codes;
  std::vector<float> out(static_cast<size_t>(rows * d_in)), expect(out.size(), 0.f);
  sae.encode(x.data(), rows, &codes, nullptr, nullptr, nullptr);
  sae.decode_codes(codes, out.data());
  for (int64_t r = 0; r < rows; ++r)
    for (auto o = codes.offsets[r]; o < codes.offsets[r + 1]; ++o)
      for (int64_t j = 0; j < d_in; ++j)
        expect[static_cast<size_t>(r * d_in + j)] += codes.values[o] * W_dec[codes.indices[o] * d_in + j];
  bool ok = true;
  for (size_t i = 0; i < out.size(); ++i) ok &= std::abs(out[i] - expect[i]) < 1e-4f;
  check(ok, std::string(variant) + " a tied SAE decodes without b_dec");
}

// A temporal SAE: each sequence on its own (two sequences encoded together as
// apart), position t independent of later positions, rows that are not whole
// sequences refused.
void test_temporal(const char* variant, std::mt19937& rng) {
  const int64_t d_in = 12, d_sae = 24, seq = 5, width = 6, heads = 2;
  const auto W_dec = randn(static_cast<size_t>(d_sae * d_in), rng, 0.3f);
  std::vector<float> W_enc(static_cast<size_t>(d_in * d_sae)), b_enc(static_cast<size_t>(d_sae), 0.f),
      b_dec(static_cast<size_t>(d_in), 0.f);
  for (int64_t f = 0; f < d_sae; ++f)
    for (int64_t j = 0; j < d_in; ++j)
      W_enc[static_cast<size_t>(j * d_sae + f)] = W_dec[static_cast<size_t>(f * d_in + j)];
  std::vector<std::vector<float>> parts;
  for (int64_t n : {width * d_sae, width, width * d_sae, width, d_sae * d_sae, d_sae, d_sae * d_sae, d_sae})
    parts.push_back(randn(static_cast<size_t>(n), rng, 0.3f));
  SaeConfig cfg;
  cfg.d_in = cfg.d_out = d_in;
  cfg.d_sae = d_sae;
  cfg.activation = SaeActivation::temporal;
  cfg.k = 4;
  cfg.temporal = TemporalConfig{heads, 1, width, 1.f / (4 * d_in)};
  SaeWeights w{W_enc.data(), b_enc.data(), W_dec.data(), b_dec.data()};
  w.attn.push_back(TemporalLayerWeights{parts[0].data(), parts[1].data(), parts[2].data(), parts[3].data(),
                                        parts[4].data(), parts[5].data(), parts[6].data(), parts[7].data()});
  const Sae sae(cfg, w);
  auto x = randn(static_cast<size_t>(2 * seq * d_in), rng, 5.f);
  const auto n = static_cast<size_t>(seq * d_sae);
  std::vector<float> both(2 * n), first(n), second(n), pred(2 * n);
  sae.encode(x.data(), 2 * seq, nullptr, both.data(), nullptr, nullptr, seq, pred.data());
  sae.encode(x.data(), seq, nullptr, first.data(), nullptr, nullptr, seq);
  sae.encode(x.data() + seq * d_in, seq, nullptr, second.data(), nullptr, nullptr, seq);
  // (a matmul of more rows may round otherwise: close, not equal)
  auto close = [](float a, float b) { return std::abs(a - b) <= 1e-5f * (1 + std::abs(b)); };
  bool apart = std::equal(first.begin(), first.end(), both.begin(), close) &&
               std::equal(second.begin(), second.end(), both.begin() + static_cast<std::ptrdiff_t>(n), close);
  x[static_cast<size_t>(3 * d_in)] += 1.f;  // position 3 of the first sequence
  sae.encode(x.data(), seq, nullptr, first.data(), nullptr, nullptr, seq);
  const auto before = static_cast<std::ptrdiff_t>(3 * d_sae);
  apart &= std::equal(first.begin(), first.begin() + before, both.begin(), close) &&
           !std::equal(first.begin() + before, first.end(), both.begin() + before, close);
  check(apart && std::any_of(pred.begin(), pred.end(), [](float v) { return v != 0.f; }),
        std::string(variant) + " temporal SAE: sequences apart, causal, predicting");
  bool refused = false;
  try {
    sae.encode(x.data(), 2 * seq, nullptr, both.data(), nullptr, nullptr, 3);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  check(refused, std::string(variant) + " temporal SAE refuses rows that are not whole sequences");
}

}  // namespace

void test_sae() {
  test_splice_state_per_plan();
  test_sparse_codes();
}

void test_sae_variant(const char* variant, std::mt19937& rng) {
  test_sae_encode(variant, rng);
  test_sae_topk(variant, rng);
  test_sae_gated(variant, rng);
  test_sae_abstopk(variant, rng);
  test_matching_pursuit(variant, rng);
  test_temporal(variant, rng);
}

}  // namespace tmech::test
