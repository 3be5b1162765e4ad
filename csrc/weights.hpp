// Non-owning views of a model's weights. The buffers belong to Python
// (memory-mapped safetensors or processed numpy arrays), which keeps them
// alive as long as the core model. Linear weights keep HF GPT-2's Conv1D
// layout [in, out]; embedding-shaped matrices are [rows, d_model].
#pragma once
#include <vector>

namespace tmech {

struct LayerWeights {
  const float* ln1_w = nullptr;   // [d_model]
  const float* ln1_b = nullptr;   // [d_model]
  const float* qkv_w = nullptr;   // [d_model, 3 * d_attn]  (Q | K | V, each head-major)
  const float* qkv_b = nullptr;   // [3 * d_attn]
  const float* out_w = nullptr;   // [d_attn, d_model]
  const float* out_b = nullptr;   // [d_model]
  const float* ln2_w = nullptr;   // [d_model]
  const float* ln2_b = nullptr;   // [d_model]
  const float* fc_w = nullptr;    // [d_model, d_mlp]
  const float* fc_b = nullptr;    // [d_mlp]
  const float* proj_w = nullptr;  // [d_mlp, d_model]
  const float* proj_b = nullptr;  // [d_model]
};

struct ModelWeights {
  const float* wte = nullptr;        // [d_vocab, d_model]
  const float* wpe = nullptr;        // [n_ctx, d_model]
  std::vector<LayerWeights> layers;  // [n_layers]
  const float* lnf_w = nullptr;      // [d_model]
  const float* lnf_b = nullptr;      // [d_model]
  const float* unembed = nullptr;    // [d_vocab, d_model] (lm_head, or wte when tied)
  const float* unembed_b = nullptr;  // [d_vocab] or null
};

}  // namespace tmech
