// Non-owning views of a model's weights. The buffers belong to Python
// (memory-mapped safetensors or processed numpy arrays), which keeps them
// alive as long as the core model. Linear weights are stored as the config's
// layout says: [in, out] (HF GPT-2's Conv1D) or [out, in] (nn.Linear, Llama);
// the shapes below are given for [in, out]. Embedding-shaped matrices are
// [rows, d_model]. Biases may be null where the architecture has none.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

namespace tmech {

// A weight matrix in float32, or in bfloat16 (the upper 16 bits of a float32,
// stored as uint16) when the model was loaded with dtype="bf16": half the
// bytes to stream per decoded token, widened to float32 as it is read.
struct Matrix {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;

  Matrix() = default;
  Matrix(const float* p) : f32(p) {}  // NOLINT: implicit, so float pointers pass as matrices
  explicit Matrix(const uint16_t* p) : bf16(p) {}
  // The matrix starting `elements` further on (a slice of a wider one).
  Matrix offset(int64_t elements) const {
    Matrix m = *this;
    if (m.f32) m.f32 += elements;
    if (m.bf16) m.bf16 += elements;
    return m;
  }
  explicit operator bool() const { return f32 || bf16; }
  // Copies n elements starting at `at` into out as float32.
  void read(int64_t at, int64_t n, float* out) const {
    if (f32) {
      std::memcpy(out, f32 + at, static_cast<size_t>(n) * sizeof(float));
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t bits = static_cast<uint32_t>(bf16[at + i]) << 16;
      std::memcpy(out + i, &bits, sizeof bits);
    }
  }
};

struct LayerWeights {
  const float* ln1_w = nullptr;   // [d_model]
  const float* ln1_b = nullptr;   // [d_model] (LayerNorm only)
  Matrix qkv_w;                   // [d_model, d_attn + 2 d_kv]  (Q | K | V, each head-major)
  const float* qkv_b = nullptr;   // [d_attn + 2 d_kv]
  Matrix out_w;                   // [d_attn, d_model]
  const float* out_b = nullptr;   // [d_model]
  const float* ln2_w = nullptr;   // [d_model]
  const float* ln2_b = nullptr;   // [d_model] (LayerNorm only)
  Matrix gate_w;                  // [d_model, d_mlp] (gated MLPs only)
  const float* gate_b = nullptr;  // [d_mlp]
  Matrix fc_w;                    // [d_model, d_mlp] (W_in: the up projection when gated)
  const float* fc_b = nullptr;    // [d_mlp]
  Matrix proj_w;                  // [d_mlp, d_model]
  const float* proj_b = nullptr;  // [d_model]
};

struct ModelWeights {
  Matrix wte;                            // [d_vocab, d_model]
  const float* wpe = nullptr;            // [n_ctx, d_model] (learned positions only)
  const float* rope_inv_freq = nullptr;  // [rotary_dim / 2] (rotary only)
  std::vector<LayerWeights> layers;      // [n_layers]
  const float* lnf_w = nullptr;          // [d_model]
  const float* lnf_b = nullptr;          // [d_model] (LayerNorm only)
  Matrix unembed;                        // [d_vocab, d_model] (lm_head, or wte when tied)
  const float* unembed_b = nullptr;      // [d_vocab] or null
};

// Where weights come from (the Python bindings: dicts of numpy arrays). The
// core decides which weights a config needs and their shapes; a source hands
// each one over, checked against its shape.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // Weight `name` of block `layer` (-1: outside the blocks), of exactly
  // `shape`: float32, or bfloat16 where allow_bf16 (a linear map's weights in
  // the bf16 weight mode). An empty Matrix where optional and absent; throws
  // std::invalid_argument where absent otherwise, or of another shape or type.
  virtual Matrix get(int64_t layer, const char* name, const std::vector<int64_t>& shape, bool optional,
                     bool allow_bf16) = 0;
  // How many blocks the source holds weights for (a model's source).
  virtual int64_t layers() { return 0; }
};

struct ModelConfig;
// The weights cfg needs, from src, which must hold cfg.n_layers blocks; sets
// cfg.has_unembed_bias by whether src holds an unembedding bias.
ModelWeights read_weights(ModelConfig& cfg, WeightSource& src);

}  // namespace tmech
