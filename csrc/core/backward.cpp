#include "core/backward.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/forward.hpp"
#include "kernels/kernels.hpp"
#include "ops/matmul.hpp"
#include "runtime/checked.hpp"
#include "runtime/threads.hpp"

namespace tmech {
namespace {

// v grown to at least the product of dims floats.
float* grown(std::vector<float>& v, std::initializer_list<int64_t> dims) {
  const int64_t n = checked_size(dims, "a backward pass's buffer");
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// act(x) and act'(x) of the MLP's activation
void activation_and_slope(Activation act, float x, float* a, float* da) {
  switch (act) {
    case Activation::gelu_new: {
      const float c = 0.7978845608028654f, k = 0.044715f;
      const float t = std::tanh(c * (x + k * x * x * x));
      *a = 0.5f * x * (1.f + t);
      *da = 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * c * (1.f + 3.f * k * x * x);
      return;
    }
    case Activation::gelu: {
      const float cdf = 0.5f * (1.f + std::erf(x * 0.70710678118654752f));
      *a = x * cdf;
      *da = cdf + x * 0.3989422804014327f * std::exp(-0.5f * x * x);
      return;
    }
    case Activation::relu:
      *a = x > 0.f ? x : 0.f;
      *da = x > 0.f ? 1.f : 0.f;
      return;
    case Activation::silu: {
      const float s = 1.f / (1.f + std::exp(-x));
      *a = x * s;
      *da = s * (1.f + x * (1.f - s));
      return;
    }
  }
}

// act and act' of n pre-activations x into a and da; gelu_new and SiLU through the SIMD
// exp kernel (tanh(u) = (1 - e) / (1 + e) with e = exp(-2|u|)), the others elementwise.
void activation_slopes(const KernelTable& kt, Activation act, const float* x, int64_t n, float* a, float* da) {
  if (act == Activation::gelu_new) {
    const float c = 0.7978845608028654f, k = 0.044715f;
    for (int64_t i = 0; i < n; ++i) da[i] = -2.f * std::abs(c * (x[i] + k * x[i] * x[i] * x[i]));
    kt.exp(da, da, n);
    for (int64_t i = 0; i < n; ++i) {
      const float xi = x[i], t = std::copysign((1.f - da[i]) / (1.f + da[i]), xi);  // u has x's sign
      a[i] = 0.5f * xi * (1.f + t);
      da[i] = 0.5f * (1.f + t) + 0.5f * xi * (1.f - t * t) * c * (1.f + 3.f * k * xi * xi);
    }
    return;
  }
  if (act == Activation::silu) {
    for (int64_t i = 0; i < n; ++i) da[i] = -x[i];
    kt.exp(da, da, n);
    for (int64_t i = 0; i < n; ++i) {
      const float s = 1.f / (1.f + da[i]);  // exp overflowing to inf gives s = 0, as it should
      a[i] = x[i] * s;
      da[i] = s * (1.f + x[i] * (1.f - s));
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) activation_and_slope(act, x[i], a + i, da + i);
}

// One backward call: the tape, the plan, and a buffer per gradient.
struct Backprop {
  const ModelConfig& cfg;
  const ModelWeights& w;
  const Tape& tape;
  HookPlan* plan;
  BackwardOptions opt;
  const KernelTable& kt;
  int64_t B, T, BT, D, Da, H, dh, Hkv, Dkv, Dqkv, F;
  bool in_out;
  // g: the residual stream's gradient, carried down the blocks; branch: a copy
  // for the attention or MLP path (a hook on hook_attn_out rewrites that path only)
  std::vector<float> g, branch, dnorm_in, dnorm, dscale, stats, dqkv, dz, dres, dP, dmlp, dup, dlogits, rope;

  bool active(HookKind kind, int64_t layer = 0) const {
    return plan && plan->active(hook_id(kind, layer, cfg.n_layers));
  }
  void hook(HookKind kind, int64_t layer, const View& v) {
    if (active(kind, layer)) plan->apply(hook_id(kind, layer, cfg.n_layers), v);
  }
  // the forward's layouts (core/hooks.hpp); a backward starts at position 0
  View rows(float* data, int64_t width) const { return rows_view(data, B, T, width, 0); }
  View heads(float* data, int64_t row_stride, int64_t d, int64_t n_heads) const {
    return heads_view(data, B, T, row_stride, d, n_heads, 0);
  }
  View scores(float* data) const { return scores_view(data, B, T, H, T, 0); }  // [batch, head, query, key]

  // C[M, N] (+)= A[M, K] · W^T: back through a linear map W from N inputs to
  // K outputs, stored in the config's layout with rows ldw floats long. Every
  // matmul here gives the same bits for any thread count.
  void linear_t(const float* A, int64_t M, int64_t K, int64_t lda, Matrix W, int64_t ldw, int64_t N, float* C,
                int64_t ldc, bool accumulate = false) const {
    if (in_out)
      matmul(A, M, K, lda, W, N, 1, ldw, nullptr, C, ldc, accumulate, true);
    else
      matmul(A, M, K, lda, W, N, ldw, 1, nullptr, C, ldc, accumulate, true);
  }

  // The forward's statistics of a norm's input row: mean (0 for RMSNorm) and scale.
  void row_stats(const float* x, float* mean, float* scale) const {
    if (cfg.normalization == Normalization::rms_norm) {
      *mean = 0.f;
      *scale = std::sqrt(kt.dot(x, x, D) / static_cast<float>(D) + cfg.ln_eps);
    } else {
      kt.row_stats(x, D, cfg.ln_eps, mean, scale);
    }
  }

  // Back through out = (x - mean) / scale * lw (+ b), TransformerLens's steps:
  // dout [BT, D] -> hook_normalized's gradient -> hook_scale's -> x's, added to g.
  void norm_backward(const float* x, const float* lw, const float* dout, HookKind scale_kind, HookKind norm_kind,
                     int64_t layer) {
    float* dn = grown(dnorm, {BT, D});
    float* mean = grown(stats, {2, BT});
    float* scale = mean + BT;
    float* ds = grown(dscale, {BT});
    parallel_for(BT, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t i = 0; i < D; ++i) dn[r * D + i] = dout[r * D + i] * lw[i];
    });
    hook(norm_kind, layer, rows(dn, D));
    // d scale = -sum_i dn_i (x_i - mean) / scale^2
    parallel_for(BT, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; ++r) {
        row_stats(x + r * D, mean + r, scale + r);
        double s = 0.0;
        for (int64_t i = 0; i < D; ++i) s += static_cast<double>(dn[r * D + i]) * (x[r * D + i] - mean[r]);
        ds[r] = static_cast<float>(-s / (static_cast<double>(scale[r]) * scale[r]));
      }
    });
    hook(scale_kind, layer, rows(ds, 1));
    const bool centered = cfg.normalization == Normalization::layer_norm;
    float* gg = g.data();
    parallel_for(BT, [&](int64_t r0, int64_t r1, int) {
      thread_local std::vector<float> buf;
      float* d = grown(buf, {D});
      for (int64_t r = r0; r < r1; ++r) {
        // scale = sqrt(mean((x - mean)^2) + eps): d scale / d x_i = (x_i - mean) / (D scale)
        const float inv = 1.f / scale[r];
        const float c = opt.freeze_scales ? 0.f : ds[r] * inv / static_cast<float>(D);
        double sum = 0.0;
        for (int64_t i = 0; i < D; ++i) {
          d[i] = dn[r * D + i] * inv + c * (x[r * D + i] - mean[r]);
          sum += d[i];
        }
        const float m = centered ? static_cast<float>(sum / static_cast<double>(D)) : 0.f;
        for (int64_t i = 0; i < D; ++i) gg[r * D + i] += d[i] - m;
      }
    });
  }

