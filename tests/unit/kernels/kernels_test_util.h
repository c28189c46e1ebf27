// Helpers shared by the kernel tests: the code paths to run, random weight data, and naive
// per-element reference decoders written from the format descriptions (independently of the
// library's decoders).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gguf/tensor_type.h"
#include "kernels/kernels.h"
#include "testing/fixtures.h"

namespace pipeinfer::kernels::testing {

using gguf::TensorType;

// Every type the kernels are expected to implement.
inline const std::vector<TensorType>& AllTypes() {
  static const std::vector<TensorType> v = {
      TensorType::kF32,  TensorType::kF16,  TensorType::kBF16, TensorType::kQ8_0, TensorType::kQ4_0,
      TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ2_K, TensorType::kQ3_K,
      TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K};
  return v;
}

inline std::string TypeName(TensorType t) { return gguf::TypeInfo(t).name; }

// The paths to test: always the portable one, plus AVX2 and AVX-512 when the CPU has them (the
// avx512 path runs its own kernels for F32/F16/BF16 and, with VNNI, for the integer paths of
// Q8_0/Q4_0/Q4_K/Q6_K; everything else on it is the AVX2 code). ScopedPath caps the process-wide
// level and restores the default on destruction.
struct Path {
  bool simd;
  const char* name;
  SimdLevel level = SimdLevel::kScalar;
};
inline std::vector<Path> Paths() {
  std::vector<Path> p = {{false, "scalar", SimdLevel::kScalar}};
  if (BestSimdLevel() >= SimdLevel::kAvx2) p.push_back({true, "avx2", SimdLevel::kAvx2});
  if (BestSimdLevel() >= SimdLevel::kAvx512) {
    p.push_back(
        {true, GetCpuFeatures().avx512_vnni ? "avx512-vnni" : "avx512", SimdLevel::kAvx512});
  }
  return p;
}
// The paths of Paths() as text, with the ones this CPU lacks named as skipped.
inline std::string PathsNote() {
  std::string s;
  for (const Path& p : Paths()) s += std::string(" ") + p.name;
  if (BestSimdLevel() < SimdLevel::kAvx2) s += " (avx2 skipped: the CPU lacks AVX2/FMA/F16C)";
  if (BestSimdLevel() < SimdLevel::kAvx512)
    s += " (avx512 skipped: the CPU lacks AVX-512 F/BW/DQ/VL)";
  if (BestSimdLevel() == SimdLevel::kAvx512 && !GetCpuFeatures().avx512_vnni) {
    s += " (avx512 integer tiles skipped: no AVX-512 VNNI; that path uses the AVX2 ones)";
  }
  return s;
}
class ScopedPath {
 public:
  explicit ScopedPath(const Path& p) { SetMaxSimdLevel(p.level); }
  ~ScopedPath() { SetMaxSimdLevel(SimdLevel::kAvx512); }
};
// Sets the process-wide QuantMath for a scope.
class ScopedQuantMath {
 public:
  explicit ScopedQuantMath(QuantMath m) : old_(GetQuantMath()) { SetQuantMath(m); }
  ~ScopedQuantMath() { SetQuantMath(old_); }

