#include "core/hooks.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "runtime/threads.hpp"

namespace tmech {
namespace {

using H = HookHeads;
using W = HookWidth;
// TM_HOOK_POINTS's rows (hooks.hpp), in the enum's order.
constexpr HookInfo kHooks[kHookKinds] = {
#define TM_HOOK_ROW(kind, name, per_layer, heads, width) {name, per_layer, H::heads, W::width},
    TM_HOOK_POINTS(TM_HOOK_ROW)
#undef TM_HOOK_ROW
};

// Hook ids rely on the per-layer kinds being one run, from resid_pre to resid_post.
constexpr bool layer_kinds_contiguous() {
  for (int k = 0; k < kHookKinds; ++k)
    if (kHooks[k].per_layer != (k >= kFirstLayerKind && k < kFirstLayerKind + kLayerKinds)) return false;
  return true;
}
static_assert(layer_kinds_contiguous(), "per-layer hook kinds run from resid_pre to resid_post");

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool selected(const std::vector<int64_t>& sel, int64_t i) {
  return sel.empty() || std::find(sel.begin(), sel.end(), i) != sel.end();
}

// Offset of element (b, t, h, x) in a contiguous TL-ordered buffer whose
// pos extent is `positions`.
struct TlIndex {
  int64_t heads, positions, inner;
  bool head_before_pos;
  int64_t operator()(int64_t b, int64_t t, int64_t h) const {
    return head_before_pos ? ((b * heads + h) * positions + t) * inner : ((b * positions + t) * heads + h) * inner;
  }
};

// The contiguous innermost block of activation (b, t, h).
float* block_at(const View& v, int64_t b, int64_t t, int64_t h) {
  return v.data + b * v.stride[0] + t * v.stride[1] + (v.ndim == 4 ? h * v.stride[2] : 0);
}

// Calls f(block, b, t, h) for every selected contiguous innermost block.
template <class F>
void for_each_block(const View& v, const Edit& e, F f) {
  const int64_t heads = v.ndim == 4 ? v.shape[2] : 1;
  for (int64_t b = 0; b < v.shape[0]; ++b)
    for (int64_t t = 0; t < v.shape[1]; ++t) {
      if (!selected(e.positions, v.pos_offset + t)) continue;
      for (int64_t h = 0; h < heads; ++h) {
        if (!selected(e.heads, h)) continue;
        f(block_at(v, b, t, h), b, t, h);
      }
    }
}

// Copies the whole activation into (to_tl) or out of a contiguous TL-ordered
// buffer, split over positions between threads: a long prompt's cache is
// hundreds of MB of fresh memory, and one thread copying (and faulting it in)
// would leave the others idle.
void copy_tl(const View& v, float* tl, bool to_tl) {
  const int64_t heads = v.ndim == 4 ? v.shape[2] : 1, inner = v.shape[v.ndim - 1], T = v.shape[1];
  const TlIndex idx{heads, T, inner, v.head_before_pos};
  const size_t bytes = static_cast<size_t>(inner) * sizeof(float);
  const int64_t rows_per_unit = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, heads * inner));
  parallel_for(
      v.shape[0] * T,
      [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / T, t = r % T;
          for (int64_t h = 0; h < heads; ++h) {
            float* blk = block_at(v, b, t, h);
            if (to_tl)
              std::memcpy(tl + idx(b, t, h), blk, bytes);
            else
              std::memcpy(blk, tl + idx(b, t, h), bytes);
          }
        }
      },
      rows_per_unit);
}

// Where a fill/add value block for head h starts, or null for the scalar.
const float* value_block(const View& v, const Edit& e, int hook_id, int64_t n_layers, int64_t h) {
  if (!e.values) return nullptr;
  const int64_t inner = v.shape[v.ndim - 1], heads = v.ndim == 4 ? v.shape[2] : 1;
  int64_t n = 1;
  for (int64_t d : e.values_shape) n *= d;
  if (n == heads * inner) return e.values + h * inner;
  if (n == inner) return e.values;
  const std::string one = "[" + std::to_string(inner) + "]";
  const std::string wanted =
      heads > 1 ? "[" + std::to_string(heads) + ", " + std::to_string(inner) + "] or one head's " + one : one;
  throw std::invalid_argument("values for " + hook_name(hook_id, n_layers) + " have shape " +
                              shape_str(e.values_shape) + " for an activation of shape " + shape_str(v.tl_shape()) +
                              ": fill and add take one vector, broadcast over batch and positions: " + wanted +
                              " (tm.patch replaces with a whole activation)");
}