  // The MLP from its output's gradient br [BT, D] to its input's, into dnorm_in.
  void mlp_backward(int64_t l, const LayerTape& lt, const float* br) {
    const LayerWeights& lw = w.layers[l];
    const int64_t ldw = in_out ? F : D;
    float* dpost = grown(dmlp, {BT, F});
    float* dh = grown(dnorm_in, {BT, D});
    linear_t(br, BT, D, D, lw.proj_w, in_out ? D : F, F, dpost, F);
    hook(HookKind::mlp_post, l, rows(dpost, F));
    const float* pre = lt.pre.data();
    const bool gated = cfg.gated_mlp;
    float* du = gated ? grown(dup, {BT, F}) : nullptr;
    const float* up = lt.up.data();
    // gated: d gate = d post * up * act'(gate), d up = d post * act(gate); else d pre = d post * act'(pre)
    parallel_for(
        BT * F,
        [&](int64_t i0, int64_t i1, int) {
          constexpr int64_t kRun = 1024;
          float a[kRun], da[kRun];
          for (int64_t r0 = i0; r0 < i1; r0 += kRun) {
            const int64_t n = std::min(kRun, i1 - r0);
            activation_slopes(kt, cfg.act_fn, pre + r0, n, a, da);
            for (int64_t j = 0; j < n; ++j) {
              if (gated) du[r0 + j] = dpost[r0 + j] * a[j];
              dpost[r0 + j] *= gated ? up[r0 + j] * da[j] : da[j];
            }
          }
        },
        1024);
    if (gated) {
      hook(HookKind::mlp_pre, l, rows(dpost, F));
      hook(HookKind::mlp_pre_linear, l, rows(du, F));
      linear_t(dpost, BT, F, F, lw.gate_w, ldw, D, dh, D);
      linear_t(du, BT, F, F, lw.fc_w, ldw, D, dh, D, true);
      return;
    }
    hook(HookKind::mlp_pre, l, rows(dpost, F));
    linear_t(dpost, BT, F, F, lw.fc_w, ldw, D, dh, D);
  }

