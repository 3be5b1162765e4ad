#include "core/config.hpp"

namespace tmech {

// The MLP activations the core computes, under every name a config may give one: the one
// table of them (Python reads it through activation_names). The first name of each is its
// canonical one. A new function: a row here, its Activation and its case in Pass::activation.
namespace {
struct ActivationName {
  const char* name;
  Activation value;
};
constexpr ActivationName kActivations[] = {
    {"gelu_new", Activation::gelu_new},  {"gelu_pytorch_tanh", Activation::gelu_new},
    {"gelu_fast", Activation::gelu_new}, {"gelu", Activation::gelu},
    {"relu", Activation::relu},          {"silu", Activation::silu},
    {"swish", Activation::silu},
};

const char* canonical_name(Activation value) {
  for (const ActivationName& a : kActivations)
    if (a.value == value) return a.name;
  return "";
}
}  // namespace

Activation parse_activation(const std::string& s) {
  for (const ActivationName& a : kActivations)
    if (s == a.name) return a.value;
  throw std::invalid_argument("unsupported activation function '" + s + "'");
}

std::vector<std::pair<std::string, std::string>> activation_names() {
  std::vector<std::pair<std::string, std::string>> names;
  for (const ActivationName& a : kActivations) names.emplace_back(a.name, canonical_name(a.value));
  return names;
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
