#include "core/forward.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/kernels.hpp"
#include "ops/matmul.hpp"
#include "ops/rows.hpp"
#include "runtime/checked.hpp"
#include "runtime/threads.hpp"

namespace tmech {
namespace {

constexpr const char* kModelReentry =
    "this model is already running a forward pass on this thread: a hook cannot run the model whose "
    "pass called it (run it after the pass, or on another model)";

// v grown to at least the product of dims floats (the sizes checked: they come from the caller and the config).
template <class T>
T* sized(std::vector<T>& v, std::initializer_list<int64_t> dims) {
  const int64_t n = checked_size(dims, "a forward pass's buffer");
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

std::atomic<void (*)()> g_interrupt_check{nullptr};

void check_interrupt() {
  if (void (*check)() = g_interrupt_check.load()) check();
}

// One forward call: shapes, buffers and the plan, with a method per stage.
struct Pass {
  const ModelConfig& cfg;
  const ModelWeights& w;
  KVCache* cache;  // null: a one-off forward, keys and values stay in the q|k|v rows
  HookPlan* plan;
  Model::Workspace& ws;
  const KernelTable& kt;
  int64_t B, T, past, BT, D, Da, H, dh;
  int64_t Hkv, Dkv, Dqkv;  // key/value heads, their width, the width of a q|k|v row
  // Padding (see Padding): each row's first real position and one past its
  // last, absolute; null: no row padded (row_end null: none on the right).
  const int64_t* row_start = nullptr;
  const int64_t* row_end = nullptr;
  Tape* tape = nullptr;  // what a backward needs, kept from block tape->from on; null: nothing kept

  LayerTape* taping(int64_t layer) const { return tape && tape->records(layer) ? &tape->layers[layer] : nullptr; }

  // C[M, N] = A[M, K] · W (+ bias) for a weight stored in the config's layout,
  // whose stored rows are ldw floats long (a slice of a wider matrix may be given).
  // A taped forward keeps the backward's promise: the same bits for any thread count.
  void linear(const float* A, int64_t M, int64_t K, int64_t lda, Matrix W, int64_t ldw, int64_t N, const float* bias,
              float* C, int64_t ldc) const {
    if (cfg.layout == WeightLayout::in_out)
      matmul(A, M, K, lda, W, N, ldw, 1, bias, C, ldc, false, tape != nullptr);
    else
      matmul(A, M, K, lda, W, N, 1, ldw, bias, C, ldc, false, tape != nullptr);
  }

  bool active(HookKind kind, int64_t layer = 0) const {
    return plan && plan->active(hook_id(kind, layer, cfg.n_layers));
  }
  bool reads_only(HookKind kind, int64_t layer) const {
    return !plan || plan->reads_only(hook_id(kind, layer, cfg.n_layers));
  }
  void hook(HookKind kind, int64_t layer, const View& v) {
    if (!plan) return;
    const int id = hook_id(kind, layer, cfg.n_layers);
    if (plan->active(id)) plan->apply(id, v);
  }

  // the layouts hooks see (core/hooks.hpp)
  View rows(float* data, int64_t width) const { return rows_view(data, B, T, width, past); }
  View heads(float* data, int64_t row_stride, int64_t d, int64_t n_heads) const {
    return heads_view(data, B, T, row_stride, d, n_heads, past);
  }
  View scores(float* data, int64_t keys) const { return scores_view(data, B, T, H, keys, past); }

  // The keys [first, last) query t of row b attends to: those up to itself,
  // within its row's real tokens (none for a query before them).
  std::pair<int64_t, int64_t> visible_keys(int64_t b, int64_t t) const {
    int64_t last = past + t + 1;
    if (!row_start) return {0, last};
    if (row_end) last = std::min(last, row_end[b]);
    return {std::min(row_start[b], last), last};
  }
  // The first key any query of row b attends to, of `keys` (0 without padding).
  int64_t first_key(int64_t b, int64_t keys) const { return row_start ? std::min(row_start[b], keys) : 0; }
  int64_t position(int64_t b, int64_t t) const { return padded_position(row_start, row_end, past, b, t); }
  bool is_padding(int64_t b, int64_t t) const {
    return row_start && (past + t < row_start[b] || (row_end && past + t >= row_end[b]));
  }

  // Learned positions of a padded batch: each row's own, zero at padding (as TransformerLens).
  void padded_positions(float* p) const {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        float* row = p + (b * T + t) * D;
        if (is_padding(b, t))
          std::fill(row, row + D, 0.f);
        else
          std::memcpy(row, w.wpe + position(b, t) * D, D * sizeof(float));
      }
  }

  void embed(const int32_t* tokens) {
    float* x = ws.x.data();
    for (int64_t r = 0; r < BT; ++r) w.wte.read(static_cast<int64_t>(tokens[r]) * D, D, x + r * D);
    hook(HookKind::embed, 0, rows(x, D));
    if (cfg.positions != Positions::learned) return;
    const float* pe = w.wpe + past * D;  // positions past..past+T-1, the same for every batch row
    if (row_start) {
      float* p = ws.pos.data();
      padded_positions(p);
      hook(HookKind::pos_embed, 0, rows(p, D));
      add_inplace(x, p, BT * D);
    } else if (active(HookKind::pos_embed)) {
      float* p = ws.pos.data();
      for (int64_t b = 0; b < B; ++b) std::memcpy(p + b * T * D, pe, T * D * sizeof(float));
      hook(HookKind::pos_embed, 0, rows(p, D));
      add_inplace(x, p, BT * D);
    } else {
      for (int64_t b = 0; b < B; ++b) add_inplace(x + b * T * D, pe, T * D);
    }
  }

  // RMSNorm's statistics in LayerNorm's terms: mean 0, scale sqrt(mean(x²) + eps).
  void rms_stats(const float* x, float* mean, float* scale) const {
    *mean = 0.f;
    *scale = std::sqrt(kt.dot(x, x, D) / static_cast<float>(D) + cfg.ln_eps);
  }
  void stats(const float* x, float* mean, float* scale) const {
    if (cfg.normalization == Normalization::rms_norm)
      rms_stats(x, mean, scale);
    else
      kt.row_stats(x, D, cfg.ln_eps, mean, scale);
  }

  // out[r] = norm(x[r]) * w (+ b) for `n` rows, with no hooks.
  void norm_rows(const float* x, int64_t n, const float* lw, const float* lb, float* out) const {
    if (cfg.normalization == Normalization::layer_norm) {
      layernorm_rows(x, n, D, cfg.ln_eps, lw, lb, out);
      return;
    }
    parallel_for(n, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; ++r) {
        float mean, scale;
        rms_stats(x + r * D, &mean, &scale);
        kt.normalize(x + r * D, mean, scale, lw, lb, out + r * D, D);
      }
    });
  }

