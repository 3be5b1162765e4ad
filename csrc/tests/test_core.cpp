// The model: forward passes against their invariants (a cache changes
// nothing, thread counts agree, hooks keep TransformerLens's shapes, bad
// input throws), sizes that would overflow, KV caches of freed models, and
// interrupted passes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/forward.hpp"
#include "runtime/checked.hpp"
#include "runtime/threads.hpp"
#include "tests/native_tests.hpp"
#include "tests/tiny_model.hpp"

namespace tmech::test {
namespace {

// Sizes from a config or a caller that do not fit int64 throw instead of wrapping.
void test_checked_sizes() {
  auto overflows = [](std::function<void()> fn) {
    try {
      fn();
    } catch (const SizeOverflow&) {
      return true;
    }
    return false;
  };
  check(checked_size({3, 4, 5}, "x") == 60 && checked_size({int64_t{1} << 62, 0, 8}, "x") == 0,
        "checked_size multiplies");
  check(overflows([] { checked_size({int64_t{1} << 32, int64_t{1} << 31}, "x"); }), "checked_size: 2^63 overflows");
  KVCache wide(2, int64_t{1} << 62, 32, 1024);  // 2 x 2^62 x 16 x 32 floats wrap to 0
  check(overflows([&] { wide.reserve(4); }) && wide.capacity() == 0, "a KV cache too wide for int64 is refused");
  std::mt19937 rng(7);
  TinyModel tiny(rng, true);
  tiny.cfg.n_ctx = int64_t{1} << 61;  // max_position_embeddings of 2^61: a KV cache of 2^70 bytes
  check(overflows([&] { Model model(tiny.cfg, tiny.w); }), "a config whose KV cache could never fit is refused");
}

// A KV cache names its model by an id never reused: a model made where a
// freed one was (the same address) refuses the freed one's cache.
void test_cache_owner() {
  std::mt19937 rng(8);
  TinyModel tiny(rng, false);
  std::vector<int32_t> tokens = {1, 2, 3};
  std::vector<float> logits(3 * tiny.cfg.d_vocab);
  auto first = std::make_unique<Model>(tiny.cfg, tiny.w);
  KVCache cache = first->new_cache(1);
  first->forward(&cache, tokens.data(), 1, 3, nullptr, LogitsMode::all, logits.data());
  first.reset();
  auto second = std::make_unique<Model>(tiny.cfg, tiny.w);
  bool refused = false;
  try {
    second->forward(&cache, tokens.data(), 1, 3, nullptr, LogitsMode::all, logits.data());
  } catch (const CacheMismatch&) {
    refused = true;
  }
  check(refused && cache.n_past() == 3, "a freed model's KV cache is refused by the next model");
}

// A pass stopped between blocks (Ctrl-C) unwinds, leaving the cache at its
// length, and the model gives the same logits afterwards.
int g_checks_left = 0;
void interrupt_after_some_checks() {
  if (--g_checks_left == 0) throw std::runtime_error("interrupted");
}

void test_interrupted_pass() {
  std::mt19937 rng(9);
  TinyModel tiny(rng, true);
  Model model(tiny.cfg, tiny.w);
  const int64_t V = tiny.cfg.d_vocab;
  std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6};
  std::vector<float> before(6 * V), after(6 * V), rest(3 * V);
  model.forward(nullptr, tokens.data(), 1, 6, nullptr, LogitsMode::all, before.data());
  KVCache cache = model.new_cache(1);
  model.forward(&cache, tokens.data(), 1, 3, nullptr, LogitsMode::none, nullptr);
  set_interrupt_check(interrupt_after_some_checks);
  g_checks_left = 2;  // before block 0, then before block 1
  bool stopped = false;
  try {
    model.forward(&cache, tokens.data() + 3, 1, 3, nullptr, LogitsMode::all, rest.data());
  } catch (const std::runtime_error&) {
    stopped = true;
  }
  set_interrupt_check(nullptr);
  check(stopped && cache.n_past() == 3, "an interrupted pass leaves its KV cache at its length");
  model.forward(&cache, tokens.data() + 3, 1, 3, nullptr, LogitsMode::all, rest.data());
  model.forward(nullptr, tokens.data(), 1, 6, nullptr, LogitsMode::all, after.data());
  double d = 0;
  for (int64_t i = 0; i < 3 * V; ++i) d = std::max(d, double(std::abs(rest[i] - before[3 * V + i])));
  check(after == before && d < 1e-4, "the model works as before after an interrupted pass");
}

// A weight source that records what read_weights asks for and hands out one
// buffer for every weight (absent: the optional ones whose names it is told).
struct RecordingSource : WeightSource {
  std::vector<std::string> asked;
  std::vector<std::string> absent;
  int64_t blocks = 0;
  float buffer = 0.f;
  Matrix get(int64_t layer, const char* name, const std::vector<int64_t>& shape, bool optional, bool) override {
    std::string what = std::to_string(layer) + " " + name + " " + (optional ? "optional " : "");
    for (int64_t n : shape) what += std::to_string(n) + ",";
    asked.push_back(what);
    for (const std::string& a : absent)
      if (optional && a == name) return {};
    return &buffer;
  }
  int64_t layers() override { return blocks; }
};

bool asked_for(const RecordingSource& src, const std::string& what) {
  return std::find(src.asked.begin(), src.asked.end(), what) != src.asked.end();
}

// The weights a config needs: names, shapes (transposed in the out_in
// layout), which are optional; the architecture names parsed.
void test_read_weights() {
  std::mt19937 rng(10);
  TinyModel gpt2(rng, false), llama(rng, true);  // D 40, F 72, V 53, q|k|v 120 (GPT-2) or 80 (Llama)
  RecordingSource g;
  g.blocks = 2;
  g.absent = {"unembed_b"};
  const ModelWeights gw = read_weights(gpt2.cfg, g);
  check(gw.layers.size() == 2 && !gw.unembed_b && !gpt2.cfg.has_unembed_bias && asked_for(g, "-1 wpe 16,40,") &&
            asked_for(g, "1 qkv_w 40,120,") && asked_for(g, "0 ln1_b 40,") && !asked_for(g, "0 gate_w 40,72,"),
        "read_weights: GPT-2's weights");
  RecordingSource l;
  l.blocks = 2;
  const ModelWeights lw = read_weights(llama.cfg, l);
  check(lw.unembed_b && llama.cfg.has_unembed_bias && asked_for(l, "-1 rope_inv_freq 5,") &&
            asked_for(l, "1 qkv_w 80,40,") && asked_for(l, "1 qkv_b optional 80,") &&
            asked_for(l, "0 ln1_b optional 40,") && asked_for(l, "0 gate_w 72,40,") && !asked_for(l, "-1 wpe 16,40,"),
        "read_weights: Llama's weights, [out, in], biases optional");
  l.blocks = 3;
  bool refused = false;
  try {
    read_weights(llama.cfg, l);
  } catch (const std::invalid_argument& e) {
    refused = std::string(e.what()) == "config has 2 layers but 3 were given";
  }
  check(refused, "read_weights refuses another number of blocks");
  bool unknown = false;
  try {
    parse_normalization("BatchNorm");
  } catch (const std::invalid_argument&) {
    unknown = true;
  }
  check(unknown && parse_activation("swish") == Activation::silu &&
            parse_normalization("RMSPre") == Normalization::rms_norm &&
            parse_positions("rotary") == Positions::rotary && parse_weight_layout("out_in") == WeightLayout::out_in &&
            parse_logits_mode("last") == LogitsMode::last,
        "the config's names");
}

// Visited only when a plan asks for per-head attention inputs (AttentionInput).
bool per_head_point(const std::string& name) {
  for (const std::string end : {"hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input"})
    if (name.size() >= end.size() && name.compare(name.size() - end.size(), end.size(), end) == 0) return true;
  return false;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, double(std::abs(a[i] - b[i])));
  return d;
}

