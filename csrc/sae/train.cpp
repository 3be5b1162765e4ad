#include "sae/train.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>

#include "kernels/kernels.hpp"
#include "ops/matmul.hpp"
#include "runtime/checked.hpp"
#include "runtime/threads.hpp"

namespace tmech {
namespace {

enum { kWenc, kBenc, kWdec, kBdec };  // the first parameters, always present
constexpr int64_t kNormBlock = 4096;  // gradient norms are summed per block: the same bits for any thread count
constexpr int64_t kEncodeRows = 256;  // rows per encoder GEMM: their pre-activations stay in cache for TopK
constexpr int64_t kMaxTokens = int64_t{1} << 62;  // tokens since a latent fired saturate here

size_t sz(int64_t n) { return static_cast<size_t>(n); }

// Rows per block of a pass over the pairs: a block's rows of `width` floats stay in cache.
int64_t block_rows(int64_t width) { return std::max<int64_t>(16, (int64_t{1} << 16) / std::max<int64_t>(1, width)); }

// The active (row, latent) pairs of the batch, row by row (CSR), with the
// value each multiplies its W_dec row by.
struct Codes {
  std::vector<int64_t> offsets;
  std::vector<int32_t> latent;
  std::vector<float> value;
  void from_counts(const std::vector<int64_t>& counts) {
    offsets.assign(counts.size() + 1, 0);
    for (size_t r = 0; r < counts.size(); ++r) offsets[r + 1] = offsets[r] + counts[r];
    latent.resize(sz(offsets.back()));
    value.resize(latent.size());
  }
  int64_t nnz() const { return offsets.back(); }
};

}  // namespace

struct Trainer::Work {
  std::vector<float> s, inv_s;        // ||W_dec[j]|| and its inverse
  std::vector<float> sae_in, pre;     // [n, d_in], [n, d_sae]
  std::vector<float> out, g;          // [n, d_out]; g: [2n, d_out], the output gradients of the MSE then of AuxK
  std::vector<float> gout_t, x_t;     // [d_out, n] and [d_in, n], for W_skip's gradient
  Codes main, aux;                    // active latents, and AuxK's dead ones
  std::vector<int32_t> top;           // TopK: each row's k latents
  bool dense = false;                 // many active pairs: decode and backward as GEMMs
  std::vector<float> acts, grads, t;  // dense: activations and dL/dpre [n, d_sae]; a transposed one [d_sae, n]
  std::vector<int32_t> dead;          // AuxK: the dead latents
  int64_t k_aux = 0;                  // AuxK: latents per row (0: no aux loss this step)
  std::vector<int64_t> near_offsets;  // jumprelu: pairs within the estimator's window
  std::vector<int32_t> near_latent;
  std::vector<float> near_grad;
  std::vector<float> gpre_main, gpre_aux;  // dLoss/dpre per pair
  // per latent (CSC): the pairs touching it
  std::vector<int64_t> col_offsets;
  std::vector<int32_t> col_row_in, col_row_dec;
  std::vector<float> col_gpre, col_dec;
  std::vector<int64_t> thr_offsets;
  std::vector<int32_t> thr_rows;
  std::vector<float> thr_grad;
};

TrainArch train_arch(SaeActivation activation, bool batch_topk) {
  if (batch_topk && activation != SaeActivation::topk) throw std::invalid_argument("batch_topk needs topk");
  switch (activation) {
    case SaeActivation::topk: return batch_topk ? TrainArch::batchtopk : TrainArch::topk;
    case SaeActivation::jumprelu: return TrainArch::jumprelu;
    case SaeActivation::relu: break;
  }
  return TrainArch::standard;
}

void TrainConfig::validate() const {
  if (d_in <= 0 || d_sae <= 0 || d_out <= 0) throw std::invalid_argument("SAE sizes must be positive");
  if (d_sae > INT32_MAX) throw std::invalid_argument("d_sae is too large");
  checked_size({d_sae, std::max(d_in, d_out)}, "SAE weights");
  if (apply_b_dec_to_input && d_in != d_out) throw std::invalid_argument("apply_b_dec_to_input needs d_in == d_out");
  const bool topk = arch == TrainArch::topk || arch == TrainArch::batchtopk;
  if (topk && !(k > 0 && k <= static_cast<double>(d_sae))) throw std::invalid_argument("k must be in (0, d_sae]");
  if (arch == TrainArch::topk && k != std::floor(k)) throw std::invalid_argument("a TopK SAE's k must be whole");
  if (arch == TrainArch::jumprelu && !(bandwidth > 0)) throw std::invalid_argument("bandwidth must be positive");
  if (!(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1 && eps >= 0))
    throw std::invalid_argument("Adam needs 0 <= betas < 1 and eps >= 0");
  if (dead_tokens < 0) throw std::invalid_argument("dead_tokens must be >= 0");
}

void accumulate_rows(const int64_t* offsets, const int32_t* key, const int32_t* rows, const float* coef,
                     const float* src, int64_t width, int64_t latents, float* grad_rows) {
  const KernelTable& kt = kernels::active();
  const int64_t block = block_rows(width);
  parallel_for(latents, [&](int64_t j0, int64_t j1, int) {
    std::memset(grad_rows + j0 * width, 0, sz((j1 - j0) * width) * sizeof(float));
    std::vector<int64_t> at(offsets + j0, offsets + j1);  // each latent's next entry
    for (int64_t k0 = 0, more = 1; more; k0 += block) {   // a block of batch rows at a time, in cache
      more = 0;
      for (int64_t j = j0; j < j1; ++j) {
        int64_t& e = at[sz(j - j0)];
        for (; e < offsets[j + 1] && key[e] < k0 + block; ++e)
          if (coef[e] != 0.f)
            kt.axpy(grad_rows + j * width, coef[e], src + static_cast<int64_t>(rows[e]) * width, width);
        more |= e < offsets[j + 1];
      }
    }
  });
}

Trainer::Trainer(TrainConfig cfg, uint64_t seed) : cfg_(cfg), work_(std::make_shared<Work>()) {
  cfg_.validate();
  const int64_t d_in = cfg_.d_in, d_sae = cfg_.d_sae, d_out = cfg_.d_out;
  auto add = [&](const char* name, std::vector<int64_t> shape, bool transposed = false) {
    TrainParam q;
    q.name = name;
    q.shape = shape;
    q.transposed = transposed;
    const size_t n = sz(checked_size(shape.begin(), shape.end(), name));
    q.value.assign(n, 0.f);
    q.grad.assign(n, 0.f);
    q.m.assign(n, 0.f);
    q.v.assign(n, 0.f);
    params_.push_back(std::move(q));
    return static_cast<int>(params_.size()) - 1;
  };
  add("W_enc", {d_in, d_sae}, true);
  add("b_enc", {d_sae});
  add("W_dec", {d_sae, d_out});
  add("b_dec", {d_out});
  if (cfg_.arch == TrainArch::jumprelu) threshold_ = add("threshold", {d_sae});
  if (cfg_.skip) skip_ = add("W_skip", {d_out, d_in});
  tokens_since_fired.assign(sz(d_sae), 0);
  init(seed);
}

// SAELens's initialization: W_dec kaiming_uniform (rows rescaled to
// decoder_init_norm), W_enc = W_dec^T (a transcoder's W_enc: its own
// kaiming_uniform, as SAELens's Transcoder), biases and W_skip zero.
void Trainer::init(uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto kaiming = [&](std::vector<float>& w, int64_t fan_in) {
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    const double bound = std::sqrt(6.0 / static_cast<double>(fan_in));
    for (float& x : w) x = static_cast<float>(bound * u(rng));
  };
  const int64_t d_in = cfg_.d_in, d_sae = cfg_.d_sae, d_out = cfg_.d_out;
  std::vector<float>& W_dec = p(kWdec).value;
  kaiming(W_dec, d_out);
  if (cfg_.decoder_init_norm > 0)
    for (int64_t j = 0; j < d_sae; ++j) {
      float* row = W_dec.data() + j * d_out;
      double ss = 0;
      for (int64_t i = 0; i < d_out; ++i) ss += static_cast<double>(row[i]) * row[i];
      const double f = ss > 0 ? cfg_.decoder_init_norm / std::sqrt(ss) : 0.0;
      for (int64_t i = 0; i < d_out; ++i) row[i] = static_cast<float>(row[i] * f);
    }
  std::vector<float>& W_encT = p(kWenc).value;  // [d_sae, d_in]
  if (d_in == d_out) {
    W_encT = W_dec;
  } else {
    std::vector<float> W_enc(sz(d_in * d_sae));
    kaiming(W_enc, d_sae);
    for (int64_t i = 0; i < d_in; ++i)
      for (int64_t j = 0; j < d_sae; ++j) W_encT[sz(j * d_in + i)] = W_enc[sz(i * d_sae + j)];
  }
  if (threshold_ >= 0)
    std::fill(p(threshold_).value.begin(), p(threshold_).value.end(), static_cast<float>(cfg_.init_threshold));
}

TrainParam& Trainer::param(const std::string& name) {
  for (TrainParam& q : params_)
    if (q.name == name) return q;
  throw std::out_of_range("no parameter '" + name + "'");
}

std::vector<float>& Trainer::slot(TrainParam& q, const std::string& what) {
  if (what == "value") return q.value;
  if (what == "m") return q.m;
  if (what == "v") return q.v;
  throw std::invalid_argument("unknown parameter slot '" + what + "'");
}

std::vector<float> Trainer::get(const std::string& name, const std::string& what) {
  TrainParam& q = param(name);
  const std::vector<float>& src = slot(q, what);
  if (!q.transposed) return src;
  const int64_t rows = q.shape[0], cols = q.shape[1];  // SAELens's [rows, cols], stored [cols, rows]
  std::vector<float> out(src.size());
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < cols; ++c) out[sz(r * cols + c)] = src[sz(c * rows + r)];
  });
  return out;
}

