#include "sae/sae.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "kernels/kernels.hpp"
#include "ops/matmul.hpp"
#include "ops/top_k.hpp"
#include "runtime/checked.hpp"
#include "runtime/threads.hpp"
#include "sae/screen.hpp"

namespace tmech {
namespace {

// Rows encoded per encoder GEMM: bounds the [rows, d_sae] pre-activation
// buffer (~32 MB) while keeping enough rows to amortize packing W_enc.
constexpr int64_t kChunkFloats = int64_t{1} << 23;
constexpr float kLayerNormEps = 1e-5f;  // SAELens's layer_norm normalization

int64_t chunk_rows(int64_t d_sae) { return std::max<int64_t>(1, kChunkFloats / std::max<int64_t>(1, d_sae)); }

}  // namespace

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

void SaeConfig::validate() const {
  if (d_in <= 0 || d_sae <= 0 || d_out <= 0) throw std::invalid_argument("SAE sizes must be positive");
  if (d_sae > INT32_MAX) throw std::invalid_argument("d_sae is too large");
  if (apply_b_dec_to_input && d_in != d_out) throw std::invalid_argument("apply_b_dec_to_input needs d_in == d_out");
  if ((activation == SaeActivation::topk || activation == SaeActivation::abstopk) && k <= 0)
    throw std::invalid_argument("a TopK SAE needs k > 0");
  if (k < 0 || k > d_sae) throw std::invalid_argument("k must be in [0, d_sae]");
  if (!std::isfinite(norm_factor) || norm_factor == 0.f)
    throw std::invalid_argument("the activation normalization factor must be finite and nonzero");
  const bool tied = activation == SaeActivation::matching_pursuit || activation == SaeActivation::temporal;
  if (tied && d_in != d_out) throw std::invalid_argument("a matching-pursuit or temporal SAE needs d_in == d_out");
  if (activation == SaeActivation::matching_pursuit && matching_pursuit.max_iterations < 0)
    throw std::invalid_argument("max_iterations must be >= 0");
  if (activation == SaeActivation::temporal) {
    const TemporalConfig& t = temporal;
    if (t.n_heads <= 0 || t.n_layers < 0 || t.width <= 0 || t.width % t.n_heads != 0 || d_sae % t.n_heads != 0)
      throw std::invalid_argument("a temporal SAE needs n_heads > 0 dividing d_sae and its attention width");
  }
}

namespace {
// The one table of SAE activations (their names as tinymech/sae/architectures/ gives them).
struct SaeActivationName {
  const char* name;
  SaeActivation value;
};
constexpr SaeActivationName kSaeActivations[] = {
    {"relu", SaeActivation::relu},         {"jumprelu", SaeActivation::jumprelu},
    {"topk", SaeActivation::topk},         {"gated", SaeActivation::gated},
    {"abstopk", SaeActivation::abstopk},   {"matching_pursuit", SaeActivation::matching_pursuit},
    {"temporal", SaeActivation::temporal},
};
}  // namespace

SaeActivation parse_sae_activation(const std::string& name) {
  for (const SaeActivationName& a : kSaeActivations)
    if (name == a.name) return a.value;
  throw std::invalid_argument("unknown SAE activation '" + name + "'");
}

std::vector<std::string> sae_activation_names() {
  std::vector<std::string> names;
  for (const SaeActivationName& a : kSaeActivations) names.emplace_back(a.name);
  return names;
}

SaeNorm parse_sae_norm(const std::string& name) {
  if (name == "none") return SaeNorm::none;
  if (name == "constant_norm_rescale") return SaeNorm::constant_norm_rescale;
  if (name == "layer_norm") return SaeNorm::layer_norm;
  if (name == "constant_scalar_rescale") return SaeNorm::constant_scalar_rescale;
  throw std::invalid_argument("unknown SAE normalization '" + name + "'");
}

SaeWeights read_sae_weights(const SaeConfig& c, WeightSource& src) {
  auto get = [&](const char* name, std::vector<int64_t> shape, bool optional = false) {
    return src.get(-1, name, shape, optional, false).f32;
  };
  SaeWeights w;
  w.W_enc = get("W_enc", {c.d_in, c.d_sae});
  w.b_enc = get("b_enc", {c.d_sae});
  w.W_dec = get("W_dec", {c.d_sae, c.d_out});
  w.b_dec = get("b_dec", {c.d_out});
  w.threshold = get("threshold", {c.d_sae}, true);
  w.W_skip = get("W_skip", {c.d_out, c.d_in}, true);
  w.r_mag = get("r_mag", {c.d_sae}, true);
  w.b_mag = get("b_mag", {c.d_sae}, true);
  if (c.activation == SaeActivation::temporal) {
    const int64_t d = c.d_sae, width = c.temporal.width;
    for (int64_t i = 0; i < c.temporal.n_layers; ++i) {
      const std::string at = "attn_layers." + std::to_string(i) + ".";
      auto linear = [&](const char* name, int64_t out, const float*& weight, const float*& bias) {
        weight = get((at + name + ".weight").c_str(), {out, d});
        bias = get((at + name + ".bias").c_str(), {out});
      };
      TemporalLayerWeights L;
      linear("k_ctx", width, L.k_w, L.k_b);
      linear("q_target", width, L.q_w, L.q_b);
      linear("v_ctx", d, L.v_w, L.v_b);
      linear("c_proj", d, L.c_w, L.c_b);
      w.attn.push_back(L);
    }
  }
  return w;
}

SparseCodes sparse_codes(const int64_t* offsets, int64_t rows, const int64_t* indices, const float* values, int64_t nnz,
                         int64_t d_sae) {
  SparseCodes c;
  c.rows = rows;
  c.offsets.assign(offsets, offsets + rows + 1);
  if (c.offsets[0] != 0 || c.offsets.back() != nnz)
    throw std::invalid_argument("sparse offsets must start at 0 and end at nnz");
  for (int64_t r = 0; r < rows; ++r)
    if (c.offsets[r + 1] < c.offsets[r]) throw std::invalid_argument("sparse offsets must not decrease");
  c.indices.reserve(static_cast<size_t>(nnz));
  for (int64_t i = 0; i < nnz; ++i) {
    if (indices[i] < 0 || indices[i] >= d_sae)
      throw std::out_of_range("feature index " + std::to_string(indices[i]) +
                              " is out of range for d_sae=" + std::to_string(d_sae));
    c.indices.push_back(static_cast<int32_t>(indices[i]));
  }
  c.values.assign(values, values + nnz);
  return c;
}

Sae::Sae(SaeConfig cfg, SaeWeights w) : cfg_(cfg), w_(w) {
  cfg_.validate();
  if (!w_.W_enc || !w_.b_enc || !w_.W_dec || !w_.b_dec) throw std::invalid_argument("SAE weights are missing");
  if (cfg_.activation == SaeActivation::jumprelu && !w_.threshold)
    throw std::invalid_argument("a JumpReLU SAE needs a threshold");
  if (temporal()) {
    bool complete = static_cast<int64_t>(w_.attn.size()) == cfg_.temporal.n_layers;
    for (const TemporalLayerWeights& L : w_.attn)
      for (const float* p : {L.k_w, L.k_b, L.q_w, L.q_b, L.v_w, L.v_b, L.c_w, L.c_b}) complete &= p != nullptr;
    if (!complete) throw std::invalid_argument("a temporal SAE needs every attention layer's weights");
  }
  if (cfg_.activation == SaeActivation::gated) {
    if (!w_.r_mag || !w_.b_mag) throw std::invalid_argument("a gated SAE needs r_mag and b_mag");
    mag_scale_.resize(static_cast<size_t>(cfg_.d_sae));
    for (int64_t j = 0; j < cfg_.d_sae; ++j) {
      mag_scale_[static_cast<size_t>(j)] = std::exp(w_.r_mag[j]);
      if (!std::isfinite(mag_scale_[static_cast<size_t>(j)]))  // NaN, or too large for exp in float32
        throw std::invalid_argument("r_mag[" + std::to_string(j) + "] = " + std::to_string(w_.r_mag[j]) +
                                    " has no finite exp");
    }
  }
  if (cfg_.rescale_acts_by_decoder_norm) {
    dec_norm_.resize(static_cast<size_t>(cfg_.d_sae));
    const KernelTable& kt = kernels::active();
    for (int64_t i = 0; i < cfg_.d_sae; ++i) {
      const float* row = w_.W_dec + i * cfg_.d_out;
      dec_norm_[static_cast<size_t>(i)] = std::sqrt(kt.dot(row, row, cfg_.d_out));
    }
  }
}

void Sae::compute_norm(const float* x, int64_t rows, RowNorm& norm) const {
  norm.shift.assign(static_cast<size_t>(rows), 0.f);
  norm.in_mul.assign(static_cast<size_t>(rows), 1.f);
  norm.out_mul.assign(static_cast<size_t>(rows), 1.f);
  if (cfg_.norm == SaeNorm::none) return;
  if (cfg_.norm == SaeNorm::constant_scalar_rescale) {  // x * factor, undone as y / factor
    std::fill(norm.in_mul.begin(), norm.in_mul.end(), cfg_.norm_factor);
    std::fill(norm.out_mul.begin(), norm.out_mul.end(), 1.f / cfg_.norm_factor);
    return;
  }
  const int64_t n = cfg_.d_in;
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = x + r * n;
      const size_t i = static_cast<size_t>(r);
      if (cfg_.norm == SaeNorm::constant_norm_rescale) {
        // x * sqrt(d_in) / ||x||, undone by dividing by the same factor
        double ss = 0;
        for (int64_t j = 0; j < n; ++j) ss += static_cast<double>(row[j]) * row[j];
        const double coeff = ss > 0 ? std::sqrt(static_cast<double>(n) / ss) : 1.0;
        norm.in_mul[i] = static_cast<float>(coeff);
        norm.out_mul[i] = static_cast<float>(1.0 / coeff);
      } else {
        // (x - mean) / (std + eps) with torch's unbiased std; undone as y * std + mean
        double mean = 0;
        for (int64_t j = 0; j < n; ++j) mean += row[j];
        mean /= static_cast<double>(n);
        double ss = 0;
        for (int64_t j = 0; j < n; ++j) ss += (row[j] - mean) * (row[j] - mean);
        const double sd = n > 1 ? std::sqrt(ss / static_cast<double>(n - 1)) : 0.0;
        norm.shift[i] = static_cast<float>(mean);
        norm.in_mul[i] = static_cast<float>(1.0 / (sd + kLayerNormEps));
        norm.out_mul[i] = static_cast<float>(sd);
      }
    }
  });
}