  // LayerNorm or RMSNorm; when its hooks are used, it runs in TransformerLens's
  // steps: scale (hooked), (centered) x / scale (hooked), then the affine map.
  // With n_heads, x holds n_heads rows per position ([batch, pos, head, d_model],
  // the per-head attention inputs), and so do the hooks' views. out may be x.
  void layer_norm(const float* x, const float* lw, const float* lb, float* out, HookKind scale_kind, HookKind norm_kind,
                  int64_t layer, int64_t n_heads = 0) {
    const int64_t n = BT * std::max<int64_t>(n_heads, 1);
    if (!active(scale_kind, layer) && !active(norm_kind, layer)) {
      norm_rows(x, n, lw, lb, out);
      return;
    }
    float* mean = sized(ws.stats, {2, n});
    float* scale = mean + n;
    for (int64_t r = 0; r < n; ++r) stats(x + r * D, mean + r, scale + r);
    hook(scale_kind, layer, n_heads ? heads(scale, n_heads, 1, n_heads) : rows(scale, 1));
    for (int64_t r = 0; r < n; ++r) kt.normalize(x + r * D, mean[r], scale[r], nullptr, nullptr, out + r * D, D);
    hook(norm_kind, layer, n_heads ? heads(out, n_heads * D, D, n_heads) : rows(out, D));
    for (int64_t r = 0; r < n; ++r) kt.normalize(out + r * D, 0.f, 1.f, lw, lb, out + r * D, D);
  }

  // Attention works on blocks of queries of one (batch, head): scores are a
  // small matrix product Q·K^T, weighted sums P·V another, both through the
  // single-threaded matmul kernel (the caller spreads blocks over threads).
  static constexpr int64_t kQueryBlock = 32;

  float score_scale(int64_t layer) const {
    float s = 1.f / cfg.attn_scale;
    if (cfg.scale_attn_by_inverse_layer_idx) s /= static_cast<float>(layer + 1);
    return s;
  }

  // With bfloat16 weights and bfloat16 dot products, a prefill's attention
  // uses them too (queries, keys, values and pattern rounded to bfloat16, as
  // they are in the weight matmuls), through bfloat16 copies of this layer's
  // keys and values; decoding steps keep float32 attention.
  bool bf16_attention() const { return kt.bf16_dot_products && w.layers[0].qkv_w.bf16 && T > kMatmulSmallM; }

  // Keys (which = 0) or values (1) of batch row b from position 0 as
  // attention reads them, [keys, Dkv] with rows ld floats apart: in the cache,
  // in this call's q|k|v rows (no cache), or in their bfloat16 copy.
  struct KeysValues {
    Matrix m;
    int64_t ld;
  };
  KeysValues keys_values_f32(int64_t l, int64_t b, int which) const {
    if (cache) return {Matrix(which ? cache->v(l, b, 0) : cache->k(l, b, 0)), Dkv};
    return {Matrix(ws.qkv.data() + b * T * Dqkv + Da + which * Dkv), Dqkv};
  }
  KeysValues keys_values(int64_t l, int64_t b, int which, int64_t kv_head) const {
    if (bf16_attention()) return {Matrix(ws.kv16.data() + (2 * b + which) * (past + T) * Dkv + kv_head * dh), Dkv};
    const KeysValues src = keys_values_f32(l, b, which);
    return {src.m.offset(kv_head * dh), src.ld};
  }

  void round_keys_values(int64_t l) {
    const int64_t keys = past + T;
    sized(ws.kv16, {2, B, keys, Dkv});
    parallel_for(
        2 * B * keys,
        [&](int64_t i0, int64_t i1, int) {
          for (int64_t i = i0; i < i1; ++i) {
            const int64_t row = i % keys, block = i / keys;  // block = 2 b + which
            const KeysValues src = keys_values_f32(l, block / 2, static_cast<int>(block % 2));
            kt.round_bf16(src.m.f32 + row * src.ld, ws.kv16.data() + i * Dkv, Dkv);
          }
        },
        16);
  }

  // S[r, j] for queries i0 + r (r < rows) and keys j < keys: scaled q·k, and
  // -inf where key j lies after the query (causal mask) or in its row's padding.
  void scores_block(int64_t l, int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t keys, float* S, int64_t lds,
                    int t) {
    const KeysValues K = keys_values(l, b, 0, h / (H / Hkv));
    const MatmulArgs args{
        rows, keys, dh,    ws.qkv.data() + (b * T + i0) * Dqkv + h * dh, Dqkv,    K.m.f32, 1, K.ld, nullptr,
        S,    lds,  false, thread_scratch(t, matmul_scratch_floats()),   K.m.bf16};
    kt.matmul_cols(args, first_key(b, keys), keys);  // no query reads keys before its row's first
    const float inv = score_scale(l);
    constexpr float kMasked = -std::numeric_limits<float>::infinity();
    for (int64_t r = 0; r < rows; ++r) {
      float* row = S + r * lds;
      const auto [first, last] = visible_keys(b, i0 + r);
      std::fill(row, row + first, kMasked);
      kt.scale(row + first, inv, last - first);
      std::fill(row + last, row + keys, kMasked);
    }
  }