  // Rotates every query and key head's gradient back by its position (the
  // transpose of the forward's rotation: the angle negated); a padded batch's
  // rows each have their own positions.
  void unrotate(float* d) {
    const int64_t half = cfg.rotary_dim / 2;
    const int64_t* start = tape.row_start.empty() ? nullptr : tape.row_start.data();
    const int64_t* end = tape.row_end.empty() ? nullptr : tape.row_end.data();
    const int64_t n = rotary_rows(start, B, T);
    float* cos = grown(rope, {2, n, half});
    rotary_tables(w.rope_inv_freq, half, B, T, 0, start, end, -1.f, cos, cos + n * half);
    rotate_heads(d, B, T, Dqkv, H + Hkv, dh, half, start, cos, cos + n * half);
  }

  // Scores' gradient from the pattern's: dS = P (dP - sum_j dP_j P_j) per row
  // (0 where masked, as P is); all 0 with a frozen pattern.
  void softmax_backward(const float* P, float* d) {
    parallel_for(B * H * T, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* p = P + r * T;
        float* dr = d + r * T;
        if (opt.freeze_pattern) {
          std::fill(dr, dr + T, 0.f);
          continue;
        }
        double s = 0.0;
        for (int64_t j = 0; j < T; ++j) s += static_cast<double>(p[j]) * dr[j];
        for (int64_t j = 0; j < T; ++j) dr[j] = p[j] * (dr[j] - static_cast<float>(s));
      }
    });
  }

  static constexpr int64_t kBlock = 32;  // query (or key) rows per causal block

  // One single-threaded matmul: C[M, N] (+)= A[M, K] · B, B's (k, n) at B[k sk + n sn].
  void small_matmul(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bm, int64_t sk,
                    int64_t sn, float* C, int64_t ldc, bool accumulate, int t) const {
    const MatmulArgs args{
        M, N, K, A, lda, Bm, sk, sn, nullptr, C, ldc, accumulate, thread_scratch(t, matmul_scratch_floats())};
    kt.matmul_cols(args, 0, N);
  }

  // Attention from hook_attn_out's gradient br [BT, D] to its input's, into dnorm_in.
  void attention_backward(int64_t l, const LayerTape& lt, const float* br) {
    const LayerWeights& lw = w.layers[l];
    float* z = grown(dz, {BT, Da});
    if (active(HookKind::result, l)) {  // each head's output gets the whole gradient
      float* res = grown(dres, {BT, H, D});
      parallel_for(BT, [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t h = 0; h < H; ++h) std::memcpy(res + (r * H + h) * D, br + r * D, D * sizeof(float));
      });
      hook(HookKind::result, l, heads(res, H * D, D, H));
      for (int64_t h = 0; h < H; ++h)
        linear_t(res + h * D, BT, D, H * D, lw.out_w.offset(h * dh * (in_out ? D : 1)), in_out ? D : Da, dh, z + h * dh,
                 Da);
    } else {
      linear_t(br, BT, D, D, lw.out_w, in_out ? D : Da, Da, z, Da);
    }
    hook(HookKind::z, l, heads(z, Da, dh, H));

    const float* qkv = lt.qkv.data();
    const float* P = lt.pattern.data();
    const int64_t group = H / Hkv;
    float* dp = grown(dP, {B, H, T, T});
    // dP[i, j] = dz_i · v_j, for masked keys too where the pattern's gradient is seen (as
    // TransformerLens's: z = P v reads every key); else, of a causal pattern, the visible keys only
    // (the rest 0: P is 0 there, so dS is too).
    const bool trim = lt.causal && !active(HookKind::pattern, l);
    parallel_for(B * H, [&](int64_t i0, int64_t i1, int t) {
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t b = item / H, h = item % H;
        float* out = dp + item * T * T;
        const float* zh = z + b * T * Da + h * dh;
        const float* v = qkv + b * T * Dqkv + Da + Dkv + h / group * dh;
        if (!trim) {
          small_matmul(T, T, dh, zh, Da, v, 1, Dqkv, out, T, false, t);
          continue;
        }
        for (int64_t q0 = 0; q0 < T; q0 += kBlock) {
          const int64_t rows = std::min(kBlock, T - q0);
          small_matmul(rows, q0 + rows, dh, zh + q0 * Da, Da, v, 1, Dqkv, out + q0 * T, T, false, t);
        }
        for (int64_t i = 0; i < T; ++i) std::fill(out + i * T + i + 1, out + (i + 1) * T, 0.f);
      }
    });
    hook(HookKind::pattern, l, scores(dp));
    softmax_backward(lt.softmax.empty() ? P : lt.softmax.data(), dp);
    hook(HookKind::attn_scores, l, scores(dp));

    // Per (batch, key/value head): its keys' and values' gradients, summed over
    // the query heads that read them, and those heads' queries' gradients.
    float* d = grown(dqkv, {BT, Dqkv});
    float inv = 1.f / cfg.attn_scale;
    if (cfg.scale_attn_by_inverse_layer_idx) inv /= static_cast<float>(l + 1);
    parallel_for(B * Hkv, [&](int64_t i0, int64_t i1, int t) {
      thread_local std::vector<float> buf;
      float* tr = grown(buf, {T, T});
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t b = item / Hkv, kvh = item % Hkv;
        float* dk = d + b * T * Dqkv + Da + kvh * dh;
        float* dv = dk + Dkv;
        const float* k = qkv + b * T * Dqkv + Da + kvh * dh;
        for (int64_t j = 0; j < group; ++j) {
          const int64_t h = kvh * group + j;
          float* S = dp + (b * H + h) * T * T;
          float* dq = d + b * T * Dqkv + h * dh;
          const float* q = qkv + b * T * Dqkv + h * dh;
          // dv += P^T dz: over the queries at or after each key of a causal pattern, else all of P
          kt.transpose(P + (b * H + h) * T * T, T, T, T, tr, T);
          const float* zh = z + b * T * Da + h * dh;
          for (int64_t j0 = 0; j0 < T; j0 += lt.causal ? kBlock : T) {
            const int64_t rows = lt.causal ? std::min(kBlock, T - j0) : T;
            small_matmul(rows, dh, T - j0, tr + j0 * T + j0, T, zh + j0 * Da, Da, 1, dv + j0 * Dqkv, Dqkv, j > 0, t);
          }
          if (opt.freeze_pattern) {
            for (int64_t i = 0; i < T; ++i) std::fill(dq + i * Dqkv, dq + i * Dqkv + dh, 0.f);
            continue;
          }
          // Masked scores pass no gradient to q and k (even one a hook wrote there), so
          // dq = dS k and dk += dS^T q run over the visible keys only, a block of rows at a time.
          for (int64_t i = 0; i < T; ++i) std::fill(S + i * T + i + 1, S + (i + 1) * T, 0.f);
          kt.transpose(S, T, T, T, tr, T);
          for (int64_t i0 = 0; i0 < T; i0 += kBlock) {
            const int64_t rows = std::min(kBlock, T - i0);
            small_matmul(rows, dh, i0 + rows, S + i0 * T, T, k, Dqkv, 1, dq + i0 * Dqkv, Dqkv, false, t);
            small_matmul(rows, dh, T - i0, tr + i0 * T + i0, T, q + i0 * Dqkv, Dqkv, 1, dk + i0 * Dqkv, Dqkv, j > 0, t);
          }
          for (int64_t i = 0; i < T; ++i) kt.scale(dq + i * Dqkv, inv, dh);
        }
        for (int64_t i = 0; i < T; ++i) {
          if (opt.freeze_pattern)
            std::fill(dk + i * Dqkv, dk + i * Dqkv + dh, 0.f);
          else
            kt.scale(dk + i * Dqkv, inv, dh);
        }
      }
    });
    if (cfg.positions == Positions::rotary) {
      hook(HookKind::rot_q, l, heads(d, Dqkv, dh, H));
      hook(HookKind::rot_k, l, heads(d + Da, Dqkv, dh, Hkv));
      unrotate(d);
    }
    hook(HookKind::q, l, heads(d, Dqkv, dh, H));
    hook(HookKind::k, l, heads(d + Da, Dqkv, dh, Hkv));
    hook(HookKind::v, l, heads(d + Da + Dkv, Dqkv, dh, Hkv));
    linear_t(d, BT, Dqkv, Dqkv, lw.qkv_w, in_out ? Dqkv : D, D, grown(dnorm_in, {BT, D}), D);
  }

  void block(int64_t l) {
    const LayerTape& lt = tape.layers[l];
    const LayerWeights& lw = w.layers[l];
    float* gg = g.data();
    float* br = grown(branch, {BT, D});
    hook(HookKind::resid_post, l, rows(gg, D));
    std::memcpy(br, gg, static_cast<size_t>(BT * D) * sizeof(float));
    hook(HookKind::mlp_out, l, rows(br, D));
    mlp_backward(l, lt, br);
    norm_backward(lt.resid_mid.data(), lw.ln2_w, dnorm_in.data(), HookKind::ln2_scale, HookKind::ln2_normalized, l);
    hook(HookKind::resid_mid, l, rows(gg, D));
    std::memcpy(br, gg, static_cast<size_t>(BT * D) * sizeof(float));
    hook(HookKind::attn_out, l, rows(br, D));
    attention_backward(l, lt, br);
    norm_backward(lt.resid_pre.data(), lw.ln1_w, dnorm_in.data(), HookKind::ln1_scale, HookKind::ln1_normalized, l);
    hook(HookKind::resid_pre, l, rows(gg, D));
  }

  // dh [BT, D] = dl [BT, V] · unembed [V, D]. Metrics of the last position (a logit
  // difference, a log-probability) leave most rows of dl zero: those rows' dh is 0
  // without the matmul, whose cost equals the forward's unembedding. dl is compacted in place.
  void unembed_backward(float* dl, float* dh) {
    const int64_t V = cfg.d_vocab;
    std::vector<char> live(static_cast<size_t>(BT));
    parallel_for(BT, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* row = dl + r * V;
        live[static_cast<size_t>(r)] = std::any_of(row, row + V, [](float x) { return x != 0.f; });
      }
    });
    std::vector<int64_t> kept;
    for (int64_t r = 0; r < BT; ++r)
      if (live[static_cast<size_t>(r)]) kept.push_back(r);
    const int64_t n = static_cast<int64_t>(kept.size());
    if (n == BT) {
      matmul(dl, BT, V, V, w.unembed, D, D, 1, nullptr, dh, D, false, true);
      return;
    }
    for (int64_t i = 0; i < n; ++i)  // kept[i] >= i: moving rows down in order overwrites none still needed
      if (kept[static_cast<size_t>(i)] != i)
        std::memcpy(dl + i * V, dl + kept[static_cast<size_t>(i)] * V, static_cast<size_t>(V) * sizeof(float));
    float* out = grown(dres, {n, D});
    if (n > 0) matmul(dl, n, V, V, w.unembed, D, D, 1, nullptr, out, D, false, true);
    std::fill(dh, dh + BT * D, 0.f);
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(dh + kept[static_cast<size_t>(i)] * D, out + i * D, static_cast<size_t>(D) * sizeof(float));
  }

  void run(const float* grad_logits) {
    const int64_t V = cfg.d_vocab;
    float* dl = grown(dlogits, {BT, V});
    std::memcpy(dl, grad_logits, static_cast<size_t>(BT * V) * sizeof(float));
    hook(HookKind::unembed_out, 0, rows(dl, V));
    unembed_backward(dl, grown(dnorm_in, {BT, D}));
    float* dh = dnorm_in.data();
    hook(HookKind::unembed_in, 0, rows(dh, D));
    grown(g, {BT, D});
    std::fill(g.begin(), g.begin() + BT * D, 0.f);
    norm_backward(tape.final_resid.data(), w.lnf_w, dh, HookKind::ln_final_scale, HookKind::ln_final_normalized, 0);
    for (int64_t l = cfg.n_layers - 1; l >= tape.from; --l) {
      interrupt_point();
      block(l);
    }
    // from a residual input (start_at_layer, even 0) the embeddings never ran
    if (tape.from > 0 || !tape.embedded) return;
    if (active(HookKind::pos_embed)) {  // its own copy: a rewrite there leaves hook_embed's
      float* br = grown(branch, {BT, D});
      std::memcpy(br, g.data(), static_cast<size_t>(BT * D) * sizeof(float));
      hook(HookKind::pos_embed, 0, rows(br, D));
    }
    hook(HookKind::embed, 0, rows(g.data(), D));
  }
};

