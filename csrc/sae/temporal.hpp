// The context prediction of SAELens's TemporalSAE. Before its sparse code is
// taken, each position's input loses what causal attention over the codes of
// the earlier positions of its sequence predicts; the predicted codes are kept
// apart (forward decodes them with the sparse ones, decode does not).
//
// Per layer, for x the residual so far ([batch, seq, d_in] as rows):
//   z    = ReLU((x * lam) · W_enc)                       the current codes
//   ctx  = z shifted one position later (zeros first)    what earlier positions say
//   p    = ReLU(c_proj(attention(q = q_target(z), k = k_ctx(ctx), v = v_ctx(ctx))))
//          (causal: position t attends to ctx[0..t], i.e. codes 0..t-1; heads split q, k, v)
//   D    = p · W_dec,  s = (D · x) / (||D|| + 1e-6)²
//   z_pred += s p,     x -= s D
#pragma once
#include <cstdint>
#include <vector>

namespace tmech {

// One attention layer's projections, as torch Linear weights [out, in] and biases [out].
struct TemporalLayerWeights {
  const float *k_w = nullptr, *k_b = nullptr;  // [width, d_sae]
  const float *q_w = nullptr, *q_b = nullptr;  // [width, d_sae]
  const float *v_w = nullptr, *v_b = nullptr;  // [d_sae, d_sae]
  const float *c_w = nullptr, *c_b = nullptr;  // [d_sae, d_sae]
};

struct TemporalConfig {
  int64_t n_heads = 0, n_layers = 0;
  int64_t width = 0;  // the keys' and queries' width: d_sae / bottleneck_factor
  float lam = 0.f;    // the input's scale before W_enc: 1 / (4 d_in)
};

struct TemporalWeights {
  const float* W_enc = nullptr;  // [d_in, d_sae]
  const float* W_dec = nullptr;  // [d_sae, d_in]
  std::vector<TemporalLayerWeights> layers;
};

// x [batch * seq, d_in]: the residual, updated in place; z_pred [batch * seq,
// d_sae]: the predicted codes, every element written.
void temporal_predict(const TemporalConfig& c, const TemporalWeights& w, int64_t d_in, int64_t d_sae, int64_t batch,
                      int64_t seq, float* x, float* z_pred);

}  // namespace tmech
