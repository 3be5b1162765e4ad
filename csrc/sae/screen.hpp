// Screened SAE encoding, on CPUs with bfloat16 dot products (AVX512-BF16).
//
// Encoding a batch costs one dense GEMM, x·W_enc, of which only the few
// features that fire are kept. Here that GEMM runs on bfloat16-rounded
// inputs and weights, at twice the float32 rate, as a screen; the features
// that pass it are recomputed in float32.
//
// The screen is exact, not a heuristic. Rounding a and w to bfloat16 (8
// significant bits, u = 2^-8) moves each product by at most (2u + u²)|a_i w_i|;
// the float32 sums of the screen and of the float32 encoder each add at most
// γ_K Σ|a_i w_i| (γ_K = K 2^-24 / (1 - K 2^-24)); and Σ|a_i w_i| ≤ ‖a‖‖w‖.
// So when the screened pre-activation plus c‖a‖‖w_j‖ stays at or below the
// feature's threshold, the float32 encoder would not fire it either. On
// trained SAEs (and the benchmark's) a few times as many features pass as
// fire; those are recomputed from the float32 weights. TopK keeps the k
// largest instead of those above a threshold: the k-th largest lower bound
// seen so far stands in for the threshold (screen.cpp).
#pragma once
#include <cstdint>
#include <string>

namespace tmech {

struct SparseCodes;

struct ScreenedEncoder {
  int64_t d_in = 0, d_sae = 0;
  const float* W_enc = nullptr;      // [d_in, d_sae]
  const float* b_enc = nullptr;      // [d_sae]
  const float* threshold = nullptr;  // [d_sae] for JumpReLU; null for ReLU and TopK
  int64_t k = 0;                     // TopK: features kept per row; 0 for ReLU / JumpReLU
  const float* dec_norm = nullptr;   // TopK: ranks pre-activation * dec_norm (rescale_acts_by_decoder_norm)
};

// When the screen runs. where_it_pays: the CPU has bfloat16 dot products and
// the batch has more than kMatmulSmallM rows (fewer are bound by reading
// W_enc). always: on any kernel variant and any rows, where the screen's
// matmul widens the rounded weights instead and the bound covers that too
// (tests use it to check the screen on every CPU). never: the float32 path.
enum class ScreenMode { where_it_pays, always, always_bf16, always_int16, never };
void set_screen_mode(ScreenMode mode);
ScreenMode screen_mode();
// The modes' names: "auto" (where_it_pays), "always", "bf16", "int16", "never".
ScreenMode parse_screen_mode(const std::string& name);
const char* screen_mode_name(ScreenMode mode);

// Row-feature pairs screened and recomputed in float32 since the last call
// (TopK's recomputed are its candidates), for measuring pass rates.
struct ScreenCounts {
  int64_t screened, recomputed;
};
ScreenCounts take_screen_counts();

// Which screen encodes a batch, if any.
enum class ScreenKind { none, bf16, int16 };
ScreenKind screen_kind(int64_t rows, int64_t d_in);
bool screening_applies(int64_t rows, int64_t d_in);
// The int16 screen's widest input (its Q_w shrinks as 1 / sqrt(d_in)).
constexpr int64_t kInt16MaxDIn = 65536;

// Appends `rows` rows to codes, for each row of `in` (the SAE's input after
// its normalization and b_dec shift, [rows, d_in]): ReLU / JumpReLU, the
// features whose float32 pre-activation exceeds max(threshold, 0), with that
// pre-activation; TopK, the positive ones among the k largest
// pre-activation * dec_norm (ties to the lower index). Returns false, codes
// unchanged, where TopK cannot vouch for its choice (k >= d_sae, values that
// are not finite): the float32 path must run instead.
bool screened_encode(const ScreenedEncoder& e, const float* in, int64_t rows, SparseCodes& codes);

}  // namespace tmech