  // z[i0 + r, head h] = sum_j P[r, j] v_j over keys first <= j < keys, P's
  // columns starting at key `first` (query head h reads key/value head h / (H / Hkv)).
  void weighted_sum_block(int64_t l, int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t first, int64_t keys,
                          const float* P, int64_t ldp, int t) {
    float* z = ws.z.data() + (b * T + i0) * Da + h * dh;
    if (first == keys) {  // queries before their row's first real token: no key, z = 0 (as TransformerLens)
      for (int64_t r = 0; r < rows; ++r) std::fill(z + r * Da, z + r * Da + dh, 0.f);
      return;
    }
    const KeysValues V = keys_values(l, b, 1, h / (H / Hkv));
    const Matrix Vm = V.m.offset(first * V.ld);
    const MatmulArgs args{rows,
                          dh,
                          keys - first,
                          P,
                          ldp,
                          Vm.f32,
                          V.ld,
                          1,
                          nullptr,
                          z,
                          Da,
                          false,
                          thread_scratch(t, matmul_scratch_floats()),
                          Vm.bf16};
    kt.matmul_cols(args, 0, dh);
  }

  int64_t query_blocks() const { return (T + kQueryBlock - 1) / kQueryBlock; }

  // Calls fn(b, h, i0, rows, t) for every query block, spread over threads.
  template <class F>
  void for_each_query_block(F fn) {
    const int64_t nb = query_blocks();
    parallel_for(B * H * nb, [&](int64_t i0, int64_t i1, int t) {
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t b = item / (H * nb), h = item / nb % H, q0 = item % nb * kQueryBlock;
        fn(b, h, q0, std::min(kQueryBlock, T - q0), t);
      }
    });
  }

  // The usual path: each block's scores live only in a per-thread buffer.
  void attend_fused(int64_t l) {
    // a tape keeps the pattern [batch, head, query, key] (no cache: past is 0), 0 where masked
    float* pattern = nullptr;
    if (LayerTape* lt = taping(l)) pattern = sized(lt->pattern, {B, H, T, T}), lt->causal = true;
    for_each_query_block([&](int64_t b, int64_t h, int64_t i0, int64_t rows, int t) {
      thread_local std::vector<float> buf;
      const int64_t keys = past + i0 + rows;  // later keys are masked for every row
      float* S = sized(buf, {rows, keys});
      scores_block(l, b, h, i0, rows, keys, S, keys, t);
      const int64_t first = first_key(b, keys);  // earlier keys are padding, masked for every row
      for (int64_t r = 0; r < rows; ++r) kt.softmax(S + r * keys + first, keys - first);
      weighted_sum_block(l, b, h, i0, rows, first, keys, S + first, keys, t);
      for (int64_t r = 0; pattern && r < rows; ++r) {  // S holds -inf before `first` (left padding)
        float* row = pattern + ((b * H + h) * T + i0 + r) * T;
        std::fill(row, row + first, 0.f);
        std::memcpy(row + first, S + r * keys + first, (keys - first) * sizeof(float));
        std::fill(row + keys, row + T, 0.f);
      }
    });
  }

  // One query per row against cached keys (decoding): every head at once,
  // position by position (a cached position's keys, or values, for all heads
  // are one contiguous row), blocks of kDecodeKeys positions spread over
  // threads. Per-head products read 64 floats of every 3 KiB row and read the
  // cache at a third of the memory's rate (GPT-2 small, Zen 3). Scores are
  // summed as the per-head path sums them; each block's share of z is summed
  // in position order and the blocks in block order, whatever the threads.
  static constexpr int64_t kDecodeKeys = 64;
  // A decoding step of layer l: one new position against the cache, nothing taped.
  bool decoding(int64_t l) const { return cache && T == 1 && !taping(l); }
  // The keys [first, last) that lie in block `block` of kDecodeKeys positions.
  static std::pair<int64_t, int64_t> block_keys(std::pair<int64_t, int64_t> keys, int64_t block) {
    return {std::max(keys.first, block * kDecodeKeys), std::min(keys.second, (block + 1) * kDecodeKeys)};
  }
  void attend_decode(int64_t l) {
    const int64_t keys = past + 1, blocks = (keys + kDecodeKeys - 1) / kDecodeKeys, group = H / Hkv;
    const float inv = score_scale(l);
    float* S = sized(ws.scores, {B, H, keys});
    parallel_for(B * blocks, [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / blocks;
        const float* q = ws.qkv.data() + b * Dqkv;
        const auto [p0, p1] = block_keys(visible_keys(b, 0), i % blocks);
        for (int64_t p = p0; p < p1; ++p) {
          const float* k = cache->k(l, b, p);
          for (int64_t h = 0; h < H; ++h) S[(b * H + h) * keys + p] = kt.dot(q + h * dh, k + h / group * dh, dh) * inv;
        }
      }
    });
    parallel_for(B * H, [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; ++i) {
        const auto [first, last] = visible_keys(i / H, 0);
        kt.softmax(S + i * keys + first, last - first);
      }
    });
    decode_weighted_sum(l, S, [&](int64_t b) { return visible_keys(b, 0); });
  }

  // z of a decoding step from its pattern P [B, H, past + 1], over the keys
  // [first, last) = range(b) of row b: each block of kDecodeKeys positions
  // sums its share in position order, then the blocks are added in block
  // order, whatever the threads. A step whose pattern a hook reads takes this
  // way too, so reading it changes no bit.
  template <class Range>
  void decode_weighted_sum(int64_t l, const float* P, Range range) {
    const int64_t keys = past + 1, blocks = (keys + kDecodeKeys - 1) / kDecodeKeys, group = H / Hkv;
    float* parts = sized(ws.z_blocks, {B, blocks, Da});
    parallel_for(B * blocks, [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / blocks;
        float* part = parts + i * Da;
        std::fill(part, part + Da, 0.f);
        const auto [p0, p1] = block_keys(range(b), i % blocks);
        for (int64_t p = p0; p < p1; ++p) {
          const float* v = cache->v(l, b, p);
          for (int64_t h = 0; h < H; ++h) kt.axpy(part + h * dh, P[(b * H + h) * keys + p], v + h / group * dh, dh);
        }
      }
    });
    for (int64_t b = 0; b < B; ++b) {  // no visible key (a row's padding): z = 0, as TransformerLens
      float* z = ws.z.data() + b * Da;
      std::copy(parts + b * blocks * Da, parts + (b * blocks + 1) * Da, z);
      for (int64_t block = 1; block < blocks; ++block) kt.add(z, z, parts + (b * blocks + block) * Da, Da);
    }
  }

  // Materializes scores and pattern [batch, head, query, key] so hooks can
  // read and edit them, as TransformerLens does (masked scores are -inf).
  void attend_phased(int64_t l) {
    const int64_t keys = past + T;
    float* S = sized(ws.scores, {B, H, T, keys});
    auto rows_at = [&](int64_t b, int64_t h, int64_t i0) { return S + ((b * H + h) * T + i0) * keys; };
    // Unless a hook edits them, masked scores stay -inf and their pattern
    // entries 0: each query block's matmuls then stop at its last visible key.
    const bool causal = reads_only(HookKind::attn_scores, l) && reads_only(HookKind::pattern, l);
    auto keys_for = [&](int64_t i0, int64_t rows) { return causal ? past + i0 + rows : keys; };
    for_each_query_block([&](int64_t b, int64_t h, int64_t i0, int64_t rows, int t) {
      float* block = rows_at(b, h, i0);
      const int64_t used = keys_for(i0, rows);
      scores_block(l, b, h, i0, rows, used, block, keys, t);
      for (int64_t r = 0; r < rows; ++r)
        std::fill(block + r * keys + used, block + (r + 1) * keys, -std::numeric_limits<float>::infinity());
    });
    hook(HookKind::attn_scores, l, scores(S, keys));
    parallel_for(B * H * T, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; ++r) kt.softmax(S + r * keys, keys);
    });
    if (LayerTape* lt = taping(l); lt && !reads_only(HookKind::pattern, l))  // the softmax's own derivative reads it
      Tape::keep(lt->softmax, S, B * H * T * keys);
    hook(HookKind::pattern, l, scores(S, keys));
    if (LayerTape* lt = taping(l)) Tape::keep(lt->pattern, S, B * H * T * keys), lt->causal = causal;
    if (decoding(l)) {  // as attend_decode sums it
      decode_weighted_sum(l, S, [&](int64_t b) {
        return causal ? std::pair<int64_t, int64_t>{first_key(b, keys), keys} : std::pair<int64_t, int64_t>{0, keys};
      });
      return;
    }
    for_each_query_block([&](int64_t b, int64_t h, int64_t i0, int64_t rows, int t) {
      const int64_t used = keys_for(i0, rows), first = causal ? first_key(b, used) : 0;
      weighted_sum_block(l, b, h, i0, rows, first, used, rows_at(b, h, i0) + first, keys, t);
    });
  }

  // cos and sin of every (position, frequency) of this call (rotary_tables)
  void rope_tables() {
    const int64_t half = cfg.rotary_dim / 2, n = rotary_rows(row_start, B, T);
    float* c = sized(ws.rope, {2, n, half});
    rotary_tables(w.rope_inv_freq, half, B, T, past, row_start, row_end, 1.f, c, c + n * half);
  }

  // Rotates every query and key head of a q|k|v buffer by its position.
  void rotate(float* qkv) {
    const int64_t half = cfg.rotary_dim / 2;
    const float* cos = ws.rope.data();
    rotate_heads(qkv, B, T, Dqkv, H + Hkv, dh, half, row_start, cos, cos + rotary_rows(row_start, B, T) * half);
  }

  // A plan in a per-head mode (AttentionInput) with a hook that could see the difference at layer l:
  // attn_in, q/k/v_input or ln1's. Otherwise the shared input gives the same values, faster.
  bool per_head_inputs(int64_t l) const {
    if (!plan || plan->attention_input() == AttentionInput::shared) return false;
    for (HookKind k : {HookKind::attn_in, HookKind::q_input, HookKind::k_input, HookKind::v_input, HookKind::ln1_scale,
                       HookKind::ln1_normalized})
      if (active(k, l)) return true;
    return false;
  }

  // q|k|v rows as TransformerLens computes them in a per-head mode: resid_pre x copied per head
  // (once for all of q, k and v, hook_attn_in, or once each, hook_q/k/v_input), each copy
  // normalized by ln1 and projected by its own head's columns of W_Q, W_K or W_V.
  void per_head_qkv(int64_t l, const float* x) {
    const LayerWeights& lw = w.layers[l];
    const bool split = plan->attention_input() == AttentionInput::split_qkv;
    if (!split && Hkv != H)
      throw std::invalid_argument("hook_attn_in needs one key/value head per query head: use split_qkv_input");
    const int64_t n[3] = {H, Hkv, Hkv};  // heads of the q, k and v inputs
    float* in[3];
    in[0] = sized(ws.inputs, {BT, H + 2 * Hkv, D});
    in[1] = in[0] + BT * H * D;
    in[2] = in[1] + BT * Hkv * D;
    const HookKind kinds[3] = {HookKind::q_input, HookKind::k_input, HookKind::v_input};
    for (int i = 0; i < (split ? 3 : 1); ++i) {
      parallel_for(BT, [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t h = 0; h < n[i]; ++h) std::memcpy(in[i] + (r * n[i] + h) * D, x + r * D, D * sizeof(float));
      });
      hook(split ? kinds[i] : HookKind::attn_in, l, heads(in[i], n[i] * D, D, n[i]));
    }
    if (!split) {  // q, k and v each normalize their own copy of the hooked input
      std::memcpy(in[1], in[0], static_cast<size_t>(BT * H * D) * sizeof(float));
      std::memcpy(in[2], in[0], static_cast<size_t>(BT * H * D) * sizeof(float));
    }
    for (int i = 0; i < 3; ++i)
      layer_norm(in[i], lw.ln1_w, lw.ln1_b, in[i], HookKind::ln1_scale, HookKind::ln1_normalized, l, n[i]);
    const bool in_out = cfg.layout == WeightLayout::in_out;
    for (int i = 0; i < 3; ++i)
      for (int64_t h = 0; h < n[i]; ++h) {
        const int64_t col = (i == 0 ? 0 : Da + (i - 1) * Dkv) + h * dh;  // the head's first column of q|k|v
        linear(in[i] + h * D, BT, D, n[i] * D, lw.qkv_w.offset(col * (in_out ? 1 : D)), in_out ? Dqkv : D, dh,
               lw.qkv_b ? lw.qkv_b + col : nullptr, ws.qkv.data() + col, Dqkv);
      }
  }

  // per_head: the q|k|v rows are made already (per_head_qkv).
  void attention(int64_t l, bool per_head = false) {
    const LayerWeights& lw = w.layers[l];
    float* qkv = ws.qkv.data();
    if (!per_head)
      linear(ws.h.data(), BT, D, D, lw.qkv_w, cfg.layout == WeightLayout::in_out ? Dqkv : D, Dqkv, lw.qkv_b, qkv, Dqkv);
    hook(HookKind::q, l, heads(qkv, Dqkv, dh, H));
    hook(HookKind::k, l, heads(qkv + Da, Dqkv, dh, Hkv));
    hook(HookKind::v, l, heads(qkv + Da + Dkv, Dqkv, dh, Hkv));
    if (cfg.positions == Positions::rotary) {
      rotate(qkv);
      hook(HookKind::rot_q, l, heads(qkv, Dqkv, dh, H));
      hook(HookKind::rot_k, l, heads(qkv + Da, Dqkv, dh, Hkv));
    }
    if (LayerTape* lt = taping(l)) Tape::keep(lt->qkv, qkv, BT * Dqkv);
    for (int64_t b = 0; cache && b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        const float* src = qkv + (b * T + t) * Dqkv;
        std::memcpy(cache->k(l, b, past + t), src + Da, Dkv * sizeof(float));
        std::memcpy(cache->v(l, b, past + t), src + Da + Dkv, Dkv * sizeof(float));
      }
    if (bf16_attention()) round_keys_values(l);
    if (active(HookKind::attn_scores, l) || active(HookKind::pattern, l))
      attend_phased(l);
    else if (decoding(l))
      attend_decode(l);
    else
      attend_fused(l);
    float* z = ws.z.data();
    hook(HookKind::z, l, heads(z, Da, dh, H));

    float* out = ws.attn_out.data();
    if (active(HookKind::result, l)) {
      // Each head's own output z_h · W_O[h], [batch, pos, head, d_model], summed afterwards.
      float* res = sized(ws.result, {BT, H, D});
      const bool in_out = cfg.layout == WeightLayout::in_out;
      for (int64_t h = 0; h < H; ++h)
        linear(z + h * dh, BT, dh, Da, lw.out_w.offset(h * dh * (in_out ? D : 1)), in_out ? D : Da, D, nullptr,
               res + h * D, H * D);
      hook(HookKind::result, l, heads(res, H * D, D, H));
      for (int64_t r = 0; r < BT; ++r) {
        if (lw.out_b)
          std::memcpy(out + r * D, lw.out_b, D * sizeof(float));
        else
          std::fill(out + r * D, out + (r + 1) * D, 0.f);
        for (int64_t h = 0; h < H; ++h) kt.add(out + r * D, out + r * D, res + (r * H + h) * D, D);
      }
    } else {
      linear(z, BT, Da, Da, lw.out_w, cfg.layout == WeightLayout::in_out ? D : Da, D, lw.out_b, out, D);
    }
    hook(HookKind::attn_out, l, rows(out, D));
  }

  void activation(float* x, int64_t n) {
    switch (cfg.act_fn) {
      case Activation::gelu_new: gelu_new_rows(x, n); return;
      case Activation::gelu:
        for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.f + std::erf(x[i] * 0.70710678118654752f));
        return;
      case Activation::relu:
        for (int64_t i = 0; i < n; ++i) x[i] = x[i] > 0.f ? x[i] : 0.f;
        return;
      case Activation::silu:
        for (int64_t i = 0; i < n; ++i) x[i] = x[i] / (1.f + std::exp(-x[i]));
        return;
    }
  }

  // act(h W_gate) * (h W_in) into m, with TransformerLens's hook_pre (the gate)
  // and hook_pre_linear (the up projection) on the way.
  void gated_mlp(int64_t l, const float* h, float* m) {
    const LayerWeights& lw = w.layers[l];
    const int64_t F = cfg.d_mlp, ldw = cfg.layout == WeightLayout::in_out ? F : D;
    float* up = sized(ws.up, {BT, F});
    linear(h, BT, D, D, lw.gate_w, ldw, F, lw.gate_b, m, F);
    linear(h, BT, D, D, lw.fc_w, ldw, F, lw.fc_b, up, F);
    hook(HookKind::mlp_pre, l, rows(m, F));
    hook(HookKind::mlp_pre_linear, l, rows(up, F));
    if (LayerTape* lt = taping(l)) Tape::keep(lt->pre, m, BT * F), Tape::keep(lt->up, up, BT * F);
    if (cfg.act_fn == Activation::silu) {
      parallel_for(BT * F, [&](int64_t i0, int64_t i1, int) { kt.silu_mul(m + i0, up + i0, m + i0, i1 - i0); }, 4096);
      return;
    }
    activation(m, BT * F);
    for (int64_t i = 0; i < BT * F; ++i) m[i] *= up[i];
  }

  void block(int64_t l) {
    const LayerWeights& lw = w.layers[l];
    float* x = ws.x.data();
    float* h = ws.h.data();
    hook(HookKind::resid_pre, l, rows(x, D));
    LayerTape* lt = taping(l);
    if (lt) Tape::keep(lt->resid_pre, x, BT * D);
    const bool per_head = per_head_inputs(l);
    if (per_head)
      per_head_qkv(l, x);
    else
      layer_norm(x, lw.ln1_w, lw.ln1_b, h, HookKind::ln1_scale, HookKind::ln1_normalized, l);
    attention(l, per_head);
    float* out = ws.attn_out.data();
    add_inplace(x, out, BT * D);
    hook(HookKind::resid_mid, l, rows(x, D));
    if (lt) Tape::keep(lt->resid_mid, x, BT * D);
    const float* mlp_in = x;
    if (active(HookKind::mlp_in, l)) {  // a copy, as in TransformerLens: edits reach the MLP, not the residual
      float* copy = sized(ws.inputs, {BT, D});
      std::memcpy(copy, x, static_cast<size_t>(BT * D) * sizeof(float));
      hook(HookKind::mlp_in, l, rows(copy, D));
      mlp_in = copy;
    }
    layer_norm(mlp_in, lw.ln2_w, lw.ln2_b, h, HookKind::ln2_scale, HookKind::ln2_normalized, l);
    const int64_t F = cfg.d_mlp;
    const bool in_out = cfg.layout == WeightLayout::in_out;
    float* m = ws.mlp.data();
    if (cfg.gated_mlp) {
      gated_mlp(l, h, m);
    } else {
      linear(h, BT, D, D, lw.fc_w, in_out ? F : D, F, lw.fc_b, m, F);
      hook(HookKind::mlp_pre, l, rows(m, F));
      if (lt) Tape::keep(lt->pre, m, BT * F);
      activation(m, BT * F);
    }
    hook(HookKind::mlp_post, l, rows(m, F));
    linear(m, BT, F, F, lw.proj_w, in_out ? D : F, D, lw.proj_b, out, D);
    hook(HookKind::mlp_out, l, rows(out, D));
    add_inplace(x, out, BT * D);
    hook(HookKind::resid_post, l, rows(x, D));
  }

  void unembed(LogitsMode mode, float* logits) {
    const int64_t V = cfg.d_vocab;
    float* x = ws.x.data();
    float* h = ws.h.data();
    if (tape) Tape::keep(tape->final_resid, x, BT * D);
    const bool out_hooked = active(HookKind::unembed_out);
    const bool ln_hooked = active(HookKind::ln_final_scale) || active(HookKind::ln_final_normalized) ||
                           active(HookKind::unembed_in) || out_hooked;
    // ln_final's and unembed's hooks run even when no logits are wanted
    if (mode == LogitsMode::all || ln_hooked) {
      layer_norm(x, w.lnf_w, w.lnf_b, h, HookKind::ln_final_scale, HookKind::ln_final_normalized, 0);
      hook(HookKind::unembed_in, 0, rows(h, D));
    }
    if (out_hooked) {  // unembed.hook_out sees every position's logits, whatever the caller keeps
      float* all = mode == LogitsMode::all ? logits : sized(ws.logits, {BT, V});
      matmul(h, BT, D, D, w.unembed, V, 1, D, w.unembed_b, all, V, false, tape != nullptr);
      hook(HookKind::unembed_out, 0, rows(all, V));
      if (mode == LogitsMode::last)
        for (int64_t b = 0; b < B; ++b) std::memcpy(logits + b * V, all + (b * T + T - 1) * V, V * sizeof(float));
      return;
    }
    if (mode == LogitsMode::none) return;
    if (mode == LogitsMode::all) {
      matmul(h, BT, D, D, w.unembed, V, 1, D, w.unembed_b, logits, V, false, tape != nullptr);
      return;
    }
    // Only the last position of each sequence: normalize and project B rows.
    float* last = sized(ws.last, {B, D});
    for (int64_t b = 0; b < B; ++b) {
      const float* src = (ln_hooked ? h : x) + (b * T + T - 1) * D;
      std::memcpy(last + b * D, src, D * sizeof(float));
    }
    if (!ln_hooked) norm_rows(last, B, w.lnf_w, w.lnf_b, last);
    matmul(last, B, D, D, w.unembed, V, 1, D, w.unembed_b, logits, V, false, tape != nullptr);
  }
};