void Sae::activate_rows(float* h, int64_t rows) const {
  const int64_t d = cfg_.d_sae;
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    std::vector<float> heap;  // topk
    for (int64_t r = r0; r < r1; ++r) {
      float* row = h + r * d;
      if (cfg_.rescale_acts_by_decoder_norm)
        for (int64_t j = 0; j < d; ++j) row[j] *= dec_norm_[static_cast<size_t>(j)];
      switch (cfg_.activation) {
        case SaeActivation::relu:
          for (int64_t j = 0; j < d; ++j) row[j] = row[j] > 0.f ? row[j] : 0.f;
          break;
        case SaeActivation::jumprelu:
          for (int64_t j = 0; j < d; ++j) row[j] = (row[j] > w_.threshold[j] && row[j] > 0.f) ? row[j] : 0.f;
          break;
        case SaeActivation::gated:
          // row holds the gate's x·W_enc + b_gate; the magnitude path shares x·W_enc, its
          // columns scaled by exp(r_mag): a feature is its ReLU'd magnitude where the gate is open
          for (int64_t j = 0; j < d; ++j) {
            const float mag = magnitude(row[j], j);
            row[j] = row[j] > 0.f && mag > 0.f ? mag : 0.f;
          }
          break;
        case SaeActivation::matching_pursuit:  // encoded by its own loop (encode_rows)
          break;
        case SaeActivation::temporal:  // its novel codes: ReLU, or TopK with k > 0
          if (cfg_.k == 0) {
            for (int64_t j = 0; j < d; ++j) row[j] = row[j] > 0.f ? row[j] : 0.f;
            break;
          }
          [[fallthrough]];
        case SaeActivation::topk:
        case SaeActivation::abstopk: {
          // keep the k largest pre-activations (the first of equal ones), then ReLU them;
          // abstopk: the k largest in absolute value, signed. The k-th largest comes from a
          // min-heap of the k largest so far: with k << d_sae almost every value fails one
          // well-predicted comparison with the heap's top.
          const bool by_abs = cfg_.activation == SaeActivation::abstopk;
          auto key = [by_abs](float v) { return by_abs ? std::fabs(v) : v; };
          float kth = -INFINITY;
          int64_t ties = d;
          if (cfg_.k < d) {
            heap.resize(static_cast<size_t>(cfg_.k));
            std::transform(row, row + cfg_.k, heap.begin(), key);
            std::make_heap(heap.begin(), heap.end(), std::greater<float>());
            for (int64_t j = cfg_.k; j < d; ++j)
              if (key(row[j]) > heap.front()) {
                std::pop_heap(heap.begin(), heap.end(), std::greater<float>());
                heap.back() = key(row[j]);
                std::push_heap(heap.begin(), heap.end(), std::greater<float>());
              }
            kth = heap.front();
            ties = cfg_.k - std::count_if(row, row + d, [&](float v) { return key(v) > kth; });
          }
          for (int64_t j = 0; j < d; ++j) {
            const float v = key(row[j]);
            const bool keep = v > kth || (v == kth && ties-- > 0);
            row[j] = keep && (by_abs || row[j] > 0.f) ? row[j] : 0.f;
          }
          break;
        }
      }
    }
  });
}

