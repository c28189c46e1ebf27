// Half and bfloat16 conversions: all 65536 halves, and float -> half rounding against a reference
// that picks the nearest representable half by search (ties to the even encoding).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <gtest/gtest.h>

#include "kernels/kernels.h"
#include "kernels_test_util.h"
#include "testing/fixtures.h"

namespace pipeinfer::kernels {
namespace {

using testing::Path;
using testing::Paths;
using testing::SameFloat;
using testing::ScopedPath;

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Reference float -> half: binary search over the 31744 non-negative finite halves (their values
// are increasing with the encoding), nearest wins, a tie goes to the even encoding, and anything
// at or beyond 65520 (the midpoint between 65504 and the next power 65536) is infinity.
uint16_t RefFloatToHalf(float f) {
  static const std::vector<double> values = [] {
    std::vector<double> v;
    for (uint32_t h = 0; h < 0x7c00; ++h) v.push_back(pipeinfer::testing::HalfToFloat(h));
    return v;
  }();
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return sign | 0x7e00;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return sign | 0x7c00;
  const auto it = std::lower_bound(values.begin(), values.end(), a);
  if (it == values.end()) return sign | 0x7bff;
  uint16_t hi = static_cast<uint16_t>(it - values.begin());
  if (*it == a || hi == 0) return sign | hi;
  const uint16_t lo = hi - 1;
  const double dlo = a - values[lo], dhi = values[hi] - a;
  if (dlo < dhi) return sign | lo;
  if (dhi < dlo) return sign | hi;
  return sign | ((lo & 1) == 0 ? lo : hi);
}

TEST(KernelsConvert, EveryHalfDecodesExactlyAndRoundTrips) {
  std::vector<uint16_t> all(65536);
  for (uint32_t h = 0; h < 65536; ++h) all[h] = static_cast<uint16_t>(h);
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = pipeinfer::testing::HalfToFloat(static_cast<uint16_t>(h));
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    ASSERT_TRUE(SameFloat(got, want)) << std::hex << h;
    const uint16_t back = FloatToHalf(got);
    if (std::isnan(want)) {
      // NaN stays NaN with its sign, quieted, payload kept.
      EXPECT_EQ(back, h | 0x0200) << std::hex << h;
    } else {
      EXPECT_EQ(back, h) << std::hex << h;
    }
  }
  for (const Path& p : Paths()) {
    ScopedPath scoped(p);
    std::vector<float> out(65536 + 1, 777.0f);
    HalfToFloatN(all.data(), out.data(), 65536);
    EXPECT_EQ(out[65536], 777.0f);
    for (uint32_t h = 0; h < 65536; ++h) {
      ASSERT_TRUE(SameFloat(out[h], HalfToFloat(static_cast<uint16_t>(h))))
          << p.name << " " << std::hex << h;
    }
    // Unaligned start and a length that is not a multiple of 8.
    std::vector<float> part(1001);
    HalfToFloatN(all.data() + 0x3bf3, part.data(), 1001);
    for (int i = 0; i < 1001; ++i) {
      ASSERT_TRUE(SameFloat(part[i], HalfToFloat(static_cast<uint16_t>(0x3bf3 + i)))) << p.name;
    }
    std::vector<uint16_t> halves(65536);
    FloatToHalfN(out.data(), halves.data(), 65536);
    for (uint32_t h = 0; h < 65536; ++h) {
      const uint16_t want = ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) ? (h | 0x200) : h;
      ASSERT_EQ(halves[h], want) << p.name << " " << std::hex << h;
    }
  }
}

std::vector<float> RoundingInputs() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          65504.0f,
                          65519.99f,
                          65520.0f,
                          -65520.0f,
                          65536.0f,
                          1e10f,
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::ldexp(1.0f, -14),  // smallest normal half
                          std::ldexp(1.0f, -24),  // smallest subnormal half
                          std::ldexp(1.0f, -25),  // tie between 0 and 2^-24
                          std::nextafter(std::ldexp(1.0f, -25), 1.0f),
                          std::ldexp(1.5f, -24),     // tie between 1 and 2 ulps
                          std::ldexp(2.5f, -24),     // tie between 2 and 3 ulps
                          std::ldexp(1023.5f, -24),  // rounds up to 2^-14
                          std::ldexp(1.0f, -26),
                          std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::min(),
                          1.0f + std::ldexp(1.0f, -11),       // tie, to even (1.0)
                          1.0f + 3 * std::ldexp(1.0f, -11)};  // tie, to even (up)
  std::mt19937 rng(17);
  // Random bit patterns cover every exponent (including float subnormals and huge values).
  for (int i = 0; i < 200000; ++i) {
    float f = FromBits(static_cast<uint32_t>(rng()));
    if (!std::isnan(f)) v.push_back(f);
  }
  // Exact midpoints between neighbouring halves, and one float ulp to either side.
  for (int i = 0; i < 50000; ++i) {
    const uint16_t h = static_cast<uint16_t>(rng() % 0x7bff);
    const float a = pipeinfer::testing::HalfToFloat(h);
    const float b = pipeinfer::testing::HalfToFloat(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((static_cast<double>(a) + b) / 2);
    for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
      v.push_back(f);
      v.push_back(-f);
    }
  }
  return v;
}

TEST(KernelsConvert, FloatToHalfRoundsToNearestEven) {
  const auto inputs = RoundingInputs();
  int bad = 0;
  for (float f : inputs) {
    if (FloatToHalf(f) != RefFloatToHalf(f) && ++bad <= 5) {
      ADD_FAILURE() << "FloatToHalf(" << f << " = 0x" << std::hex << Bits(f) << ") = 0x"
                    << FloatToHalf(f) << ", want 0x" << RefFloatToHalf(f);
    }
  }
  EXPECT_EQ(bad, 0);
  for (const Path& p : Paths()) {
    ScopedPath scoped(p);
    std::vector<uint16_t> out(inputs.size());
    FloatToHalfN(inputs.data(), out.data(), static_cast<int64_t>(inputs.size()));
    for (size_t i = 0; i < inputs.size(); ++i) {
      ASSERT_EQ(out[i], RefFloatToHalf(inputs[i])) << p.name << " " << inputs[i];
    }
  }
}

TEST(KernelsConvert, NanStaysNan) {
  for (uint32_t bits : {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fffffffu, 0xff812345u}) {
    const uint16_t h = FloatToHalf(FromBits(bits));
    EXPECT_EQ(h & 0x7c00, 0x7c00);
    EXPECT_NE(h & 0x3ff, 0);
    EXPECT_EQ(h >> 15, bits >> 31);
    for (const Path& p : Paths()) {
      ScopedPath scoped(p);
      const float f = FromBits(bits);
      uint16_t hn;
      FloatToHalfN(&f, &hn, 1);
      EXPECT_EQ(hn, h) << p.name << " " << std::hex << bits;
    }
  }
}

TEST(KernelsConvert, Bf16IsTheTopHalfOfAFloat) {
  for (uint32_t h = 0; h < 65536; ++h) {
    EXPECT_EQ(Bits(BF16ToFloat(static_cast<uint16_t>(h))), h << 16);
  }
}

}  // namespace
}  // namespace pipeinfer::kernels
