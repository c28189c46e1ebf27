// Internal, AVX2 translation units only (files compiled with -mavx2 -mfma -mf16c): block decoders
// that produce a block's weights as 8-lane float vectors.
//
// Decode(block, f) calls f(k, w) for the k-th group of 8 weights of the block, for k = 0, 1, ...,
// kBlock / 8 - 1 in this order, with w bit-identical to the portable decoders' output (formats.h
// describes the layouts; the library is compiled without FMA contraction). The order matters:
// MatMul's kernels collect four consecutive groups (32 weights) before using them. Everything has
// internal linkage: the linker must never merge these AVX2-compiled definitions with code that runs
// on other CPUs.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/formats.h"

// The decoders and their helpers must be inlined into the kernels that consume their output (the
// consumer's accumulators then stay in registers); GCC's heuristics alone give up on the bigger
// K-quant blocks.
#define PIPEINFER_AVX2_INLINE inline __attribute__((always_inline))
#define PIPEINFER_AVX2_LAMBDA_INLINE __attribute__((always_inline))

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
PIPEINFER_AVX2_INLINE void EmitScaled(__m256i q, __m256 d0, __m256 d1, int k0, F& f) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  f(k0 + 0, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), d0));
  f(k0 + 1, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), d0));
  f(k0 + 2, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), d1));
  f(k0 + 3, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), d1));
}

// Same with an offset: w = q * d + m (kAdd, Q4_1/Q5_1) or w = q * d - m (K-quant mins).
template <bool kAdd, class F>
PIPEINFER_AVX2_INLINE void EmitAffine(__m256i q, __m256 d0, __m256 m0, __m256 d1, __m256 m1, int k0,
                                      F& f) {
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

// Expands the 32 bits of a Q5 qh word to 32 bytes: byte j is 0xff where bit j is set, else 0.
inline __m256i FifthBitsSet(const uint8_t* qh_bytes) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, sizeof(qh));
  const __m256i v = _mm256_set1_epi32(static_cast<int>(qh));
  // Byte j of the result takes byte j/8 of qh (each 128-bit lane holds all four bytes).
  const __m256i spread =
      _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2,
                                              2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

// The 32 nibbles of a Q4_0/Q4_1/Q5 block in weight order: low nibbles (weights 0-15), then high.
// The 16 bytes are loaded into both halves and the upper half shifted by 4 (64-bit lanes: bits
// that cross into a byte from its neighbour are masked off).
inline __m256i Nibbles32(const uint8_t* qs) {
  const __m256i b = _mm256_broadcastsi128_si256(Load128(qs));
  return _mm256_and_si256(_mm256_srlv_epi64(b, _mm256_setr_epi64x(0, 0, 4, 4)),
                          _mm256_set1_epi8(0x0f));
}

// The per-sub-block factors of a K-quant block are computed as vectors, once per block, then
// stored to a small stack array: each sub-block then broadcasts its factor with a load
// (vbroadcastss m32), which needs no shuffle unit and no index register.
PIPEINFER_AVX2_INLINE __m256 Bcast(const float* p) { return _mm256_broadcast_ss(p); }

// d * float(s) for the eight integer scales s widened to 32-bit lanes: the same float products as
// scalar code, computed once per block instead of once per sub-block.
PIPEINFER_AVX2_INLINE __m256 ScaleTimes(float d, __m256i s) {
  return _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s));
}

// The two f16 values at p (p and p + 2) as floats, each in every lane: one 4-byte broadcast load
// and one conversion (cheaper than converting and broadcasting each half separately).
PIPEINFER_AVX2_INLINE void TwoHalves(const uint8_t* p, __m256* a, __m256* b) {
  float word;  // the two halves' bits (SSE moves keep them; compiles to vbroadcastss m32)
  std::memcpy(&word, p, 4);
  const __m256 both = _mm256_cvtph_ps(_mm_castps_si128(_mm_set1_ps(word)));  // a, b, a, b, ...
  *a = _mm256_permute_ps(both, 0x00);
  *b = _mm256_permute_ps(both, 0x55);
}

// The f16 value at p as a float in every lane, reading the 4 bytes at p (p + 2, p + 3 must be
// readable: not for a field at the end of a block).
PIPEINFER_AVX2_INLINE __m256 HalfLeading(const uint8_t* p) {
  float word;  // as in TwoHalves
  std::memcpy(&word, p, 4);
  return _mm256_permute_ps(_mm256_cvtph_ps(_mm_castps_si128(_mm_set1_ps(word))), 0x00);
}