void Trainer::set(const std::string& name, const std::string& what, const float* data) {
  TrainParam& q = param(name);
  std::vector<float>& dst = slot(q, what);
  if (!q.transposed) {
    std::copy(data, data + dst.size(), dst.begin());
    return;
  }
  const int64_t rows = q.shape[0], cols = q.shape[1];
  parallel_for(cols, [&](int64_t c0, int64_t c1, int) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t r = 0; r < rows; ++r) dst[sz(c * rows + r)] = data[r * cols + c];
  });
}

namespace {

// Counts then fills: fill(r, latents, values) writes row r's pairs and returns how many.
template <class Count, class Fill>
void collect(Codes& c, int64_t n, Count count, Fill fill) {
  std::vector<int64_t> counts(sz(n));
  parallel_for(n, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) counts[sz(r)] = count(r);
  });
  c.from_counts(counts);
  parallel_for(n, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) fill(r, c.latent.data() + c.offsets[sz(r)], c.value.data() + c.offsets[sz(r)]);
  });
}

// The k largest of v[0..n) (0 < k <= n) into idx, in index order; ties to the lower
// index. The k-th largest value is found among the values above a threshold that a
// strided sample of ~4k values sets so that ~2k pass (among all n when it passes
// fewer than k, or when n is small).
void top_k_of(const float* v, int64_t n, int64_t k, std::vector<float>& buf, int32_t* idx) {
  auto kth_largest = [&](int64_t rank) {  // of buf
    std::nth_element(buf.begin(), buf.begin() + (rank - 1), buf.end(), std::greater<float>());
    return buf[sz(rank - 1)];
  };
  buf.clear();
  const int64_t stride = n / (4 * k);
  if (stride >= 2) {
    for (int64_t i = 0; i < n; i += stride) buf.push_back(v[i]);
    const auto m = static_cast<int64_t>(buf.size());
    const float thr = kth_largest(std::min(m, 2 * k * m / n + 1));
    buf.clear();
    for (int64_t i = 0; i < n; ++i)
      if (v[i] >= thr) buf.push_back(v[i]);
    if (static_cast<int64_t>(buf.size()) < k) buf.clear();
  }
  if (buf.empty()) buf.assign(v, v + n);
  const float kth = kth_largest(k);
  int64_t above = 0;
  for (int64_t i = 0; i < n; ++i) above += v[i] > kth;
  int64_t ties = k - above, m = 0;  // the first `ties` values equal to the k-th are kept
  for (int64_t i = 0; i < n; ++i)
    if (v[i] > kth || (v[i] == kth && ties-- > 0)) idx[m++] = static_cast<int32_t>(i);
}