// The tape holds every buffer a backward reads, at the sizes of its batch.
void check_tape(const Tape& tape, const ModelConfig& cfg) {
  const int64_t BT = checked_size({tape.batch, tape.n_tokens}, "a tape's batch x positions");
  const int64_t T = tape.n_tokens, D = cfg.d_model, F = cfg.d_mlp;
  auto need = [](const std::vector<float>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) != n) throw std::invalid_argument("this tape is incomplete: record it again");
  };
  need(tape.final_resid, BT * D);
  for (const std::vector<int64_t>* bounds : {&tape.row_start, &tape.row_end})
    if (!bounds->empty() && (static_cast<int64_t>(bounds->size()) != tape.batch ||
                             std::any_of(bounds->begin(), bounds->end(), [&](int64_t x) { return x < 0 || x > T; })))
      throw std::invalid_argument("this tape's padding is not its batch's: record it again");
  for (int64_t l = tape.from; l < cfg.n_layers; ++l) {
    const LayerTape& lt = tape.layers[static_cast<size_t>(l)];
    need(lt.resid_pre, BT * D);
    need(lt.resid_mid, BT * D);
    need(lt.qkv, BT * cfg.d_qkv());
    need(lt.pattern, checked_size({tape.batch, cfg.n_heads, T, T}, "a tape's pattern"));
    if (!lt.softmax.empty()) need(lt.softmax, static_cast<int64_t>(lt.pattern.size()));
    need(lt.pre, BT * F);
    if (cfg.gated_mlp) need(lt.up, BT * F);
  }
}

}  // namespace

