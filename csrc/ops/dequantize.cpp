#include "ops/dequantize.hpp"

#include <cstring>
#include <stdexcept>
#include <string>

#include "runtime/threads.hpp"

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

namespace {

inline uint16_t u16_at(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline float f16_at(const uint8_t* p) { return half_to_float(u16_at(p)); }

// Value i of a 32-value block's 4-bit quants: low nibbles first, then high ones.
inline int nibble(const uint8_t* qs, int i) { return i < 16 ? (qs[i] & 0x0F) : (qs[i - 16] >> 4); }
// Q5's fifth bit of value i, from a little-endian 32-bit word.
inline int fifth_bit(const uint8_t* qh, int i) { return (qh[i / 8] >> (i % 8)) & 1; }

// Q4_0: f16 d, 16 bytes of nibbles: d * (q - 8)
void q4_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  for (int i = 0; i < 32; ++i) y[i] = d * static_cast<float>(nibble(b + 2, i) - 8);
}
// Q4_1: f16 d, f16 m, 16 bytes of nibbles: d * q + m
void q4_1(const uint8_t* b, float* y) {
  const float d = f16_at(b), m = f16_at(b + 2);
  for (int i = 0; i < 32; ++i) y[i] = d * static_cast<float>(nibble(b + 4, i)) + m;
}
// Q5_0: f16 d, 4 bytes of fifth bits, 16 bytes of nibbles: d * (q - 16)
void q5_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  for (int i = 0; i < 32; ++i) y[i] = d * static_cast<float>((nibble(b + 6, i) | fifth_bit(b + 2, i) << 4) - 16);
}
// Q5_1: f16 d, f16 m, 4 bytes of fifth bits, 16 bytes of nibbles: d * q + m
void q5_1(const uint8_t* b, float* y) {
  const float d = f16_at(b), m = f16_at(b + 2);
  for (int i = 0; i < 32; ++i) y[i] = d * static_cast<float>(nibble(b + 8, i) | fifth_bit(b + 4, i) << 4) + m;
}
// Q8_0: f16 d, 32 int8: d * q
void q8_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  for (int i = 0; i < 32; ++i) y[i] = d * static_cast<float>(static_cast<int8_t>(b[2 + i]));
}
// Q4_K: f16 d, f16 dmin, 12 bytes of eight 6-bit (scale, min) pairs, 128 bytes
// of nibbles; sub-block j (32 values) is (d * scale_j) * q - dmin * min_j, its
// quants the low (j even) or high (j odd) nibbles of bytes 32 (j / 2) onward.
void q4_k(const uint8_t* b, float* y) {
  const float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t* s = b + 4;
  const uint8_t* qs = b + 16;
  for (int j = 0; j < 8; ++j) {
    const int scale = j < 4 ? s[j] & 0x3F : (s[j + 4] & 0x0F) | ((s[j - 4] >> 2) & 0x30);
    const int min = j < 4 ? s[j + 4] & 0x3F : (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30);
    const float dj = d * static_cast<float>(scale), mj = dmin * static_cast<float>(min);
    const uint8_t* q = qs + 32 * (j / 2);
    for (int l = 0; l < 32; ++l) y[32 * j + l] = dj * static_cast<float>((q[l] >> (4 * (j % 2))) & 0x0F) - mj;
  }
}
// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales,
// f16 d; value v is (d * scale[v / 16]) * (q - 32). Group k = 4 h + t of 32
// values: low nibble of ql[64 h + 32 (t % 2) + l] (high nibble when t >= 2),
// high bits 2t of qh[32 h + l].
void q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16_at(b + 208);
  for (int k = 0; k < 8; ++k) {
    const int h = k / 4, t = k % 4;
    for (int l = 0; l < 32; ++l) {
      const int low = (ql[64 * h + 32 * (t % 2) + l] >> (4 * (t / 2))) & 0x0F;
      const int high = (qh[32 * h + l] >> (2 * t)) & 0x03;
      const int v = 32 * k + l;
      y[v] = d * static_cast<float>(sc[v / 16]) * static_cast<float>((low | high << 4) - 32);
    }
  }
}

// Unquantized types: one value a block. (F32 is here so the table lists every type the core reads.)
void f32(const uint8_t* b, float* out) { std::memcpy(out, b, 4); }
void f16(const uint8_t* b, float* out) { out[0] = f16_at(b); }
void bf16(const uint8_t* b, float* out) {
  const uint32_t bits = static_cast<uint32_t>(u16_at(b)) << 16;
  std::memcpy(out, &bits, 4);
}

// The GGML types the core reads, the one table of them (Python asks quant_block): id, block
// size and block function. A new type: a block function and a row here.
struct Format {
  int type;
  QuantBlock block;
  void (*fn)(const uint8_t*, float*);
};
constexpr Format kFormats[] = {{0, {1, 4}, f32},       {1, {1, 2}, f16},      {30, {1, 2}, bf16},  {2, {32, 18}, q4_0},
                               {3, {32, 20}, q4_1},    {6, {32, 22}, q5_0},   {7, {32, 24}, q5_1}, {8, {32, 34}, q8_0},
                               {12, {256, 144}, q4_k}, {14, {256, 210}, q6_k}};

const Format* format_of(int ggml_type) {
  for (const Format& f : kFormats)
    if (f.type == ggml_type) return &f;
  return nullptr;
}

const Format& known_format(int ggml_type) {
  const Format* f = format_of(ggml_type);
  if (!f) throw std::invalid_argument("no dequantizer for GGML type " + std::to_string(ggml_type));
  return *f;
}

}  // namespace

QuantBlock quant_block(int ggml_type) {
  const Format* f = format_of(ggml_type);
  return f ? f->block : QuantBlock{};
}

int64_t quant_blocks(int ggml_type, int64_t bytes) {
  const QuantBlock q = known_format(ggml_type).block;
  if (bytes % q.bytes) throw std::invalid_argument("the data is not a whole number of blocks");
  return bytes / q.bytes;
}

void dequantize_blocks(int ggml_type, const uint8_t* src, int64_t n_blocks, float* out) {
  const Format& f = known_format(ggml_type);
  parallel_for(
      n_blocks,
      [&](int64_t b0, int64_t b1, int) {
        for (int64_t b = b0; b < b1; ++b) f.fn(src + b * f.block.bytes, out + b * f.block.values);
      },
      256);
}

}  // namespace tmech