// fn(r, e, latent) for each pair e of each row r, in blocks of rows that each go to one
// thread whole, and within a block latent by latent: a W_dec row is read once per
// block, not once per pair. Each row sees its pairs in latent order, whatever the threads.
template <class Fn>
void by_block(const Codes& c, int64_t n, int64_t d_sae, int64_t width, Fn fn) {
  const int64_t rows = block_rows(width), blocks = (n + rows - 1) / rows;
  parallel_for(blocks, [&](int64_t b0, int64_t b1, int) {
    std::vector<int64_t> start(sz(d_sae) + 1), next;
    std::vector<int64_t> pair;
    std::vector<int32_t> row;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * rows, r1 = std::min(n, r0 + rows), e0 = c.offsets[sz(r0)];
      std::fill(start.begin(), start.end(), 0);
      for (int64_t e = e0; e < c.offsets[sz(r1)]; ++e) ++start[sz(c.latent[sz(e)]) + 1];
      for (int64_t j = 0; j < d_sae; ++j) start[sz(j + 1)] += start[sz(j)];
      next.assign(start.begin(), start.end() - 1);
      pair.resize(sz(start.back()));
      row.resize(pair.size());
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t e = c.offsets[sz(r)]; e < c.offsets[sz(r) + 1]; ++e) {
          const int64_t at = next[sz(c.latent[sz(e)])]++;
          pair[sz(at)] = e;
          row[sz(at)] = static_cast<int32_t>(r);
        }
      for (int64_t j = 0; j < d_sae; ++j)
        for (int64_t at = start[sz(j)]; at < start[sz(j + 1)]; ++at) fn(row[sz(at)], pair[sz(at)], j);
    }
  });
}

// out[r] = (b_dec or 0) + sum over row r's pairs of value * W_dec[latent]
void decode(const Codes& c, const float* W_dec, int64_t d_out, int64_t d_sae, int64_t n, const float* b_dec,
            float* out) {
  const KernelTable& kt = kernels::active();
  parallel_for(n, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      if (b_dec)
        std::memcpy(out + r * d_out, b_dec, sz(d_out) * sizeof(float));
      else
        std::memset(out + r * d_out, 0, sz(d_out) * sizeof(float));
    }
  });
  by_block(c, n, d_sae, d_out, [&](int64_t r, int64_t e, int64_t j) {
    kt.axpy(out + r * d_out, c.value[sz(e)], W_dec + j * d_out, d_out);
  });
}

// dense [n, d_sae]: values[e] at each pair e, zero elsewhere
void scatter(const Codes& c, const float* values, int64_t n, int64_t d_sae, std::vector<float>& dense) {
  dense.resize(sz(n * d_sae));
  parallel_for(n, [&](int64_t r0, int64_t r1, int) {
    std::fill(dense.begin() + r0 * d_sae, dense.begin() + r1 * d_sae, 0.f);
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t e = c.offsets[sz(r)]; e < c.offsets[sz(r) + 1]; ++e)
        dense[sz(r * d_sae + c.latent[sz(e)])] = values[e];
  });
}

// out[e] = dense[r, latent] for each pair e of row r
void gather(const Codes& c, const float* dense, int64_t d_sae, int64_t n, float* out) {
  parallel_for(n, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t e = c.offsets[sz(r)]; e < c.offsets[sz(r) + 1]; ++e) out[e] = dense[r * d_sae + c.latent[sz(e)]];
  });
}

// t [cols, rows] = src [rows, cols]^T, over the threads by column blocks
void transpose_to(const float* src, int64_t rows, int64_t cols, std::vector<float>& t) {
  const KernelTable& kt = kernels::active();
  t.resize(sz(rows * cols));
  parallel_for(
      cols,
      [&](int64_t c0, int64_t c1, int) { kt.transpose(src + c0, cols, rows, c1 - c0, t.data() + c0 * rows, rows); },
      16);
}

// gpre[e] = g[r] . W_dec[latent] for each pair e of row r
void pair_grads(const Codes& c, const float* g, const float* W_dec, int64_t d_out, int64_t d_sae, int64_t n,
                float* gpre) {
  const KernelTable& kt = kernels::active();
  by_block(c, n, d_sae, d_out,
           [&](int64_t r, int64_t e, int64_t j) { gpre[e] = kt.dot(g + r * d_out, W_dec + j * d_out, d_out); });
}

}  // namespace

