// The transformer forward pass: prefill (many tokens) and decode (one token)
// are the same call, appending to a KV cache. Hook points are visited in
// TransformerLens's order; with no plan, no hook work is done at all.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/backward.hpp"
#include "core/config.hpp"
#include "core/hooks.hpp"
#include "core/kv_cache.hpp"
#include "core/tape.hpp"
#include "core/weights.hpp"
#include "runtime/owned_mutex.hpp"

namespace tmech {

enum class LogitsMode { all, last, none };
LogitsMode parse_logits_mode(const std::string& name);  // "all", "last" or "none"

// Called by a pass before each block and before the unembedding: it throws to
// stop the pass (Ctrl-C; the Python bindings install one), which then unwinds,
// leaving its KV cache at the length it had. Null: none.
void set_interrupt_check(void (*check)());
void interrupt_point();  // runs that check (a backward between blocks)

// The blocks a forward runs, [start, stop) (stop -1: to the last). Given
// resid_in [batch, n_tokens, d_model] (needed when start > 0), the residual
// stream before block `start` is read from it instead of embedding tokens.
// Given resid_out (needed when stop < n_layers), the residual after block
// stop - 1 is written there and the final norm and unembedding are skipped.
// Either needs a one-off forward (no KV cache: skipped blocks keep no keys).
struct BlockSpan {
  int64_t start = 0, stop = -1;
  const float* resid_in = nullptr;
  float* resid_out = nullptr;
};

// A batch padded at either end of its rows, as TransformerLens's attention mask
// of zeros gives it: row b has left[b] padding positions before its first real
// token and right[b] after its last, counted in this call's tokens (null: none;
// every row keeps at least one real token). Padded keys are masked; real tokens
// take positions counted from their row's first real token; a padding query
// before the row starts sees no key (its pattern row is zero), one after it ends
// sees the row's real keys. A KV cache remembers each row's left padding for
// later calls: a row is padded on the left only while it holds no real token,
// and never on the right (a later call would leave a gap).
struct Padding {
  const int64_t* left = nullptr;
  const int64_t* right = nullptr;
};

// Token t of row b's position, as TransformerLens counts it under a mask: real
// tokens from the row's first (start[b], absolute), padding before it 0, after
// its last (end[b] - 1; end null: none on the right) the last one's. start null: no padding.
inline int64_t padded_position(const int64_t* start, const int64_t* end, int64_t past, int64_t b, int64_t t) {
  if (!start) return past + t;
  const int64_t p = past + t - start[b] > 0 ? past + t - start[b] : 0;
  return end && p > end[b] - 1 - start[b] ? end[b] - 1 - start[b] : p;
}

// Rotary tables of a call's B x T tokens at positions past + t: one row per position, or
// with padding (start non-null) one per token, as rotary_rows says; cos into cos, sign *
// sin into sin, each [rows, half]; the angle rounded to float first, as HF computes it.
// sign -1 gives the transpose of the rotation (the backward's).
inline int64_t rotary_rows(const int64_t* start, int64_t B, int64_t T) { return start ? B * T : T; }
void rotary_tables(const float* inv_freq, int64_t half, int64_t B, int64_t T, int64_t past, const int64_t* start,
                   const int64_t* end, float sign, float* cos, float* sin);
// Rotates the first `heads` heads (d_head floats each) of every row of q|k|v (B x T
// rows, row_stride floats apart) by its token's table row, over the threads.
void rotate_heads(float* qkv, int64_t B, int64_t T, int64_t row_stride, int64_t heads, int64_t d_head, int64_t half,
                  const int64_t* start, const float* cos, const float* sin);

class Model {
 public:
  Model(ModelConfig cfg, ModelWeights weights);
  const ModelConfig& config() const { return cfg_; }

  // Runs tokens [batch, n_tokens] at positions cache->n_past() onward, writes
  // their keys and values into the cache and advances it. Without a cache
  // (null), a one-off forward from position 0: keys and values are read where
  // they were computed and nothing is kept. logits receives
  // [batch, n_tokens, d_vocab] (all), [batch, d_vocab] (last) or nothing.
  // tokens may be null when span.resid_in is given. A one-off forward that wants no
  // logits stops after the last block holding an active hook point (nothing
  // later could be seen). Thread-safe: calls on one model are serialized (a
  // call that would wait forever throws instead: see OwnedMutex). Sizes from
  // the caller are checked (SizeOverflow), and so are the padding counts.
  // Given a tape (its `from` set), the pass also keeps there what a backward
  // needs; it must then be a one-off forward of every block with all logits.
  void forward(KVCache* cache, const int32_t* tokens, int64_t batch, int64_t n_tokens, HookPlan* plan, LogitsMode mode,
               float* logits, BlockSpan span = {}, Padding padding = {}, Tape* tape = nullptr);

  // The reverse pass over a tape this model recorded (core/backward.cpp):
  // see core/backward.hpp.
  void backward(const Tape& tape, const float* grad_logits, HookPlan* plan, const BackwardOptions& options);

  KVCache new_cache(int64_t batch) const;

 private:
  void start_tape(Tape& tape, const HookPlan* plan, bool cached, const BlockSpan& span, LogitsMode mode, int64_t batch,
                  int64_t n_tokens) const;

 public:
  // The hook points this architecture visits, in forward order (ids cover
  // every architecture's kinds; e.g. rotary models have no hook_pos_embed).
  // The per-head attention inputs are visited only in their AttentionInput mode.
  bool has_hook(HookKind kind) const;
  std::vector<int> hook_ids() const;

  struct Workspace {
    std::vector<float> x, pos, h, qkv, z, attn_out, mlp, up, result, scores, stats, last, rope, logits;
    std::vector<uint16_t> kv16;   // bfloat16 keys and values of one layer (bf16 attention)
    std::vector<float> inputs;    // per-head attention inputs (AttentionInput), or hook_mlp_in's copy
    std::vector<float> z_blocks;  // a decoding step's attention outputs, one per block of keys
  };

 private:
  ModelConfig cfg_;
  ModelWeights w_;
  uint64_t id_;  // the owner id of the caches it makes, never reused
  OwnedMutex mutex_{"model"};
  Workspace ws_;
};

}  // namespace tmech
