// The kernel table: every hot loop of the core, one entry per operation.
// Each SIMD variant (scalar, avx2, avx512, neon) fills its own table;
// kernels::active() is the one chosen for this CPU at start-up.
// Kernels are single-threaded; callers split work across threads.
#pragma once
#include <cstdint>

namespace tmech {

// C[M, N] = A[M, K] · B[K, N] (+ bias[N]) (+ C if accumulate), for the
// columns [n_begin, n_end) only. B's element (k, n) is at
// B[k * b_stride_k + n * b_stride_n], so one kernel serves HF's Conv1D
// weights ([in, out]: stride_k = N, stride_n = 1) and embedding matrices used
// as an unembedding ([vocab, d_model]: stride_k = 1, stride_n = K).
// Memory a caller will read next: `runs` runs of `run_bytes` contiguous bytes,
// `stride` bytes apart.
struct PrefetchRegion {
  const void* base = nullptr;
  int64_t runs = 0, run_bytes = 0, stride = 0;
};

struct MatmulArgs {
  int64_t M, N, K;
  const float* A;  // [M, K], row stride lda
  int64_t lda;
  const float* B;
  int64_t b_stride_k, b_stride_n;
  const float* bias;  // [N] or null
  float* C;           // [M, N], row stride ldc
  int64_t ldc;
  bool accumulate;
  float* scratch;                 // per-thread workspace of at least matmul_scratch_floats()
  const uint16_t* B16 = nullptr;  // B in bfloat16 instead (then B is unused), same strides
  // A already rounded to bfloat16 pairs by round_a_pairs, for the many-row
  // bf16 path; null: each tile of A is rounded where it is used.
  const uint32_t* A_pairs = nullptr;
  // Fetched into the cache a slice per tile while a many-row matmul computes,
  // so that the caller does not wait on memory next (one thread's matmul_cols).
  PrefetchRegion prefetch_after;
};

struct KernelTable {
  const char* name;
  // True where matmuls over bfloat16 weights with more than kMatmulSmallM rows
  // use bfloat16 dot products: A is then rounded to bfloat16 too.
  bool bf16_dot_products;
  // True where the SAE encoder's int16 screen (sae/screen.hpp) measured
  // faster than its float32 matmul, for batches of more than kMatmulSmallM rows.
  bool int16_screen_pays;
  // Rows of A up to which a matmul over B stored [K, N] streams B once rather
  // than packing it (see matmul_streams_rows).
  int64_t stream_rows_kn;
  void (*matmul_cols)(const MatmulArgs& a, int64_t n_begin, int64_t n_end);
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float* y, float alpha, const float* x, int64_t n);  // y += alpha x
  void (*add)(float* out, const float* a, const float* b, int64_t n);
  // float32 -> bfloat16 bits, to nearest, ties to even
  void (*round_bf16)(const float* x, uint16_t* out, int64_t n);
  // Rows [m_begin, m_end) of A[M, K] rounded to bfloat16 pairs (an odd
  // block's last pair padded with zero) into out, laid out as the bf16
  // many-row matmul reads A: blocks of kMatmulKC columns, each [M][pairs].
  void (*round_a_pairs)(const float* A, int64_t lda, int64_t M, int64_t K, int64_t m_begin, int64_t m_end,
                        uint32_t* out);
  // dst[c * ld_dst + r] = src[r * ld_src + c] for r < rows, c < cols
  void (*transpose)(const float* src, int64_t ld_src, int64_t rows, int64_t cols, float* dst, int64_t ld_dst);
  // Writes the j < n where x[j] + alpha w[j] <= limit[j] fails (greater or
  // NaN) or x[j] is -inf to out, in order; returns how many.
  int64_t (*screen)(const float* x, const float* w, float alpha, const float* limit, int64_t n, int32_t* out);
  // The int16 screen's kernels. quantize_i16: q[i] = round(x[i] / s) to
  // nearest (ties to even), clamped to [-Q, Q], into out[0, n) (an odd n's
  // out[n] = 0), with s = max|x| / Q in *scale and max|x| in *max_abs; Q the
  // largest integer <= q_cap for which sum |q| is predicted to stay within
  // l1_cap (at least 1; the caller checks). Returns sum |q|. Where max|x| is
  // below 2^-64, zero included, out is all zero and *scale = 0; where x holds
  // NaN or infinity (or sum |x| overflows), out is all zero and *scale and
  // *max_abs are not finite.
  int64_t (*quantize_i16)(const float* x, int64_t n, int32_t q_cap, int64_t l1_cap, int16_t* out, float* scale,
                          float* max_abs);
  // B [N, K] (rows of ldb int16, K even) as panels of kI16Panel columns:
  // out[((c / kI16Panel) * K / 2 + p) * 2 kI16Panel + 2 (c % kI16Panel) + h]
  // = B[c, 2 p + h], the last panel's missing columns zero.
  void (*pack_i16)(const int16_t* B, int64_t ldb, int64_t N, int64_t K, int16_t* out);
  // C[m * ldc + c] = fl(fl(float(I) col_scale[c]) row_scale[m]) with I =
  // sum_k A[m * lda + k] B[c, k] summed in int32, wrapping (exact where |I| <
  // 2^31, which the caller ensures), for m < M, c < N; B packed by pack_i16, K even.
  void (*matmul_i16)(const int16_t* A, int64_t lda, int64_t M, const int16_t* B_packed, int64_t N, int64_t K,
                     const float* row_scale, const float* col_scale, float* C, int64_t ldc);
  void (*scale)(float* x, float alpha, int64_t n);
  // mean and sqrt(var + eps) of one row
  void (*row_stats)(const float* x, int64_t n, float eps, float* mean, float* scale);
  // out = (x - mean) / scale * w + b; w and b may be null (no affine)
  void (*normalize)(const float* x, float mean, float scale, const float* w, const float* b, float* out, int64_t n);
  void (*gelu_new)(const float* x, float* out, int64_t n);
  void (*softmax)(float* x, int64_t n);  // in place, max-subtracted
  // log(sum_j exp(x[j])), max-subtracted, for n >= 1; NaN if any x[j] is NaN or +inf
  float (*log_sum_exp)(const float* x, int64_t n);
  void (*exp)(const float* x, float* out, int64_t n);
  // out = silu(gate) * up, the SwiGLU MLP's activation
  void (*silu_mul)(const float* gate, const float* up, float* out, int64_t n);
  // Rotary embedding of one head, HF's rotate_half convention: with
  // x1 = x[0, half) and x2 = x[half, 2 half), x1' = x1 cos - x2 sin and
  // x2' = x2 cos + x1 sin, in place.
  void (*rope)(float* x, const float* cos, const float* sin, int64_t half);
  // Benchmark probe: `iters` rounds of independent FMA chains (returns a sum
  // so the loop is kept) and the floating-point operations that took.
  float (*fma_chains)(int64_t iters);
  int64_t (*fma_chains_flops)(int64_t iters);
  // Benchmark probe: the sum of x[0, n), read as `stretches` (clamped to 1 to
  // kMaxStretches) equal stretches side by side, a vector of each in turn.
  float (*read_stretches)(const float* x, int64_t n, int stretches);
  // The same with bfloat16 dot products; null without them.
  float (*bf16_dot_chains)(int64_t iters);
  int64_t (*bf16_dot_chains_flops)(int64_t iters);
};

