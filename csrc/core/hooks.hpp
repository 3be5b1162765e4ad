// Hook points and the hook plan.
//
// A hook point is an activation named as TransformerLens names it. Its id
// orders the points as a forward pass reaches them: hook_embed,
// hook_pos_embed, then each block's points, then ln_final's. Ids cover every
// kind any architecture has; a model visits only its own (Model::hook_ids).
//
// A HookPlan says, per hook id, what to do when the forward pass gets there:
// capture a copy, replace, fill, add, scale, or call a user function. The
// forward pass asks plan->active(id) first, so an unused point costs one
// branch. Edits run in the order they were added.
//
// Activations are seen through a View in a canonical order
// [batch, pos, rest...] where rest starts with the head axis when there is
// one. Captures, replacement arrays and callback buffers use TransformerLens's
// order instead, which differs only for attn_scores and pattern
// ([batch, head, query_pos, key_pos]).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/float_buffers.hpp"

namespace tmech {

// What a hook point's activation holds after [batch, pos].
enum class HookHeads { none, query, key_value };                         // a head axis of n_heads or n_key_value_heads
enum class HookWidth { d_model, d_mlp, d_head, key_pos, one, d_vocab };  // the last axis
struct HookInfo {
  const char* name;  // per layer: the name after "blocks.N."
  bool per_layer;
  HookHeads heads;
  HookWidth width;
};
// The hook points, one row each, in the order a forward pass reaches them: kind, TransformerLens
// name (per layer: after "blocks.N."), per layer, head axis, last axis. The one table of them:
// HookKind and hooks.cpp's kHooks are made from it, and Python reads it through _core.hook_table
// (its lists of headed points and SAE widths follow). A new point: a row here, its visit in forward.cpp.
#define TM_HOOK_POINTS(X)                                                           \
  X(embed, "hook_embed", false, none, d_model)                                      \
  X(pos_embed, "hook_pos_embed", false, none, d_model)                              \
  X(resid_pre, "hook_resid_pre", true, none, d_model)                               \
  X(attn_in, "hook_attn_in", true, query, d_model) /* AttentionInput::attn_in */    \
  X(q_input, "hook_q_input", true, query, d_model) /* AttentionInput::split_qkv */  \
  X(k_input, "hook_k_input", true, key_value, d_model)                              \
  X(v_input, "hook_v_input", true, key_value, d_model)                              \
  X(ln1_scale, "ln1.hook_scale", true, none, one)                                   \
  X(ln1_normalized, "ln1.hook_normalized", true, none, d_model)                     \
  X(q, "attn.hook_q", true, query, d_head)                                          \
  X(k, "attn.hook_k", true, key_value, d_head)                                      \
  X(v, "attn.hook_v", true, key_value, d_head)                                      \
  X(rot_q, "attn.hook_rot_q", true, query, d_head) /* rotary models only */         \
  X(rot_k, "attn.hook_rot_k", true, key_value, d_head)                              \
  X(attn_scores, "attn.hook_attn_scores", true, query, key_pos)                     \
  X(pattern, "attn.hook_pattern", true, query, key_pos)                             \
  X(z, "attn.hook_z", true, query, d_head)                                          \
  X(result, "attn.hook_result", true, query, d_model)                               \
  X(attn_out, "hook_attn_out", true, none, d_model)                                 \
  X(resid_mid, "hook_resid_mid", true, none, d_model)                               \
  X(mlp_in, "hook_mlp_in", true, none, d_model) /* a copy of resid_mid */           \
  X(ln2_scale, "ln2.hook_scale", true, none, one)                                   \
  X(ln2_normalized, "ln2.hook_normalized", true, none, d_model)                     \
  X(mlp_pre, "mlp.hook_pre", true, none, d_mlp)                                     \
  X(mlp_pre_linear, "mlp.hook_pre_linear", true, none, d_mlp) /* gated MLPs only */ \
  X(mlp_post, "mlp.hook_post", true, none, d_mlp)                                   \
  X(mlp_out, "hook_mlp_out", true, none, d_model)                                   \
  X(resid_post, "hook_resid_post", true, none, d_model)                             \
  X(ln_final_scale, "ln_final.hook_scale", false, none, one)                        \
  X(ln_final_normalized, "ln_final.hook_normalized", false, none, d_model)          \
  X(unembed_in, "unembed.hook_in", false, none, d_model)                            \
  X(unembed_out, "unembed.hook_out", false, none, d_vocab)

enum class HookKind : int {
#define TM_HOOK_KIND(kind, name, per_layer, heads, width) kind,
  TM_HOOK_POINTS(TM_HOOK_KIND)
#undef TM_HOOK_KIND
};

constexpr int kFirstLayerKind = static_cast<int>(HookKind::resid_pre);
constexpr int kLayerKinds = static_cast<int>(HookKind::resid_post) - kFirstLayerKind + 1;
constexpr int kHookKinds = static_cast<int>(HookKind::unembed_out) + 1;
constexpr int kFirstFinalKind = kFirstLayerKind + kLayerKinds;  // ln_final's and unembed's, after the blocks

const HookInfo& hook_info(HookKind kind);

// Hook ids are ints: hook_count throws std::invalid_argument for more than
// kMaxLayers layers (or fewer than 0).
constexpr int64_t kMaxLayers = int64_t{1} << 20;
int hook_count(int64_t n_layers);
int hook_id(HookKind kind, int64_t layer, int64_t n_layers);
std::string hook_name(int id, int64_t n_layers);  // "blocks.3.attn.hook_z"

struct View {
  float* data = nullptr;
  int ndim = 3;  // 3: [batch, pos, x]; 4: [batch, pos, head, x]
  int64_t shape[4] = {0, 0, 0, 0};
  int64_t stride[4] = {0, 0, 0, 0};
  int64_t pos_offset = 0;        // absolute position of pos index 0
  bool head_before_pos = false;  // TransformerLens order is [batch, head, pos, x]