void Sae::collect_codes(const float* acts, int64_t rows, SparseCodes& codes) const {
  const int64_t d = cfg_.d_sae;
  const size_t first = static_cast<size_t>(codes.rows);  // appending after these rows
  std::vector<int64_t> counts(static_cast<size_t>(rows));
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = acts + r * d;
      counts[static_cast<size_t>(r)] = std::count_if(row, row + d, [](float v) { return v != 0.f; });
    }
  });
  for (int64_t c : counts) codes.offsets.push_back(codes.offsets.back() + c);
  codes.indices.resize(static_cast<size_t>(codes.offsets.back()));
  codes.values.resize(codes.indices.size());
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = acts + r * d;
      auto o = static_cast<size_t>(codes.offsets[first + static_cast<size_t>(r)]);
      for (int64_t j = 0; j < d; ++j)
        if (row[j] != 0.f) {
          codes.indices[o] = static_cast<int32_t>(j);
          codes.values[o++] = row[j];
        }
    }
  });
  codes.rows += rows;
}

// The SAE's input rows [r0, r0 + rc): x itself, or (x - shift) * in_mul - b_dec in buffer.
const float* Sae::input_rows(const float* x, int64_t r0, int64_t rc, const RowNorm& nm,
                             std::vector<float>& buffer) const {
  const int64_t d_in = cfg_.d_in;
  const float* in = x + r0 * d_in;
  if (!normalizes() && !cfg_.apply_b_dec_to_input) return in;
  buffer.resize(static_cast<size_t>(rc * d_in));
  parallel_for(rc, [&](int64_t a, int64_t b, int) {
    for (int64_t r = a; r < b; ++r) {
      const size_t i = static_cast<size_t>(r0 + r);
      const float shift = nm.shift[i], mul = nm.in_mul[i];
      const float* src = in + r * d_in;
      float* dst = buffer.data() + r * d_in;
      for (int64_t j = 0; j < d_in; ++j)
        dst[j] = (src[j] - shift) * mul - (cfg_.apply_b_dec_to_input ? w_.b_dec[j] : 0.f);
    }
  });
  return buffer.data();
}

