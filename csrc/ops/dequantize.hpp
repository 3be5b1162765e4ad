// GGML's tensors (GGUF files) to float32, over the threads: F32, F16, BF16 and
// the block-quantized formats small GGUF models mostly use (Q4_0, Q4_1, Q5_0,
// Q5_1, Q8_0 in blocks of 32 values; Q4_K and Q6_K in super-blocks of 256, as
// in Q4_K_M files). Each computes what the gguf package's numpy dequantizers
// compute, bit for bit (this file is compiled without FMA contraction). Other
// types are dequantized on the Python side, by the gguf package.
#pragma once
#include <cstdint>

namespace tmech {

struct QuantBlock {
  int64_t values = 0, bytes = 0;  // {0, 0}: a type this file does not dequantize
};
// The table of types is kFormats in dequantize.cpp.
QuantBlock quant_block(int ggml_type);
// How many blocks `bytes` bytes of this type hold; std::invalid_argument for
// a type this file does not dequantize, or bytes that end inside a block.
int64_t quant_blocks(int ggml_type, int64_t bytes);

// out[n_blocks * values] from n_blocks blocks at src (n_blocks * bytes bytes).
void dequantize_blocks(int ggml_type, const uint8_t* src, int64_t n_blocks, float* out);

// IEEE half-precision bits to float (subnormals, infinities and NaN included).
float half_to_float(uint16_t h);

}  // namespace tmech