// The 8 six-bit scales (sc) and mins (m) of a Q4_K/Q5_K block as bytes (see ScaleMinK4): with
// the 12 scale bytes read as three little-endian words w0, w1, w2, sub-blocks 0-3 are the low 6
// bits of w0 (scales) and w1 (mins); sub-blocks 4-7 take their low 4 bits from the nibbles of w2
// and their top 2 bits from the top bits of w0 (scales) and w1 (mins).
PIPEINFER_AVX2_INLINE void ScalesMinsK4(const uint8_t* p, uint64_t* sc, uint64_t* m) {
  uint32_t w0, w1, w2;
  std::memcpy(&w0, p, 4);
  std::memcpy(&w1, p + 4, 4);
  std::memcpy(&w2, p + 8, 4);
  const uint32_t s_lo = w0 & 0x3f3f3f3fu, m_lo = w1 & 0x3f3f3f3fu;
  const uint32_t s_hi = (w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u);
  const uint32_t m_hi = ((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u);
  *sc = s_lo | (static_cast<uint64_t>(s_hi) << 32);
  *m = m_lo | (static_cast<uint64_t>(m_hi) << 32);
}

// The 8 sub-block factors of a Q4_K/Q5_K block: dsc[j] = d * sc_j, dmn[j] = dmin * m_j.
PIPEINFER_AVX2_INLINE void FactorsK4(const uint8_t* b, float* dsc, float* dmn) {
  __m256 d, dmin;
  TwoHalves(b, &d, &dmin);
  uint64_t sc, m;
  ScalesMinsK4(b + 4, &sc, &m);
  const __m256 fsc =
      _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(sc))));
  const __m256 fm =
      _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(m))));
  _mm256_store_ps(dsc, _mm256_mul_ps(d, fsc));
  _mm256_store_ps(dmn, _mm256_mul_ps(dmin, fm));
}

// ----- decoders -------------------------------------------------------------------------------

struct DecF32 {
  static constexpr int kBlock = 32, kBytes = 128;
  template <class F>
  static PIPEINFER_AVX2_INLINE void Decode(const uint8_t* b, F&& f) {
    const float* p = reinterpret_cast<const float*>(b);
#pragma GCC unroll 16
    for (int k = 0; k < 4; ++k) f(k, _mm256_loadu_ps(p + 8 * k));
  }
};

struct DecF16 {
  static constexpr int kBlock = 32, kBytes = 64;
  template <class F>
  static PIPEINFER_AVX2_INLINE void Decode(const uint8_t* b, F&& f) {
#pragma GCC unroll 16
    for (int k = 0; k < 4; ++k) f(k, _mm256_cvtph_ps(Load128(b + 16 * k)));
  }
};

struct DecBF16 {
  static constexpr int kBlock = 32, kBytes = 64;
  template <class F>
  static PIPEINFER_AVX2_INLINE void Decode(const uint8_t* b, F&& f) {
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
  static PIPEINFER_AVX2_INLINE void Decode(const uint8_t* b, F&& f) {
    const __m256 d = HalfLeading(b);
#pragma GCC unroll 16
    for (int k = 0; k < 4; ++k) f(k, _mm256_mul_ps(_mm256_cvtepi32_ps(Widen8S(b + 2 + 8 * k)), d));
  }
};

struct DecQ4_0 {
  static constexpr int kBlock = 32, kBytes = 18;
  template <class F>
  static PIPEINFER_AVX2_INLINE void Decode(const uint8_t* b, F&& f) {
    const __m256 d = HalfLeading(b);
    const __m256i low4 = _mm256_set1_epi32(0x0f), eight = _mm256_set1_epi32(8);
    // Bytes 8h..8h+7 widened to 32-bit lanes hold weights 8h.. in their low nibbles and
    // 16+8h.. in their high nibbles.
    const __m256i v[2] = {Widen8U(b + 2), Widen8U(b + 10)};
#pragma GCC unroll 16
    for (int h = 0; h < 2; ++h) {
      const __m256i lo = _mm256_sub_epi32(_mm256_and_si256(v[h], low4), eight);
      f(h, _mm256_mul_ps(_mm256_cvtepi32_ps(lo), d));
    }
#pragma GCC unroll 16
    for (int h = 0; h < 2; ++h) {
      const __m256i hi = _mm256_sub_epi32(_mm256_srli_epi32(v[h], 4), eight);
      f(2 + h, _mm256_mul_ps(_mm256_cvtepi32_ps(hi), d));
    }
  }
};

struct DecQ4_1 {
  static constexpr int kBlock = 32, kBytes = 20;
  template <class F>
  static PIPEINFER_AVX2_INLINE void Decode(const uint8_t* b, F&& f) {
    __m256 d, m;
    TwoHalves(b, &d, &m);
    const __m256i low4 = _mm256_set1_epi32(0x0f);
    const __m256i v[2] = {Widen8U(b + 4), Widen8U(b + 12)};  // as Q4_0
#pragma GCC unroll 16
    for (int h = 0; h < 2; ++h) {
      f(h, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v[h], low4)), d), m));
    }