void check_weights(const ModelConfig& cfg, const ModelWeights& w) {
  auto need = [](auto p, const std::string& what) {
    if (!p) throw std::invalid_argument("missing weight: " + what);
  };
  const bool layer_norm = cfg.normalization == Normalization::layer_norm;
  need(w.wte, "wte");
  if (cfg.positions == Positions::learned) need(w.wpe, "wpe");
  if (cfg.positions == Positions::rotary) need(w.rope_inv_freq, "rotary inverse frequencies");
  need(w.lnf_w, "ln_f.weight");
  if (layer_norm) need(w.lnf_b, "ln_f.bias");
  need(w.unembed, "unembedding");
  if (cfg.has_unembed_bias) need(w.unembed_b, "unembedding bias");
  if (static_cast<int64_t>(w.layers.size()) != cfg.n_layers)
    throw std::invalid_argument("expected " + std::to_string(cfg.n_layers) + " layers of weights, got " +
                                std::to_string(w.layers.size()));
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& lw = w.layers[l];
    const std::string at = " of layer " + std::to_string(l);
    // linear biases are optional (Llama has none)
    need(lw.ln1_w, "ln_1.weight" + at);
    need(lw.ln2_w, "ln_2.weight" + at);
    for (auto [m, name] : {std::pair<Matrix, const char*>{lw.qkv_w, "attention q|k|v weight"},
                           {lw.out_w, "attention output weight"},
                           {lw.fc_w, "mlp input weight"},
                           {lw.proj_w, "mlp output weight"}})
      need(m, std::string(name) + at);
    if (layer_norm) {
      need(lw.ln1_b, "ln_1.bias" + at);
      need(lw.ln2_b, "ln_2.bias" + at);
    }
    if (cfg.gated_mlp) need(lw.gate_w, "mlp gate weight" + at);
  }
}

}  // namespace