void Sae::encode(const float* x, int64_t rows, SparseCodes* codes, float* acts, float* pre, RowNorm* norm,
                 int64_t seq_len, float* predicted) const {
  if (temporal() && (seq_len <= 0 || rows % seq_len != 0))
    throw std::invalid_argument("a temporal SAE reads whole sequences: " + std::to_string(rows) +
                                " rows are not sequences of " + std::to_string(seq_len) + " positions");
  if (!temporal()) seq_len = 1;
  RowNorm local_norm;
  RowNorm& nm = norm ? *norm : local_norm;
  compute_norm(x, rows, nm);
  encode_rows(x, rows, codes, acts, pre, nm, seq_len, predicted);
  poison_nonfinite_rows(x, rows, seq_len, codes, acts, pre, predicted);
}

void Sae::forward(const float* x, int64_t rows, int64_t seq_len, float* out) const {
  RowNorm norm;
  if (temporal()) {  // the sparse codes plus the predicted ones
    const auto n = static_cast<size_t>(checked_size({rows, cfg_.d_sae}, "SAE features"));
    std::vector<float> acts(n), predicted(n);
    encode(x, rows, nullptr, acts.data(), nullptr, &norm, seq_len, predicted.data());
    for (size_t i = 0; i < n; ++i) acts[i] += predicted[i];
    decode_dense(acts.data(), rows, out);
  } else {
    SparseCodes codes;
    encode(x, rows, &codes, nullptr, nullptr, &norm, seq_len);
    decode_codes(codes, out);
  }
  finish(norm, x, rows, out);
}

// seq_len: a bad row of a temporal SAE spoils the later rows of its sequence, which attend to it.
void Sae::poison_nonfinite_rows(const float* x, int64_t rows, int64_t seq_len, SparseCodes* codes, float* acts,
                                float* pre, float* predicted) const {
  const int64_t d_in = cfg_.d_in, d_sae = cfg_.d_sae;
  std::vector<int64_t> bad;
  for (int64_t r = 0; r < rows; ++r) {
    const bool spoiled = !bad.empty() && bad.back() == r - 1 && r % seq_len != 0;
    if (spoiled || !std::all_of(x + r * d_in, x + (r + 1) * d_in, [](float v) { return std::isfinite(v); }))
      bad.push_back(r);
  }
  if (bad.empty()) return;
  for (int64_t r : bad)
    for (float* out : {acts, pre, predicted})
      if (out) std::fill(out + r * d_sae, out + (r + 1) * d_sae, NAN);
  if (!codes) return;
  SparseCodes rebuilt;  // the same rows, a bad one holding only (feature 0, NaN)
  rebuilt.rows = codes->rows;
  size_t next_bad = 0;
  for (int64_t r = 0; r < codes->rows; ++r) {
    if (next_bad < bad.size() && bad[next_bad] == r) {
      ++next_bad;
      rebuilt.indices.push_back(0);
      rebuilt.values.push_back(NAN);
    } else {
      const auto b = static_cast<size_t>(codes->offsets[static_cast<size_t>(r)]);
      const auto e = static_cast<size_t>(codes->offsets[static_cast<size_t>(r) + 1]);
      rebuilt.indices.insert(rebuilt.indices.end(), codes->indices.begin() + b, codes->indices.begin() + e);
      rebuilt.values.insert(rebuilt.values.end(), codes->values.begin() + b, codes->values.begin() + e);
    }
    rebuilt.offsets.push_back(static_cast<int64_t>(rebuilt.indices.size()));
  }
  *codes = std::move(rebuilt);
}

// Transposing each chunk of W_enc on every call was ~7 % of a 512-row ReLU SAE
// forward on AVX2 (Zen 5): memory that cannot change is transposed once, at the
// cost of a second copy of the encoder, made by the first screen that runs. Where
// that memory cannot be had, each chunk is transposed as before.
const float* Sae::transposed_encoder() const {
  if (!cfg_.fixed_encoder) return nullptr;
  std::call_once(transposed_once_, [&] {
    try {
      W_enc_t_.resize(static_cast<size_t>(checked_size({cfg_.d_sae, cfg_.d_in}, "the transposed SAE encoder")));
    } catch (const std::bad_alloc&) {
      W_enc_t_ = {};  // not tried again: call_once is done
      return;
    }
    const KernelTable& kt = kernels::active();
    parallel_for(
        cfg_.d_sae,
        [&](int64_t c0, int64_t c1, int) {
          kt.transpose(w_.W_enc + c0, cfg_.d_sae, cfg_.d_in, c1 - c0, W_enc_t_.data() + c0 * cfg_.d_in, cfg_.d_in);
        },
        64);
    transposed_made_ = true;
  });
  return W_enc_t_.empty() ? nullptr : W_enc_t_.data();
}