  int64_t numel() const;
  std::vector<int64_t> tl_shape() const;
};

// The layouts a pass (forward or backward) shows its buffers in, pos_offset the
// absolute position of pos 0: rows [batch, pos, width], contiguous; heads
// [batch, pos, head, d] inside rows of row_stride floats; attention scores or
// pattern stored [batch, head, query, key].
View rows_view(float* data, int64_t B, int64_t T, int64_t width, int64_t pos_offset);
View heads_view(float* data, int64_t B, int64_t T, int64_t row_stride, int64_t d, int64_t n_heads, int64_t pos_offset);
View scores_view(float* data, int64_t B, int64_t T, int64_t H, int64_t keys, int64_t pos_offset);

// A Python (or other) function called at a hook point with the activation
// copied into a contiguous buffer in TransformerLens order; it edits the
// buffer in place. May throw: the forward pass unwinds and the cache's
// length is left unchanged.
struct HookCallback {
  virtual ~HookCallback() = default;
  // pos_offset: the absolute position of the activation's first position.
  virtual void call(int hook_id, int64_t pos_offset, std::vector<float>& buffer, const std::vector<int64_t>& shape) = 0;
  // The object a plan calls instead of this one. A callback that keeps state
  // from one call of a pass to a later one (a transcoder's input, held until
  // its output hook) returns a fresh object, so that passes sharing the
  // callback (other threads, a pass nested in a hook) never see each other's
  // state. A plan asks once, however many hook points it adds the callback at;
  // n_layers names its hook ids. nullptr (the default): call this object.
  virtual std::shared_ptr<HookCallback> for_plan(int64_t /*n_layers*/) { return nullptr; }
};

// How a block feeds its attention, as TransformerLens's modes do (HookedTransformerConfig's
// use_attn_in, use_split_qkv_input): one input for every head (shared); a copy of resid_pre per
// head, hook_attn_in (attn_in); or one per head for each of q, k and v, hook_q_input, hook_k_input
// and hook_v_input (split_qkv). The per-head modes also normalize each copy by ln1 on its own, so
// ln1's hooks see [batch, pos, head, ...], once for the queries', then the keys', then the values'
// inputs (each call captured; run_with_cache keeps the last, as TransformerLens does).
enum class AttentionInput { shared, attn_in, split_qkv };
AttentionInput parse_attention_input(const std::string& name);  // "shared", "attn_in" or "split_qkv"

enum class EditType { capture, replace, fill, add, scale, callback };

struct Edit {
  EditType type = EditType::capture;
  std::vector<int64_t> heads;      // empty: every head
  std::vector<int64_t> positions;  // absolute positions; empty: every position
  // replace: source [batch or 1, P, rest...] in TL order covering positions 0..P-1
  // (scores/pattern: [batch or 1, head, P, keys], keys may differ from the activation's)
  // fill / add: one value per element of rest, or per element of one head's
  // slice (broadcast over heads); none: use `scalar`
  const float* values = nullptr;
  std::vector<int64_t> values_shape;
  float scalar = 0.f;  // scale factor, add coefficient, or fill constant
  std::shared_ptr<HookCallback> callback;
};

struct Captured {
  std::vector<int64_t> shape;  // TL order
  FloatBuffer data;
};

class HookPlan {
 public:
  explicit HookPlan(int64_t n_layers);

  void add(int hook_id, Edit edit);
  bool active(int hook_id) const { return hook_id >= 0 && hook_id < count_ && !edits_[hook_id].empty(); }
  // True when nothing at this hook point can change the values (no edits, or captures only).
  bool reads_only(int hook_id) const;
  // How many blocks a forward must run to reach every active hook point:
  // 0 when only the embeddings' are, n_layers when ln_final's are.
  int64_t blocks_reached() const;
  void apply(int hook_id, const View& view);

  std::vector<std::pair<int, Captured>>& captured() { return captured_; }
  int64_t n_layers() const { return n_layers_; }
  AttentionInput attention_input() const { return attention_input_; }
  void set_attention_input(AttentionInput mode) { attention_input_ = mode; }

 private:
  int64_t n_layers_;
  int count_;
  std::vector<std::vector<Edit>> edits_;
  std::vector<std::pair<int, Captured>> captured_;
  AttentionInput attention_input_ = AttentionInput::shared;
  // each callback added and the object this plan calls for it (HookCallback::for_plan)
  std::vector<std::pair<std::shared_ptr<HookCallback>, std::shared_ptr<HookCallback>>> bound_;
};

}  // namespace tmech
