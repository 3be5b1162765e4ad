// Non-owning views of a model's weights. The buffers belong to Python
// (memory-mapped safetensors or processed numpy arrays), which keeps them
// alive as long as the core model. Linear weights are stored as the config's
// layout says: [in, out] (HF GPT-2's Conv1D) or [out, in] (nn.Linear, Llama);
// the shapes below are given for [in, out]. Embedding-shaped matrices are
// [rows, d_model]. Biases may be null where the architecture has none.
#pragma once
#include <vector>

namespace tmech {

struct LayerWeights {
  const float* ln1_w = nullptr;   // [d_model]
  const float* ln1_b = nullptr;   // [d_model] (LayerNorm only)
  const float* qkv_w = nullptr;   // [d_model, d_attn + 2 d_kv]  (Q | K | V, each head-major)
  const float* qkv_b = nullptr;   // [d_attn + 2 d_kv]
  const float* out_w = nullptr;   // [d_attn, d_model]
  const float* out_b = nullptr;   // [d_model]
  const float* ln2_w = nullptr;   // [d_model]
  const float* ln2_b = nullptr;   // [d_model] (LayerNorm only)
  const float* gate_w = nullptr;  // [d_model, d_mlp] (gated MLPs only)
  const float* gate_b = nullptr;  // [d_mlp]
  const float* fc_w = nullptr;    // [d_model, d_mlp] (W_in: the up projection when gated)
  const float* fc_b = nullptr;    // [d_mlp]
  const float* proj_w = nullptr;  // [d_mlp, d_model]
  const float* proj_b = nullptr;  // [d_model]
};

struct ModelWeights {
  const float* wte = nullptr;        // [d_vocab, d_model]
  const float* wpe = nullptr;        // [n_ctx, d_model] (learned positions only)
  const float* rope_inv_freq = nullptr;  // [rotary_dim / 2] (rotary only)
  std::vector<LayerWeights> layers;  // [n_layers]
  const float* lnf_w = nullptr;      // [d_model]
  const float* lnf_b = nullptr;      // [d_model] (LayerNorm only)
  const float* unembed = nullptr;    // [d_vocab, d_model] (lm_head, or wte when tied)
  const float* unembed_b = nullptr;  // [d_vocab] or null
};

}  // namespace tmech