void Sae::encode_rows(const float* x, int64_t rows, SparseCodes* codes, float* acts, float* pre, RowNorm& nm,
                      int64_t seq_len, float* predicted) const {
  const int64_t d_sae = cfg_.d_sae;
  if (codes) *codes = SparseCodes{};
  std::vector<float> sae_in, scratch;
  // A bfloat16 screen rules out most features before the float32 matmul
  // (sae/screen.hpp); its thresholds are on pre-activations, so an SAE that
  // rescales them by its decoder norms must be TopK (which ranks the products); a gated
  // SAE's values are not its pre-activations, AbsTopK ranks their absolute values,
  // and matching pursuit and temporal SAEs encode otherwise
  const bool topk = cfg_.activation == SaeActivation::topk;
  const bool screenable = topk || cfg_.activation == SaeActivation::relu || cfg_.activation == SaeActivation::jumprelu;
  if (!pre && screenable && (topk || !cfg_.rescale_acts_by_decoder_norm) && screening_applies(rows, cfg_.d_in)) {
    ScreenedEncoder screen{cfg_.d_in,
                           d_sae,
                           w_.W_enc,
                           w_.b_enc,
                           cfg_.activation == SaeActivation::jumprelu ? w_.threshold : nullptr,
                           topk ? cfg_.k : 0,
                           cfg_.rescale_acts_by_decoder_norm ? dec_norm_.data() : nullptr};
    if (cfg_.fixed_encoder) screen.transposed = [this] { return transposed_encoder(); };
    SparseCodes local;
    SparseCodes& out = codes ? *codes : local;
    if (screened_encode(screen, input_rows(x, 0, rows, nm, sae_in), rows, out)) {
      if (acts) scatter_codes(out, acts);
      return;
    }
  }
  // whole sequences per chunk: a temporal SAE attends over each
  const int64_t chunk = std::max<int64_t>(1, chunk_rows(d_sae) / seq_len) * seq_len;
  std::vector<float> temporal_in, temporal_pred;
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t rc = std::min(chunk, rows - r0);
    const float* in = input_rows(x, r0, rc, nm, sae_in);
    float* h = acts ? acts + r0 * d_sae : nullptr;
    if (!h) {
      scratch.resize(static_cast<size_t>(rc * d_sae));
      h = scratch.data();
    }
    if (cfg_.activation == SaeActivation::matching_pursuit) {
      matching_pursuit(cfg_.matching_pursuit, w_.W_dec, cfg_.d_in, d_sae, in, rc, h);
      if (pre) std::memset(pre + r0 * d_sae, 0, static_cast<size_t>(rc * d_sae) * sizeof(float));  // it has none
      if (codes) collect_codes(h, rc, *codes);
      continue;
    }
    if (temporal()) {  // the input less what attention predicts, times lam
      temporal_in.assign(in, in + rc * cfg_.d_in);
      float* z_pred = predicted ? predicted + r0 * d_sae : nullptr;
      if (!z_pred) {
        temporal_pred.resize(static_cast<size_t>(rc * d_sae));
        z_pred = temporal_pred.data();
      }
      const TemporalWeights tw{w_.W_enc, w_.W_dec, w_.attn};
      temporal_predict(cfg_.temporal, tw, cfg_.d_in, d_sae, rc / seq_len, seq_len, temporal_in.data(), z_pred);
      for (float& v : temporal_in) v *= cfg_.temporal.lam;
      in = temporal_in.data();
    }
    matmul(in, rc, cfg_.d_in, cfg_.d_in, w_.W_enc, d_sae, d_sae, 1, w_.b_enc, h, d_sae);
    if (pre) std::memcpy(pre + r0 * d_sae, h, static_cast<size_t>(rc * d_sae) * sizeof(float));
    if (pre && cfg_.activation == SaeActivation::gated)  // SAELens records the magnitude path's
      for (int64_t i = 0; i < rc * d_sae; ++i) pre[r0 * d_sae + i] = magnitude(pre[r0 * d_sae + i], i % d_sae);
    activate_rows(h, rc);
    if (codes) collect_codes(h, rc, *codes);
  }
}

// acts [codes.rows, d_sae]: zero but for the codes.
void Sae::scatter_codes(const SparseCodes& codes, float* acts) const {
  const int64_t d = cfg_.d_sae;
  parallel_for(codes.rows, [&](int64_t r0, int64_t r1, int) {
    std::memset(acts + r0 * d, 0, static_cast<size_t>((r1 - r0) * d) * sizeof(float));
    for (int64_t r = r0; r < r1; ++r)
      for (auto o = static_cast<size_t>(codes.offsets[r]); o < static_cast<size_t>(codes.offsets[r + 1]); ++o)
        acts[r * d + codes.indices[o]] = codes.values[o];
  });
}