#pragma GCC unroll 16
    for (int h = 0; h < 2; ++h) {
      f(2 + h, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v[h], 4)), d), m));
    }
  }
};

struct DecQ5_0 {
  static constexpr int kBlock = 32, kBytes = 22;
  template <class F>
  static PIPEINFER_AVX2_INLINE void Decode(const uint8_t* b, F&& f) {
    const __m256 d = HalfLeading(b);
    // q - 16 = nibble - 16 where the fifth bit is clear, the nibble where it is set.
    const __m256i low = _mm256_andnot_si256(FifthBitsSet(b + 2), _mm256_set1_epi8(-16));
    EmitScaled(_mm256_add_epi8(Nibbles32(b + 6), low), d, d, 0, f);
  }
};

struct DecQ5_1 {
  static constexpr int kBlock = 32, kBytes = 24;
  template <class F>
  static PIPEINFER_AVX2_INLINE void Decode(const uint8_t* b, F&& f) {
    __m256 d, m;
    TwoHalves(b, &d, &m);
    const __m256i fifth = _mm256_and_si256(FifthBitsSet(b + 4), _mm256_set1_epi8(0x10));
    EmitAffine<true>(_mm256_or_si256(Nibbles32(b + 8), fifth), d, m, d, m, 0, f);
  }
};

struct DecQ2_K {
  static constexpr int kBlock = 256, kBytes = 84;
  template <class F>
  static PIPEINFER_AVX2_INLINE void Decode(const uint8_t* b, F&& f) {
    __m256 d, dmin;
    TwoHalves(b + 80, &d, &dmin);
    // dsc[s] = d * (scale nibble of sub-block s), dmn likewise with dmin and the min nibble.
    const __m128i sb = Load128(b), mask = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(sb, mask), hi = _mm_and_si128(_mm_srli_epi16(sb, 4), mask);
    alignas(32) float dsc[16], dmn[16];
    _mm256_store_ps(dsc, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo))));
    _mm256_store_ps(
        dsc + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)))));
    _mm256_store_ps(dmn, _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi))));
    _mm256_store_ps(
        dmn + 8,
        _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)))));
#pragma GCC unroll 16
    for (int h = 0; h < 2; ++h) {
      const __m256i q = Load256(b + 16 + 32 * h);
#pragma GCC unroll 16
      for (int j = 0; j < 4; ++j) {
        const int s = 8 * h + 2 * j;
        EmitAffine<false>(Shr4Bits(q, 2 * j, 3), Bcast(dsc + s), Bcast(dmn + s), Bcast(dsc + s + 1),
                          Bcast(dmn + s + 1), 16 * h + 4 * j, f);
      }
    }
  }
};

struct DecQ3_K {
  static constexpr int kBlock = 256, kBytes = 110;
  template <class F>
  static PIPEINFER_AVX2_INLINE void Decode(const uint8_t* b, F&& f) {
    const float d = HalfAt(b + 108);
    // The 16 signed scales (formats.h) as bytes: low 4 bits from the nibbles of bytes 0-7 (low
    // nibbles for sub-blocks 0-7, high for 8-15); top 2 bits of sub-block 4g + j from bits 2g..2g+1
    // of byte 8 + j, i.e. from the word of bytes 8-11 shifted right by 2g in 32-bit lane g.
    const __m128i a = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 96));
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m128i low =
        _mm_unpacklo_epi64(_mm_and_si128(a, mask), _mm_and_si128(_mm_srli_epi16(a, 4), mask));
    uint32_t top_word;
    std::memcpy(&top_word, b + 104, 4);
    const __m128i top = _mm_and_si128(
        _mm_srlv_epi32(_mm_set1_epi32(static_cast<int>(top_word)), _mm_setr_epi32(0, 2, 4, 6)),
        _mm_set1_epi8(3));
    const __m128i sc8 = _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(top, 4)), _mm_set1_epi8(32));
    alignas(32) float dsc[16];
    _mm256_store_ps(dsc, ScaleTimes(d, _mm256_cvtepi8_epi32(sc8)));
    _mm256_store_ps(dsc + 8, ScaleTimes(d, _mm256_cvtepi8_epi32(_mm_srli_si128(sc8, 8))));
    const __m256i hmask = Load256(b);
    const __m256i four = _mm256_set1_epi8(4), zero = _mm256_setzero_si256();
