// Threaded drivers over rows and elements: each thread takes a range and
// calls the active kernel variant on it.
#pragma once
#include <cstdint>

namespace tmech {

// out[r] = LayerNorm(x[r]) * w + b for rows x[rows, n].
void layernorm_rows(const float* x, int64_t rows, int64_t n, float eps, const float* w, const float* b, float* out);

// out[r] = log(sum_j exp(x[r, j])) for rows x[rows, n], n >= 1.
void log_sum_exp_rows(const float* x, int64_t rows, int64_t n, float* out);

// out[b, t] = log_sum_exp(logits[b, t]) - logits[b, t, tokens[b, t + 1]] for
// t < T - 1: each next token's cross-entropy, [B, T - 1]. A token id outside
// [0, V) throws std::out_of_range, logits over no entries std::invalid_argument.
void token_losses(const float* logits, const int32_t* tokens, int64_t B, int64_t T, int64_t V, float* out);

void gelu_new_rows(float* x, int64_t count);
void add_inplace(float* x, const float* y, int64_t count);  // x += y

}  // namespace tmech