void set_interrupt_check(void (*check)()) { g_interrupt_check = check; }
void interrupt_point() { check_interrupt(); }

LogitsMode parse_logits_mode(const std::string& name) {
  if (name == "all") return LogitsMode::all;
  if (name == "last") return LogitsMode::last;
  if (name == "none") return LogitsMode::none;
  throw std::invalid_argument("logits must be 'all', 'last' or 'none'");
}

namespace {
uint64_t next_model_id() {
  static std::atomic<uint64_t> last{0};
  return ++last;
}
}  // namespace

Model::Model(ModelConfig cfg, ModelWeights weights) : cfg_(cfg), w_(std::move(weights)), id_(next_model_id()) {
  cfg_.validate();
  hook_count(cfg_.n_layers);  // hook ids fit an int
  check_weights(cfg_, w_);
}

KVCache Model::new_cache(int64_t batch) const {
  KVCache cache(cfg_.n_layers, batch, cfg_.d_kv(), cfg_.n_ctx);
  cache.set_owner(id_);
  return cache;
}

bool Model::has_hook(HookKind kind) const {
  switch (kind) {
    case HookKind::pos_embed: return cfg_.positions == Positions::learned;
    case HookKind::rot_q:
    case HookKind::rot_k: return cfg_.positions == Positions::rotary;
    case HookKind::mlp_pre_linear: return cfg_.gated_mlp;
    default: return true;
  }
}