void Trainer::decoder_norms() {
  Work& w = *work_;
  const int64_t d_sae = cfg_.d_sae, d_out = cfg_.d_out;
  const KernelTable& kt = kernels::active();
  w.s.resize(sz(d_sae));
  w.inv_s.resize(sz(d_sae));
  const float* W_dec = p(kWdec).value.data();
  parallel_for(d_sae, [&](int64_t j0, int64_t j1, int) {
    for (int64_t j = j0; j < j1; ++j) {
      const float* row = W_dec + j * d_out;
      w.s[sz(j)] = std::sqrt(kt.dot(row, row, d_out));
      w.inv_s[sz(j)] = 1.f / w.s[sz(j)];
    }
  });
}

// The active latents of each row (Work::main), from the pre-activations.
void Trainer::select(int64_t n) {
  Work& w = *work_;
  const int64_t d_sae = cfg_.d_sae;
  const float* pre = w.pre.data();
  const bool rescale = cfg_.rescale_acts_by_decoder_norm;
  switch (cfg_.arch) {
    case TrainArch::topk: {  // from the rows' top k (encode_rows), those above zero
      const auto k = static_cast<int64_t>(cfg_.k);
      auto h = [&](int64_t i) { return act(pre[(i / k) * d_sae + w.top[sz(i)]], w.top[sz(i)]); };  // i = r * k + m
      collect(
          w.main, n,
          [&](int64_t r) {
            int64_t c = 0;
            for (int64_t i = r * k; i < (r + 1) * k; ++i) c += h(i) > 0.f;
            return c;
          },
          [&](int64_t r, int32_t* lat, float* val) {
            for (int64_t i = r * k; i < (r + 1) * k; ++i)
              if (h(i) > 0.f) {
                *lat++ = w.top[sz(i)];
                *val++ = rescale ? h(i) * w.inv_s[sz(w.top[sz(i)])] : h(i);
              }
          });
      break;
    }
    case TrainArch::batchtopk: {
      // torch.topk over the flattened relu(h): the K largest, ties to the lower flat index
      const auto K = static_cast<int64_t>(cfg_.k * static_cast<double>(n));
      auto h = [&](int64_t i) { return act(pre[i], i % d_sae); };
      std::vector<float> positive;
      for (int64_t i = 0; i < n * d_sae; ++i)
        if (h(i) > 0.f) positive.push_back(h(i));
      float cut = 0.f;  // keep h > cut, then h == cut while `ties` last
      int64_t ties = 0;
      if (static_cast<int64_t>(positive.size()) > K && K > 0) {
        std::nth_element(positive.begin(), positive.begin() + (K - 1), positive.end(), std::greater<float>());
        cut = positive[sz(K - 1)];
        ties = K - std::count_if(positive.begin(), positive.end(), [&](float v) { return v > cut; });
      } else if (K == 0) {
        cut = INFINITY;
      }
      std::vector<uint8_t> keep_tie(sz(n * d_sae) / 8 + 1, 0);
      for (int64_t i = 0; i < n * d_sae && ties > 0; ++i)  // the first `ties` equal values in flat order
        if (h(i) == cut) {
          keep_tie[sz(i) / 8] |= static_cast<uint8_t>(1u << (i % 8));
          --ties;
        }
      auto kept = [&](int64_t i) {
        return h(i) > 0.f && (h(i) > cut || (h(i) == cut && (keep_tie[sz(i) / 8] >> (i % 8) & 1u)));
      };
      collect(
          w.main, n,
          [&](int64_t r) {
            int64_t c = 0;
            for (int64_t j = 0; j < d_sae; ++j) c += kept(r * d_sae + j);
            return c;
          },
          [&](int64_t r, int32_t* lat, float* val) {
            for (int64_t j = 0; j < d_sae; ++j)
              if (kept(r * d_sae + j)) {
                *lat++ = static_cast<int32_t>(j);
                *val++ = rescale ? h(r * d_sae + j) * w.inv_s[sz(j)] : h(r * d_sae + j);
              }
          });
      break;
    }
    case TrainArch::jumprelu:
    case TrainArch::standard: {
      const float* thr = threshold_ >= 0 ? p(threshold_).value.data() : nullptr;
      auto on = [&](int64_t r, int64_t j) { return pre[r * d_sae + j] > (thr ? thr[j] : 0.f); };
      collect(
          w.main, n,
          [&](int64_t r) {
            int64_t c = 0;
            for (int64_t j = 0; j < d_sae; ++j) c += on(r, j);
            return c;
          },
          [&](int64_t r, int32_t* lat, float* val) {
            for (int64_t j = 0; j < d_sae; ++j)
              if (on(r, j)) {
                *lat++ = static_cast<int32_t>(j);
                *val++ = pre[r * d_sae + j];
              }
          });
      break;
    }
  }
}

// AuxK's dead latents (Work::dead) and k_aux (Work::k_aux, 0 for no aux loss this
// step); returns the loss scale min(n_dead / k_aux, 1).
double Trainer::prepare_dead(int64_t n) {
  Work& w = *work_;
  w.dead.clear();
  w.k_aux = 0;
  for (int64_t j = 0; j < cfg_.d_sae; ++j)
    if (tokens_since_fired[sz(j)] > cfg_.dead_tokens) w.dead.push_back(static_cast<int32_t>(j));
  const auto nd = static_cast<int64_t>(w.dead.size());
  const int64_t k_aux0 = cfg_.d_out / 2;  // the residual's width / 2 (SAELens's sae_in.shape[-1] // 2)
  if (nd == 0 || k_aux0 == 0 || cfg_.aux_coefficient == 0) return 0;
  w.k_aux = std::min(k_aux0, nd);
  w.aux.from_counts(std::vector<int64_t>(sz(n), w.k_aux));
  return std::min(static_cast<double>(nd) / static_cast<double>(k_aux0), 1.0);
}

