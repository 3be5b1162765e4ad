#include "sae_screen.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/kernels.hpp"
#include "sae.hpp"
#include "threads.hpp"

namespace tmech {
namespace {

// Features screened per step: their float32 weights (transposed), bfloat16
// weights and the rows' scores stay in L2 while the survivors are recomputed.
constexpr int64_t kColumns = 128;
// Rows screened per pass, bounding the scores buffer.
constexpr int64_t kRows = 1024;
// Far below any bound that matters, far above what flushing subnormals to
// zero can move a sum by (2K 2^-126).
const float kTiny = std::ldexp(1.f, -100);

struct Hit {
  int32_t row, feature;
  float value;
};

// c in |screened - float32| <= c ‖a‖‖w‖ (see the header), with room for the
// float32 rounding of the norms, of the test and of the recomputed sum.
float bound_factor(int64_t K) {
  const double u = std::ldexp(1.0, -8), u32 = std::ldexp(1.0, -24);
  const double gamma = static_cast<double>(K) * u32 / (1 - static_cast<double>(K) * u32);
  return static_cast<float>((2 * u + u * u + 3 * gamma + std::ldexp(1.0, -20)) * 1.01);
}

float threshold_of(const ScreenedEncoder& e, int64_t j) {
  return e.threshold ? std::max(e.threshold[j], 0.f) : 0.f;
}

// Per-thread buffers, carved from the thread's scratch after the matmul's.
struct Buffers {
  float* matmul;    // matmul_scratch_floats()
  float* w_t;       // [kColumns, K] float32: the chunk's weights, one feature per row
  uint16_t* w16;    // [kColumns, K] the same in bfloat16
  float* scores;    // [kRows, kColumns]
  float* w_norm;    // [kColumns]
  float* limit;     // [kColumns]: threshold - bias, less the rounding slack
  int32_t* passed;  // [kColumns]: one row's survivors
  static int64_t floats(int64_t K) {
    return matmul_scratch_floats() + kColumns * K + (kColumns * K + 1) / 2 + kRows * kColumns + 3 * kColumns;
  }
  Buffers(float* s, int64_t K)
      : matmul(s),
        w_t(s + matmul_scratch_floats()),
        w16(reinterpret_cast<uint16_t*>(w_t + kColumns * K)),
        scores(w_t + kColumns * K + (kColumns * K + 1) / 2),
        w_norm(scores + kRows * kColumns),
        limit(w_norm + kColumns),
        passed(reinterpret_cast<int32_t*>(limit + kColumns)) {}
};

// Features [n0, n0 + nc): their float32 weights transposed into b.w_t (one
// feature per row, for the float32 recomputation), rounded into b.w16, their
// norms into b.w_norm; and the screened dot products round(a)·round(w) of
// rows [0, rows) into b.scores ([rows, nc]).
void screen_chunk(const ScreenedEncoder& e, const float* in, int64_t rows, int64_t n0, int64_t nc, const Buffers& b) {
  const KernelTable& kt = kernels::active();
  const int64_t K = e.d_in;
  kt.transpose(e.W_enc + n0, e.d_sae, K, nc, b.w_t, K);
  kt.round_bf16(b.w_t, b.w16, nc * K);
  for (int64_t j = 0; j < nc; ++j) b.w_norm[j] = std::sqrt(kt.dot(b.w_t + j * K, b.w_t + j * K, K)) + kTiny;
  MatmulArgs a{rows, nc, K, in, K, nullptr, 1, K, nullptr, b.scores, nc, false, b.matmul, b.w16};
  kt.matmul_cols(a, 0, nc);
}

// The float32 pre-activation of feature n0 + j (its weights in b.w_t) for one row.
float recompute(const ScreenedEncoder& e, const float* row, const Buffers& b, int64_t n0, int64_t j) {
  return e.b_enc[n0 + j] + kernels::active().dot(row, b.w_t + j * e.d_in, e.d_in);
}

// ReLU / JumpReLU, features [n0, n0 + nc) of rows [0, rows): those whose
// float32 pre-activation passes their threshold, into hits.
void screen_columns(const ScreenedEncoder& e, const float* in, int64_t rows, const float* row_margin, int64_t n0,
                    int64_t nc, const Buffers& b, std::vector<Hit>& hits) {
  const KernelTable& kt = kernels::active();
  screen_chunk(e, in, rows, n0, nc, b);
  for (int64_t j = 0; j < nc; ++j) {
    const float thr = threshold_of(e, n0 + j), bias = e.b_enc[n0 + j];
    // less a slack for rounding the bias and the threshold into the test
    b.limit[j] = (thr - bias) - (std::ldexp(std::fabs(thr) + std::fabs(bias), -21) + kTiny);
  }
  for (int64_t m = 0; m < rows; ++m) {
    const int64_t count = kt.screen(b.scores + m * nc, b.w_norm, row_margin[m], b.limit, nc, b.passed);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t j = b.passed[i];
      const float pre = recompute(e, in + m * e.d_in, b, n0, j);
      if (pre > threshold_of(e, n0 + j)) hits.push_back({static_cast<int32_t>(m), static_cast<int32_t>(n0 + j), pre});
    }
  }
}

// Appends the hits of `rows` rows, each chunk's sorted by (row, feature) and
// the chunks in feature order, to codes.
void append_codes(const std::vector<std::vector<Hit>>& chunks, int64_t rows, SparseCodes& codes) {
  std::vector<int64_t> cursor(static_cast<size_t>(rows), 0);
  for (const auto& hits : chunks)
    for (const Hit& h : hits) ++cursor[static_cast<size_t>(h.row)];
  for (size_t r = 0; r < cursor.size(); ++r) {
    const int64_t count = cursor[r];
    cursor[r] = codes.offsets.back();
    codes.offsets.push_back(codes.offsets.back() + count);
  }
  codes.indices.resize(static_cast<size_t>(codes.offsets.back()));
  codes.values.resize(codes.indices.size());
  for (const auto& hits : chunks)
    for (const Hit& h : hits) {
      const auto o = static_cast<size_t>(cursor[static_cast<size_t>(h.row)]++);
      codes.indices[o] = h.feature;
      codes.values[o] = h.value;
    }
  codes.rows += rows;
}

}  // namespace

