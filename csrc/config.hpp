// Architecture description of a model the core can run. GPT-2 first; the
// fields are TransformerLens's names so Python and C++ speak alike.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace tmech {

enum class Activation { gelu_new, gelu, relu, silu };

struct ModelConfig {
  int64_t n_layers = 0;
  int64_t d_model = 0;
  int64_t n_heads = 0;
  int64_t d_head = 0;
  int64_t d_mlp = 0;
  int64_t d_vocab = 0;
  int64_t n_ctx = 0;
  float ln_eps = 1e-5f;
  Activation act_fn = Activation::gelu_new;
  float attn_scale = 0.f;                        // scores = q·k / attn_scale
  bool scale_attn_by_inverse_layer_idx = false;  // GPT-2 option: also / (layer + 1)
  bool has_unembed_bias = false;                 // b_U (after LN folding)

  int64_t d_attn() const { return n_heads * d_head; }

  void validate() const {
    auto need = [](bool ok, const std::string& what) {
      if (!ok) throw std::invalid_argument("invalid model config: " + what);
    };
    need(n_layers > 0, "n_layers must be positive");
    need(d_model > 0, "d_model must be positive");
    need(n_heads > 0, "n_heads must be positive");
    need(d_head > 0, "d_head must be positive");
    need(d_mlp > 0, "d_mlp must be positive");
    need(d_vocab > 0, "d_vocab must be positive");
    need(n_ctx > 0, "n_ctx must be positive");
    need(attn_scale > 0.f, "attn_scale must be positive");
    need(ln_eps >= 0.f, "layer norm epsilon must be non-negative");
  }
};

}  // namespace tmech