// The benchmark probes' chains: each of kProbeChains chains per vector lane
// starts at 0.001 c (chain c) and takes `iters` steps of acc = acc * kProbeMul
// + kProbeAdd (fma_chains), or acc += a0 b0 + a1 b1 with the bfloat16 pairs
// a = (kProbeBf16A, kProbeBf16A), b = (kProbeBf16B, kProbeBf16B) (bf16_dot_chains).
constexpr int kProbeChains = 12;
constexpr int kMaxStretches = 8;
constexpr float kProbeMul = 0.999f, kProbeAdd = 1e-4f;
constexpr uint16_t kProbeBf16A = 0x3f7f, kProbeBf16B = 0x38d1;

// Columns per panel of pack_i16 / matmul_i16.
constexpr int64_t kI16Panel = 16;

// Column-panel sizes shared by the matmul drivers and the packing buffers.
constexpr int64_t kMatmulKC = 256;
constexpr int64_t kMatmulNC = 512;
constexpr int64_t matmul_scratch_floats() { return kMatmulKC * (kMatmulNC + 64); }
// Words that round_a_pairs writes for A[M, K].
constexpr int64_t matmul_a_pairs_words(int64_t M, int64_t K) {
  return M * ((K / kMatmulKC) * (kMatmulKC / 2) + (K % kMatmulKC + 1) / 2);
}
// Up to this many rows of A, the kernel streams B once instead of packing it
// (the decode path, bound by memory bandwidth), whatever B's layout.
constexpr int64_t kMatmulSmallM = 4;
// Whether a matmul streams B stored [K, N] row by row: up to kMatmulSmallM
// rows, and up to the variant's stream_rows_kn (short prompts, batched
// decoding: packing copies all of B for a few uses) unless B is bfloat16 and
// the variant has bfloat16 dot products, which do twice the work per
// instruction in the packed path.
inline bool matmul_streams_rows(const KernelTable& kt, int64_t M, int64_t b_stride_n, bool bf16) {
  return b_stride_n == 1 && (M <= kMatmulSmallM || (!(bf16 && kt.bf16_dot_products) && M <= kt.stream_rows_kn));
}

namespace kernels {
const KernelTable& active();
// Every variant built into this binary that the running CPU supports.
int available(const KernelTable** out, int capacity);
// Select a variant by name ("scalar", "avx2", "avx512", "avx512_bf16", "neon"); false if
// unknown or unsupported here. Used by tests to check every variant.
bool select(const char* name);
// Whether the int16 screen's AVX2 tile sums with AVX-VNNI's vpdpwssd (one
// instruction for vpmaddwd + vpaddd, the same wrapping int32 sums): true where
// the build and the CPU have it (Intel since Alder Lake and Sapphire Rapids,
// AMD since Zen 5); tests turn it off to check the other tile too.
extern bool use_avx_vnni;
}  // namespace kernels

}  // namespace tmech