// TransformerLens's per-head modes: logits as with the shared input unless a hook edits,
// TransformerLens's order and shapes (ln1's hooks once per q, k and v input, per head), an
// edit at one head's query input reaching that head's queries only, KV-cached decoding.
void test_per_head_inputs(Model& model, const TinyModel& tiny, const std::vector<int32_t>& tokens,
                          const std::vector<float>& full, const std::string& arch) {
  const ModelConfig& cfg = tiny.cfg;
  const int64_t B = 2, T = cfg.n_ctx, V = cfg.d_vocab, L = cfg.n_layers, H = cfg.n_heads, Hkv = cfg.kv_heads();
  const int64_t D = cfg.d_model;
  std::vector<float> out(B * T * V);
  for (AttentionInput mode : {AttentionInput::split_qkv, AttentionInput::attn_in}) {
    const bool split = mode == AttentionInput::split_qkv;
    HookPlan plan(L);
    plan.set_attention_input(mode);
    for (int id : model.hook_ids()) plan.add(id, Edit{});
    if (!split && Hkv != H) {
      bool refused = false;
      try {
        model.forward(nullptr, tokens.data(), B, T, &plan, LogitsMode::all, out.data());
      } catch (const std::invalid_argument&) {
        refused = true;
      }
      check(refused, arch + "hook_attn_in refuses grouped-query attention");
      continue;
    }
    model.forward(nullptr, tokens.data(), B, T, &plan, LogitsMode::all, out.data());
    check(max_diff(out, full) < 1e-4, arch + "per-head inputs leave the logits unchanged");
    std::vector<std::string> block0;
    std::vector<std::vector<int64_t>> shapes;
    const float *resid_pre = nullptr, *q_input = nullptr;
    for (auto& [id, c] : plan.captured()) {
      const std::string name = hook_name(id, L);
      if (name.rfind("blocks.0.", 0) != 0) continue;
      block0.push_back(name.substr(9));
      shapes.push_back(c.shape);
      if (name == "blocks.0.hook_resid_pre") resid_pre = c.data.get();
      if (name == "blocks.0.hook_q_input" || name == "blocks.0.hook_attn_in") q_input = c.data.get();
    }
    const std::vector<std::string> want_names =
        split
            ? std::vector<std::string>{"hook_resid_pre", "hook_q_input",        "hook_k_input",   "hook_v_input",
                                       "ln1.hook_scale", "ln1.hook_normalized", "ln1.hook_scale", "ln1.hook_normalized",
                                       "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q"}
            : std::vector<std::string>{"hook_resid_pre",      "hook_attn_in",        "ln1.hook_scale",
                                       "ln1.hook_normalized", "ln1.hook_scale",      "ln1.hook_normalized",
                                       "ln1.hook_scale",      "ln1.hook_normalized", "attn.hook_q"};
    check(block0.size() > want_names.size() && std::equal(want_names.begin(), want_names.end(), block0.begin()),
          arch + "per-head points in TransformerLens's order");
    const int64_t kv_in = split ? Hkv : H;  // heads of the key and value inputs
    check(shapes[1] == std::vector<int64_t>{B, T, H, D}, arch + "the query input is [batch, pos, head, d_model]");
    check(shapes[split ? 8 : 6] == std::vector<int64_t>{B, T, kv_in, 1}, arch + "ln1's scale of the value input");
    check(std::find(block0.begin(), block0.end(), "hook_mlp_in") != block0.end(), arch + "hook_mlp_in visited");
    bool copies = resid_pre && q_input;
    for (int64_t r = 0; copies && r < B * T; ++r)
      for (int64_t h = 0; h < H; ++h)
        copies = copies && std::equal(resid_pre + r * D, resid_pre + (r + 1) * D, q_input + (r * H + h) * D);
    check(copies, arch + "each head's input is a copy of resid_pre");
  }

  // Zeroing head 1's query input changes head 1's queries only.
  HookPlan shared(L), zeroed(L);
  zeroed.set_attention_input(AttentionInput::split_qkv);
  Edit zero;
  zero.type = EditType::fill;
  zero.heads = {1};
  zeroed.add(hook_id(HookKind::q_input, 0, L), zero);
  shared.add(hook_id(HookKind::q, 0, L), Edit{});
  zeroed.add(hook_id(HookKind::q, 0, L), Edit{});
  model.forward(nullptr, tokens.data(), B, T, &shared, LogitsMode::none, nullptr);
  model.forward(nullptr, tokens.data(), B, T, &zeroed, LogitsMode::none, nullptr);
  const float* q0 = shared.captured()[0].second.data.get();
  const float* q1 = zeroed.captured()[0].second.data.get();
  const int64_t dh = cfg.d_head;
  double same = 0, changed = 0;
  for (int64_t r = 0; r < B * T; ++r)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t x = 0; x < dh; ++x) {
        double& worst_here = h == 1 ? changed : same;
        worst_here = std::max(worst_here, double(std::abs(q0[(r * H + h) * dh + x] - q1[(r * H + h) * dh + x])));
      }
  check(same < 1e-5 && changed > 1e-3, arch + "an edit at one head's query input reaches that head only");

  // Prefill, then decode a token at a time, with every layer's inputs split: the full pass's logits.
  HookPlan split(L);
  split.set_attention_input(AttentionInput::split_qkv);
  for (int64_t l = 0; l < L; ++l) split.add(hook_id(HookKind::k_input, l, L), Edit{});
  KVCache cache = model.new_cache(B);
  std::vector<int32_t> head(B * 3), step(B);
  for (int64_t b = 0; b < B; ++b) std::copy(&tokens[b * T], &tokens[b * T + 3], &head[b * 3]);
  model.forward(&cache, head.data(), B, 3, &split, LogitsMode::none, nullptr);
  std::vector<float> last(B * V);
  double worst = 0;
  for (int64_t t = 3; t < T; ++t) {
    for (int64_t b = 0; b < B; ++b) step[b] = tokens[b * T + t];
    model.forward(&cache, step.data(), B, 1, &split, LogitsMode::last, last.data());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t v = 0; v < V; ++v)
        worst = std::max(worst, double(std::abs(last[b * V + v] - full[(b * T + t) * V + v])));
  }
  check(worst < 1e-4, arch + "cached decoding with per-head inputs equals the full pass");
}

}  // namespace

