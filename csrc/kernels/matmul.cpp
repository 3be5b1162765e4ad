// Matrix multiply C = A·B (+ bias) for one range of output columns.
//
// Two paths:
// - few rows (decode, M <= kSmallM): stream B once, row by row or column by
//   column depending on its layout; this is bound by memory bandwidth.
// - many rows (prefill): pack a KC x NC block of B into NR-wide panels, then
//   an MR x NR register-tiled micro-kernel sweeps all rows over each panel.
#include "kernels/variant.hpp"

namespace tmech {
namespace TM_ARCH {
using namespace tm_simd;

namespace {

constexpr int NR = 2 * VL;                                   // panel width
constexpr int MR = VL >= 16 ? 12 : (VL >= 8 ? 6 : 4);       // rows per tile
static_assert(kMatmulNC % NR == 0, "NC must be a whole number of panels");
static_assert(MR * NR <= 64 * kMatmulKC, "tile must fit the scratch tail");

// Copies B[k0:k0+kc, n0:n1] into float32 panels laid out [panel][k][NR],
// zero-padding the last panel, so the micro-kernel reads B contiguously.
template <class W>
void pack_b(const MatmulArgs& a, const W* Bw, int64_t k0, int64_t kc, int64_t n0, int64_t n1, float* dst) {
  const int64_t sk = a.b_stride_k, sn = a.b_stride_n;
  for (int64_t p0 = n0; p0 < n1; p0 += NR) {
    const int64_t w = n1 - p0 < NR ? n1 - p0 : NR;
    float* panel = dst + ((p0 - n0) / NR) * kc * NR;
    if (w < NR)
      for (int64_t i = 0; i < kc * NR; ++i) panel[i] = 0.f;
    if (sn == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        const W* src = Bw + (k0 + k) * sk + p0;
        if (w == NR) {
          vstore(panel + k * NR, vload_w(src));
          vstore(panel + k * NR + VL, vload_w(src + VL));
        } else {
          for (int64_t j = 0; j < w; ++j) panel[k * NR + j] = load_w(src + j);
        }
      }
    } else {  // columns are contiguous in k: read along k, write strided
      for (int64_t j = 0; j < w; ++j) {
        const W* src = Bw + k0 * sk + (p0 + j) * sn;
        for (int64_t k = 0; k < kc; ++k) panel[k * NR + j] = load_w(src + k * sk);
      }
    }
  }
}

// R x NR tile: C[0:R, 0:NR] (= or +=) A[0:R, 0:kc] · panel.
// init: 0 = start from zero, 1 = from bias, 2 = from C (accumulate).
template <int R>
void micro(const float* A, int64_t lda, const float* panel, int64_t kc, float* C, int64_t ldc,
           const float* bias, int init) {
  vf acc[R][2];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    if (init == 2) {
      acc[r][0] = vload(C + r * ldc);
      acc[r][1] = vload(C + r * ldc + VL);
    } else if (init == 1) {
      acc[r][0] = vload(bias);
      acc[r][1] = vload(bias + VL);
    } else {
      acc[r][0] = vzero();
      acc[r][1] = vzero();
    }
  }
  for (int64_t k = 0; k < kc; ++k) {
    const vf b0 = vload(panel + k * NR), b1 = vload(panel + k * NR + VL);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vf av = vset1(A[r * lda + k]);
      acc[r][0] = vfma(av, b0, acc[r][0]);
      acc[r][1] = vfma(av, b1, acc[r][1]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    vstore(C + r * ldc, acc[r][0]);
    vstore(C + r * ldc + VL, acc[r][1]);
  }
}

template <int R>
void micro_rows(int rows, const float* A, int64_t lda, const float* panel, int64_t kc, float* C,
                int64_t ldc, const float* bias, int init) {
  if (rows == R) {
    micro<R>(A, lda, panel, kc, C, ldc, bias, init);
  } else if constexpr (R > 1) {
    micro_rows<R - 1>(rows, A, lda, panel, kc, C, ldc, bias, init);
  }
}

// A tile whose panel is cut short by the matrix edge goes through a full
// NR-wide buffer so the micro-kernel never writes past column n1.
void edge_tile(int rows, int64_t w, const float* A, int64_t lda, const float* panel, int64_t kc,
               float* C, int64_t ldc, const float* bias, int init, float* tile) {
  for (int r = 0; r < rows; ++r)
    for (int64_t j = 0; j < NR; ++j) {
      float v = 0.f;
      if (j < w) v = init == 2 ? C[r * ldc + j] : (init == 1 ? bias[j] : 0.f);
      tile[r * NR + j] = v;
    }
  micro_rows<MR>(rows, A, lda, panel, kc, tile, NR, nullptr, 2);
  for (int r = 0; r < rows; ++r)
    for (int64_t j = 0; j < w; ++j) C[r * ldc + j] = tile[r * NR + j];
}

template <class W>
void matmul_packed(const MatmulArgs& a, const W* Bw, int64_t n_begin, int64_t n_end) {
  float* packed = a.scratch;
  float* tile = a.scratch + kMatmulKC * kMatmulNC;
  for (int64_t k0 = 0; k0 < a.K; k0 += kMatmulKC) {
    const int64_t kc = a.K - k0 < kMatmulKC ? a.K - k0 : kMatmulKC;
    const bool first = k0 == 0 && !a.accumulate;
    const int init_first = a.bias ? 1 : 0;
    for (int64_t n0 = n_begin; n0 < n_end; n0 += kMatmulNC) {
      const int64_t n1 = n_end - n0 < kMatmulNC ? n_end : n0 + kMatmulNC;
      pack_b(a, Bw, k0, kc, n0, n1, packed);
      for (int64_t m0 = 0; m0 < a.M; m0 += MR) {
        const int rows = static_cast<int>(a.M - m0 < MR ? a.M - m0 : MR);
        const float* A = a.A + m0 * a.lda + k0;
        for (int64_t p0 = n0; p0 < n1; p0 += NR) {
          const float* panel = packed + ((p0 - n0) / NR) * kc * NR;
          float* C = a.C + m0 * a.ldc + p0;
          const float* bias = a.bias ? a.bias + p0 : nullptr;
          const int init = first ? init_first : 2;
          const int64_t w = n1 - p0;
          if (w >= NR)
            micro_rows<MR>(rows, A, a.lda, panel, kc, C, a.ldc, bias, init);
          else
            edge_tile(rows, w, A, a.lda, panel, kc, C, a.ldc, bias, init, tile);
        }
      }
    }
  }
}

// Few rows, B stored [K, N] (row-major, HF Conv1D): y_m += a_mk · B[k, :],
// four k at a time so each output chunk is loaded and stored once per four rows
// of B. Chunks are long (8 KB of outputs, still in L1) so that B is read in long
// runs of consecutive addresses, which the hardware prefetcher keeps up with.
template <class W>
void matmul_small_rows(const MatmulArgs& a, const W* Bw, int64_t n_begin, int64_t n_end) {
  constexpr int64_t kChunk = 2048;
  for (int64_t c0 = n_begin; c0 < n_end; c0 += kChunk) {
    const int64_t cw = n_end - c0 < kChunk ? n_end - c0 : kChunk;
    for (int64_t m = 0; m < a.M; ++m) {
      float* y = a.C + m * a.ldc + c0;
      if (!a.accumulate)
        for (int64_t j = 0; j < cw; ++j) y[j] = a.bias ? a.bias[c0 + j] : 0.f;
    }
    int64_t k = 0;
    for (; k + 4 <= a.K; k += 4) {
      const W* b0 = Bw + k * a.b_stride_k + c0;
      const W* b1 = b0 + a.b_stride_k;
      const W* b2 = b1 + a.b_stride_k;
      const W* b3 = b2 + a.b_stride_k;
      for (int64_t m = 0; m < a.M; ++m) {
        const float* x = a.A + m * a.lda + k;
        const vf x0 = vset1(x[0]), x1 = vset1(x[1]), x2 = vset1(x[2]), x3 = vset1(x[3]);
        float* y = a.C + m * a.ldc + c0;
        int64_t j = 0;
        for (; j + VL <= cw; j += VL) {
          vf acc = vload(y + j);
          acc = vfma(x0, vload_w(b0 + j), acc);
          acc = vfma(x1, vload_w(b1 + j), acc);
          acc = vfma(x2, vload_w(b2 + j), acc);
          acc = vfma(x3, vload_w(b3 + j), acc);
          vstore(y + j, acc);
        }
        for (; j < cw; ++j)
          y[j] += x[0] * load_w(b0 + j) + x[1] * load_w(b1 + j) + x[2] * load_w(b2 + j) + x[3] * load_w(b3 + j);
      }
    }
    for (; k < a.K; ++k) {
      const W* b = Bw + k * a.b_stride_k + c0;
      for (int64_t m = 0; m < a.M; ++m) axpy_w(a.C + m * a.ldc + c0, a.A[m * a.lda + k], b, cw);
    }
  }
}

// Few rows, B's columns contiguous in k ([N, K] row-major, an unembedding):
// each output is one dot product over a row of the weight matrix.
template <class W>
void matmul_small_dots(const MatmulArgs& a, const W* Bw, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    const W* col = Bw + n * a.b_stride_n;
    for (int64_t m = 0; m < a.M; ++m) {
      float v = dot_w(a.A + m * a.lda, col, a.K);
      float* y = a.C + m * a.ldc + n;
      *y = (a.accumulate ? *y : 0.f) + v + (a.bias ? a.bias[n] : 0.f);
    }
  }
}

template <class W>
void matmul_any(const MatmulArgs& a, const W* Bw, int64_t n_begin, int64_t n_end) {
  if (a.M <= kMatmulSmallM && a.b_stride_n == 1)
    matmul_small_rows(a, Bw, n_begin, n_end);
  else if (a.M <= kMatmulSmallM && a.b_stride_k == 1)
    matmul_small_dots(a, Bw, n_begin, n_end);
  else
    matmul_packed(a, Bw, n_begin, n_end);
}

}  // namespace

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