void Sae::top_features(const float* x, int64_t rows, int64_t k, int64_t* indices, float* values,
                       int64_t seq_len) const {
  const int64_t d = cfg_.d_sae, seq = temporal() && seq_len > 0 ? seq_len : 1;
  const int64_t chunk = std::max<int64_t>(1, chunk_rows(d) / seq) * seq;  // whole sequences
  if (k < 0 || k > d) throw std::invalid_argument("top_features needs 0 <= k <= d_sae");
  std::vector<float> acts;
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t rc = std::min(chunk, rows - r0);
    acts.resize(static_cast<size_t>(rc * d));
    encode(x + r0 * cfg_.d_in, rc, nullptr, acts.data(), nullptr, nullptr, seq_len);
    top_k_rows(acts.data(), rc, d, k, indices + r0 * k, values + r0 * k);
  }
}

namespace {
// A row's features' W_dec rows lie anywhere in memory, beyond what the
// hardware prefetchers guess: fetching the row kDecodeAhead features ahead
// while one is added (across rows) keeps several reads in flight. A 512-token
// decode ran 15-17 % faster (9 % with 2304-wide rows), the SAE forward 2.4 %
// (Zen 5, 2 threads, alternating processes).
constexpr size_t kDecodeAhead = 2;
void prefetch_row(const float* row, int64_t n) {
  const auto end = reinterpret_cast<uintptr_t>(row + n);  // addresses as integers: a line's may precede the array
  for (uintptr_t a = reinterpret_cast<uintptr_t>(row) & ~uintptr_t{63}; a < end; a += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(a), 0, 3);
}
}  // namespace

void Sae::decode_codes(const SparseCodes& codes, float* out) const {
  const int64_t d = cfg_.d_out;
  const KernelTable& kt = kernels::active();
  parallel_for(codes.rows, [&](int64_t r0, int64_t r1, int) {
    const auto last = static_cast<size_t>(codes.offsets[static_cast<size_t>(r1)]);  // the range's pairs end
    for (int64_t r = r0; r < r1; ++r) {
      float* y = out + r * d;
      if (cfg_.decode_bias)
        std::memcpy(y, w_.b_dec, static_cast<size_t>(d) * sizeof(float));
      else
        std::memset(y, 0, static_cast<size_t>(d) * sizeof(float));
      const auto end = static_cast<size_t>(codes.offsets[static_cast<size_t>(r) + 1]);
      for (auto o = static_cast<size_t>(codes.offsets[static_cast<size_t>(r)]); o < end; ++o) {
        if (o + kDecodeAhead < last)  // the next row's first features too
          prefetch_row(w_.W_dec + static_cast<int64_t>(codes.indices[o + kDecodeAhead]) * d, d);
        const int32_t f = codes.indices[o];
        const float v =
            cfg_.rescale_acts_by_decoder_norm ? codes.values[o] / dec_norm_[static_cast<size_t>(f)] : codes.values[o];
        kt.axpy(y, v, w_.W_dec + static_cast<int64_t>(f) * d, d);
      }
    }
  });
}

void Sae::decode_dense(const float* acts, int64_t rows, float* out) const {
  const int64_t d_sae = cfg_.d_sae;
  int64_t nnz = 0;
  for (int64_t i = 0; i < rows * d_sae; ++i) nnz += acts[i] != 0.f;
  // A sparse walk reads one W_dec row per active feature; past ~1/8 density the GEMM wins.
  if (nnz * 8 < rows * d_sae) {
    SparseCodes codes;
    collect_codes(acts, rows, codes);
    decode_codes(codes, out);
    return;
  }
  const float* a = acts;
  std::vector<float> scaled;
  if (cfg_.rescale_acts_by_decoder_norm) {
    scaled.assign(acts, acts + rows * d_sae);
    for (size_t i = 0; i < scaled.size(); ++i) scaled[i] /= dec_norm_[i % static_cast<size_t>(d_sae)];
    a = scaled.data();
  }
  matmul(a, rows, d_sae, d_sae, w_.W_dec, cfg_.d_out, cfg_.d_out, 1, cfg_.decode_bias ? w_.b_dec : nullptr, out,
         cfg_.d_out);
}

void Sae::finish(const RowNorm& norm, const float* x, int64_t rows, float* out) const {
  const int64_t d = cfg_.d_out;
  if (normalizes() && cfg_.denormalize_output) {
    parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; ++r) {
        const size_t i = static_cast<size_t>(r);
        float* y = out + r * d;
        for (int64_t j = 0; j < d; ++j) y[j] = y[j] * norm.out_mul[i] + norm.shift[i];
      }
    });
  }
  if (w_.W_skip && x) {
    // out += x · W_skipᵀ, W_skip stored [d_out, d_in]
    matmul(x, rows, cfg_.d_in, cfg_.d_in, w_.W_skip, d, 1, cfg_.d_in, nullptr, out, d, true);
  }
}

// ---- splice -------------------------------------------------------------------

SaeSplice::SaeSplice(std::shared_ptr<const Sae> sae, bool keep_error, std::string hook_in, std::string hook_out)
    : sae_(std::move(sae)), keep_error_(keep_error), hook_in_(std::move(hook_in)), hook_out_(std::move(hook_out)) {
  if (!sae_) throw std::invalid_argument("a splice needs an SAE");
}