bool screening_applies(int64_t rows, int64_t d_in) {
  // d_in < 2^20 keeps γ_K tiny (and the bound meaningful)
  return kernels::active().bf16_dot_products && rows > kMatmulSmallM && d_in < (int64_t{1} << 20);
}

void screened_encode(const ScreenedEncoder& e, const float* in, int64_t rows, SparseCodes& codes) {
  const KernelTable& kt = kernels::active();
  const int64_t K = e.d_in, n_chunks = (e.d_sae + kColumns - 1) / kColumns;
  const float c = bound_factor(K);
  std::vector<float> row_margin(static_cast<size_t>(rows));
  for (int64_t m = 0; m < rows; ++m) row_margin[m] = c * std::sqrt(kt.dot(in + m * K, in + m * K, K)) + kTiny;
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t rc = std::min(kRows, rows - r0);
    std::vector<std::vector<Hit>> chunks(static_cast<size_t>(n_chunks));
    parallel_for(n_chunks, [&](int64_t c0, int64_t c1, int t) {
      const Buffers b(thread_scratch(t, Buffers::floats(K)), K);
      for (int64_t ch = c0; ch < c1; ++ch) {
        const int64_t n0 = ch * kColumns;
        screen_columns(e, in + r0 * K, rc, row_margin.data() + r0, n0, std::min(kColumns, e.d_sae - n0), b,
                       chunks[static_cast<size_t>(ch)]);
      }
    });
    append_codes(chunks, rc, codes);
  }
}

}  // namespace tmech