// The pre-activations of rows [r0, r1), and what is chosen from them while they are
// in cache: TopK's top k per row (Work::top), AuxK's top k_aux dead latents (Work::aux).
void Trainer::encode_rows(const float* sae_in, int64_t r0, int64_t r1) {
  Work& w = *work_;
  const int64_t d_in = cfg_.d_in, d_sae = cfg_.d_sae, k_aux = w.k_aux;
  matmul(sae_in + r0 * d_in, r1 - r0, d_in, d_in, p(kWenc).value.data(), d_sae, 1, d_in, p(kBenc).value.data(),
         w.pre.data() + r0 * d_sae, d_sae);
  const bool topk = cfg_.arch == TrainArch::topk;
  if (!topk && k_aux == 0) return;
  const auto k = static_cast<int64_t>(cfg_.k), nd = static_cast<int64_t>(w.dead.size());
  const bool rescale = cfg_.rescale_acts_by_decoder_norm;
  parallel_for(r1 - r0, [&](int64_t a, int64_t b, int) {
    std::vector<float> h(sz(std::max(d_sae, nd))), buf;  // a row's ranking values
    for (int64_t r = r0 + a; r < r0 + b; ++r) {
      const float* row = w.pre.data() + r * d_sae;
      if (topk) {
        for (int64_t j = 0; j < d_sae; ++j) h[sz(j)] = act(row[j], j);
        top_k_of(h.data(), d_sae, k, buf, &w.top[sz(r * k)]);
      }
      if (k_aux == 0) continue;
      for (int64_t i = 0; i < nd; ++i) h[sz(i)] = act(row[w.dead[sz(i)]], w.dead[sz(i)]);
      int32_t* lat = &w.aux.latent[sz(r * k_aux)];
      float* val = &w.aux.value[sz(r * k_aux)];
      top_k_of(h.data(), nd, k_aux, buf, lat);
      for (int64_t i = 0; i < k_aux; ++i) {
        const int32_t j = lat[i] = w.dead[sz(lat[i])];
        val[i] = rescale ? act(row[j], j) * w.inv_s[sz(j)] : row[j];
      }
    }
  });
}

