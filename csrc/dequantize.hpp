// GGML's block-quantized tensors (GGUF files) to float32, over the threads:
// the three 32-value block formats most small GGUF models use. Other types
// are dequantized on the Python side (by the gguf package).
#pragma once
#include <cstdint>

namespace tmech {

// GGML type ids: Q4_0 = 2, Q4_1 = 3, Q8_0 = 8.
bool can_dequantize(int ggml_type);
// Bytes of one block of kQuantBlock values; 0 for a type this file does not know.
int64_t quant_block_bytes(int ggml_type);
constexpr int64_t kQuantBlock = 32;

// out[n_blocks * 32] from n_blocks blocks at src (n_blocks * quant_block_bytes(type) bytes):
//   Q4_0: f16 d, 16 bytes of 4-bit q (value i < 16: low nibble of byte i, else the high
//         nibble of byte i - 16): d * (q - 8)
//   Q4_1: f16 d, f16 m, the same nibbles: d * q + m
//   Q8_0: f16 d, 32 int8 q: d * q
void dequantize_blocks(int ggml_type, const uint8_t* src, int64_t n_blocks, float* out);

// IEEE half-precision bits to float (subnormals, infinities and NaN included).
float half_to_float(uint16_t h);

}  // namespace tmech
