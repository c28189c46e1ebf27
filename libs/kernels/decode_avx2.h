// Internal, AVX2 translation units only (files compiled with -mavx2 -mfma -mf16c): block decoders
// that produce a block's weights as 8-lane float vectors.
//
// Decode(block, f) calls f(k, w) for the k-th group of 8 weights of the block (k < kBlock / 8),
// with w bit-identical to the portable decoders' output (formats.h describes the layouts; the
// library is compiled without FMA contraction). Everything has internal linkage: the linker must
// never merge these AVX2-compiled definitions with code that runs on other CPUs.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/formats.h"

namespace pipeinfer::kernels::avx2 {
namespace {

inline float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return _cvtsh_ss(h);
}

inline __m256i Load256(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline __m128i Load128(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

inline float HorizontalSum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// Byte-wise shifts (AVX2 only shifts 16-bit lanes; the mask drops bits from the neighbour byte).
inline __m256i Shr4Bits(__m256i v, int n, int mask) {
  return _mm256_and_si256(_mm256_srli_epi16(v, n), _mm256_set1_epi8(static_cast<char>(mask)));
}

// 32 signed bytes (values fit in int8) -> four groups of 8 weights k0..k0+3: w = q * d, with
// scale d0 for the first 16 bytes and d1 for the last 16 (K-quant sub-blocks of 16).
template <class F>
inline void EmitScaled(__m256i q, __m256 d0, __m256 d1, int k0, F& f) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  f(k0 + 0, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), d0));
  f(k0 + 1, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), d0));
  f(k0 + 2, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), d1));
  f(k0 + 3, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), d1));
}

// Same with an offset: w = q * d + m (kAdd, Q4_1/Q5_1) or w = q * d - m (K-quant mins).
template <bool kAdd, class F>
inline void EmitAffine(__m256i q, __m256 d0, __m256 m0, __m256 d1, __m256 m1, int k0, F& f) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
#pragma GCC unroll 16
  for (int p = 0; p < 4; ++p) {
    const __m256 d = p < 2 ? d0 : d1, m = p < 2 ? m0 : m1;
    const __m256 dq = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[p])), d);
    f(k0 + p, kAdd ? _mm256_add_ps(dq, m) : _mm256_sub_ps(dq, m));
  }
}

// 8 bytes at p widened to eight 32-bit lanes (zero- or sign-extended): one load+extend µop pair,
// no cross-lane shuffles (cheaper than splitting a 32-byte register).
inline __m256i Widen8U(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
inline __m256i Widen8S(const uint8_t* p) {
  return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// Expands the 32 bits of a Q5 qh word to 32 bytes (byte j = bit j), giving 0x10 where set.
inline __m256i FifthBits(const uint8_t* qh_bytes) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, sizeof(qh));
  const __m256i v = _mm256_set1_epi32(static_cast<int>(qh));
  // Byte j of the result takes byte j/8 of qh (each 128-bit lane holds all four bytes).
  const __m256i spread =
      _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2,
                                              2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

// The 32 nibbles of a Q4_0/Q4_1/Q5 block in weight order: low nibbles (weights 0-15), then high.
inline __m256i Nibbles32(const uint8_t* qs) {
  const __m128i b = Load128(qs);
  const __m128i mask = _mm_set1_epi8(0x0f);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), mask), _mm_and_si128(b, mask));
}

// ----- decoders -------------------------------------------------------------------------------

struct DecF32 {
  static constexpr int kBlock = 32, kBytes = 128;
  template <class F>
  static inline void Decode(const uint8_t* b, F&& f) {
    const float* p = reinterpret_cast<const float*>(b);
#pragma GCC unroll 16
    for (int k = 0; k < 4; ++k) f(k, _mm256_loadu_ps(p + 8 * k));
  }
};

struct DecF16 {
  static constexpr int kBlock = 32, kBytes = 64;
  template <class F>
  static inline void Decode(const uint8_t* b, F&& f) {
#pragma GCC unroll 16
    for (int k = 0; k < 4; ++k) f(k, _mm256_cvtph_ps(Load128(b + 16 * k)));
  }
};

struct DecBF16 {
  static constexpr int kBlock = 32, kBytes = 64;
  template <class F>
  static inline void Decode(const uint8_t* b, F&& f) {
#pragma GCC unroll 16
    for (int k = 0; k < 4; ++k) {
      const __m256i u = _mm256_slli_epi32(_mm256_cvtepu16_epi32(Load128(b + 16 * k)), 16);
      f(k, _mm256_castsi256_ps(u));
    }
  }
};

struct DecQ8_0 {
  static constexpr int kBlock = 32, kBytes = 34;
  template <class F>
  static inline void Decode(const uint8_t* b, F&& f) {
    const __m256 d = _mm256_set1_ps(HalfAt(b));
#pragma GCC unroll 16
    for (int k = 0; k < 4; ++k) f(k, _mm256_mul_ps(_mm256_cvtepi32_ps(Widen8S(b + 2 + 8 * k)), d));
  }
};

