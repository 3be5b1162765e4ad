// SAE training: the gradients of one step (taken with lr 0 and no clipping, so
// they are left in the parameters' grad) against a dense double-precision
// computation of the same loss, for each architecture, both the sparse and the
// dense (GEMM) backward, AuxK with dead latents, a skip transcoder.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "sae/train.hpp"
#include "tests/native_tests.hpp"

namespace tmech::test {
namespace {

using Vec = std::vector<double>;

struct Case {
  const char* name;
  TrainArch arch;
  int64_t d_in, d_sae, d_out, n;
  double k;
  bool skip;
};

// The step's gradients in double, from the trainer's parameters (SAELens's layout).
struct Reference {
  Vec W_enc, b_enc, W_dec, b_dec, threshold, W_skip;
};

Vec as_double(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

Reference reference_grads(Trainer& t, const std::vector<float>& xf, const std::vector<float>& yf, int64_t n,
                          double coef) {
  const TrainConfig& c = t.config();
  const int64_t d_in = c.d_in, d_sae = c.d_sae, d_out = c.d_out;
  const Vec W_enc = as_double(t.get("W_enc", "value")), b_enc = as_double(t.get("b_enc", "value"));
  const Vec W_dec = as_double(t.get("W_dec", "value")), b_dec = as_double(t.get("b_dec", "value"));
  const Vec thr = c.arch == TrainArch::jumprelu ? as_double(t.get("threshold", "value")) : Vec(size_t(d_sae), 0.0);
  const Vec W_skip = c.skip ? as_double(t.get("W_skip", "value")) : Vec();
  const Vec x(xf.begin(), xf.end()), tgt = yf.empty() ? x : Vec(yf.begin(), yf.end());
  const bool topk = c.arch == TrainArch::topk || c.arch == TrainArch::batchtopk;
  const bool rescale = topk && c.rescale_acts_by_decoder_norm;
  Vec s(static_cast<size_t>(d_sae));
  for (int64_t j = 0; j < d_sae; ++j) {
    double ss = 0;
    for (int64_t i = 0; i < d_out; ++i) ss += W_dec[size_t(j * d_out + i)] * W_dec[size_t(j * d_out + i)];
    s[size_t(j)] = std::sqrt(ss);
  }
  // forward: h (the ranking value), the activations a, AuxK's u
  Vec sae_in(x), h(size_t(n * d_sae)), a(size_t(n * d_sae), 0.0), u(size_t(n * d_sae), 0.0);
  if (c.apply_b_dec_to_input)
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < d_in; ++i) sae_in[size_t(r * d_in + i)] -= b_dec[size_t(i)];
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < d_sae; ++j) {
      double p = b_enc[size_t(j)];
      for (int64_t i = 0; i < d_in; ++i) p += sae_in[size_t(r * d_in + i)] * W_enc[size_t(i * d_sae + j)];
      h[size_t(r * d_sae + j)] = rescale ? p * s[size_t(j)] : p;
    }
  auto decode_value = [&](size_t i) { return rescale ? h[i] / s[i % size_t(d_sae)] : h[i]; };
  if (c.arch == TrainArch::topk) {
    for (int64_t r = 0; r < n; ++r) {
      std::vector<int64_t> order(static_cast<size_t>(d_sae));
      for (int64_t j = 0; j < d_sae; ++j) order[size_t(j)] = j;
      std::sort(order.begin(), order.end(),
                [&](int64_t p, int64_t q) { return h[size_t(r * d_sae + p)] > h[size_t(r * d_sae + q)]; });
      for (int64_t m = 0; m < int64_t(c.k); ++m) {
        const size_t i = size_t(r * d_sae + order[size_t(m)]);
        if (h[i] > 0) a[i] = decode_value(i);
      }
    }
  } else if (c.arch == TrainArch::batchtopk) {
    Vec positive;
    for (double v : h)
      if (v > 0) positive.push_back(v);
    std::sort(positive.rbegin(), positive.rend());
    const auto K = size_t(c.k * double(n));
    const double cut = positive.size() > K ? positive[K - 1] : 0.0;
    for (size_t i = 0; i < h.size(); ++i)
      if (h[i] > 0 && h[i] >= cut) a[i] = decode_value(i);
  } else {
    for (size_t i = 0; i < h.size(); ++i)
      if (h[i] > thr[i % size_t(d_sae)]) a[i] = h[i];
  }
  std::vector<int64_t> dead;
  for (int64_t j = 0; j < d_sae; ++j)
    if (t.tokens_since_fired[size_t(j)] > c.dead_tokens) dead.push_back(j);
  const int64_t k_aux = std::min<int64_t>(d_out / 2, int64_t(dead.size()));
  const double aux_scale = topk && k_aux > 0 ? std::min(double(dead.size()) / double(d_out / 2), 1.0) : 0.0;
  if (aux_scale > 0)
    for (int64_t r = 0; r < n; ++r) {
      std::vector<int64_t> order(dead);
      std::sort(order.begin(), order.end(),
                [&](int64_t p, int64_t q) { return h[size_t(r * d_sae + p)] > h[size_t(r * d_sae + q)]; });
      for (int64_t m = 0; m < k_aux; ++m)
        u[size_t(r * d_sae + order[size_t(m)])] = decode_value(size_t(r * d_sae + order[size_t(m)]));
    }
  // output gradients: g of the MSE, ga of AuxK
  Vec g(size_t(n * d_out)), ga(size_t(n * d_out), 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < d_out; ++i) {
      double out = b_dec[size_t(i)], aux = 0;
      for (int64_t j = 0; j < d_sae; ++j) {
        out += a[size_t(r * d_sae + j)] * W_dec[size_t(j * d_out + i)];
        aux += u[size_t(r * d_sae + j)] * W_dec[size_t(j * d_out + i)];
      }
      if (c.skip)
        for (int64_t q = 0; q < d_in; ++q) out += W_skip[size_t(i * d_in + q)] * x[size_t(r * d_in + q)];
      const double e = out - tgt[size_t(r * d_out + i)];
      g[size_t(r * d_out + i)] = 2.0 / double(n) * e;
      ga[size_t(r * d_out + i)] = c.aux_coefficient * aux_scale * 2.0 / double(n) * (aux + e);
    }
  Reference ref{Vec(size_t(d_in * d_sae), 0.0), Vec(size_t(d_sae), 0.0), Vec(size_t(d_sae * d_out), 0.0),
                Vec(size_t(d_out), 0.0),        Vec(size_t(d_sae), 0.0), Vec(W_skip.size(), 0.0)};
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < d_sae; ++j) {
      const size_t rj = size_t(r * d_sae + j);
      double gw = 0, gwa = 0;  // dL/dacts from the MSE and from AuxK
      for (int64_t i = 0; i < d_out; ++i) {
        gw += g[size_t(r * d_out + i)] * W_dec[size_t(j * d_out + i)];
        gwa += ga[size_t(r * d_out + i)] * W_dec[size_t(j * d_out + i)];
      }
      double gp = 0;
      if (a[rj] != 0) gp += gw + (c.arch == TrainArch::standard ? coef / double(n) * s[size_t(j)] : 0.0);
      if (u[rj] != 0) gp += gwa;
      if (c.arch == TrainArch::jumprelu && std::abs((h[rj] - thr[size_t(j)]) / c.bandwidth) < 0.5)
        ref.threshold[size_t(j)] += -(thr[size_t(j)] / c.bandwidth) * gw - coef / (double(n) * c.bandwidth);
      ref.b_enc[size_t(j)] += gp;
      for (int64_t i = 0; i < d_in; ++i) ref.W_enc[size_t(i * d_sae + j)] += gp * sae_in[size_t(r * d_in + i)];
      for (int64_t i = 0; i < d_out; ++i) {
        double gd = a[rj] * g[size_t(r * d_out + i)] + u[rj] * ga[size_t(r * d_out + i)];
        if (c.arch == TrainArch::standard) gd += coef / double(n) * a[rj] * W_dec[size_t(j * d_out + i)] / s[size_t(j)];
        ref.W_dec[size_t(j * d_out + i)] += gd;
      }
    }
  for (int64_t i = 0; i < d_out; ++i) {
    for (int64_t r = 0; r < n; ++r) ref.b_dec[size_t(i)] += g[size_t(r * d_out + i)];
    if (c.apply_b_dec_to_input)
      for (int64_t j = 0; j < d_sae; ++j) ref.b_dec[size_t(i)] -= ref.b_enc[size_t(j)] * W_enc[size_t(i * d_sae + j)];
    for (int64_t q = 0; q < (c.skip ? d_in : 0); ++q)
      for (int64_t r = 0; r < n; ++r)
        ref.W_skip[size_t(i * d_in + q)] += g[size_t(r * d_out + i)] * x[size_t(r * d_in + q)];
  }
  return ref;
}

