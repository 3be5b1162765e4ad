// Architecture description of a model the core can run: GPT-2 and
// Llama-class models (RMSNorm, rotary positions, grouped-query attention,
// gated MLPs). Fields are TransformerLens's names so Python and C++ speak alike.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "runtime/checked.hpp"

namespace tmech {

enum class Activation { gelu_new, gelu, relu, silu };
enum class Normalization { layer_norm, rms_norm };
enum class Positions { learned, rotary };
// How a linear map's weight is stored: HF GPT-2's Conv1D [in, out] or
// nn.Linear's [out, in] (Llama, and GGUF files).
enum class WeightLayout { in_out, out_in };

struct ModelConfig {
  int64_t n_layers = 0;
  int64_t d_model = 0;
  int64_t n_heads = 0;
  int64_t d_head = 0;
  int64_t d_mlp = 0;
  int64_t d_vocab = 0;
  int64_t n_ctx = 0;
  int64_t n_key_value_heads = 0;  // 0: same as n_heads
  float ln_eps = 1e-5f;
  Activation act_fn = Activation::gelu_new;
  Normalization normalization = Normalization::layer_norm;
  Positions positions = Positions::learned;
  WeightLayout layout = WeightLayout::in_out;
  bool gated_mlp = false;                        // act(x W_gate) * (x W_in), as SwiGLU
  int64_t rotary_dim = 0;                        // rotated leading dims of each head (rotary only)
  float attn_scale = 0.f;                        // scores = q·k / attn_scale
  bool scale_attn_by_inverse_layer_idx = false;  // GPT-2 option: also / (layer + 1)
  bool has_unembed_bias = false;                 // b_U (after LN folding)

  int64_t kv_heads() const { return n_key_value_heads > 0 ? n_key_value_heads : n_heads; }
  int64_t d_attn() const { return n_heads * d_head; }
  int64_t d_kv() const { return kv_heads() * d_head; }
  int64_t d_qkv() const { return d_attn() + 2 * d_kv(); }

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
    need(n_key_value_heads >= 0 && n_heads % kv_heads() == 0, "n_key_value_heads must divide n_heads");
    need(positions != Positions::rotary || (rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= d_head),
         "rotary_dim must be even and in (0, d_head]");
    // The widths derived from these, and the bytes of a KV cache holding one
    // sequence of n_ctx positions, fit int64 (a larger n_ctx could never be used).
    checked_size({3, n_heads, d_head}, "invalid model config: a q|k|v row");
    checked_size({n_layers, 2, n_ctx, kv_heads(), d_head, sizeof(float)},
                 "invalid model config: the bytes of a KV cache of one sequence at n_ctx, layers x keys and "
                 "values x n_ctx x heads x d_head x 4");
  }
};

// TransformerLens's names for the architecture fields (HF's for the
// activation), as the core's values; std::invalid_argument naming an unknown one.
Activation parse_activation(const std::string& name);  // act_fn
// Every name parse_activation takes, with its canonical name (the table of activations)
std::vector<std::pair<std::string, std::string>> activation_names();
Normalization parse_normalization(const std::string& name);  // normalization_type
Positions parse_positions(const std::string& name);          // positional_embedding_type
WeightLayout parse_weight_layout(const std::string& name);   // weight_layout

}  // namespace tmech