struct DecQ4_0 {
  static constexpr int kBlock = 32, kBytes = 18;
  template <class F>
  static inline void Decode(const uint8_t* b, F&& f) {
    const __m256 d = _mm256_set1_ps(HalfAt(b));
    const __m256i low4 = _mm256_set1_epi32(0x0f), eight = _mm256_set1_epi32(8);
    // Bytes 8h..8h+7 widened to 32-bit lanes hold weights 8h.. in their low nibbles and
    // 16+8h.. in their high nibbles.
#pragma GCC unroll 16
    for (int h = 0; h < 2; ++h) {
      const __m256i v = Widen8U(b + 2 + 8 * h);
      const __m256i lo = _mm256_sub_epi32(_mm256_and_si256(v, low4), eight);
      const __m256i hi = _mm256_sub_epi32(_mm256_srli_epi32(v, 4), eight);
      f(h, _mm256_mul_ps(_mm256_cvtepi32_ps(lo), d));
      f(2 + h, _mm256_mul_ps(_mm256_cvtepi32_ps(hi), d));
    }
  }
};

struct DecQ4_1 {
  static constexpr int kBlock = 32, kBytes = 20;
  template <class F>
  static inline void Decode(const uint8_t* b, F&& f) {
    const __m256 d = _mm256_set1_ps(HalfAt(b)), m = _mm256_set1_ps(HalfAt(b + 2));
    const __m256i low4 = _mm256_set1_epi32(0x0f);
#pragma GCC unroll 16
    for (int h = 0; h < 2; ++h) {  // as Q4_0
      const __m256i v = Widen8U(b + 4 + 8 * h);
      f(h, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, low4)), d), m));
      f(2 + h, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), d), m));
    }
  }
};

struct DecQ5_0 {
  static constexpr int kBlock = 32, kBytes = 22;
  template <class F>
  static inline void Decode(const uint8_t* b, F&& f) {
    const __m256 d = _mm256_set1_ps(HalfAt(b));
    const __m256i q = _mm256_or_si256(Nibbles32(b + 6), FifthBits(b + 2));
    EmitScaled(_mm256_sub_epi8(q, _mm256_set1_epi8(16)), d, d, 0, f);
  }
};

struct DecQ5_1 {
  static constexpr int kBlock = 32, kBytes = 24;
  template <class F>
  static inline void Decode(const uint8_t* b, F&& f) {
    const __m256 d = _mm256_set1_ps(HalfAt(b)), m = _mm256_set1_ps(HalfAt(b + 2));
    EmitAffine<true>(_mm256_or_si256(Nibbles32(b + 8), FifthBits(b + 4)), d, m, d, m, 0, f);
  }
};

struct DecQ2_K {
  static constexpr int kBlock = 256, kBytes = 84;
  template <class F>
  static inline void Decode(const uint8_t* b, F&& f) {
    const float d = HalfAt(b + 80), dmin = HalfAt(b + 82);
#pragma GCC unroll 16
    for (int h = 0; h < 2; ++h) {
      const __m256i q = Load256(b + 16 + 32 * h);
#pragma GCC unroll 16
      for (int j = 0; j < 4; ++j) {
        const int s = 8 * h + 2 * j;
        const uint8_t sc0 = b[s], sc1 = b[s + 1];
        EmitAffine<false>(Shr4Bits(q, 2 * j, 3), _mm256_set1_ps(d * static_cast<float>(sc0 & 0xf)),
                          _mm256_set1_ps(dmin * static_cast<float>(sc0 >> 4)),
                          _mm256_set1_ps(d * static_cast<float>(sc1 & 0xf)),
                          _mm256_set1_ps(dmin * static_cast<float>(sc1 >> 4)), 16 * h + 4 * j, f);
      }
    }
  }
};

struct DecQ3_K {
  static constexpr int kBlock = 256, kBytes = 110;
  template <class F>
  static inline void Decode(const uint8_t* b, F&& f) {
    const float d = HalfAt(b + 108);
    int sc[16];
    internal::ScalesQ3K(b + 96, sc);
    const __m256i hmask = Load256(b);
    const __m256i four = _mm256_set1_epi8(4), zero = _mm256_setzero_si256();
#pragma GCC unroll 16
    for (int h = 0; h < 2; ++h) {
      const __m256i q = Load256(b + 32 + 32 * h);
#pragma GCC unroll 16
      for (int j = 0; j < 4; ++j) {
        const int s = 8 * h + 2 * j;
        const __m256i bit = _mm256_set1_epi8(static_cast<char>(1 << (4 * h + j)));
        const __m256i clear = _mm256_cmpeq_epi8(_mm256_and_si256(hmask, bit), zero);
        const __m256i v = _mm256_sub_epi8(Shr4Bits(q, 2 * j, 3), _mm256_and_si256(clear, four));
        EmitScaled(v, _mm256_set1_ps(d * static_cast<float>(sc[s])),
                   _mm256_set1_ps(d * static_cast<float>(sc[s + 1])), 16 * h + 4 * j, f);
      }
    }
  }
};

