#include "dequantize.hpp"

#include <cstring>
#include <stdexcept>

#include "threads.hpp"

namespace tmech {

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);  // inf, NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);  // rebias 15 -> 127
  } else {
    const float magnitude = static_cast<float>(mantissa) * (1.f / 16777216.f);  // subnormal: m * 2^-24
    std::memcpy(&bits, &magnitude, sizeof(bits));
    bits |= sign;
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

bool can_dequantize(int ggml_type) { return quant_block_bytes(ggml_type) > 0; }

int64_t quant_block_bytes(int ggml_type) {
  switch (ggml_type) {
    case 2: return 2 + kQuantBlock / 2;
    case 3: return 4 + kQuantBlock / 2;
    case 8: return 2 + kQuantBlock;
    default: return 0;
  }
}

namespace {

inline uint16_t u16_at(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

// The 32 values of one block: the nibble layout of Q4_0 and Q4_1.
inline int nibble(const uint8_t* qs, int i) { return i < 16 ? (qs[i] & 0x0F) : (qs[i - 16] >> 4); }

void block(int type, const uint8_t* b, float* out) {
  const float d = half_to_float(u16_at(b));
  if (type == 2) {
    for (int i = 0; i < kQuantBlock; ++i) out[i] = d * static_cast<float>(nibble(b + 2, i) - 8);
  } else if (type == 3) {
    const float m = half_to_float(u16_at(b + 2));
    for (int i = 0; i < kQuantBlock; ++i) {
      const float scaled = d * static_cast<float>(nibble(b + 4, i));
      out[i] = scaled + m;
    }
  } else {
    for (int i = 0; i < kQuantBlock; ++i) out[i] = d * static_cast<float>(static_cast<int8_t>(b[2 + i]));
  }
}

}  // namespace

void dequantize_blocks(int ggml_type, const uint8_t* src, int64_t n_blocks, float* out) {
  const int64_t bytes = quant_block_bytes(ggml_type);
  if (bytes == 0) throw std::invalid_argument("no dequantizer for GGML type " + std::to_string(ggml_type));
  parallel_for(n_blocks, [&](int64_t b0, int64_t b1, int) {
    for (int64_t b = b0; b < b1; ++b) block(ggml_type, src + b * bytes, out + b * kQuantBlock);
  }, 1024);
}

}  // namespace tmech
