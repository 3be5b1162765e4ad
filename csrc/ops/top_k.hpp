// The k largest entries of each row, over the threads: next-token
// predictions, the logit lens, an SAE's top features.
#pragma once
#include <cstdint>

namespace tmech {

// For rows x[rows, n]: indices[r, j] and values[r, j] of the k largest
// entries of row r, largest first; equal values by index, so the result is
// torch.topk's / a stable descending sort's. NaN ranks as -inf. 0 <= k <= n.
void top_k_rows(const float* x, int64_t rows, int64_t n, int64_t k, int64_t* indices, float* values);

}  // namespace tmech