void check_replace_shape(const View& v, const Edit& e, int hook_id, int64_t n_layers) {
  std::vector<int64_t> want = v.tl_shape();
  const std::vector<int64_t>& got = e.values_shape;
  const size_t pos_axis = v.head_before_pos ? 2 : 1;
  // scores and patterns also have a key axis, which grows during generation
  const size_t key_axis = v.head_before_pos ? 3 : pos_axis;
  bool ok = got.size() == want.size() && (got[0] == want[0] || got[0] == 1);
  for (size_t i = 1; ok && i < want.size(); ++i)
    if (i != pos_axis && i != key_axis && got[i] != want[i]) ok = false;
  if (ok && v.head_before_pos && got[key_axis] < got[pos_axis]) ok = false;  // each query sees its keys
  if (!ok)
    throw std::invalid_argument("replacement for " + hook_name(hook_id, n_layers) + " has shape " + shape_str(got) +
                                " but the activation is " + shape_str(want) + " (the position axes may differ)");
}

}  // namespace

const HookInfo& hook_info(HookKind kind) { return kHooks[static_cast<int>(kind)]; }

AttentionInput parse_attention_input(const std::string& name) {
  if (name == "shared") return AttentionInput::shared;
  if (name == "attn_in") return AttentionInput::attn_in;
  if (name == "split_qkv") return AttentionInput::split_qkv;
  throw std::invalid_argument("attention input must be 'shared', 'attn_in' or 'split_qkv', not '" + name + "'");
}

int hook_count(int64_t n_layers) {
  if (n_layers < 0 || n_layers > kMaxLayers)
    throw std::invalid_argument("a model has 0 to " + std::to_string(kMaxLayers) + " layers, not " +
                                std::to_string(n_layers));
  return static_cast<int>(kHookKinds - kLayerKinds + kLayerKinds * n_layers);
}

int hook_id(HookKind kind, int64_t layer, int64_t n_layers) {
  const int k = static_cast<int>(kind);
  if (kind == HookKind::embed) return 0;
  if (kind == HookKind::pos_embed) return 1;
  if (k >= kFirstFinalKind) return static_cast<int>(kFirstLayerKind + kLayerKinds * n_layers + (k - kFirstFinalKind));
  return static_cast<int>(2 + layer * kLayerKinds + (k - kFirstLayerKind));
}

std::string hook_name(int id, int64_t n_layers) {
  const int count = hook_count(n_layers);
  if (id < 0 || id >= count) throw std::out_of_range("no hook point with id " + std::to_string(id));
  if (id < kFirstLayerKind) return kHooks[id].name;
  if (id >= count - (kHookKinds - kFirstLayerKind - kLayerKinds))
    return kHooks[kHookKinds - (count - id)].name;  // ln_final's and unembed's, after the blocks
  const int layer = (id - kFirstLayerKind) / kLayerKinds, kind = (id - kFirstLayerKind) % kLayerKinds;
  return "blocks." + std::to_string(layer) + "." + kHooks[kFirstLayerKind + kind].name;
}

int64_t View::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

std::vector<int64_t> View::tl_shape() const {
  std::vector<int64_t> s(shape, shape + ndim);
  if (head_before_pos) std::swap(s[1], s[2]);
  return s;
}

HookPlan::HookPlan(int64_t n_layers)
    : n_layers_(n_layers), count_(hook_count(n_layers)), edits_(static_cast<size_t>(count_)) {}

bool HookPlan::reads_only(int id) const {
  if (!active(id)) return true;
  for (const Edit& e : edits_[id])
    if (e.type != EditType::capture) return false;
  return true;
}

int64_t HookPlan::blocks_reached() const {
  for (int id = count_ - 1; id >= 2; --id)
    if (active(id)) return std::min<int64_t>(n_layers_, (id - 2) / kLayerKinds + 1);
  return 0;
}

void HookPlan::add(int id, Edit edit) {
  if (id < 0 || id >= count_) throw std::out_of_range("no hook point with id " + std::to_string(id));
  if (edit.type == EditType::callback && !edit.callback)
    throw std::invalid_argument("a callback edit needs a function");
  if (edit.type == EditType::callback) {
    auto it = std::find_if(bound_.begin(), bound_.end(), [&](const auto& b) { return b.first == edit.callback; });
    if (it == bound_.end()) {
      std::shared_ptr<HookCallback> own = edit.callback->for_plan(n_layers_);
      it = bound_.emplace(bound_.end(), edit.callback, own ? own : edit.callback);
    }
    edit.callback = it->second;
  }
  edits_[static_cast<size_t>(id)].push_back(std::move(edit));
}

