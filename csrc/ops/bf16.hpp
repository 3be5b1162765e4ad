// float32 -> bfloat16 conversion of whole weight matrices, over the threads.
#pragma once
#include <cstdint>

namespace tmech {

// x[rows, cols] as bfloat16 bits, to nearest, ties to even (subnormals kept,
// NaN as 0x7FC0: torch's rounding), into out[rows, cols], or out[cols, rows]
// when transpose; over the threads (loading a model in bf16 converts every
// weight matrix).
void to_bf16_matrix(const float* x, int64_t rows, int64_t cols, bool transpose, uint16_t* out);

}  // namespace tmech