#pragma GCC unroll 16
    for (int h = 0; h < 2; ++h) {
      const __m256i q = Load256(b + 32 + 32 * h);
#pragma GCC unroll 16
      for (int j = 0; j < 4; ++j) {
        const __m256i bit = _mm256_set1_epi8(static_cast<char>(1 << (4 * h + j)));
        const __m256i clear = _mm256_cmpeq_epi8(_mm256_and_si256(hmask, bit), zero);
        const __m256i v = _mm256_sub_epi8(Shr4Bits(q, 2 * j, 3), _mm256_and_si256(clear, four));
        const int s = 8 * h + 2 * j;
        EmitScaled(v, Bcast(dsc + s), Bcast(dsc + s + 1), 16 * h + 4 * j, f);
      }
    }
  }
};

struct DecQ4_K {
  static constexpr int kBlock = 256, kBytes = 144;
  template <class F>
  static PIPEINFER_AVX2_INLINE void Decode(const uint8_t* b, F&& f) {
    alignas(32) float dsc[8], dmn[8];
    FactorsK4(b, dsc, dmn);
    const uint8_t* qs = b + 16;
    const __m256i low4 = _mm256_set1_epi32(0x0f);
#pragma GCC unroll 16
    for (int c = 0; c < 4; ++c) {
      const __m256 d0 = Bcast(dsc + 2 * c), mn0 = Bcast(dmn + 2 * c);
      const __m256 d1 = Bcast(dsc + 2 * c + 1), mn1 = Bcast(dmn + 2 * c + 1);
      // 8 bytes at 32c+8p: weights 64c+8p.. (low nibbles), 64c+32+8p.. (high nibbles).
#pragma GCC unroll 16
      for (int p = 0; p < 4; ++p) {
        const __m256i v = Widen8U(qs + 32 * c + 8 * p);
        const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, low4));
        f(8 * c + p, _mm256_sub_ps(_mm256_mul_ps(lo, d0), mn0));
      }
#pragma GCC unroll 16
      for (int p = 0; p < 4; ++p) {
        const __m256i v = Widen8U(qs + 32 * c + 8 * p);
        const __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
        f(8 * c + 4 + p, _mm256_sub_ps(_mm256_mul_ps(hi, d1), mn1));
      }
    }
  }
};

// Q5_K: as Q4_K plus the fifth bit, handled 32 bytes at a time.
struct DecQ5_K {
  static constexpr int kBlock = 256, kBytes = 176;
  template <class F>
  static PIPEINFER_AVX2_INLINE void Decode(const uint8_t* b, F&& f) {
    alignas(32) float dsc[8], dmn[8];
    FactorsK4(b, dsc, dmn);
    const uint8_t* qs = b + 48;
    const __m256i low4 = _mm256_set1_epi8(0x0f), sixteen = _mm256_set1_epi8(16);
    const __m256i qh = Load256(b + 16);
#pragma GCC unroll 16
    for (int c = 0; c < 4; ++c) {
      const __m256i q = Load256(qs + 32 * c);
      const __m256i b0 = _mm256_set1_epi8(static_cast<char>(1 << (2 * c)));
      const __m256i b1 = _mm256_set1_epi8(static_cast<char>(2 << (2 * c)));
      const __m256i lo = _mm256_or_si256(
          _mm256_and_si256(q, low4),
          _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b0), b0), sixteen));
      const __m256i hi = _mm256_or_si256(
          Shr4Bits(q, 4, 0x0f),
          _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b1), b1), sixteen));
      const __m256 d0 = Bcast(dsc + 2 * c), mn0 = Bcast(dmn + 2 * c);
      const __m256 d1 = Bcast(dsc + 2 * c + 1), mn1 = Bcast(dmn + 2 * c + 1);
      EmitAffine<false>(lo, d0, mn0, d0, mn0, 8 * c, f);
      EmitAffine<false>(hi, d1, mn1, d1, mn1, 8 * c + 4, f);
    }
  }
};

struct DecQ6_K {
  static constexpr int kBlock = 256, kBytes = 210;
  template <class F>
  static PIPEINFER_AVX2_INLINE void Decode(const uint8_t* b, F&& f) {
    const float d = HalfAt(b + 208);
    const __m128i sc8 = Load128(b + 192);  // 16 signed scales
    alignas(32) float dsc[16];
    _mm256_store_ps(dsc, ScaleTimes(d, _mm256_cvtepi8_epi32(sc8)));
    _mm256_store_ps(dsc + 8, ScaleTimes(d, _mm256_cvtepi8_epi32(_mm_srli_si128(sc8, 8))));
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
        EmitScaled(_mm256_sub_epi8(q[g], bias), Bcast(dsc + s), Bcast(dsc + s + 1), 16 * h + 4 * g,
                   f);
      }
    }
  }
};

}  // namespace
}  // namespace pipeinfer::kernels::avx2