StepStats Trainer::step(const float* x, const float* y, int64_t n, double lr, double coefficient) {
  // rows are int32 in the per-latent lists, and AuxK's follow the main ones (r + n): n < 2^30
  if (n <= 0 || n > INT32_MAX / 2) throw std::invalid_argument("a training batch needs 1 to 2^30 - 1 rows");
  Work& w = *work_;
  const int64_t d_in = cfg_.d_in, d_sae = cfg_.d_sae, d_out = cfg_.d_out;
  checked_size({n, d_sae}, "pre-activations");
  const float* target = y ? y : x;
  const bool jump = cfg_.arch == TrainArch::jumprelu, standard = cfg_.arch == TrainArch::standard;
  const bool auxk = cfg_.arch == TrainArch::topk || cfg_.arch == TrainArch::batchtopk;
  const float inv_n = 1.f / static_cast<float>(n);
  if (jump)  // SAELens projects the threshold to >= 0 before each forward pass
    for (float& t : p(threshold_).value) t = std::max(t, 0.f);
  decoder_norms();
  rescale_ = auxk && cfg_.rescale_acts_by_decoder_norm;
  scale_ = w.s.data();

  // forward: sae_in = x - b_dec, pre = sae_in W_enc + b_enc (times ||W_dec|| for rescaling TopK)
  const float* b_dec = p(kBdec).value.data();
  const float* sae_in = x;
  if (cfg_.apply_b_dec_to_input) {
    w.sae_in.resize(sz(n * d_in));
    parallel_for(n, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t i = 0; i < d_in; ++i) w.sae_in[sz(r * d_in + i)] = x[r * d_in + i] - b_dec[i];
    });
    sae_in = w.sae_in.data();
  }
  w.aux.from_counts(std::vector<int64_t>(sz(n), 0));  // none unless AuxK finds dead latents
  const double aux_scale = auxk ? prepare_dead(n) : 0.0;
  w.pre.resize(sz(n * d_sae));
  if (cfg_.arch == TrainArch::topk) w.top.resize(sz(n * static_cast<int64_t>(cfg_.k)));
  for (int64_t r0 = 0; r0 < n; r0 += kEncodeRows) encode_rows(sae_in, r0, std::min(n, r0 + kEncodeRows));
  select(n);

  // decode and the MSE's output gradient g[0:n] = 2/n (out - target)
  const float* W_dec = p(kWdec).value.data();
  w.out.resize(sz(n * d_out));
  // Past 1/8 active (ReLU and JumpReLU early on), GEMMs beat walking the pairs; from 17
  // rows, where no GEMM splits K by thread count
  w.dense = w.aux.nnz() == 0 && n > 16 && d_sae > 16 && w.main.nnz() * 8 > n * d_sae;
  if (w.dense) {
    scatter(w.main, w.main.value.data(), n, d_sae, w.acts);
    matmul(w.acts.data(), n, d_sae, d_sae, W_dec, d_out, d_out, 1, b_dec, w.out.data(), d_out);
  } else {
    decode(w.main, W_dec, d_out, d_sae, n, b_dec, w.out.data());
  }
  if (skip_ >= 0) matmul(x, n, d_in, d_in, p(skip_).value.data(), d_out, 1, d_in, nullptr, w.out.data(), d_out, true);
  w.g.resize(sz(2 * n * d_out));
  float* g = w.g.data();
  float* g_aux = g + n * d_out;
  std::vector<double> row_l2(sz(n)), row_aux(sz(n));
  parallel_for(n, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < d_out; ++i) {
        const float e = w.out[sz(r * d_out + i)] - target[r * d_out + i];
        ss += static_cast<double>(e) * e;
        g[r * d_out + i] = 2.f * inv_n * e;
      }
      row_l2[sz(r)] = ss;
    }
  });
  // AuxK: the dead latents' decode (no bias) against the residual target - out
  if (aux_scale > 0) {
    decode(w.aux, W_dec, d_out, d_sae, n, nullptr, g_aux);
    const auto c = static_cast<float>(cfg_.aux_coefficient * aux_scale);
    parallel_for(n, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; ++r) {
        double ss = 0;
        for (int64_t i = 0; i < d_out; ++i) {
          const float e = g_aux[r * d_out + i] + (w.out[sz(r * d_out + i)] - target[r * d_out + i]);
          ss += static_cast<double>(e) * e;
          g_aux[r * d_out + i] = c * 2.f * inv_n * e;
        }
        row_aux[sz(r)] = ss;
      }
    });
  }

  w.gpre_main.resize(sz(w.main.nnz()));
  w.gpre_aux.resize(sz(w.aux.nnz()));
  if (w.dense) {  // dL/dacts = g W_dec^T, all of it
    w.grads.resize(sz(n * d_sae));
    matmul(g, n, d_out, d_out, W_dec, d_sae, 1, d_out, nullptr, w.grads.data(), d_sae);
    gather(w.main, w.grads.data(), d_sae, n, w.gpre_main.data());
  } else {
    pair_grads(w.main, g, W_dec, d_out, d_sae, n, w.gpre_main.data());
  }
  pair_grads(w.aux, g_aux, W_dec, d_out, d_sae, n, w.gpre_aux.data());
  const auto coef = static_cast<float>(coefficient);
  if (standard)  // d/da of coefficient * mean_r sum_j a_rj ||W_dec[j]||
    for (int64_t e = 0; e < w.main.nnz(); ++e) w.gpre_main[sz(e)] += coef * inv_n * w.s[sz(w.main.latent[sz(e)])];
  if (jump) near_threshold(n, coef);

  backward(n, sae_in, x, coef);
  const double norm = grad_norm();
  // torch's clip_grad_norm_, in float32 as torch computes it
  const float clip = cfg_.max_grad_norm > 0
                         ? std::min(1.f, static_cast<float>(cfg_.max_grad_norm) / (static_cast<float>(norm) + 1e-6f))
                         : 1.f;
  adam(lr, clip);

  // bookkeeping: firing counts, batchtopk's threshold, the stats
  std::vector<uint8_t> fired(sz(d_sae), 0);
  float min_positive = INFINITY;  // of the activations (TopK's: the rescaled pre-activations, in w.pre)
  for (int64_t r = 0; r < n; ++r)
    for (int64_t e = w.main.offsets[sz(r)]; e < w.main.offsets[sz(r) + 1]; ++e) {
      const int32_t j = w.main.latent[sz(e)];
      fired[sz(j)] = 1;
      min_positive = std::min(min_positive, auxk ? act(w.pre[sz(r * d_sae + j)], j) : w.main.value[sz(e)]);
    }
  StepStats st;
  for (int64_t j = 0; j < d_sae; ++j) {
    int64_t& t = tokens_since_fired[sz(j)];
    t = fired[sz(j)] ? 0 : std::min(t, kMaxTokens) + n;  // saturates: no overflow however long the run
    st.n_dead += t > cfg_.dead_tokens;
  }
  if (cfg_.arch == TrainArch::batchtopk && w.main.nnz() > 0)
    topk_threshold = (1 - cfg_.topk_threshold_lr) * topk_threshold + cfg_.topk_threshold_lr * min_positive;
  double l2 = 0, aux = 0;
  for (int64_t r = 0; r < n; ++r) {
    l2 += row_l2[sz(r)];
    aux += row_aux[sz(r)];
  }
  st.mse = l2 / static_cast<double>(n);
  st.aux_loss = cfg_.aux_coefficient * aux_scale * aux / static_cast<double>(n);
  st.l0 = static_cast<double>(w.main.nnz()) / static_cast<double>(n);
  if (jump) st.sparsity_loss = coefficient * st.l0;
  if (standard) {
    double l1 = 0;
    for (int64_t e = 0; e < w.main.nnz(); ++e)
      l1 += static_cast<double>(w.main.value[sz(e)]) * w.s[sz(w.main.latent[sz(e)])];
    st.sparsity_loss = coefficient * l1 / static_cast<double>(n);
  }
  st.loss = st.mse + st.aux_loss + st.sparsity_loss;
  st.explained_variance = 1.0 - st.mse / total_variance(target, n);
  return st;
}

// jumprelu: the pairs within the rectangle window, |pre - threshold| < bandwidth/2, with
// their threshold gradient: -(threshold / bw) dL/dacts (JumpReLU) - coefficient / (n bw) (the L0 step)
void Trainer::near_threshold(int64_t n, float coef) {
  Work& w = *work_;
  const int64_t d_sae = cfg_.d_sae, d_out = cfg_.d_out;
  const float* thr = p(threshold_).value.data();
  const auto bw = static_cast<float>(cfg_.bandwidth);
  const float* pre = w.pre.data();
  auto near = [&](int64_t r, int64_t j) {
    const float u = (pre[r * d_sae + j] - thr[j]) / bw;
    return u > -0.5f && u < 0.5f;
  };
  Codes c;
  collect(
      c, n,
      [&](int64_t r) {
        int64_t k = 0;
        for (int64_t j = 0; j < d_sae; ++j) k += near(r, j);
        return k;
      },
      [&](int64_t r, int32_t* lat, float*) {
        for (int64_t j = 0; j < d_sae; ++j)
          if (near(r, j)) *lat++ = static_cast<int32_t>(j);
      });
  std::vector<float> gacts(sz(c.nnz()));
  if (w.dense)
    gather(c, w.grads.data(), d_sae, n, gacts.data());
  else
    pair_grads(c, w.g.data(), p(kWdec).value.data(), d_out, d_sae, n, gacts.data());
  const float inv_n = 1.f / static_cast<float>(n);
  for (int64_t e = 0; e < c.nnz(); ++e) {
    const int32_t j = c.latent[sz(e)];
    c.value[sz(e)] = -(thr[j] / bw) * gacts[sz(e)] - (1.f / bw) * coef * inv_n;
  }
  w.near_offsets = std::move(c.offsets);
  w.near_latent = std::move(c.latent);
  w.near_grad = std::move(c.value);
}

