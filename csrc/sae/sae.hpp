// Sparse autoencoders and transcoders in SAELens's parameterisation.
//
// encode: x [rows, d_in] -> normalize -> (- b_dec) -> x·W_enc + b_enc
//         -> ReLU / JumpReLU / TopK / gated / AbsTopK -> sparse codes (active features per row)
//         (matching pursuit: its own loop over W_dec, sae/matching_pursuit.hpp; temporal: the
//         input first loses what attention over earlier positions predicts, sae/temporal.hpp)
// decode: codes·W_dec + b_dec -> undo the input normalization (+ x·W_skipᵀ)
//
// The encoder GEMM is tmech::matmul; decoding walks only the active features
// (axpy over W_dec rows), which is what makes splicing a wide SAE cheap.
//
// SaeSplice is a hook action: it replaces an activation by its
// reconstruction (or keeps the error term), can clamp features, and records
// what it saw on its last call for activation caches.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/hooks.hpp"
#include "core/weights.hpp"
#include "sae/matching_pursuit.hpp"
#include "sae/temporal.hpp"

namespace tmech {

std::string shape_string(const std::vector<int64_t>& shape);  // "[2, 5, 64]", for messages

enum class SaeActivation { relu, jumprelu, topk, gated, abstopk, matching_pursuit, temporal };
enum class SaeNorm { none, constant_norm_rescale, layer_norm, constant_scalar_rescale };

struct SaeConfig {
  int64_t d_in = 0, d_sae = 0, d_out = 0;
  SaeActivation activation = SaeActivation::relu;
  int64_t k = 0;                              // topk, abstopk; temporal: 0 for ReLU, else its TopK's k
  bool apply_b_dec_to_input = false;          // needs d_in == d_out
  bool rescale_acts_by_decoder_norm = false;  // topk
  SaeNorm norm = SaeNorm::none;
  bool denormalize_output = true;  // SAELens transcoders leave their output in normalized units
  bool decode_bias = true;         // decoding adds b_dec (tied matching-pursuit and temporal SAEs may not)
  float norm_factor = 1.f;         // constant_scalar_rescale's: inputs times it, outputs divided by it
  // W_enc's memory cannot change (a read-only file mapping): the screen may keep
  // a transposed copy rather than transpose each chunk on every call.
  bool fixed_encoder = false;
  MatchingPursuitConfig matching_pursuit;
  TemporalConfig temporal;
  void validate() const;
};

// SAELens's names, as the core's values; std::invalid_argument naming an unknown one.
SaeActivation parse_sae_activation(const std::string& name);  // kSaeActivations in sae.cpp
std::vector<std::string> sae_activation_names();              // every name parse_sae_activation knows
SaeNorm parse_sae_norm(
    const std::string& name);  // "none", "constant_norm_rescale", "layer_norm", "constant_scalar_rescale"

struct SaeWeights {
  const float* W_enc = nullptr;            // [d_in, d_sae]
  const float* b_enc = nullptr;            // [d_sae]
  const float* W_dec = nullptr;            // [d_sae, d_out]
  const float* b_dec = nullptr;            // [d_out]
  const float* threshold = nullptr;        // [d_sae], jumprelu only
  const float* W_skip = nullptr;           // [d_out, d_in], skip transcoders only
  const float* r_mag = nullptr;            // [d_sae], gated only: log of the magnitude path's W_enc column scales
  const float* b_mag = nullptr;            // [d_sae], gated only: the magnitude path's bias (b_enc is the gate's)
  std::vector<TemporalLayerWeights> attn;  // temporal only: its attention layers
};

// The weights cfg needs, from src (float32, outside any block).
SaeWeights read_sae_weights(const SaeConfig& cfg, WeightSource& src);

// Active features of `rows` rows: row r's are indices/values[offsets[r], offsets[r+1]),
// in increasing feature order.
struct SparseCodes {
  int64_t rows = 0;
  std::vector<int64_t> offsets{0};
  std::vector<int32_t> indices;
  std::vector<float> values;
};

// Codes from a caller's arrays, checked: offsets [rows + 1] from 0 to nnz,
// never decreasing; indices [nnz] in [0, d_sae) (std::out_of_range otherwise,
// checked before they are narrowed to int32); values [nnz].
SparseCodes sparse_codes(const int64_t* offsets, int64_t rows, const int64_t* indices, const float* values, int64_t nnz,
                         int64_t d_sae);

// Per-row input normalization: sae_in = (x - shift) * in_mul, undone on the
// output as y * out_mul + shift. Empty when the SAE does not normalize.
struct RowNorm {
  std::vector<float> shift, in_mul, out_mul;
};

class Sae {
 public:
  Sae(SaeConfig cfg, SaeWeights w);
  const SaeConfig& config() const { return cfg_; }
  // W_enc transposed ([d_sae, d_in]) where fixed_encoder keeps it, made by the first
  // call (the first screen that runs); null where it is not kept or memory ran out.
  const float* transposed_encoder() const;
  bool keeps_transposed_encoder() const { return transposed_made_.load(); }  // made, that is

