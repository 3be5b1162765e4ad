#include "sae/temporal.hpp"

#include <cmath>
#include <cstring>

#include "kernels/kernels.hpp"
#include "ops/matmul.hpp"
#include "runtime/checked.hpp"
#include "runtime/threads.hpp"

namespace tmech {
namespace {

constexpr float kProjectionEps = 1e-6f;  // SAELens's TemporalSAE.eps

// out [rows, n_out] = in [rows, n_in] · Wᵀ + b, W a torch Linear weight [n_out, n_in].
void linear(const float* in, int64_t rows, int64_t n_in, const float* W, const float* b, int64_t n_out, float* out) {
  matmul(in, rows, n_in, n_in, W, n_out, 1, n_in, b, out, n_out);
}

// Causal attention of every position of every sequence, one (sequence, head)
// pair per task: out [rows, d_sae], heads side by side as torch's view gives them.
void causal_attention(const float* q, const float* k, const float* v, int64_t batch, int64_t seq, int64_t n_heads,
                      int64_t width, int64_t d_sae, float* out) {
  const KernelTable& kt = kernels::active();
  const int64_t dk = width / n_heads, dv = d_sae / n_heads;
  const float scale = 1.f / std::sqrt(static_cast<float>(dk));
  parallel_for(batch * n_heads, [&](int64_t t0, int64_t t1, int) {
    std::vector<float> p(static_cast<size_t>(seq));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / n_heads, h = t % n_heads, row0 = b * seq;
      for (int64_t i = 0; i < seq; ++i) {
        const float* qi = q + (row0 + i) * width + h * dk;
        for (int64_t j = 0; j <= i; ++j)
          p[static_cast<size_t>(j)] = kt.dot(qi, k + (row0 + j) * width + h * dk, dk) * scale;
        kt.softmax(p.data(), i + 1);
        float* o = out + (row0 + i) * d_sae + h * dv;
        std::memset(o, 0, static_cast<size_t>(dv) * sizeof(float));
        for (int64_t j = 0; j <= i; ++j) kt.axpy(o, p[static_cast<size_t>(j)], v + (row0 + j) * d_sae + h * dv, dv);
      }
    }
  });
}

}  // namespace

void temporal_predict(const TemporalConfig& c, const TemporalWeights& w, int64_t d_in, int64_t d_sae, int64_t batch,
                      int64_t seq, float* x, float* z_pred) {
  const int64_t rows = batch * seq;
  const auto codes = static_cast<size_t>(checked_size({rows, d_sae}, "temporal SAE codes"));
  std::memset(z_pred, 0, codes * sizeof(float));
  std::vector<float> scaled(static_cast<size_t>(rows * d_in)), z(codes), ctx(codes),
      q(static_cast<size_t>(rows * c.width)), k(q.size()), v(codes), att(codes), p(codes), D(scaled.size());
  const KernelTable& kt = kernels::active();
  for (const TemporalLayerWeights& L : w.layers) {
    for (size_t i = 0; i < scaled.size(); ++i) scaled[i] = x[i] * c.lam;
    matmul(scaled.data(), rows, d_in, d_in, w.W_enc, d_sae, d_sae, 1, nullptr, z.data(), d_sae);
    for (float& f : z) f = f > 0.f ? f : 0.f;
    for (int64_t r = 0; r < rows; ++r) {  // ctx[t] = z[t - 1] within a sequence, zeros at its start
      float* dst = ctx.data() + r * d_sae;
      if (r % seq == 0)
        std::memset(dst, 0, static_cast<size_t>(d_sae) * sizeof(float));
      else
        std::memcpy(dst, z.data() + (r - 1) * d_sae, static_cast<size_t>(d_sae) * sizeof(float));
    }
    linear(ctx.data(), rows, d_sae, L.k_w, L.k_b, c.width, k.data());
    linear(ctx.data(), rows, d_sae, L.v_w, L.v_b, d_sae, v.data());
    linear(z.data(), rows, d_sae, L.q_w, L.q_b, c.width, q.data());
    causal_attention(q.data(), k.data(), v.data(), batch, seq, c.n_heads, c.width, d_sae, att.data());
    linear(att.data(), rows, d_sae, L.c_w, L.c_b, d_sae, p.data());
    for (float& f : p) f = f > 0.f ? f : 0.f;
    matmul(p.data(), rows, d_sae, d_sae, w.W_dec, d_in, d_in, 1, nullptr, D.data(), d_in);
    parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* Dr = D.data() + r * d_in;
        float* xr = x + r * d_in;
        const float n = std::sqrt(kt.dot(Dr, Dr, d_in)) + kProjectionEps;
        const float s = kt.dot(Dr, xr, d_in) / (n * n);
        kt.axpy(z_pred + r * d_sae, s, p.data() + r * d_sae, d_sae);
        kt.axpy(xr, -s, Dr, d_in);
      }
    });
  }
}

}  // namespace tmech