void SaeSplice::set_sae(std::shared_ptr<const Sae> sae) {
  if (!sae) throw std::invalid_argument("a splice needs an SAE");
  std::shared_ptr<const Sae> old;  // let go of after the lock: the last owner's release takes the GIL
  std::lock_guard<std::mutex> lock(mutex_);
  const SaeConfig &a = sae_->config(), &b = sae->config();
  if (a.d_in != b.d_in || a.d_sae != b.d_sae || a.d_out != b.d_out)
    throw std::invalid_argument("a splice's SAE can only be replaced by one of the same sizes");
  old = std::exchange(sae_, std::move(sae));
}

std::shared_ptr<const Sae> SaeSplice::sae() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sae_;
}

void SaeSplice::set_clamps(std::vector<int32_t> features, std::vector<float> values, std::vector<int64_t> positions) {
  if (features.size() != values.size()) throw std::invalid_argument("one clamp value per feature");
  const int64_t d_sae = sae()->config().d_sae;  // the same for every SAE it runs (set_sae)
  for (int32_t f : features)
    if (f < 0 || f >= d_sae)
      throw std::out_of_range("feature " + std::to_string(f) + " is out of range for d_sae " + std::to_string(d_sae));
  std::lock_guard<std::mutex> lock(mutex_);
  settings_.clamp_features = std::move(features);
  settings_.clamp_values = std::move(values);
  settings_.clamp_positions = std::move(positions);
}

void SaeSplice::set_recording(bool record, bool record_pre) {
  std::lock_guard<std::mutex> lock(mutex_);
  settings_.record = record;
  settings_.record_pre = record_pre;
}

void SaeSplice::set_bypass(std::vector<uint8_t> rows) {
  std::lock_guard<std::mutex> lock(mutex_);
  settings_.bypass = std::move(rows);
}

std::shared_ptr<const SpliceRecord> SaeSplice::last() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return last_;
}

// Rows of a TL-ordered activation whose trailing axes hold `width` numbers:
// the last axis, or the last two flattened (hook_z: [.., head, d_head]).
int64_t SaeSplice::rows_of(const std::vector<int64_t>& shape, int64_t width, const char* what) const {
  int64_t numel = 1;
  for (int64_t s : shape) numel *= s;
  const size_t n = shape.size();
  const bool last = n >= 1 && shape[n - 1] == width;
  const bool last_two = n >= 4 && shape[n - 2] * shape[n - 1] == width;
  if (!last && !last_two)
    throw std::invalid_argument(std::string("the SAE's ") + what + " is " + std::to_string(width) +
                                " but the activation has shape " + shape_string(shape));
  return numel / width;
}

void SaeSplice::call(int, int64_t pos_offset, std::vector<float>& buffer, const std::vector<int64_t>& shape) {
  if (transcoder()) throw std::logic_error("a transcoder's splice runs through a hook plan (for_plan)");
  rows_of(shape, sae()->config().d_in, "d_in");
  const std::vector<float> x = buffer;
  run(x.data(), buffer, shape, pos_offset);
}

namespace {

// The hook id of a name in a model of n_layers blocks, or -1.
int hook_id_of(const std::string& name, int64_t n_layers) {
  for (int id = 0; id < hook_count(n_layers); ++id)
    if (hook_name(id, n_layers) == name) return id;
  return -1;
}

// A transcoder's splice within one plan: the input its input hook gave,
// kept for the output hook of the same pass.
class TranscoderPass : public HookCallback {
 public:
  TranscoderPass(std::shared_ptr<SaeSplice> splice, int64_t n_layers)
      : splice_(std::move(splice)),
        n_layers_(n_layers),
        in_id_(hook_id_of(splice_->hook_in(), n_layers)),
        out_id_(hook_id_of(splice_->hook_out(), n_layers)) {}

  void call(int hook_id, int64_t pos_offset, std::vector<float>& buffer, const std::vector<int64_t>& shape) override {
    const std::shared_ptr<const Sae> sae = splice_->sae();  // its sizes: the same whichever it runs
    const SaeConfig& c = sae->config();
    if (hook_id == in_id_) {
      rows_ = splice_->rows_of(shape, c.d_in, "d_in");
      input_ = buffer;
      has_input_ = true;
      return;
    }
    if (hook_id != out_id_)
      throw std::invalid_argument("this transcoder's splice runs at " + splice_->hook_in() + " and " +
                                  splice_->hook_out() + ", not " + hook_name(hook_id, n_layers_));
    if (!has_input_)
      throw std::invalid_argument("the transcoder's output hook " + splice_->hook_out() +
                                  " ran without its input hook " + splice_->hook_in() +
                                  " before it: a run must pass through both, in this order");
    has_input_ = false;
    const std::vector<float> x = std::move(input_);
    input_.clear();
    if (splice_->rows_of(shape, c.d_out, "d_out") != rows_)
      throw std::invalid_argument("a transcoder's input and output hooks cover different numbers of positions");
    splice_->run(x.data(), buffer, shape, pos_offset);
  }

 private:
  std::shared_ptr<SaeSplice> splice_;
  int64_t n_layers_;
  int in_id_, out_id_;
  std::vector<float> input_;
  int64_t rows_ = 0;
  bool has_input_ = false;
};

}  // namespace