  // x [rows, d_in]. Outputs may be null: codes, dense activations
  // acts [rows, d_sae], pre-activations pre [rows, d_sae], the normalization.
  // A row holding NaN or infinity comes out NaN (every feature of acts and
  // pre; in codes, feature 0 with value NaN, which decodes to a NaN row), as
  // in SAELens, where a ReLU passes NaN on (a temporal SAE's later rows of
  // that sequence too, which attend to it).
  // seq_len: a temporal SAE's rows are sequences of seq_len positions
  // (std::invalid_argument unless it divides rows); predicted [rows, d_sae]:
  // its predicted codes, which forward adds to the sparse ones.
  void encode(const float* x, int64_t rows, SparseCodes* codes, float* acts, float* pre, RowNorm* norm,
              int64_t seq_len = 0, float* predicted = nullptr) const;
  // out [rows, d_out]: the reconstruction, as SAELens's forward (a temporal
  // SAE's decodes its predicted codes too), the normalization undone.
  void forward(const float* x, int64_t rows, int64_t seq_len, float* out) const;
  // The k largest feature activations of each row, largest first.
  void top_features(const float* x, int64_t rows, int64_t k, int64_t* indices, float* values,
                    int64_t seq_len = 0) const;
  void compute_norm(const float* x, int64_t rows, RowNorm& norm) const;

  // out [rows, d_out] = codes·W_dec + b_dec, in normalized units (SAELens's hook_sae_recons).
  void decode_codes(const SparseCodes& codes, float* out) const;
  // The same from dense activations [rows, d_sae] (sparse walk when mostly zeros).
  void decode_dense(const float* acts, int64_t rows, float* out) const;
  // Undo the normalization and add the skip connection (x: the raw input, for W_skip; null: no skip term).
  void finish(const RowNorm& norm, const float* x, int64_t rows, float* out) const;

  bool normalizes() const { return cfg_.norm != SaeNorm::none; }
  bool temporal() const { return cfg_.activation == SaeActivation::temporal; }

 private:
  const float* input_rows(const float* x, int64_t r0, int64_t rc, const RowNorm& nm, std::vector<float>& buffer) const;
  void activate_rows(float* h, int64_t rows) const;
  void collect_codes(const float* acts, int64_t rows, SparseCodes& codes) const;
  void scatter_codes(const SparseCodes& codes, float* acts) const;
  void encode_rows(const float* x, int64_t rows, SparseCodes* codes, float* acts, float* pre, RowNorm& nm,
                   int64_t seq_len, float* predicted) const;
  void poison_nonfinite_rows(const float* x, int64_t rows, int64_t seq_len, SparseCodes* codes, float* acts, float* pre,
                             float* predicted) const;

