// Matrix multiply C = A·B (+ bias) for one range of output columns.
//
// Two paths:
// - few rows (decode, short prompts; matmul_streams_rows, kDotTileRows): stream
//   B once, row by row or column by column depending on its layout; bound by
//   memory bandwidth.
// - many rows (prefill): pack a KC x NC block of B into NR-wide panels, then
//   an MR x NR register-tiled micro-kernel sweeps all rows over each panel;
//   in float32, or with bfloat16 weights on a CPU with AVX512-BF16, in
//   bfloat16 pairs (A rounded to bfloat16, products summed in float32).
#include "kernels/variant.hpp"

namespace tmech {
namespace TM_ARCH {
using namespace tm_simd;

namespace {

constexpr int NV = 2;                                  // vectors per row of a tile
constexpr int NR = NV * VL;                            // panel width
constexpr int MR = VL >= 16 ? 12 : (VL >= 8 ? 6 : 4);  // rows per tile
// AVX2 (16 registers: the 6 x 16 tile's 12 sums, 2 of B, 1 broadcast) runs
// its inner loop unrolled 4 times and fetches the next tile of C ahead: paired
// single-thread runs against the plain loop, Xeon (Emerald Rapids) with the
// avx2 variant, measured 3-5 % faster on the five prefill shapes (up to 11 %
// while other work shared the cores), while 4 x 24 tiles (any unrolling),
// KC = 384 / 512 / 768 and NC = 128 / 256 measured level or slower. It also
// fetches the next tile's rows of A while the panels sweep (its copy had
// waited on memory) and, packing B, the row 8 steps ahead (B's rows lie
// kilobytes apart, beyond the hardware's stride prefetcher): each alone
// 0.5-1 % and 0-0.6 % faster in alternating runs, both together 0.2-1.2 % in
// alternating processes (Emerald Rapids, 2 threads; packing B row by row
// instead measured 1 % slower). AVX-512 keeps its plain loop and no prefetch
// (no gain measured; fetching A ahead, 1 % slower).
constexpr int kKUnroll = VL == 8 ? 4 : 1;
constexpr bool kPrefetchNext = VL == 8;
static_assert(kMatmulNC % NR == 0, "NC must be a whole number of panels");
// The scratch tail holds the edge tile and a copy of A's tile.
static_assert(MR * NR + MR * kMatmulKC <= 64 * kMatmulKC, "tiles must fit the scratch tail");

// panel[s * NR + j] = column j's element s as float32, for steps s < steps and
// columns j < w (zero for w <= j < NR), where column j starts at col0 + j * sn:
// a panel of B whose columns are contiguous in memory, VL x VL at a time.
template <class W>
void transpose_panel(const W* col0, int64_t sn, int64_t steps, int64_t w, float* panel) {
  for (int64_t j0 = 0; j0 < NR; j0 += VL)
    for (int64_t s0 = 0; s0 < steps; s0 += VL) {
      const int64_t n = steps - s0 < VL ? steps - s0 : VL;
      vf r[VL];
      for (int64_t i = 0; i < VL; ++i) {
        const W* src = col0 + (j0 + i) * sn + s0;
        r[i] = j0 + i >= w ? vzero() : (n == VL ? vload_w(src) : vload_w_part(src, n));
      }
      vtranspose(r);
      for (int64_t s = 0; s < n; ++s) vstore(panel + (s0 + s) * NR + j0, r[s]);
    }
}

// kc floats of one row of A as bfloat16 pairs (count(kc) words; an odd kc's
// last pair padded with zero), rounded as round_bf16 does.
void round_row_pairs(const float* src, int64_t kc, uint32_t* dst) {
  uint16_t* half = reinterpret_cast<uint16_t*>(dst);
  round_bf16(src, half, kc);
  if (kc % 2) half[kc] = 0;
}

// A packed micro-kernel step: `Steps` says what one step of the inner
// product is. F32Steps: one k per step, a broadcast float32 of A times NR
// float32 of B (one FMA per vector). Bf16PairSteps (CPUs with AVX512-BF16):
// two k per step, a broadcast pair of bfloat16 of A times NR pairs of B (one
// vdpbf16ps per vector: twice the multiply-adds of an FMA).
struct F32Steps {
  using Elem = float;
  static constexpr bool kReadsFloatA = true;  // a_tile reads A's float32 rows (worth fetching ahead)
  static int64_t count(int64_t kc) { return kc; }
  static vf load_b(const float* p) { return vload(p); }
  static vf bcast_a(float x) { return vset1(x); }
  static vf madd(vf acc, vf a, vf b) { return vfma(a, b, acc); }
  // A's rows [m0, m0 + rows), columns [k0, k0 + kc), copied together: rows
  // of a wide A lie a power-of-two-ish stride apart and would evict each
  // other from the same cache sets.
  static const float* a_tile(const MatmulArgs& a, int64_t m0, int rows, int64_t k0, int64_t kc, float* buf,
                             int64_t* ld) {
    *ld = kc;
    for (int r = 0; r < rows; ++r) {
      const float* src = a.A + (m0 + r) * a.lda + k0;
      float* dst = buf + r * kc;
      int64_t j = 0;
      for (; j + VL <= kc; j += VL) vstore(dst + j, vload(src + j));
      for (; j < kc; ++j) dst[j] = src[j];
    }
    return buf;
  }
  // Copies B[k0:k0+kc, n0:n1] into float32 panels laid out [panel][k][NR],
  // zero-padding the last panel, so the micro-kernel reads B contiguously.
  template <class W>
  static void pack_b(const MatmulArgs& a, const W* Bw, int64_t k0, int64_t kc, int64_t n0, int64_t n1, float* dst) {
    const int64_t sk = a.b_stride_k, sn = a.b_stride_n;
    for (int64_t p0 = n0; p0 < n1; p0 += NR) {
      const int64_t w = n1 - p0 < NR ? n1 - p0 : NR;
      float* panel = dst + ((p0 - n0) / NR) * kc * NR;
      if (w < NR)
        for (int64_t i = 0; i < kc * NR; ++i) panel[i] = 0.f;
      if (sn == 1) {
        for (int64_t k = 0; k < kc; ++k) {
          const W* src = Bw + (k0 + k) * sk + p0;
          if (kPrefetchNext && k + 8 < kc) __builtin_prefetch(src + 8 * sk, 0, 3);
          if (w == NR) {
            for (int v = 0; v < NV; ++v) vstore(panel + k * NR + v * VL, vload_w(src + v * VL));
          } else {
            for (int64_t j = 0; j < w; ++j) panel[k * NR + j] = load_w(src + j);
          }
        }
      } else if (sk == 1) {  // columns contiguous in k
        transpose_panel(Bw + k0 + p0 * sn, sn, kc, w, panel);
      } else {  // general strides
        for (int64_t j = 0; j < w; ++j) {
          const W* src = Bw + k0 * sk + (p0 + j) * sn;
          for (int64_t k = 0; k < kc; ++k) panel[k * NR + j] = load_w(src + k * sk);
        }
      }
    }
  }
};

#if defined(__AVX512BF16__)
// Pairs of bfloat16 held as one 32-bit word: (x[k], x[k + 1]), x[k] in the low half.
struct Bf16PairSteps {
  static_assert(NV == 2, "pack_b writes two vectors per pair step");
  using Elem = uint32_t;
  static constexpr bool kReadsFloatA = false;  // mostly a.A_pairs, A rounded by the caller
  static int64_t count(int64_t kc) { return (kc + 1) / 2; }
  static __m512bh load_b(const uint32_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static __m512bh bcast_a(uint32_t pair) { return (__m512bh)_mm512_set1_epi32(static_cast<int>(pair)); }
  static vf madd(vf acc, __m512bh a, __m512bh b) { return _mm512_dpbf16_ps(acc, a, b); }

  // A's rows [m0, m0 + rows), columns [k0, k0 + kc), as bfloat16 pairs:
  // in a.A_pairs when the caller rounded all of A once (round_a_pairs's
  // layout: the blocks before k0 hold M * k0 / 2 words), else rounded into buf.
  static const uint32_t* a_tile(const MatmulArgs& a, int64_t m0, int rows, int64_t k0, int64_t kc, float* buf,
                                int64_t* ld) {
    *ld = count(kc);
    if (a.A_pairs) return a.A_pairs + a.M * (k0 / 2) + m0 * *ld;
    uint32_t* out = reinterpret_cast<uint32_t*>(buf);
    for (int r = 0; r < rows; ++r) round_row_pairs(a.A + (m0 + r) * a.lda + k0, kc, out + r * *ld);
    return out;
  }

  // panel[p * NR + j] = the pair of column j at step p, for p < pairs and j < w
  // (zero for w <= j < NR), column j's pairs starting at col0 + j * sn
  // (in bfloat16s): columns contiguous in memory, 16 x 16 words at a time.
  static void transpose_pairs(const uint16_t* col0, int64_t sn, int64_t pairs, int64_t w, uint32_t* panel) {
    for (int64_t j0 = 0; j0 < NR; j0 += 16)
      for (int64_t p0 = 0; p0 < pairs; p0 += 16) {
        const int64_t n = pairs - p0 < 16 ? pairs - p0 : 16;
        const __mmask16 live = static_cast<__mmask16>((1u << n) - 1);
        __m512i r[16];
        for (int64_t i = 0; i < 16; ++i)
          r[i] = j0 + i < w ? _mm512_maskz_loadu_epi32(live, col0 + (j0 + i) * sn + 2 * p0) : _mm512_setzero_si512();
        transpose16_epi32(r);
        for (int64_t p = 0; p < n; ++p) _mm512_storeu_si512(panel + (p0 + p) * NR + j0, r[p]);
      }
  }

  // B[k0:k0+kc, n0:n1] into panels laid out [panel][k pair][NR] of pairs.
  static void pack_b(const MatmulArgs& a, const uint16_t* Bw, int64_t k0, int64_t kc, int64_t n0, int64_t n1,
                     uint32_t* dst) {
    const int64_t sk = a.b_stride_k, sn = a.b_stride_n, pairs = count(kc);
    for (int64_t p0 = n0; p0 < n1; p0 += NR) {
      const int64_t w = n1 - p0 < NR ? n1 - p0 : NR;
      uint32_t* panel = dst + ((p0 - n0) / NR) * pairs * NR;
      if (sn == 1) {  // two rows of B interleaved element by element
        alignas(64) static const uint16_t interleave[2][32] = {
            {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
             8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47},
            {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
             24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63}};
        const __m512i first = _mm512_load_si512(interleave[0]), second = _mm512_load_si512(interleave[1]);
        const __mmask32 cols = w >= 32 ? 0xFFFFFFFFu : static_cast<__mmask32>((1u << w) - 1);
        for (int64_t p = 0; p < pairs; ++p) {
          const uint16_t* row = Bw + (k0 + 2 * p) * sk + p0;
          const __m512i r0 = _mm512_maskz_loadu_epi16(cols, row);
          const __m512i r1 = 2 * p + 1 < kc ? _mm512_maskz_loadu_epi16(cols, row + sk) : _mm512_setzero_si512();
          _mm512_storeu_si512(panel + p * NR, _mm512_permutex2var_epi16(r0, first, r1));
          _mm512_storeu_si512(panel + p * NR + VL, _mm512_permutex2var_epi16(r0, second, r1));
        }
      } else if (sk == 1) {            // columns contiguous in k: each pair is one word
        const int64_t whole = kc / 2;  // pairs with both halves inside the block
        transpose_pairs(Bw + k0 + p0 * sn, sn, whole, w, panel);
        if (whole < pairs)  // odd kc: the last pair's second half is zero
          for (int64_t j = 0; j < NR; ++j) panel[whole * NR + j] = j < w ? Bw[k0 + 2 * whole + (p0 + j) * sn] : 0u;
      } else {  // general strides
        for (int64_t j = 0; j < NR; ++j)
          for (int64_t p = 0; p < pairs; ++p) {
            uint32_t pair = 0;
            if (j < w) {
              const uint16_t* col = Bw + (k0 + 2 * p) * sk + (p0 + j) * sn;
              pair = col[0] | (2 * p + 1 < kc ? uint32_t{col[sk]} << 16 : 0u);
            }
            panel[p * NR + j] = pair;
          }
      }
    }
  }
};
#endif

// R x NR tile: C[0:R, 0:NR] (= or +=) A[0:R, :] · panel, over `steps` steps.
// init: 0 = start from zero, 1 = from bias, 2 = from C (accumulate).
template <class S, int R>
void micro(const typename S::Elem* A, int64_t lda, const typename S::Elem* panel, int64_t steps, float* C, int64_t ldc,
           const float* bias, int init) {
  vf acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      if (init == 2)
        acc[r][v] = vload(C + r * ldc + v * VL);
      else if (init == 1)
        acc[r][v] = vload(bias + v * VL);
      else
        acc[r][v] = vzero();
  }
#pragma GCC unroll kKUnroll
  for (int64_t k = 0; k < steps; ++k) {
    decltype(S::load_b(panel)) b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = S::load_b(panel + k * NR + v * VL);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const auto av = S::bcast_a(A[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = S::madd(acc[r][v], av, b[v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) vstore(C + r * ldc + v * VL, acc[r][v]);
}

template <class S, int R>
void micro_rows(int rows, const typename S::Elem* A, int64_t lda, const typename S::Elem* panel, int64_t steps,
                float* C, int64_t ldc, const float* bias, int init) {
  if (rows == R) {
    micro<S, R>(A, lda, panel, steps, C, ldc, bias, init);
  } else if constexpr (R > 1) {
    micro_rows<S, R - 1>(rows, A, lda, panel, steps, C, ldc, bias, init);
  }
}

// A tile whose panel is cut short by the matrix edge goes through a full
// NR-wide buffer so the micro-kernel never writes past column n1.
template <class S>
void edge_tile(int rows, int64_t w, const typename S::Elem* A, int64_t lda, const typename S::Elem* panel,
               int64_t steps, float* C, int64_t ldc, const float* bias, int init, float* tile) {
  for (int r = 0; r < rows; ++r)
    for (int64_t j = 0; j < NR; ++j) {
      float v = 0.f;
      if (j < w) v = init == 2 ? C[r * ldc + j] : (init == 1 ? bias[j] : 0.f);
      tile[r * NR + j] = v;
    }
  micro_rows<S, MR>(rows, A, lda, panel, steps, tile, NR, nullptr, 2);
  for (int r = 0; r < rows; ++r)
    for (int64_t j = 0; j < w; ++j) C[r * ldc + j] = tile[r * NR + j];
}

// The block of B at rows [k0, k0 + kc), columns [n0, n1) as runs of
// contiguous bytes (its rows, or its columns when those are contiguous in k);
// none for general strides.
template <class W>
PrefetchRegion b_block(const MatmulArgs& a, const W* Bw, int64_t k0, int64_t kc, int64_t n0, int64_t n1) {
  const int64_t sk = a.b_stride_k, sn = a.b_stride_n, w = static_cast<int64_t>(sizeof(W));
  if (sn != 1 && sk != 1) return {};
  return {Bw + k0 * sk + n0 * sn, sn == 1 ? kc : n1 - n0, (sn == 1 ? n1 - n0 : kc) * w, (sn == 1 ? sk : sn) * w};
}

// The cache lines of a region, prefetched into L2 a slice at a time.
class LinePrefetch {
 public:
  LinePrefetch() = default;  // no lines
  explicit LinePrefetch(const PrefetchRegion& r)
      : run_(reinterpret_cast<uintptr_t>(r.base)),
        runs_(r.base && r.run_bytes > 0 ? r.runs : 0),
        run_lines_((r.run_bytes + 63) / 64 + 1),  // +1: a run need not start a line
        stride_(r.stride) {}
  int64_t lines() const { return runs_ * run_lines_; }
  // The next `count` lines. A prefetch never faults, even past the region's end
  // (addresses are kept as integers: a pointer there would be undefined).
  void fetch(int64_t count) {
    for (; count > 0 && runs_ > 0; --count) {
      __builtin_prefetch(reinterpret_cast<const void*>(run_ + static_cast<uintptr_t>(line_) * 64), 0, 2);
      if (++line_ == run_lines_) line_ = 0, run_ += static_cast<uintptr_t>(stride_), --runs_;
    }
  }

 private:
  uintptr_t run_ = 0;                                         // the current run's address
  int64_t runs_ = 0, run_lines_ = 0, stride_ = 0, line_ = 0;  // runs left; stride: bytes from run to run
};

// The caller's region (MatmulArgs::prefetch_after), spread over every tile of a call.
struct CallerPrefetch {
  LinePrefetch lines;
  int64_t per_tile = 0;
};

// Rows of the next tile when `left` rows remain: MR, except that MR + t
// rows, t < kMinTileRows, go as two near-equal tiles. A tile of fewer rows
// holds too few independent sums to hide the FMA's latency (4 cycles, 2 per
// cycle: 8 sums): on AVX2, 6 + 2 rows take a 6-row tile's time plus twice a
// 2-row tile's share, 4 + 4 about the 8 rows' share. Measured 1.5-4 % faster
// on 13-38-row matmuls with both variants (Zen 5, one thread, alternating
// processes), level on 512 rows and on a whole prefill.
constexpr int64_t kMinTileRows = MR >= 6 ? 4 : 1;
int64_t tile_rows(int64_t left) {
  if (left <= MR) return left;
  const int64_t t = left - MR;
  return t < kMinTileRows ? (left + 1) / 2 : MR;
}

// Scratch: the packed block of B, then the edge tile, then A's tile when S copies it.
// One block of columns [n0, n1), summed over all of K while it is in cache.
// Meanwhile the next block of B ([n1, n_end) holds the next columns) is
// prefetched into L2, a slice per tile: packing it would otherwise wait on
// memory (a 128-token GPT-2 prefill spent ~9 % of its time there; prefetched,
// it runs 3 % faster in float32, 7 % in bf16, measured in alternation).
template <class S, class W>
void packed_column_block(const MatmulArgs& a, const W* Bw, int64_t n0, int64_t n1, int64_t n_end,
                         CallerPrefetch& caller) {
  using E = typename S::Elem;
  static_assert(sizeof(E) == sizeof(float), "panels reuse the float32 scratch");
  E* packed = reinterpret_cast<E*>(a.scratch);
  float* tile = a.scratch + kMatmulKC * kMatmulNC;
  float* a_buf = tile + MR * NR;
  const int64_t tiles = (a.M + MR - 1) / MR * ((n1 - n0 + NR - 1) / NR);
  for (int64_t k0 = 0; k0 < a.K; k0 += kMatmulKC) {
    const int64_t kc = a.K - k0 < kMatmulKC ? a.K - k0 : kMatmulKC;
    const int64_t steps = S::count(kc);
    const int init = k0 == 0 && !a.accumulate ? (a.bias ? 1 : 0) : 2;
    S::pack_b(a, Bw, k0, kc, n0, n1, packed);
    const int64_t next_n1 = n_end - n1 < kMatmulNC ? n_end : n1 + kMatmulNC;
    const int64_t next_kc = a.K - k0 - kc < kMatmulKC ? a.K - k0 - kc : kMatmulKC;
    const int64_t first_kc = a.K < kMatmulKC ? a.K : kMatmulKC;
    LinePrefetch next(k0 + kc < a.K ? b_block(a, Bw, k0 + kc, next_kc, n0, n1)
                      : n1 < n_end  ? b_block(a, Bw, 0, first_kc, n1, next_n1)
                                    : PrefetchRegion{});
    const int64_t per_tile = (next.lines() + tiles - 1) / tiles;
    for (int64_t m0 = 0, rows = 0; m0 < a.M; m0 += rows) {
      rows = tile_rows(a.M - m0);
      int64_t lda = 0;
      const E* A = S::a_tile(a, m0, static_cast<int>(rows), k0, kc, a_buf, &lda);
      LinePrefetch next_a;  // the next tile's rows of A, a slice per panel, where a_tile reads them
      int64_t a_per_panel = 0;
      if constexpr (kPrefetchNext && S::kReadsFloatA)
        if (m0 + rows < a.M) {
          const int64_t next_rows = tile_rows(a.M - m0 - rows);
          const int64_t panels = (n1 - n0 + NR - 1) / NR;
          next_a = LinePrefetch({a.A + (m0 + rows) * a.lda + k0, next_rows, kc * 4, a.lda * 4});
          a_per_panel = (next_a.lines() + panels - 1) / panels;
        }
      for (int64_t p0 = n0; p0 < n1; p0 += NR) {
        next_a.fetch(a_per_panel);
        const E* panel = packed + ((p0 - n0) / NR) * steps * NR;
        float* C = a.C + m0 * a.ldc + p0;
        const float* bias = a.bias ? a.bias + p0 : nullptr;
        if (kPrefetchNext && p0 + NR < n1)  // the next tile of C, into L1 while this one computes
          for (int r = 0; r < rows; ++r) {
            __builtin_prefetch(C + NR + r * a.ldc, 1, 3);
            __builtin_prefetch(C + NR + r * a.ldc + NR - 1, 1, 3);
          }
        if (n1 - p0 >= NR)
          micro_rows<S, MR>(static_cast<int>(rows), A, lda, panel, steps, C, a.ldc, bias, init);
        else
          edge_tile<S>(static_cast<int>(rows), n1 - p0, A, lda, panel, steps, C, a.ldc, bias, init, tile);
        next.fetch(per_tile);
        caller.lines.fetch(caller.per_tile);
      }
    }
  }
}

// Blocks of columns outermost: an unembedding's C (50257 columns) is far
// larger than the caches, and each block of it is finished before the next.
template <class S, class W>
void matmul_packed(const MatmulArgs& a, const W* Bw, int64_t n_begin, int64_t n_end) {
  CallerPrefetch caller{LinePrefetch(a.prefetch_after)};
  const int64_t tiles = (a.M + MR - 1) / MR * ((n_end - n_begin + NR - 1) / NR) * ((a.K + kMatmulKC - 1) / kMatmulKC);
  caller.per_tile = (caller.lines.lines() + tiles - 1) / tiles;
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kMatmulNC)
    packed_column_block<S>(a, Bw, n0, n_end - n0 < kMatmulNC ? n_end : n0 + kMatmulNC, n_end, caller);
}

// Many rows: float32 weights, or bfloat16 ones widened to float32 as they are
// packed, unless the CPU has bfloat16 dot products (then A is rounded to bfloat16).
void matmul_many_rows(const MatmulArgs& a, const float* B, int64_t n_begin, int64_t n_end) {
  matmul_packed<F32Steps>(a, B, n_begin, n_end);
}
void matmul_many_rows(const MatmulArgs& a, const uint16_t* B, int64_t n_begin, int64_t n_end) {
#if defined(__AVX512BF16__)
  matmul_packed<Bf16PairSteps>(a, B, n_begin, n_end);
#else
  matmul_packed<F32Steps>(a, B, n_begin, n_end);
#endif
}

// Few rows, B stored [K, N] (row-major, HF Conv1D): y_m += a_mk · B[k, :].
// One step takes G rows of B, rows k + r * gap (r < G), for MM rows of A:
// each vector of B is loaded once for all MM rows, and each output is loaded
// and stored once per G rows.
template <int MM, int G, class W>
void small_rows_step(const MatmulArgs& a, const W* Bw, int64_t m0, int64_t k, int64_t gap, int64_t c0, int64_t cw) {
  // Two FMA chains per row of A whatever MM is, so that a row's sums do not
  // depend on how many rows share its call (a batch gives each row's result).
  constexpr int kChains = 2;
  const int64_t sk = a.b_stride_k, sr = gap * sk;
  const float* A = a.A + m0 * a.lda + k;
  float* C = a.C + m0 * a.ldc + c0;
  const W* b = Bw + k * sk + c0;
  vf xs[MM][G];  // (beyond the register file, the compiler keeps them on the stack: still one load each)
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < G; ++r) xs[m][r] = vset1(A[m * a.lda + r * gap]);
  int64_t j = 0;
  for (; j + VL <= cw; j += VL) {
    vf acc[MM][kChains];
    for (int m = 0; m < MM; ++m)
      for (int c = 0; c < kChains; ++c) acc[m][c] = vzero();
#pragma GCC unroll 16
    for (int r = 0; r < G; ++r) {
      const vf bv = vload_w(b + r * sr + j);
      for (int m = 0; m < MM; ++m) acc[m][r % kChains] = vfma(xs[m][r], bv, acc[m][r % kChains]);
    }
    for (int m = 0; m < MM; ++m) {
      vf sum = vload(C + m * a.ldc + j);
      for (int c = 0; c < kChains; ++c) sum = vadd(sum, acc[m][c]);
      vstore(C + m * a.ldc + j, sum);
    }
  }
  for (; j < cw; ++j)
    for (int m = 0; m < MM; ++m) {
      float v = 0.f;
      for (int r = 0; r < G; ++r) v += A[m * a.lda + r * gap] * load_w(b + r * sr + j);
      C[m * a.ldc + j] += v;
    }
}

// G rows of B (rows k + r * gap) for every row of A, four rows of A at a
// time: the rows of B are read from memory once, and from cache for the next
// rows of A.
template <int G, class W>
void small_rows_group(const MatmulArgs& a, const W* Bw, int64_t k, int64_t gap, int64_t c0, int64_t cw) {
  int64_t m = 0;
  for (; m + 4 <= a.M; m += 4) small_rows_step<4, G>(a, Bw, m, k, gap, c0, cw);
  switch (a.M - m) {
    case 3: small_rows_step<3, G>(a, Bw, m, k, gap, c0, cw); break;
    case 2: small_rows_step<2, G>(a, Bw, m, k, gap, c0, cw); break;
    case 1: small_rows_step<1, G>(a, Bw, m, k, gap, c0, cw); break;
    default: break;
  }
}

// How many far-apart places of B a streaming kernel reads at once. Zen 3
// (AVX2) reads memory fastest from several streams in different pages:
// kReadStreams stretches of K read side by side, one row of B each per step,
// streamed 1.1-1.4x faster than 8 or 16 neighbouring rows (GPT-2's four
// decode shapes, 2 threads, alternating runs; 4-8 stretches measured alike,
// 2 and 12 slower). AVX-512 keeps neighbouring rows: its machines (Zen 4,
// Xeon) were tuned that way and have not been measured with stretches.
constexpr int kReadStreams = VL == 8 ? 6 : 1;

// Without stretches: sixteen neighbouring rows of B per step, but eight where
// they lie a multiple of 4 KiB apart (GPT-2's MLP in float32): such rows fall
// in one L1 set, which has eight ways, and sixteen streams there ran ~20 % slower.
template <class W>
void small_rows_chunk(const MatmulArgs& a, const W* Bw, int64_t c0, int64_t cw) {
  int64_t k = 0;
  if constexpr (kReadStreams > 1) {
    const int64_t stretch = a.K / kReadStreams;  // rows of each stretch: k, k + stretch, ...
    if (stretch >= 16) {
      for (; k < stretch; ++k) small_rows_group<kReadStreams>(a, Bw, k, stretch, c0, cw);
      for (k = kReadStreams * stretch; k < a.K; ++k) small_rows_group<1>(a, Bw, k, 1, c0, cw);
      return;
    }
  }
  const bool same_set = (a.b_stride_k * static_cast<int64_t>(sizeof(W))) % 4096 == 0;
  const int G = same_set ? 8 : 16;
  for (; k + G <= a.K; k += G)
    if (same_set)
      small_rows_group<8>(a, Bw, k, 1, c0, cw);
    else
      small_rows_group<16>(a, Bw, k, 1, c0, cw);
  for (; k < a.K; ++k) small_rows_group<1>(a, Bw, k, 1, c0, cw);
}

template <class W>
void matmul_small_rows(const MatmulArgs& a, const W* Bw, int64_t n_begin, int64_t n_end) {
  const int64_t chunk = 8192 / a.M;  // 32 KB of outputs over all M rows
  for (int64_t c0 = n_begin; c0 < n_end; c0 += chunk) {
    const int64_t cw = n_end - c0 < chunk ? n_end - c0 : chunk;
    for (int64_t m = 0; m < a.M; ++m) {
      float* y = a.C + m * a.ldc + c0;
      if (!a.accumulate)
        for (int64_t j = 0; j < cw; ++j) y[j] = a.bias ? a.bias[c0 + j] : 0.f;
    }
    small_rows_chunk(a, Bw, c0, cw);
  }
}

// Few rows, B's columns contiguous in k ([N, K] row-major, an unembedding):
// each output is one dot product over a row of the weight matrix, summed as
// dot_w sums. With kReadStreams > 1, S columns from S stretches of the range
// at once (columns n + s * gap), each still summed as dot_w sums (so which
// columns share a step never changes a bit): one stretch at a time read
// 1.4-1.6x slower on Zen 3 (GPT-2's unembedding, 2 threads, alternating runs).
template <int S, class W>
void dots_stretches(const MatmulArgs& a, const W* Bw, int64_t n, int64_t gap) {
  const int64_t K = a.K, sn = a.b_stride_n;
  for (int64_t m = 0; m < a.M; ++m) {
    const float* x = a.A + m * a.lda;
    vf s0[S], s1[S];
    for (int c = 0; c < S; ++c) s0[c] = s1[c] = vzero();
    int64_t i = 0;
    for (; i + 2 * VL <= K; i += 2 * VL) {
      const vf x0 = vload(x + i), x1 = vload(x + i + VL);
#pragma GCC unroll 8
      for (int c = 0; c < S; ++c) {
        const W* col = Bw + (n + c * gap) * sn + i;
        s0[c] = vfma(x0, vload_w(col), s0[c]);
        s1[c] = vfma(x1, vload_w(col + VL), s1[c]);
      }
    }
    if (i + VL <= K) {
      const vf x0 = vload(x + i);
      for (int c = 0; c < S; ++c) s0[c] = vfma(x0, vload_w(Bw + (n + c * gap) * sn + i), s0[c]);
      i += VL;
    }
    for (int c = 0; c < S; ++c) {
      const W* col = Bw + (n + c * gap) * sn;
      float v = vsum(vadd(s0[c], s1[c]));
      for (int64_t t = i; t < K; ++t) v += x[t] * load_w(col + t);
      float* y = a.C + m * a.ldc + n + c * gap;
      *y = (a.accumulate ? *y : 0.f) + v + (a.bias ? a.bias[n + c * gap] : 0.f);
    }
  }
}

template <class W>
void matmul_small_dots(const MatmulArgs& a, const W* Bw, int64_t n_begin, int64_t n_end) {
  int64_t n = n_begin;
  if constexpr (kReadStreams > 1) {
    const int64_t gap = (n_end - n_begin) / kReadStreams;
    if (gap >= 16) {
      for (; n < n_begin + gap; ++n) dots_stretches<kReadStreams>(a, Bw, n, gap);
      n = n_begin + kReadStreams * gap;
    }
  }
  for (; n < n_end; ++n) dots_stretches<1>(a, Bw, n, 0);
}

// More rows against [N, K] B (short prompts, batched decoding of a Llama's
// Linear weights or of an unembedding): a tile of MM rows and 4 columns loads
// each vector of A and of B once for the tile. Every (row, column) sums in one
// chain over k, a last partial vector zero-padded, then across lanes, whatever
// the tile's shape, so rows of such a batch do not depend on one another.
// Against packing B, alternating calls in one process, AVX-512: 1.0-1.27x
// for 5-16 rows at the kernel, prompts of 5-16 tokens 1.07-1.17x (SmolLM2) and
// 1.04-1.08x (GPT-2's unembedding); with 8 lanes it was slower, so there B is
// packed. For up to kMatmulSmallM rows, one dot product per row (above) reads
// B faster: its columns are read one after the other.
constexpr int kDotColumns = 4;
constexpr int64_t kDotTileRows = VL >= 16 ? 16 : 0;

template <int MM, int NC, class W>
void dots_tile(const MatmulArgs& a, const W* Bw, int64_t m0, int64_t n0) {
  const float* A = a.A + m0 * a.lda;
  const W* col = Bw + n0 * a.b_stride_n;
  const int64_t sn = a.b_stride_n, K = a.K;
  vf acc[MM][NC];
  for (int m = 0; m < MM; ++m)
    for (int c = 0; c < NC; ++c) acc[m][c] = vzero();
  int64_t i = 0;
  for (; i + VL <= K; i += VL) {
    vf b[NC];
    for (int c = 0; c < NC; ++c) b[c] = vload_w(col + c * sn + i);
    for (int m = 0; m < MM; ++m) {
      const vf x = vload(A + m * a.lda + i);
      for (int c = 0; c < NC; ++c) acc[m][c] = vfma(x, b[c], acc[m][c]);
    }
  }
  if (i < K) {
    vf b[NC];
    for (int c = 0; c < NC; ++c) b[c] = vload_w_part(col + c * sn + i, K - i);
    for (int m = 0; m < MM; ++m) {
      const vf x = vload_part(A + m * a.lda + i, K - i);
      for (int c = 0; c < NC; ++c) acc[m][c] = vfma(x, b[c], acc[m][c]);
    }
  }
  for (int m = 0; m < MM; ++m)
    for (int c = 0; c < NC; ++c) {
      float* y = a.C + (m0 + m) * a.ldc + n0 + c;
      *y = (a.accumulate ? *y : 0.f) + vsum(acc[m][c]) + (a.bias ? a.bias[n0 + c] : 0.f);
    }
}

template <int NC, class W>
void dots_columns(const MatmulArgs& a, const W* Bw, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= a.M; m += 4) dots_tile<4, NC>(a, Bw, m, n0);
  switch (a.M - m) {
    case 3: dots_tile<3, NC>(a, Bw, m, n0); break;
    case 2: dots_tile<2, NC>(a, Bw, m, n0); break;
    case 1: dots_tile<1, NC>(a, Bw, m, n0); break;
    default: break;
  }
}

template <class W>
void matmul_dot_tiles(const MatmulArgs& a, const W* Bw, int64_t n_begin, int64_t n_end) {
  int64_t n = n_begin;
  for (; n + kDotColumns <= n_end; n += kDotColumns) dots_columns<kDotColumns>(a, Bw, n);
  for (; n < n_end; ++n) dots_columns<1>(a, Bw, n);
}

template <class W>
void matmul_any(const MatmulArgs& a, const W* Bw, int64_t n_begin, int64_t n_end) {
  if (matmul_streams_rows(table(), a.M, a.b_stride_n, a.B16 != nullptr))
    matmul_small_rows(a, Bw, n_begin, n_end);
  else if (a.M <= kMatmulSmallM && a.b_stride_k == 1)
    matmul_small_dots(a, Bw, n_begin, n_end);
  else if (a.b_stride_k == 1 && a.M <= kDotTileRows && !(a.B16 && table().bf16_dot_products))
    matmul_dot_tiles(a, Bw, n_begin, n_end);
  else
    matmul_many_rows(a, Bw, n_begin, n_end);
}

}  // namespace

void round_a_pairs(const float* A, int64_t lda, int64_t M, int64_t K, int64_t m_begin, int64_t m_end, uint32_t* out) {
  for (int64_t k0 = 0; k0 < K; k0 += kMatmulKC) {
    const int64_t kc = K - k0 < kMatmulKC ? K - k0 : kMatmulKC, words = (kc + 1) / 2;
    uint32_t* block = out + M * (k0 / 2);
    for (int64_t m = m_begin; m < m_end; ++m) round_row_pairs(A + m * lda + k0, kc, block + m * words);
  }
}

void matmul_cols(const MatmulArgs& a, int64_t n_begin, int64_t n_end) {
  if (n_begin >= n_end || a.M <= 0) return;
  if (a.K == 0) {  // empty sum: bias or zero
    for (int64_t m = 0; m < a.M; ++m)
      for (int64_t n = n_begin; n < n_end; ++n) {
        float* y = a.C + m * a.ldc + n;
        *y = (a.accumulate ? *y : 0.f) + (a.bias ? a.bias[n] : 0.f);
      }
    return;
  }
  if (a.accumulate && a.bias) {  // C += bias first, so the paths below see a plain accumulate
    for (int64_t m = 0; m < a.M; ++m) {
      float* row = a.C + m * a.ldc + n_begin;
      add(row, row, a.bias + n_begin, n_end - n_begin);
    }
    MatmulArgs plain = a;
    plain.bias = nullptr;
    matmul_cols(plain, n_begin, n_end);
    return;
  }
  if (a.B16)
    matmul_any(a, a.B16, n_begin, n_end);
  else
    matmul_any(a, a.B, n_begin, n_end);
}

}  // namespace TM_ARCH
}  // namespace tmech