// A gradient as the trainer keeps it (W_enc's transposed) in SAELens's layout.
std::vector<float> grad_of(Trainer& t, const std::string& name) {
  TrainParam& q = t.param(name);
  if (!q.transposed) return q.grad;
  const int64_t rows = q.shape[0], cols = q.shape[1];
  std::vector<float> out(q.grad.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[size_t(r * cols + c)] = q.grad[size_t(c * rows + r)];
  return out;
}

void test_case(const Case& k, std::mt19937& rng) {
  TrainConfig c;
  c.arch = k.arch;
  c.d_in = k.d_in;
  c.d_sae = k.d_sae;
  c.d_out = k.d_out;
  c.skip = k.skip;
  c.k = k.k;
  c.apply_b_dec_to_input = k.d_in == k.d_out && !k.skip;
  c.dead_tokens = 5;
  c.max_grad_norm = 0;  // no clipping: the gradients stay as computed
  Trainer t(c, 7);
  auto set = [&](const char* name, size_t size, float scale) { t.set(name, "value", randn(size, rng, scale).data()); };
  set("W_dec", size_t(k.d_sae * k.d_out), 0.3f);
  set("b_enc", size_t(k.d_sae), 0.2f);
  set("b_dec", size_t(k.d_out), 0.5f);
  if (k.skip) set("W_skip", size_t(k.d_out * k.d_in), 0.2f);
  if (k.arch == TrainArch::jumprelu) {
    std::vector<float> thr(size_t(k.d_sae));
    for (size_t j = 0; j < thr.size(); ++j) thr[j] = 0.05f * float(j % 7);
    t.set("threshold", "value", thr.data());
  }
  for (size_t j = 0; j < t.tokens_since_fired.size(); ++j) t.tokens_since_fired[j] = (j % 3 == 0) ? 10 : 0;
  const auto x = randn(size_t(k.n * k.d_in), rng);
  const auto y = k.d_in == k.d_out && !k.skip ? std::vector<float>() : randn(size_t(k.n * k.d_out), rng);
  const double coef = 0.3;
  const Reference ref = reference_grads(t, x, y, k.n, coef);
  const std::vector<float> before = t.get("W_enc", "value");
  t.step(x.data(), y.empty() ? nullptr : y.data(), k.n, 0.0, coef);
  check(t.get("W_enc", "value") == before, std::string(k.name) + ": lr 0 leaves the parameters");
  auto near = [&](const char* name, const Vec& want) {
    const double err = max_rel(grad_of(t, name), want);
    check(err < 2e-5, std::string(k.name) + ": grad " + name + " off by " + std::to_string(err));
  };
  near("W_enc", ref.W_enc);
  near("b_enc", ref.b_enc);
  near("W_dec", ref.W_dec);
  near("b_dec", ref.b_dec);
  if (k.arch == TrainArch::jumprelu) near("threshold", ref.threshold);
  if (k.skip) near("W_skip", ref.W_skip);
}

}  // namespace

void test_train(std::mt19937& rng) {
  const Case cases[] = {
      {"topk", TrainArch::topk, 19, 70, 19, 23, 4, false},
      {"topk transcoder", TrainArch::topk, 19, 70, 11, 23, 4, true},
      {"batchtopk", TrainArch::batchtopk, 19, 70, 19, 23, 3.5, false},
      {"standard, sparse", TrainArch::standard, 19, 70, 19, 5, 0, false},
      {"standard, dense", TrainArch::standard, 19, 70, 19, 40, 0, false},
      {"jumprelu, dense", TrainArch::jumprelu, 19, 70, 19, 40, 0, false},
      {"jumprelu skip transcoder, sparse", TrainArch::jumprelu, 19, 70, 11, 9, 0, true},
  };
  for (const Case& k : cases) test_case(k, rng);
  bool threw = false;
  try {
    TrainConfig c;
    c.d_in = c.d_out = 4;
    c.d_sae = 8;
    c.k = 9;
    Trainer t(c, 0);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  check(threw, "train: k > d_sae is refused");
}

}  // namespace tmech::test