 private:
  QuantMath old_;
};

inline uint16_t HalfBits(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
}
inline float Half(const uint8_t* p) { return pipeinfer::testing::HalfToFloat(HalfBits(p)); }

// Random rows of `t`. Quantized payload bytes are uniformly random. The f16 scales (and F16/BF16
// /F32 elements) are random finite values: any finite bit pattern when `moderate` is false (for
// bit-exact decoding tests), or values of magnitude ~[1/64, 1/8] (scales) / [-1, 1] (plain
// elements) when true (for arithmetic tests).
inline std::vector<uint8_t> RandomRows(TensorType t, int64_t rows, int64_t cols, std::mt19937& rng,
                                       bool moderate) {
  const auto& info = gguf::TypeInfo(t);
  const size_t bytes = static_cast<size_t>(rows * (cols / info.block_size) * info.type_size);
  std::vector<uint8_t> data(bytes);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  auto finite_half = [&]() -> uint16_t {
    if (moderate) {
      const float v = std::ldexp(1.0f + 0.5f * unit(rng), -3 - static_cast<int>(rng() % 4));
      return FloatToHalf(rng() % 2 ? v : -v);
    }
    for (;;) {
      const uint16_t h = static_cast<uint16_t>(rng());
      if (((h >> 10) & 0x1f) != 0x1f) return h;
    }
  };
  if (t == TensorType::kF16) {
    for (size_t i = 0; i < bytes; i += 2) {
      const uint16_t h = moderate ? FloatToHalf(unit(rng)) : finite_half();
      std::memcpy(&data[i], &h, 2);
    }
  } else if (t == TensorType::kBF16) {
    for (size_t i = 0; i < bytes; i += 2) {
      uint16_t h;
      if (moderate) {
        const float f = unit(rng);
        uint32_t u;
        std::memcpy(&u, &f, 4);
        h = static_cast<uint16_t>(u >> 16);
      } else {
        do h = static_cast<uint16_t>(rng());
        while (((h >> 7) & 0xff) == 0xff);
      }
      std::memcpy(&data[i], &h, 2);
    }
  } else if (t == TensorType::kF32) {
    for (size_t i = 0; i < bytes; i += 4) {
      float f;
      if (moderate) {
        f = unit(rng);
      } else {
        uint32_t u;
        do u = static_cast<uint32_t>(rng());
        while (((u >> 23) & 0xff) == 0xff);
        std::memcpy(&f, &u, 4);
      }
      std::memcpy(&data[i], &f, 4);
    }
  } else {
    for (size_t b = 0; b < bytes; b += info.type_size) {
      for (int off : gguf::HalfFieldOffsets(t)) {
        const uint16_t h = finite_half();
        std::memcpy(&data[b + off], &h, 2);
      }
    }
  }
  return data;
}

// --- Naive references: element i of one block, straight from the format description. --------

// 6-bit scale / min of sub-block j of a Q4_K/Q5_K block: sub-blocks 0-3 in the low 6 bits of
// bytes j and j+4; sub-blocks 4-7 have their low 4 bits in byte j+4 (scale: low nibble, min:
// high nibble) and their top 2 bits in the top bits of byte j-4 (scale) and byte j (min).
inline void RefScaleMinK4(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] % 64;
    *m = s[j + 4] % 64;
  } else {
    *sc = s[j + 4] % 16 + 16 * (s[j - 4] / 64);
    *m = s[j + 4] / 16 + 16 * (s[j] / 64);
  }
}

// Weight i of a block as integers: w = D * sc * q - M * m (K-quants and Q4_0/Q5_0/Q8_0 with
// sc = 1, m = 0), or w = D * q + M (Q4_1/Q5_1: sc = 1, m = 1, minus sign dropped).
struct RefParts {
  int q, sc, m;
};

