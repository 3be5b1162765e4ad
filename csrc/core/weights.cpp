#include "core/weights.hpp"

#include <stdexcept>
#include <string>

#include "core/config.hpp"

namespace tmech {

ModelWeights read_weights(ModelConfig& c, WeightSource& src) {
  const int64_t D = c.d_model, Da = c.d_attn(), Dqkv = c.d_qkv(), F = c.d_mlp, V = c.d_vocab;
  const bool ln = c.normalization == Normalization::layer_norm;
  const bool out_in = c.layout == WeightLayout::out_in;
  auto vec = [&](int64_t layer, const char* name, int64_t n, bool optional = false) {
    return src.get(layer, name, {n}, optional, false).f32;
  };
  // A linear weight [in, out], stored transposed in the out_in layout; its
  // bias is optional only where the architecture may lack one (out_in).
  auto linear = [&](int64_t layer, const char* name, int64_t in, int64_t out) {
    return src.get(layer, name, out_in ? std::vector<int64_t>{out, in} : std::vector<int64_t>{in, out}, false, true);
  };
  ModelWeights w;
  w.wte = src.get(-1, "wte", {V, D}, false, true);
  if (c.positions == Positions::learned) w.wpe = src.get(-1, "wpe", {c.n_ctx, D}, false, false).f32;
  if (c.positions == Positions::rotary) w.rope_inv_freq = vec(-1, "rope_inv_freq", c.rotary_dim / 2);
  w.lnf_w = vec(-1, "lnf_w", D);
  w.lnf_b = vec(-1, "lnf_b", D, !ln);
  w.unembed = src.get(-1, "unembed", {V, D}, false, true);
  w.unembed_b = vec(-1, "unembed_b", V, true);
  c.has_unembed_bias = w.unembed_b != nullptr;
  if (src.layers() != c.n_layers)
    throw std::invalid_argument("config has " + std::to_string(c.n_layers) + " layers but " +
                                std::to_string(src.layers()) + " were given");
  for (int64_t l = 0; l < c.n_layers; ++l) {
    LayerWeights lw;
    lw.ln1_w = vec(l, "ln1_w", D);
    lw.ln1_b = vec(l, "ln1_b", D, !ln);
    lw.qkv_w = linear(l, "qkv_w", D, Dqkv);
    lw.qkv_b = vec(l, "qkv_b", Dqkv, out_in);
    lw.out_w = linear(l, "out_w", Da, D);
    lw.out_b = vec(l, "out_b", D, out_in);
    lw.ln2_w = vec(l, "ln2_w", D);
    lw.ln2_b = vec(l, "ln2_b", D, !ln);
    if (c.gated_mlp) {
      lw.gate_w = linear(l, "gate_w", D, F);
      lw.gate_b = vec(l, "gate_b", F, true);
    }
    lw.fc_w = linear(l, "fc_w", D, F);
    lw.fc_b = vec(l, "fc_b", F, out_in);
    lw.proj_w = linear(l, "proj_w", F, D);
    lw.proj_b = vec(l, "proj_b", D, out_in);
    w.layers.push_back(lw);
  }
  return w;
}

}  // namespace tmech
