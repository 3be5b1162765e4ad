// Screened SAE encoding: in bfloat16 on CPUs with its dot products
// (AVX512-BF16), in int16 on AVX2.
//
// Encoding a batch costs one dense GEMM, x·W_enc, of which only the few
// features that fire are kept. Here that GEMM runs on rounded inputs and
// weights, at twice the float32 rate, as a screen; the features that pass it
// are recomputed in float32. The screen is exact, not a heuristic: a feature
// is ruled out only where its screened pre-activation plus a rigorous bound on
// the screen's error stays at or below its threshold, so the float32 encoder
// would not fire it either.
//
// bfloat16. Rounding a and w to bfloat16 (8 significant bits, u = 2^-8)
// moves each product by at most (2u + u²)|a_i w_i|; the float32 sums of the
// screen and of the float32 encoder each add at most γ_K Σ|a_i w_i| (γ_K =
// K 2^-24 / (1 - K 2^-24)); and Σ|a_i w_i| ≤ ‖a‖‖w‖.
//
// int16 (vpmaddwd: 16 multiply-adds per instruction, an FMA's 8). Each row
// a and each feature's weights w are scaled by their largest magnitude to
// integers, ã = round(a / s_a), w̃ = round(w / s_w), |ã| ≤ Q_a, |w̃| ≤ Q_w;
// Σ ã_i w̃_i is summed exactly in int32, wrapping, which is exact because
// |Σ ã_i w̃_i| ≤ ‖ã‖₁ Q_w < 2^31: Q_w = min(32767, √(2^33 / K)) and each row
// takes the largest Q_a ≤ 32767 whose ‖ã‖₁ stays within (2^31 - 1) / Q_w (so
// a row with a few outlier dimensions, small ‖a‖₁ for its max, gets more
// bits: no need to split outliers out). With u = 2^-24 and e = s/2 + 3.01 u
// max|x| the per-element error (rounding x / s to float, then to an integer),
// or e = max|x| where max|x| < 2^-64 and x is quantized to zeros:
//   |Σ a_i w_i - s_a s_w Σ ã_i w̃_i| ≤ e_a ‖w‖₁ + e_w s_a ‖ã‖₁,
//   ‖w‖₁ ≤ s_w ‖w̃‖₁ + K e_w;
// the score fl(fl(float(I) s_w) s_a) adds 3 roundings, at most
// 3.01 u s_a ‖ã‖₁ s_w Q_w ≤ 3.02 u s_a ‖ã‖₁ max|w|; and the float32 encoder
// and the recomputation each add γ_K Σ|a_i w_i| ≤ γ_K ‖a‖₂ ‖w‖₂ (the norms
// padded for their own rounding and for squares that underflow). So
//   |score - x·w| ≤ e_a [s_w ‖w̃‖₁ + K e_w] + s_a ‖ã‖₁ [e_w + 3.02 u max|w|]
//                   + 2 γ_K ‖a‖₂ ‖w‖₂,
// three products of a row factor and a feature factor (screen.cpp: Rows::f,
// Buffers::c). Each feature factor carries 1 % for the float32 rounding of
// the bound's products and sums; the limit (threshold - bias) a 16-ulp slack
// for rounding it. A row whose ‖ã‖₁ would exceed the budget, or holds NaN or
// infinity, gets infinite factors: every feature passes (TopK then runs the
// float32 path). Fewer features pass it than pass the bfloat16 screen, on
// random and on the shipped SAEs with real activations (docs/performance.md).
//
// TopK keeps the k largest instead of those above a threshold: the k-th
// largest lower bound seen so far stands in for the threshold (screen.cpp).
#pragma once
#include <cstdint>
#include <functional>
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
  // W_enc transposed ([d_sae, d_in]) where the SAE keeps it, asked for once the
  // screen is sure to run (it may be made then); null: each chunk is transposed.
  std::function<const float*()> transposed;
  const float* W_enc_t = nullptr;  // what `transposed` gave (set by screened_encode)
};

// When the screen runs. where_it_pays: the batch has more than kMatmulSmallM
// rows (fewer are bound by reading W_enc) and the CPU has bfloat16 dot
// products (the bfloat16 screen) or the variant's int16_screen_pays (AVX2).
// always: on any kernel variant and any rows, bfloat16 where the CPU has its
// dot products, else int16 (the bfloat16 matmul widens the rounded weights
// elsewhere, the int16 one runs plain loops; the bounds cover both);
// always_bf16 / always_int16: that screen (tests check both on every CPU).
// never: the float32 path.
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