std::vector<int> Model::hook_ids() const {
  std::vector<int> ids;
  const int first = kFirstLayerKind, last = first + kLayerKinds;
  for (int k = 0; k < first; ++k)
    if (has_hook(static_cast<HookKind>(k))) ids.push_back(hook_id(static_cast<HookKind>(k), 0, cfg_.n_layers));
  for (int64_t l = 0; l < cfg_.n_layers; ++l)
    for (int k = first; k < last; ++k)
      if (has_hook(static_cast<HookKind>(k))) ids.push_back(hook_id(static_cast<HookKind>(k), l, cfg_.n_layers));
  for (int k = kFirstFinalKind; k < kHookKinds; ++k) ids.push_back(hook_id(static_cast<HookKind>(k), 0, cfg_.n_layers));
  return ids;
}

namespace {

// The blocks this call runs, [start, stop), checked against the model.
BlockSpan resolve_span(BlockSpan span, int64_t n_layers, bool cached, const int32_t* tokens) {
  if (span.stop < 0) span.stop = n_layers;
  if (span.start < 0 || span.start > n_layers || span.stop < span.start || span.stop > n_layers)
    throw std::invalid_argument("blocks [" + std::to_string(span.start) + ", " + std::to_string(span.stop) +
                                ") are not a range of this model's " + std::to_string(n_layers) + " layers");
  if (span.start > 0 && !span.resid_in)
    throw std::invalid_argument("a forward starting after block 0 needs the residual before its first block");
  if (span.stop < n_layers && !span.resid_out)
    throw std::invalid_argument("a forward stopping before the last block returns the residual: give resid_out");
  if (cached && (span.resid_in || span.resid_out))
    throw std::invalid_argument("a forward over some of the blocks cannot use a KV cache");
  if (!tokens && !span.resid_in) throw std::invalid_argument("a forward from the embeddings needs tokens");
  return span;
}

// Each row's real tokens [start, end), absolute positions, from this call's
// padding and the left padding the cache holds (see Padding); both empty when
// no row is padded, end empty when none is padded on the right.
struct RowBounds {
  std::vector<int64_t> start, end;
};

RowBounds row_bounds(const Padding& padding, const KVCache* cache, int64_t B, int64_t T, int64_t past) {
  RowBounds rows;
  const bool held = cache && cache->padded();
  if (!padding.left && !padding.right && !held) return rows;
  bool any_left = held, any_right = false;
  auto row = [](int64_t b) { return "row " + std::to_string(b); };
  for (int64_t b = 0; b < B; ++b) {
    const int64_t left = padding.left ? padding.left[b] : 0, right = padding.right ? padding.right[b] : 0;
    if (left < 0 || right < 0) throw std::invalid_argument(row(b) + ": padding counts are >= 0");
    if (left >= T || right >= T - left)
      throw std::invalid_argument(row(b) + " is all padding (" + std::to_string(left) + " left, " +
                                  std::to_string(right) + " right of " + std::to_string(T) +
                                  " tokens): every row needs a real token");
    if (cache && right > 0)
      throw CacheMismatch(row(b) +
                          " is padded on the right: a KV cache takes left padding only (a later call would "
                          "leave a gap)");
    if (cache && left > 0 && cache->left_padding(b) < past)
      throw CacheMismatch(row(b) + " is padded on the left, but the KV cache holds real tokens of it already");
    any_left = any_left || left > 0;
    any_right = any_right || right > 0;
  }
  if (!any_left && !any_right) return rows;
  rows.start.resize(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t left = padding.left ? padding.left[b] : 0;
    rows.start[b] = left > 0 ? past + left : cache ? cache->left_padding(b) : 0;
  }
  if (any_right) {
    rows.end.resize(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) rows.end[b] = past + T - padding.right[b];
  }
  return rows;
}

}  // namespace

