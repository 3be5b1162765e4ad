#include "core/config.hpp"

namespace tmech {

Activation parse_activation(const std::string& s) {
  if (s == "gelu_new" || s == "gelu_pytorch_tanh" || s == "gelu_fast") return Activation::gelu_new;
  if (s == "gelu") return Activation::gelu;
  if (s == "relu") return Activation::relu;
  if (s == "silu" || s == "swish") return Activation::silu;
  throw std::invalid_argument("unsupported activation function '" + s + "'");
}

Normalization parse_normalization(const std::string& s) {
  if (s == "LN" || s == "LNPre") return Normalization::layer_norm;
  if (s == "RMS" || s == "RMSPre") return Normalization::rms_norm;
  throw std::invalid_argument("unsupported normalization_type '" + s + "'");
}

Positions parse_positions(const std::string& s) {
  if (s == "standard") return Positions::learned;
  if (s == "rotary") return Positions::rotary;
  throw std::invalid_argument("unsupported positional_embedding_type '" + s + "'");
}

WeightLayout parse_weight_layout(const std::string& s) {
  if (s == "in_out") return WeightLayout::in_out;
  if (s == "out_in") return WeightLayout::out_in;
  throw std::invalid_argument("weight_layout must be 'in_out' or 'out_in'");
}

}  // namespace tmech
