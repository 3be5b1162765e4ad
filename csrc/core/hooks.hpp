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

enum class HookKind : int {
  embed,
  pos_embed,
  // per layer, in the order a block reaches them
  resid_pre,
  ln1_scale,
  ln1_normalized,
  q,
  k,
  v,
  rot_q,  // rotary models only
  rot_k,
  attn_scores,
  pattern,
  z,
  result,
  attn_out,
  resid_mid,
  ln2_scale,
  ln2_normalized,
  mlp_pre,
  mlp_pre_linear,  // gated MLPs only
  mlp_post,
  mlp_out,
  resid_post,
  // after the blocks
  ln_final_scale,
  ln_final_normalized,
};

constexpr int kFirstLayerKind = static_cast<int>(HookKind::resid_pre);
constexpr int kLayerKinds = static_cast<int>(HookKind::resid_post) - kFirstLayerKind + 1;
constexpr int kHookKinds = static_cast<int>(HookKind::ln_final_normalized) + 1;

// The table of hook points (hooks.cpp's kHooks, one row per HookKind): what a
// point's activation holds after [batch, pos]. Python reads it through
// _core.hook_table, so its lists of headed points and SAE widths follow.
enum class HookHeads { none, query, key_value };                // a head axis of n_heads or n_key_value_heads
enum class HookWidth { d_model, d_mlp, d_head, key_pos, one };  // the last axis
struct HookInfo {
  const char* name;  // per layer: the name after "blocks.N."
  bool per_layer;
  HookHeads heads;
  HookWidth width;
};
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

 private:
  int64_t n_layers_;
  int count_;
  std::vector<std::vector<Edit>> edits_;
  std::vector<std::pair<int, Captured>> captured_;
  // each callback added and the object this plan calls for it (HookCallback::for_plan)
  std::vector<std::pair<std::shared_ptr<HookCallback>, std::shared_ptr<HookCallback>>> bound_;
};

}  // namespace tmech