struct DecQ4_K {
  static constexpr int kBlock = 256, kBytes = 144;
  template <class F>
  static inline void Decode(const uint8_t* b, F&& f) {
    const float d = HalfAt(b), dmin = HalfAt(b + 2);
    const uint8_t* qs = b + 16;
    const __m256i low4 = _mm256_set1_epi32(0x0f);
#pragma GCC unroll 16
    for (int c = 0; c < 4; ++c) {
      int sc0, m0, sc1, m1;
      internal::ScaleMinK4(b + 4, 2 * c, &sc0, &m0);
      internal::ScaleMinK4(b + 4, 2 * c + 1, &sc1, &m1);
      const __m256 d0 = _mm256_set1_ps(d * static_cast<float>(sc0));
      const __m256 mn0 = _mm256_set1_ps(dmin * static_cast<float>(m0));
      const __m256 d1 = _mm256_set1_ps(d * static_cast<float>(sc1));
      const __m256 mn1 = _mm256_set1_ps(dmin * static_cast<float>(m1));
#pragma GCC unroll 16
      for (int p = 0; p < 4; ++p) {  // 8 bytes: weights 64c+8p.. (low), 64c+32+8p.. (high)
        const __m256i v = Widen8U(qs + 32 * c + 8 * p);
        const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, low4));
        const __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
        f(8 * c + p, _mm256_sub_ps(_mm256_mul_ps(lo, d0), mn0));
        f(8 * c + 4 + p, _mm256_sub_ps(_mm256_mul_ps(hi, d1), mn1));
      }
    }
  }
};

// Q5_K: as Q4_K plus the fifth bit, handled 32 bytes at a time.
struct DecQ5_K {
  static constexpr int kBlock = 256, kBytes = 176;
  template <class F>
  static inline void Decode(const uint8_t* b, F&& f) {
    const float d = HalfAt(b), dmin = HalfAt(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* qs = b + 48;
    const __m256i low4 = _mm256_set1_epi8(0x0f), sixteen = _mm256_set1_epi8(16);
    const __m256i qh = Load256(b + 16);
#pragma GCC unroll 16
    for (int c = 0; c < 4; ++c) {
      int sc0, m0, sc1, m1;
      internal::ScaleMinK4(scales, 2 * c, &sc0, &m0);
      internal::ScaleMinK4(scales, 2 * c + 1, &sc1, &m1);
      const __m256i q = Load256(qs + 32 * c);
      const __m256i b0 = _mm256_set1_epi8(static_cast<char>(1 << (2 * c)));
      const __m256i b1 = _mm256_set1_epi8(static_cast<char>(2 << (2 * c)));
      const __m256i lo = _mm256_or_si256(
          _mm256_and_si256(q, low4),
          _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b0), b0), sixteen));
      const __m256i hi = _mm256_or_si256(
          Shr4Bits(q, 4, 0x0f),
          _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b1), b1), sixteen));
      const __m256 d0 = _mm256_set1_ps(d * static_cast<float>(sc0));
      const __m256 mn0 = _mm256_set1_ps(dmin * static_cast<float>(m0));
      const __m256 d1 = _mm256_set1_ps(d * static_cast<float>(sc1));
      const __m256 mn1 = _mm256_set1_ps(dmin * static_cast<float>(m1));
      EmitAffine<false>(lo, d0, mn0, d0, mn0, 8 * c, f);
      EmitAffine<false>(hi, d1, mn1, d1, mn1, 8 * c + 4, f);
    }
  }
};

struct DecQ6_K {
  static constexpr int kBlock = 256, kBytes = 210;
  template <class F>
  static inline void Decode(const uint8_t* b, F&& f) {
    const float d = HalfAt(b + 208);
    const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
    const __m256i low4 = _mm256_set1_epi8(0x0f), bias = _mm256_set1_epi8(32);
#pragma GCC unroll 16
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = Load256(b + 64 * h), ql1 = Load256(b + 64 * h + 32);
      const __m256i qh = Load256(b + 128 + 32 * h);
      // Two high bits per weight, moved to bits 4-5 of each byte.
      const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(3)), 4);
      const __m256i h1 = _mm256_slli_epi16(Shr4Bits(qh, 2, 3), 4);
      const __m256i h2 = _mm256_slli_epi16(Shr4Bits(qh, 4, 3), 4);
      const __m256i h3 = _mm256_slli_epi16(Shr4Bits(qh, 6, 3), 4);
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(ql0, low4), h0),
          _mm256_or_si256(_mm256_and_si256(ql1, low4), h1),
          _mm256_or_si256(Shr4Bits(ql0, 4, 0x0f), h2),
          _mm256_or_si256(Shr4Bits(ql1, 4, 0x0f), h3),
      };
#pragma GCC unroll 16
      for (int g = 0; g < 4; ++g) {
        const int s = 8 * h + 2 * g;
        EmitScaled(_mm256_sub_epi8(q[g], bias), _mm256_set1_ps(d * static_cast<float>(scales[s])),
                   _mm256_set1_ps(d * static_cast<float>(scales[s + 1])), 16 * h + 4 * g, f);
      }
    }
  }
};

}  // namespace
}  // namespace pipeinfer::kernels::avx2
