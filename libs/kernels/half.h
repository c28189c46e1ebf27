// Internal: exact IEEE binary16 <-> binary32 conversions as inline bit manipulation, shared by the
// portable kernels (the public HalfToFloat/FloatToHalf wrap these).
#pragma once

#include <cstdint>
#include <cstring>

namespace pipeinfer::kernels::internal {
// Internal linkage on purpose: the AVX2 translation units are compiled with other -m flags, and
// a shared inline definition could be merged with theirs by the linker.
namespace {

inline float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline uint32_t FloatToBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

// binary16: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits. Every half is exactly
// representable as a float, so the conversion only moves bits.
inline float HalfBitsToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  if (exp == 0x1f) return BitsToFloat(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp != 0) return BitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return BitsToFloat(sign);  // +-0
  // Subnormal: mant * 2^-24. Shift the leading one up to the implicit-bit position (bit 10);
  // each shift lowers the exponent by one, starting from the exponent of 2^-14.
  uint32_t e = 113;  // biased float exponent of 2^-14
  while ((mant & 0x400) == 0) {
    mant <<= 1;
    --e;
  }
  return BitsToFloat(sign | (e << 23) | ((mant & 0x3ff) << 13));
}

// Round to nearest, ties to even; overflow gives infinity; NaNs stay NaN with the quiet bit set and
// the top payload bits kept (what the F16C instruction does).
inline uint16_t FloatToHalfBits(float f) {
  const uint32_t x = FloatToBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) {  // inf or nan
    if (a == 0x7f800000u) return sign | 0x7c00;
    return sign | 0x7e00 | static_cast<uint16_t>((a >> 13) & 0x3ff);
  }
  if (a >= 0x47800000u) return sign | 0x7c00;  // >= 65536: always rounds to infinity
  if (a >= 0x38800000u) {                      // >= 2^-14: a normal half (or rounds up to inf)
    // Rebias the exponent (127 -> 15) and keep 10 mantissa bits; a carry out of the mantissa
    // correctly bumps the exponent (and 65520 and up become 0x7c00 = infinity).
    uint32_t h = (a >> 13) - (112u << 10);
    const uint32_t rest = a & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
    return sign | static_cast<uint16_t>(h);
  }
  if (a <= 0x33000000u) return sign;  // <= 2^-25: rounds to zero (2^-25 is a tie, to even 0)
  // Subnormal half: value / 2^-24 = m * 2^(e - 126) with m the 24-bit significand.
  const uint32_t e = a >> 23;  // 102 .. 112
  const uint32_t m = (a & 0x7fffff) | 0x800000;
  const uint32_t shift = 126 - e;  // 14 .. 24
  uint32_t h = m >> shift;
  const uint32_t rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1))) ++h;  // may carry into the smallest normal
  return sign | static_cast<uint16_t>(h);
}

inline float Bf16BitsToFloat(uint16_t h) { return BitsToFloat(static_cast<uint32_t>(h) << 16); }

// Reads a little-endian half stored at an unaligned address.
inline float LoadHalf(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return HalfBitsToFloat(h);
}

}  // namespace
}  // namespace pipeinfer::kernels::internal
