// Matching-pursuit encoding (SAELens's MatchingPursuitSAE): a tied SAE whose
// codes come from greedily picking decoder rows. Each row of the input runs
// its own loop: pick the feature whose decoder row has the largest ReLU'd dot
// product with the residual (the first of equal ones), add that value to the
// feature, subtract value x row from the residual, and stop when the set of
// active features did not grow (stop_on_duplicate_support), when the
// residual's norm falls below residual_threshold (if > 0), or after
// max_iterations picks.
#pragma once
#include <cstdint>

namespace tmech {

struct MatchingPursuitConfig {
  float residual_threshold = 1e-2f;  // <= 0: no threshold
  int64_t max_iterations = 0;        // picks per row at most
  bool stop_on_duplicate_support = true;
};

// acts [rows, d_sae] (every element written) from sae_in [rows, d_in], with
// W_dec [d_sae, d_in]; threaded over rows.
void matching_pursuit(const MatchingPursuitConfig& c, const float* W_dec, int64_t d_in, int64_t d_sae,
                      const float* sae_in, int64_t rows, float* acts);

}  // namespace tmech