inline RefParts RefWeightParts(TensorType t, const uint8_t* b, int i) {
  switch (t) {
    case TensorType::kQ8_0:
      return {static_cast<int8_t>(b[2 + i]), 1, 0};
    case TensorType::kQ4_0:
    case TensorType::kQ4_1: {
      const uint8_t byte = b[(t == TensorType::kQ4_0 ? 2 : 4) + i % 16];
      const int q = i < 16 ? byte % 16 : byte / 16;
      return t == TensorType::kQ4_0 ? RefParts{q - 8, 1, 0} : RefParts{q, 1, 1};
    }
    case TensorType::kQ5_0:
    case TensorType::kQ5_1: {
      const bool q51 = t == TensorType::kQ5_1;
      const uint8_t* qh = b + (q51 ? 4 : 2);
      const uint8_t byte = b[(q51 ? 8 : 6) + i % 16];
      const int q = (i < 16 ? byte % 16 : byte / 16) + 16 * ((qh[i / 8] >> (i % 8)) & 1);
      return q51 ? RefParts{q, 1, 1} : RefParts{q - 16, 1, 0};
    }
    case TensorType::kQ2_K: {
      const int h = i / 128, j = (i % 128) / 32, l = i % 32, s = i / 16;
      return {(b[16 + 32 * h + l] >> (2 * j)) & 3, b[s] % 16, b[s] / 16};
    }
    case TensorType::kQ3_K: {
      const int h = i / 128, j = (i % 128) / 32, l = i % 32, s = i / 16;
      const uint8_t* scales = b + 96;
      const int low = s < 8 ? scales[s] % 16 : scales[s - 8] / 16;
      const int high = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
      const int hbit = (b[l] >> (4 * h + j)) & 1;
      return {((b[32 + 32 * h + l] >> (2 * j)) & 3) - (hbit ? 0 : 4), low + 16 * high - 32, 0};
    }
    case TensorType::kQ4_K:
    case TensorType::kQ5_K: {
      const bool q5 = t == TensorType::kQ5_K;
      const int c = i / 64, r = i % 64, sub = i / 32;
      const uint8_t byte = b[(q5 ? 48 : 16) + 32 * c + r % 32];
      int q = r < 32 ? byte % 16 : byte / 16;
      if (q5) q += 16 * ((b[16 + r % 32] >> sub) & 1);
      int sc, m;
      RefScaleMinK4(b + 4, sub, &sc, &m);
      return {q, sc, m};
    }
    case TensorType::kQ6_K: {
      const int h = i / 128, g = (i % 128) / 32, l = i % 32, s = i / 16;
      const uint8_t lbyte = b[64 * h + l + 32 * (g % 2)];
      const int low = g < 2 ? lbyte % 16 : lbyte / 16;
      const int high = (b[128 + 32 * h + l] >> (2 * g)) & 3;
      return {low + 16 * high - 32, static_cast<int8_t>(b[192 + s]), 0};
    }
    default:
      return {0, 0, 0};
  }
}

inline float RefWeight(TensorType t, const uint8_t* b, int i) {
  const RefParts p = RefWeightParts(t, b, i);
  const float q = static_cast<float>(p.q), sc = static_cast<float>(p.sc);
  const float m = static_cast<float>(p.m);
  switch (t) {
    case TensorType::kF32: {
      float f;
      std::memcpy(&f, b + 4 * i, 4);
      return f;
    }
    case TensorType::kF16:
      return Half(b + 2 * i);
    case TensorType::kBF16: {
      const uint32_t u = static_cast<uint32_t>(HalfBits(b + 2 * i)) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    }
    case TensorType::kQ8_0:
    case TensorType::kQ4_0:
    case TensorType::kQ5_0:
      return q * Half(b);
    case TensorType::kQ4_1:
    case TensorType::kQ5_1:
      return q * Half(b) + Half(b + 2);
    case TensorType::kQ2_K:
      return (Half(b + 80) * sc) * q - Half(b + 82) * m;
    case TensorType::kQ3_K:
      return (Half(b + 108) * sc) * q;
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
      return (Half(b) * sc) * q - Half(b + 2) * m;
    case TensorType::kQ6_K:
      return (Half(b + 208) * sc) * q;
    default:
      return NAN;
  }
}

// A whole row through RefWeight.
inline std::vector<float> RefRow(TensorType t, const uint8_t* row, int64_t cols) {
  const auto& info = gguf::TypeInfo(t);
  std::vector<float> out(cols);
  for (int64_t c = 0; c < cols; ++c) {
    const int64_t blk = c / info.block_size;
    out[c] = RefWeight(t, row + blk * info.type_size, static_cast<int>(c % info.block_size));
  }
  return out;
}

inline bool SameFloat(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  uint32_t ua, ub;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  return ua == ub;
}

}  // namespace pipeinfer::kernels::testing
