// Choosing the next token from logits: temperature, top-k and top-p
// (nucleus) filtering, then one draw. The caller supplies the randomness
// (a uniform number per row), so a seeded generator on the Python side makes
// generation reproducible.
#pragma once
#include <cstdint>

namespace tmech {

struct SamplingParams {
  float temperature = 1.f;  // > 0 (greedy decoding is an argmax, not a draw)
  int64_t top_k = 0;        // keep the k most probable tokens; 0: all
  double top_p = 1.0;       // keep the fewest most probable tokens whose probability reaches top_p; 1: all
};

// out[r] = a token drawn from softmax(logits[r] / temperature) restricted
// to the kept tokens, for rows logits[rows, n], with u[r] in [0, 1) as the
// draw. Throws std::invalid_argument for a row with NaN or +inf logits, or
// with every logit -inf.
void sample_rows(const float* logits, int64_t rows, int64_t n, const SamplingParams& params, const double* u,
                 int64_t* out);

}  // namespace tmech