void Model::start_tape(Tape& tape, const HookPlan* plan, bool cached, const BlockSpan& span, LogitsMode mode,
                       int64_t batch, int64_t n_tokens) const {
  if (cached) throw std::invalid_argument("a forward recording for a backward cannot use a KV cache");
  if (span.stop != cfg_.n_layers || span.resid_out)
    throw std::invalid_argument("a forward recording for a backward runs to the logits");
  if (tape.from < span.start)
    throw std::invalid_argument("a tape from block " + std::to_string(tape.from) +
                                " needs a forward from there, not from " + std::to_string(span.start));
  if (mode != LogitsMode::all) throw std::invalid_argument("a forward recording for a backward returns all logits");
  if (tape.from < 0 || tape.from > cfg_.n_layers)
    throw std::invalid_argument("a tape's first block " + std::to_string(tape.from) + " is outside the model's " +
                                std::to_string(cfg_.n_layers) + " layers");
  // The backward recomputes each norm's statistics from its input: an edit of its scale or
  // normalized value would go unseen.
  auto unedited = [&](HookKind kind, int64_t layer) {
    const int id = hook_id(kind, layer, cfg_.n_layers);
    if (plan && !plan->reads_only(id))
      throw std::invalid_argument("a backward through an edit of " + hook_name(id, cfg_.n_layers) +
                                  " is not supported yet (edit the norm's input or output instead)");
  };
  if (plan && plan->attention_input() != AttentionInput::shared)
    throw std::invalid_argument(
        "a backward through the per-head attention inputs (set_use_split_qkv_input, "
        "set_use_attn_in) is not supported yet");
  for (int64_t l = tape.from; l < cfg_.n_layers; ++l)
    for (HookKind kind : {HookKind::ln1_scale, HookKind::ln1_normalized, HookKind::ln2_scale, HookKind::ln2_normalized,
                          HookKind::mlp_in})
      unedited(kind, l);
  unedited(HookKind::ln_final_scale, 0);
  unedited(HookKind::ln_final_normalized, 0);
  tape.model = 0;  // until the forward completes
  tape.batch = batch, tape.n_tokens = n_tokens;
  tape.embedded = span.resid_in == nullptr;
  tape.layers.assign(static_cast<size_t>(cfg_.n_layers), LayerTape{});
  tape.final_resid.clear();
}

void Model::backward(const Tape& tape, const float* grad_logits, HookPlan* plan, const BackwardOptions& options) {
  if (tape.model != id_) throw std::invalid_argument("this tape was not recorded by a completed forward of this model");
  if (plan && plan->n_layers() != cfg_.n_layers)
    throw std::invalid_argument("this hook plan was made for another model");
  check_tape(tape, cfg_);
  OwnedLock lock(mutex_,
                 "this model is already running a pass on this thread: a backward hook cannot run the model whose "
                 "pass called it");
  const int64_t B = tape.batch, T = tape.n_tokens;
  Backprop bp{cfg_,
              w_,
              tape,
              plan,
              options,
              kernels::active(),
              B,
              T,
              B * T,
              cfg_.d_model,
              cfg_.d_attn(),
              cfg_.n_heads,
              cfg_.d_head,
              cfg_.kv_heads(),
              cfg_.d_kv(),
              cfg_.d_qkv(),
              cfg_.d_mlp,
              cfg_.layout == WeightLayout::in_out};
  bp.run(grad_logits);
}

}  // namespace tmech