double Trainer::total_variance(const float* t, int64_t n) const {
  const int64_t d = cfg_.d_out;
  std::vector<double> mean(sz(d), 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < d; ++i) mean[sz(i)] += t[r * d + i];
  for (double& m : mean) m /= static_cast<double>(n);
  double tv = 0;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < d; ++i) {
      const double e = t[r * d + i] - mean[sz(i)];
      tv += e * e;
    }
  return tv / static_cast<double>(n);
}

namespace {

// The pairs of every set regrouped per latent, batch rows ascending (a row's pairs
// of the first set before those of the next).
template <class Emit>
void by_latent(int64_t d_sae, int64_t n, std::vector<int64_t>& offsets, const std::vector<const Codes*>& sets,
               Emit emit) {
  offsets.assign(sz(d_sae) + 1, 0);
  for (const Codes* c : sets)
    for (int32_t j : c->latent) ++offsets[sz(j) + 1];
  for (int64_t j = 0; j < d_sae; ++j) offsets[sz(j + 1)] += offsets[sz(j)];
  std::vector<int64_t> next(offsets.begin(), offsets.end() - 1);
  for (int64_t r = 0; r < n; ++r)
    for (size_t s = 0; s < sets.size(); ++s) {
      const Codes& c = *sets[s];
      for (int64_t e = c.offsets[sz(r)]; e < c.offsets[sz(r) + 1]; ++e) emit(next[sz(c.latent[sz(e)])]++, s, r, e);
    }
}

}  // namespace

// W_enc, W_dec and b_enc's gradients as sums over each latent's pairs.
void Trainer::sparse_backward(int64_t n, const float* sae_in, float coef) {
  Work& w = *work_;
  const int64_t d_in = cfg_.d_in, d_sae = cfg_.d_sae, d_out = cfg_.d_out;
  const size_t total = sz(w.main.nnz() + w.aux.nnz());
  w.col_row_in.resize(total);
  w.col_row_dec.resize(total);
  w.col_gpre.resize(total);
  w.col_dec.resize(total);
  by_latent(d_sae, n, w.col_offsets, {&w.main, &w.aux}, [&](int64_t at, size_t set, int64_t r, int64_t e) {
    w.col_row_in[sz(at)] = static_cast<int32_t>(r);
    w.col_row_dec[sz(at)] = static_cast<int32_t>(set ? r + n : r);  // g_aux's rows follow g's
    w.col_gpre[sz(at)] = (set ? w.gpre_aux : w.gpre_main)[sz(e)];
    w.col_dec[sz(at)] = (set ? w.aux.value : w.main.value)[sz(e)];
  });
  const int64_t* off = w.col_offsets.data();
  accumulate_rows(off, w.col_row_in.data(), w.col_row_in.data(), w.col_gpre.data(), sae_in, d_in, d_sae,
                  p(kWenc).grad.data());
  accumulate_rows(off, w.col_row_in.data(), w.col_row_dec.data(), w.col_dec.data(), w.g.data(), d_out, d_sae,
                  p(kWdec).grad.data());
  float* gb_enc = p(kBenc).grad.data();
  std::vector<float> acts(sz(d_sae));  // per latent: the sum of its activations
  parallel_for(d_sae, [&](int64_t j0, int64_t j1, int) {
    for (int64_t j = j0; j < j1; ++j) {
      float sum = 0, a = 0;
      for (int64_t e = off[j]; e < off[j + 1]; ++e) {
        sum += w.col_gpre[sz(e)];
        if (w.col_row_dec[sz(e)] < n) a += w.col_dec[sz(e)];
      }
      gb_enc[j] = sum;
      acts[sz(j)] = a;
    }
  });
  if (cfg_.arch == TrainArch::standard) l1_decoder_grad(acts.data(), n, coef);
}

// standard: the L1 term's pull on ||W_dec[j]||, coefficient/n sum_r a_rj W_dec[j] / ||W_dec[j]||
void Trainer::l1_decoder_grad(const float* acts, int64_t n, float coef) {
  const KernelTable& kt = kernels::active();
  const int64_t d_out = cfg_.d_out;
  const float inv_n = 1.f / static_cast<float>(n);
  const std::vector<float>& s = work_->s;
  const std::vector<float>& inv_s = work_->inv_s;
  parallel_for(cfg_.d_sae, [&](int64_t j0, int64_t j1, int) {
    for (int64_t j = j0; j < j1; ++j)
      if (acts[j] != 0.f && s[sz(j)] > 0.f)
        kt.axpy(p(kWdec).grad.data() + j * d_out, coef * inv_n * acts[j] * inv_s[sz(j)],
                p(kWdec).value.data() + j * d_out, d_out);
  });
}