void Model::forward(KVCache* cache, const int32_t* tokens, int64_t batch, int64_t n_tokens, HookPlan* plan,
                    LogitsMode mode, float* logits, BlockSpan span, Padding padding, Tape* tape) {
  if (batch <= 0 || n_tokens <= 0) throw std::invalid_argument("forward needs at least one token");
  const int64_t BT = checked_size({batch, n_tokens}, "a forward pass's batch x positions");
  span = resolve_span(span, cfg_.n_layers, cache != nullptr, tokens);
  if (cache && batch != cache->batch())
    throw CacheMismatch("tokens have batch " + std::to_string(batch) + " but the cache holds " +
                        std::to_string(cache->batch()));
  if (cache && ((cache->owner() && cache->owner() != id_) || cache->n_layers() != cfg_.n_layers ||
                cache->d_kv() != cfg_.d_kv() || cache->n_ctx() != cfg_.n_ctx))
    throw CacheMismatch("this KV cache was made for another model (use this model's new_cache)");
  if (plan && plan->n_layers() != cfg_.n_layers)
    throw std::invalid_argument("this hook plan was made for another model");
  for (int64_t i = 0; tokens && i < BT; ++i)
    if (tokens[i] < 0 || tokens[i] >= cfg_.d_vocab)
      throw std::out_of_range("token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                              " is outside the vocabulary [0, " + std::to_string(cfg_.d_vocab) + ")");
  // One pass at a time on a model, and on a cache (two models may share one);
  // the cache's length is read once both are held.
  OwnedLock model_lock(mutex_, kModelReentry);
  std::optional<OwnedLock> cache_lock;
  if (cache) cache_lock.emplace(cache->mutex(), KVCache::kInUse);
  const int64_t past = cache ? cache->n_past() : 0;
  check_fits_context(past + n_tokens, cfg_.n_ctx);
  const RowBounds bounds = row_bounds(padding, cache, batch, n_tokens, past);
  if (tape) {
    start_tape(*tape, plan, cache != nullptr, span, mode, batch, n_tokens);
    tape->row_start = bounds.start, tape->row_end = bounds.end;
  }
  if (cache) cache->make_room(past + n_tokens);

  const int64_t D = cfg_.d_model, Da = cfg_.d_attn();
  sized(ws_.x, {BT, D});
  sized(ws_.pos, {BT, D});
  sized(ws_.h, {BT, D});
  sized(ws_.qkv, {BT, cfg_.d_qkv()});
  sized(ws_.z, {BT, Da});
  sized(ws_.attn_out, {BT, D});
  sized(ws_.mlp, {BT, cfg_.d_mlp});

  Pass pass{cfg_, w_, cache, plan,         ws_,         kernels::active(), batch,       n_tokens,    past,
            BT,   D,  Da,    cfg_.n_heads, cfg_.d_head, cfg_.kv_heads(),   cfg_.d_kv(), cfg_.d_qkv()};
  if (!bounds.start.empty()) pass.row_start = bounds.start.data();
  if (!bounds.end.empty()) pass.row_end = bounds.end.data();
  // With no logits wanted and nothing kept, blocks after the last hooked one change nothing visible.
  if (!cache && mode == LogitsMode::none && !span.resid_out)
    span.stop = std::max(span.start, plan ? plan->blocks_reached() : 0);
  pass.tape = tape;
  if (cfg_.positions == Positions::rotary) pass.rope_tables();
  if (!span.resid_in)
    pass.embed(tokens);
  else
    std::memcpy(ws_.x.data(), span.resid_in, static_cast<size_t>(BT * D) * sizeof(float));
  for (int64_t l = span.start; l < span.stop; ++l) {
    check_interrupt();
    pass.block(l);
  }
  check_interrupt();
  if (span.resid_out)
    std::memcpy(span.resid_out, ws_.x.data(), static_cast<size_t>(BT * D) * sizeof(float));
  else if (span.stop == cfg_.n_layers)
    pass.unembed(mode, logits);
  if (cache && !bounds.start.empty()) cache->set_left_padding(bounds.start);
  if (cache) cache->advance(n_tokens);
  if (tape) tape->model = id_;  // complete: a backward may read it
}

void rotary_tables(const float* inv_freq, int64_t half, int64_t B, int64_t T, int64_t past, const int64_t* start,
                   const int64_t* end, float sign, float* cos, float* sin) {
  for (int64_t r = 0; r < rotary_rows(start, B, T); ++r)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(padded_position(start, end, past, r / T, r % T)) * inv_freq[i];
      cos[r * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin[r * half + i] = sign * static_cast<float>(std::sin(static_cast<double>(angle)));
    }
}

void rotate_heads(float* qkv, int64_t B, int64_t T, int64_t row_stride, int64_t heads, int64_t d_head, int64_t half,
                  const int64_t* start, const float* cos, const float* sin) {
  const KernelTable& kt = kernels::active();
  parallel_for(
      B * T * heads,
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t r = i / heads, t = start ? r : r % T;
          kt.rope(qkv + r * row_stride + i % heads * d_head, cos + t * half, sin + t * half, half);
        }
      },
      64);  // a decode step's few heads stay on one thread
}

}  // namespace tmech