void HookPlan::apply(int id, const View& v) {
  const int64_t inner = v.shape[v.ndim - 1];
  for (const Edit& e : edits_[static_cast<size_t>(id)]) {
    if (!e.heads.empty() && v.ndim != 4)
      throw std::invalid_argument(hook_name(id, n_layers_) + " has no head axis to select heads on");
    for (int64_t h : e.heads)
      if (h < 0 || h >= v.shape[2])
        throw std::out_of_range("head " + std::to_string(h) + " out of range for " + hook_name(id, n_layers_));
    switch (e.type) {
      case EditType::capture: {
        Captured c{v.tl_shape(), alloc_floats(v.numel())};
        copy_tl(v, c.data.get(), true);
        captured_.emplace_back(id, std::move(c));
        break;
      }
      case EditType::callback: {
        std::vector<float> buf(static_cast<size_t>(v.numel()));
        copy_tl(v, buf.data(), true);
        const std::vector<int64_t> shape = v.tl_shape();
        e.callback->call(id, v.pos_offset, buf, shape);
        if (static_cast<int64_t>(buf.size()) != v.numel())
          throw std::logic_error("hook callback changed the buffer size");
        copy_tl(v, buf.data(), false);
        break;
      }
      case EditType::replace: {
        check_replace_shape(v, e, id, n_layers_);
        const int64_t src_pos = e.values_shape[v.head_before_pos ? 2 : 1];
        // differs from inner only for scores/patterns, whose rows past either
        // key count are causally masked for every position the source covers
        const int64_t src_inner = e.values_shape.back(), n_copy = std::min(inner, src_inner);
        const bool one_batch = e.values_shape[0] == 1;
        TlIndex idx{v.ndim == 4 ? v.shape[2] : 1, src_pos, src_inner, v.head_before_pos};
        for_each_block(v, e, [&](float* blk, int64_t b, int64_t t, int64_t h) {
          const int64_t p = v.pos_offset + t;
          if (p >= src_pos) return;  // the source does not cover this position
          std::memcpy(blk, e.values + idx(one_batch ? 0 : b, p, h), static_cast<size_t>(n_copy) * sizeof(float));
        });
        break;
      }
      case EditType::fill:
      case EditType::add:
      case EditType::scale: {
        for_each_block(v, e, [&](float* blk, int64_t, int64_t, int64_t h) {
          const float* val = e.type == EditType::scale ? nullptr : value_block(v, e, id, n_layers_, h);
          for (int64_t x = 0; x < inner; ++x) {
            if (e.type == EditType::scale)
              blk[x] *= e.scalar;
            else if (e.type == EditType::fill)
              blk[x] = val ? val[x] : e.scalar;
            else
              blk[x] += val ? e.scalar * val[x] : e.scalar;
          }
        });
        break;
      }
    }
  }
}

View rows_view(float* data, int64_t B, int64_t T, int64_t width, int64_t pos_offset) {
  View v;
  v.data = data;
  v.ndim = 3;
  v.shape[0] = B, v.shape[1] = T, v.shape[2] = width;
  v.stride[0] = T * width, v.stride[1] = width, v.stride[2] = 1;
  v.pos_offset = pos_offset;
  return v;
}

View heads_view(float* data, int64_t B, int64_t T, int64_t row_stride, int64_t d, int64_t n_heads, int64_t pos_offset) {
  View v;
  v.data = data;
  v.ndim = 4;
  v.shape[0] = B, v.shape[1] = T, v.shape[2] = n_heads, v.shape[3] = d;
  v.stride[0] = T * row_stride, v.stride[1] = row_stride, v.stride[2] = d, v.stride[3] = 1;
  v.pos_offset = pos_offset;
  return v;
}

View scores_view(float* data, int64_t B, int64_t T, int64_t H, int64_t keys, int64_t pos_offset) {
  View v;
  v.data = data;
  v.ndim = 4;
  v.shape[0] = B, v.shape[1] = T, v.shape[2] = H, v.shape[3] = keys;
  v.stride[0] = H * T * keys, v.stride[1] = keys, v.stride[2] = T * keys, v.stride[3] = 1;
  v.pos_offset = pos_offset;
  v.head_before_pos = true;
  return v;
}

}  // namespace tmech