std::shared_ptr<HookCallback> SaeSplice::for_plan(int64_t n_layers) {
  if (!transcoder()) return nullptr;  // an SAE keeps nothing between calls
  return std::make_shared<TranscoderPass>(shared_from_this(), n_layers);
}

namespace {

// The codes with the clamped features set to their values in the rows marked in `clamp`.
SparseCodes with_clamps(const SparseCodes& codes, const std::vector<int32_t>& features,
                        const std::vector<float>& values, const std::vector<uint8_t>& clamp_rows) {
  SparseCodes out;
  out.rows = codes.rows;
  for (size_t r = 0; r < static_cast<size_t>(codes.rows); ++r) {
    const bool clamp = clamp_rows[r] != 0;
    for (auto o = static_cast<size_t>(codes.offsets[r]); o < static_cast<size_t>(codes.offsets[r + 1]); ++o) {
      const int32_t f = codes.indices[o];
      if (clamp && std::find(features.begin(), features.end(), f) != features.end()) continue;
      out.indices.push_back(f);
      out.values.push_back(codes.values[o]);
    }
    if (clamp) {
      out.indices.insert(out.indices.end(), features.begin(), features.end());
      out.values.insert(out.values.end(), values.begin(), values.end());
    }
    out.offsets.push_back(static_cast<int64_t>(out.indices.size()));
  }
  return out;
}

}  // namespace

void SaeSplice::run(const float* x, std::vector<float>& target, const std::vector<int64_t>& shape, int64_t pos_offset) {
  Settings set;
  std::shared_ptr<const Sae> held;  // the SAE this call runs, whatever set_sae does meanwhile
  {
    std::lock_guard<std::mutex> lock(mutex_);
    set = settings_;
    held = sae_;
  }
  const Sae& sae = *held;
  const SaeConfig& c = sae.config();
  const int64_t rows = static_cast<int64_t>(target.size()) / c.d_out;
  const std::vector<uint8_t>& bypass = set.bypass;
  if (!bypass.empty() && static_cast<int64_t>(bypass.size()) != rows)
    throw std::invalid_argument("the bypass mask has " + std::to_string(bypass.size()) +
                                " rows but the activation has " + std::to_string(rows));
  const bool clamping = !set.clamp_features.empty();
  if (keep_error_ && !clamping && !set.record) return;  // the output would equal the input

  // 1) encode, 2) decode (kept in normalized units for the record), 3) undo the normalization
  SparseCodes codes;
  RowNorm norm;
  std::vector<float> pre(set.record_pre ? static_cast<size_t>(checked_size({rows, c.d_sae}, "SAE pre-activations"))
                                        : 0);
  // a temporal SAE attends over the positions of each sequence ([batch, pos, d_in] only)
  const int64_t seq_len = shape.size() >= 3 && rows == shape[0] * shape[1] ? shape[1] : 0;
  sae.encode(x, rows, &codes, nullptr, set.record_pre ? pre.data() : nullptr, &norm, seq_len);
  std::vector<float> clean(target.size());
  sae.decode_codes(codes, clean.data());
  std::vector<float> recons = set.record ? clean : std::vector<float>();
  sae.finish(norm, x, rows, clean.data());

  // 4) with clamps, decode again from the edited codes
  std::vector<float> clamped;
  if (clamping) {
    clamped.resize(target.size());
    // rows are [batch, pos] flattened: clamp where the row is not bypassed and its position is chosen
    const int64_t n_pos = shape.size() >= 2 ? shape[1] : 1;
    const std::vector<int64_t>& chosen_pos = set.clamp_positions;
    std::vector<uint8_t> clamp_rows(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pos = pos_offset + r % n_pos;
      const bool chosen =
          chosen_pos.empty() || std::find(chosen_pos.begin(), chosen_pos.end(), pos) != chosen_pos.end();
      clamp_rows[static_cast<size_t>(r)] = chosen && (bypass.empty() || !bypass[static_cast<size_t>(r)]);
    }
    sae.decode_codes(with_clamps(codes, set.clamp_features, set.clamp_values, clamp_rows), clamped.data());
    sae.finish(norm, x, rows, clamped.data());
  }
  const std::vector<float>& sae_out = clamping ? clamped : clean;

  // 5) the reconstruction, or the activation plus what the clamps changed (keep_error)
  std::vector<float> result(target.size());
  const auto width = static_cast<size_t>(c.d_out);
  for (size_t i = 0; i < result.size(); ++i) {
    if (!bypass.empty() && bypass[i / width])
      result[i] = target[i];
    else
      result[i] = keep_error_ ? target[i] + (sae_out[i] - clean[i]) : sae_out[i];
  }

  if (set.record) {
    auto rec = std::make_shared<SpliceRecord>();
    rec->shape = shape;
    rec->input.assign(x, x + rows * c.d_in);
    rec->error.resize(target.size());
    for (size_t i = 0; i < target.size(); ++i) rec->error[i] = target[i] - clean[i];
    rec->recons = std::move(recons);
    rec->acts_pre = std::move(pre);
    rec->codes = std::move(codes);
    rec->output = result;
    std::lock_guard<std::mutex> lock(mutex_);
    last_ = std::move(rec);
  }
  target = std::move(result);
}

}  // namespace tmech
