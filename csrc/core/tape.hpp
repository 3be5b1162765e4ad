// What a forward pass keeps for a backward (core/backward.hpp): per block from
// `from` onward, the activations the chain rule reads, as the forward used
// them (after its hooks' edits). Norm statistics are recomputed from the
// norms' inputs, with the forward's kernels, so they are the same numbers.
// A forward records into a tape only when one is given (Model::forward).
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "runtime/checked.hpp"

namespace tmech {

struct LayerTape {
  std::vector<float> resid_pre;  // ln1's input [B*T, d_model]
  std::vector<float> qkv;        // q | k | v rows after rotation [B*T, d_qkv]
  std::vector<float> pattern;    // [B, H, T, T], 0 where masked
  std::vector<float> resid_mid;  // ln2's input [B*T, d_model]
  std::vector<float> pre;        // mlp.hook_pre: the (gate) pre-activation [B*T, d_mlp]
  std::vector<float> up;         // mlp.hook_pre_linear (gated MLPs) [B*T, d_mlp]
  std::vector<float> softmax;    // the softmax's output where a forward hook may edit the pattern (else empty)
  bool causal = false;           // the pattern is 0 past each query (no forward hook put weight there)
};

struct Tape {
  int64_t from = 0;  // the lowest block recorded (a backward stops there)
  int64_t batch = 0, n_tokens = 0;
  bool embedded = true;            // the forward embedded tokens (not a residual input): hook_embed has a gradient
  uint64_t model = 0;              // the model that recorded it (0: none yet)
  std::vector<LayerTape> layers;   // [n_layers]; blocks below `from` stay empty
  std::vector<float> final_resid;  // ln_final's input [B*T, d_model]
  // a padded batch's rows: first real position and one past the last, each
  // [batch] or empty (no padding; none on the right), as the forward's Pass
  std::vector<int64_t> row_start, row_end;

  bool records(int64_t layer) const { return layer >= from; }
  // dst = n floats of src (n from checked sizes)
  static void keep(std::vector<float>& dst, const float* src, int64_t n) { dst.assign(src, src + n); }
};

}  // namespace tmech