// The same as GEMMs over dense [n, d_sae] activations and gradients.
void Trainer::dense_backward(int64_t n, const float* sae_in, float coef) {
  Work& w = *work_;
  const int64_t d_in = cfg_.d_in, d_sae = cfg_.d_sae, d_out = cfg_.d_out;
  float* gb_enc = p(kBenc).grad.data();
  scatter(w.main, w.gpre_main.data(), n, d_sae, w.grads);  // dL/dpre
  transpose_to(w.grads.data(), n, d_sae, w.t);
  matmul(w.t.data(), d_sae, n, n, sae_in, d_in, d_in, 1, nullptr, p(kWenc).grad.data(), d_in);
  auto row_sums = [&](float* out) {
    parallel_for(d_sae, [&](int64_t j0, int64_t j1, int) {
      for (int64_t j = j0; j < j1; ++j) {
        float sum = 0;
        for (int64_t r = 0; r < n; ++r) sum += w.t[sz(j * n + r)];
        out[j] = sum;
      }
    });
  };
  row_sums(gb_enc);
  transpose_to(w.acts.data(), n, d_sae, w.t);
  matmul(w.t.data(), d_sae, n, n, w.g.data(), d_out, d_out, 1, nullptr, p(kWdec).grad.data(), d_out);
  if (cfg_.arch == TrainArch::standard) {
    std::vector<float> acts(sz(d_sae));
    row_sums(acts.data());
    l1_decoder_grad(acts.data(), n, coef);
  }
}

// Every parameter's gradient from the output gradients (Work::g) and the pairs' gradients.
void Trainer::backward(int64_t n, const float* sae_in, const float* x, float coef) {
  Work& w = *work_;
  const int64_t d_in = cfg_.d_in, d_sae = cfg_.d_sae, d_out = cfg_.d_out;
  if (w.dense)
    dense_backward(n, sae_in, coef);
  else
    sparse_backward(n, sae_in, coef);
  const float* gb_enc = p(kBenc).grad.data();
  const KernelTable& kt = kernels::active();
  if (threshold_ >= 0) {
    float* gthr = p(threshold_).grad.data();
    std::fill(gthr, gthr + d_sae, 0.f);
    for (int64_t r = 0; r < n; ++r)  // rows in order: the same sums for any thread count
      for (int64_t e = w.near_offsets[sz(r)]; e < w.near_offsets[sz(r) + 1]; ++e)
        gthr[w.near_latent[sz(e)]] += w.near_grad[sz(e)];
  }
  // b_dec: the output's sum over rows, minus W_enc's share when it was subtracted from the input
  float* gb_dec = p(kBdec).grad.data();
  const float* W_encT = p(kWenc).value.data();
  parallel_for(
      d_out,
      [&](int64_t i0, int64_t i1, int) {
        std::fill(gb_dec + i0, gb_dec + i1, 0.f);
        for (int64_t r = 0; r < n; ++r)
          for (int64_t i = i0; i < i1; ++i) gb_dec[i] += w.g[sz(r * d_out + i)];
        if (cfg_.apply_b_dec_to_input)
          for (int64_t j = 0; j < d_sae; ++j)
            for (int64_t i = i0; i < i1; ++i) gb_dec[i] -= gb_enc[j] * W_encT[j * d_in + i];
      },
      16);
  if (skip_ >= 0) {  // W_skip [d_out, d_in] = g^T x; x^T as B, so that no few-row GEMM splits K by thread count
    w.gout_t.resize(sz(d_out * n));
    w.x_t.resize(sz(d_in * n));
    kt.transpose(w.g.data(), d_out, n, d_out, w.gout_t.data(), n);
    kt.transpose(x, d_in, n, d_in, w.x_t.data(), n);
    matmul(w.gout_t.data(), d_out, n, n, w.x_t.data(), d_in, 1, n, nullptr, p(skip_).grad.data(), d_in);
  }
}

double Trainer::grad_norm() const {
  double total = 0;
  for (const TrainParam& q : params_) {
    const auto size = static_cast<int64_t>(q.grad.size());
    const int64_t blocks = (size + kNormBlock - 1) / kNormBlock;
    std::vector<double> part(sz(blocks), 0.0);
    parallel_for(blocks, [&](int64_t b0, int64_t b1, int) {
      for (int64_t b = b0; b < b1; ++b) {
        double s = 0;
        for (int64_t i = b * kNormBlock; i < std::min(size, (b + 1) * kNormBlock); ++i)
          s += static_cast<double>(q.grad[sz(i)]) * q.grad[sz(i)];
        part[sz(b)] = s;
      }
    });
    for (double s : part) total += s;
  }
  return std::sqrt(total);
}

// torch.optim.Adam (its foreach form), on the gradients scaled by clip
void Trainer::adam(double lr, double clip) {
  ++steps;
  const double t = static_cast<double>(steps);
  const auto b1 = static_cast<float>(cfg_.beta1), b2 = static_cast<float>(cfg_.beta2);
  const auto step_size = static_cast<float>(lr / (1 - std::pow(cfg_.beta1, t)));
  const auto bc2_sqrt = static_cast<float>(std::sqrt(1 - std::pow(cfg_.beta2, t)));
  const auto eps = static_cast<float>(cfg_.eps), c = static_cast<float>(clip);
  for (TrainParam& q : params_) {
    float *pv = q.value.data(), *gv = q.grad.data(), *mv = q.m.data(), *vv = q.v.data();
    parallel_for(
        static_cast<int64_t>(q.value.size()),
        [&](int64_t i0, int64_t i1, int) {
          for (int64_t i = i0; i < i1; ++i) {
            const float gi = gv[i] * c;
            mv[i] += (1.f - b1) * (gi - mv[i]);
            vv[i] = vv[i] * b2 + (1.f - b2) * gi * gi;
            pv[i] -= step_size * (mv[i] / (std::sqrt(vv[i]) / bc2_sqrt + eps));
          }
        },
        64);
  }
}

}  // namespace tmech