  SaeConfig cfg_;
  SaeWeights w_;
  std::vector<float> dec_norm_;   // ||W_dec[i]||, for rescale_acts_by_decoder_norm
  std::vector<float> mag_scale_;  // exp(r_mag), gated only
  // fixed_encoder: W_enc transposed ([d_sae, d_in]), made by the first screened encode
  mutable std::once_flag transposed_once_;
  mutable std::vector<float> W_enc_t_;
  mutable std::atomic<bool> transposed_made_{false};
  // A gated SAE's magnitude pre-activation of feature j from its gate's
  float magnitude(float gate, int64_t j) const {
    return (gate - w_.b_enc[j]) * mag_scale_[static_cast<size_t>(j)] + w_.b_mag[j];
  }
};

// What a splice saw on one call (filled only when recording).
struct SpliceRecord {
  std::vector<int64_t> shape;  // the (output) activation's TL shape
  std::vector<float> input, acts_pre, recons, error, output;
  SparseCodes codes;
};

// A hook action that runs an SAE: it replaces the activation by the
// reconstruction (or keeps the error term), can clamp features, and, when
// recording, keeps what its last call saw. An SAE reads and writes one hook
// point; a transcoder reads hook_in and writes the later hook_out, and holds
// the input in between in an object of the plan (for_plan), never in the
// splice, which threads and passes may share.
class SaeSplice : public HookCallback, public std::enable_shared_from_this<SaeSplice> {
 public:
  SaeSplice(std::shared_ptr<const Sae> sae, bool keep_error, std::string hook_in, std::string hook_out);

  // An SAE's call at its hook point (a transcoder's run through for_plan's object).
  void call(int hook_id, int64_t pos_offset, std::vector<float>& buffer, const std::vector<int64_t>& shape) override;
  std::shared_ptr<HookCallback> for_plan(int64_t n_layers) override;

  // Set these features to these activations at these absolute positions (empty: all).
  void set_clamps(std::vector<int32_t> features, std::vector<float> values, std::vector<int64_t> positions = {});
  // record: inputs, codes, reconstructions, errors, outputs; record_pre: pre-activations too.
  void set_recording(bool record, bool record_pre);
  // Rows (flattened batch x pos) to leave untouched (empty: none); a call on
  // an activation of another number of rows throws.
  void set_bypass(std::vector<uint8_t> rows);

  // Runs `sae` from the next call on (an SAE rebuilt with new weights or a new
  // config, of the same sizes); a call under way finishes with the one it began
  // with (a transcoder's pass encodes and decodes at its output hook, with the SAE
  // of that call).
  void set_sae(std::shared_ptr<const Sae> sae);

  // What the last call to finish recorded; null before any did.
  std::shared_ptr<const SpliceRecord> last() const;
  std::shared_ptr<const Sae> sae() const;
  bool transcoder() const { return hook_in_ != hook_out_; }
  const std::string& hook_in() const { return hook_in_; }
  const std::string& hook_out() const { return hook_out_; }

  // Rows of an activation of this shape whose trailing axes hold `width`
  // numbers (the SAE's d_in or d_out, named `what` in the error).
  int64_t rows_of(const std::vector<int64_t>& shape, int64_t width, const char* what) const;
  // x: the SAE's input rows; target: the activation at the output hook, replaced in place.
  void run(const float* x, std::vector<float>& target, const std::vector<int64_t>& shape, int64_t pos_offset);

 private:
  // What set_* chose: every call reads a copy, taken under the lock.
  struct Settings {
    std::vector<int32_t> clamp_features;
    std::vector<float> clamp_values;
    std::vector<int64_t> clamp_positions;
    bool record = false, record_pre = false;
    std::vector<uint8_t> bypass;
  };

  std::shared_ptr<const Sae> sae_;
  bool keep_error_;
  std::string hook_in_, hook_out_;
  mutable std::mutex mutex_;  // guards sae_, settings_ and last_
  Settings settings_;
  std::shared_ptr<const SpliceRecord> last_;
};

}  // namespace tmech