void test_forward(std::mt19937& rng, bool llama) {
  TinyModel tiny(rng, llama);
  const std::string arch = llama ? "llama: " : "gpt2: ";
  Model model(tiny.cfg, tiny.w);
  const int64_t B = 2, T = tiny.cfg.n_ctx, V = tiny.cfg.d_vocab;
  std::vector<int32_t> tokens(B * T);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % V);

  std::vector<float> full(B * T * V);
  KVCache c1 = model.new_cache(B);
  model.forward(&c1, tokens.data(), B, T, nullptr, LogitsMode::all, full.data());
  check(c1.n_past() == T, "prefill advances the cache");

  // Without a cache, keys and values are read in place: the same logits.
  std::vector<float> uncached(B * T * V);
  model.forward(nullptr, tokens.data(), B, T, nullptr, LogitsMode::all, uncached.data());
  check(uncached == full, arch + "a forward without a cache equals one with");
  bool refused = false;
  try {
    std::vector<int32_t> too_long(T + 1, 0);
    model.forward(nullptr, too_long.data(), 1, T + 1, nullptr, LogitsMode::none, nullptr);
  } catch (const std::out_of_range&) {
    refused = true;
  }
  check(refused, arch + "a forward without a cache refuses more tokens than the context");

  // Prefill 5 tokens, then decode one at a time: the last logits must match.
  KVCache c2 = model.new_cache(B);
  std::vector<int32_t> step(B);
  std::vector<float> prefix(B * 5 * V), last(B * V);
  std::vector<int32_t> head(B * 5);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < 5; ++t) head[b * 5 + t] = tokens[b * T + t];
  model.forward(&c2, head.data(), B, 5, nullptr, LogitsMode::all, prefix.data());
  double worst = 0;
  for (int64_t t = 5; t < T; ++t) {
    for (int64_t b = 0; b < B; ++b) step[b] = tokens[b * T + t];
    model.forward(&c2, step.data(), B, 1, nullptr, LogitsMode::last, last.data());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t v = 0; v < V; ++v)
        worst = std::max(worst, double(std::abs(last[b * V + v] - full[(b * T + t) * V + v])));
  }
  check(worst < 1e-4, arch + "cached decode equals prefill");

  // A plan touching every hook point with a capture, plus edits, must run and
  // keep TransformerLens shapes; the phased attention path must agree with the fused one.
  HookPlan plan(tiny.cfg.n_layers);
  std::vector<int> ids;  // every point a pass with one shared attention input visits
  for (int id : model.hook_ids())
    if (!per_head_point(hook_name(id, tiny.cfg.n_layers))) ids.push_back(id);
  for (int id : model.hook_ids()) plan.add(id, Edit{});
  KVCache c3 = model.new_cache(B);
  std::vector<float> hooked(B * T * V);
  model.forward(&c3, tokens.data(), B, T, &plan, LogitsMode::all, hooked.data());
  double diff = 0;
  for (size_t i = 0; i < full.size(); ++i) diff = std::max(diff, double(std::abs(full[i] - hooked[i])));
  check(diff < 1e-4, arch + "capturing every hook point leaves the logits unchanged");
  check(plan.captured().size() == ids.size(), arch + "every hook point of the architecture captured");
  const int64_t kv_heads = tiny.cfg.kv_heads();
  for (size_t i = 0; i < plan.captured().size(); ++i) {
    auto& [id, c] = plan.captured()[i];
    check(id == ids[i], arch + "hook points reached in order");
    const std::string name = hook_name(id, tiny.cfg.n_layers);
    if (name.find("hook_k") != std::string::npos || name.find("hook_v") != std::string::npos ||
        name.find("hook_rot_k") != std::string::npos)
      check(c.shape == std::vector<int64_t>{B, T, kv_heads, tiny.cfg.d_head}, arch + name + " shape");
    if (name.find("hook_pattern") != std::string::npos) {
      check(c.shape == std::vector<int64_t>{B, tiny.cfg.n_heads, T, T}, "pattern shape");
      double row = 0;
      for (int64_t k = 0; k < T; ++k) row += c.data[(T - 1) * T + k];
      check(std::abs(row - 1) < 1e-5, "pattern rows sum to one");
    }
  }

  HookPlan edits(tiny.cfg.n_layers);
  Edit zero;
  zero.type = EditType::fill;
  zero.heads = {1, 3};
  edits.add(hook_id(HookKind::z, 0, 2), zero);
  Edit scale;
  scale.type = EditType::scale;
  scale.scalar = 0.5f;
  scale.positions = {2, 7};
  edits.add(hook_id(HookKind::pattern, 1, 2), scale);
  std::vector<float> steer(tiny.cfg.d_model, 0.25f);
  Edit add;
  add.type = EditType::add;
  add.values = steer.data();
  add.values_shape = {tiny.cfg.d_model};
  add.scalar = 2.f;
  edits.add(hook_id(HookKind::resid_pre, 1, 2), add);
  KVCache c4 = model.new_cache(B);
  model.forward(&c4, tokens.data(), B, T, &edits, LogitsMode::all, hooked.data());
  bool finite = true;
  for (float x : hooked) finite = finite && std::isfinite(x);
  check(finite, arch + "edited forward stays finite");

  Edit bad;
  bad.type = EditType::add;
  bad.values = steer.data();
  bad.values_shape = {7};
  HookPlan wrong(tiny.cfg.n_layers);
  wrong.add(hook_id(HookKind::mlp_out, 0, 2), bad);
  KVCache c5 = model.new_cache(B);
  bool threw = false;
  try {
    model.forward(&c5, tokens.data(), B, T, &wrong, LogitsMode::all, hooked.data());
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  check(threw && c5.n_past() == 0, "a mis-shaped edit throws and leaves the cache untouched");

  test_per_head_inputs(model, tiny, tokens, full, arch);

  // Thread counts give the same numbers.
  for (int threads : {1, 3, 2}) {
    set_num_threads(threads);
    KVCache c = model.new_cache(B);
    std::vector<float> out(B * T * V);
    model.forward(&c, tokens.data(), B, T, nullptr, LogitsMode::all, out.data());
    double d = 0;
    for (size_t i = 0; i < out.size(); ++i) d = std::max(d, double(std::abs(out[i] - full[i])));
    check(d < 1e-5, arch + "same logits with " + std::to_string(threads) + " threads");
  }

  auto throws = [&](std::function<void()> fn) {
    try {
      fn();
    } catch (const std::exception&) {
      return true;
    }
    return false;
  };
  std::vector<int32_t> bad_tokens = {0, static_cast<int32_t>(V)};
  check(throws([&] {
          KVCache c = model.new_cache(1);
          model.forward(&c, bad_tokens.data(), 1, 2, nullptr, LogitsMode::all, full.data());
        }),
        "out-of-vocabulary token throws");
  check(throws([&] {
          KVCache c = model.new_cache(B);
          model.forward(&c, tokens.data(), B, T, nullptr, LogitsMode::none, nullptr);
          model.forward(&c, tokens.data(), B, 1, nullptr, LogitsMode::none, nullptr);
        }),
        "running past n_ctx throws");
}

void test_core() {
  test_read_weights();
  test_checked_sizes();
  test_cache_owner();
  test_interrupted_pass();
}

}  // namespace tmech::test
