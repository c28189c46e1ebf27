// AVX2 row kernels of the integer MatMul path (qdot.h) for Q2_K, Q3_K, Q4_K and Q5_K weights with
// Q8_K activations. Compiled with -mavx2 -mfma -mf16c.
//
// Per weight block, the quants of each 32-weight chunk are unpacked to unsigned bytes and
// multiplied with the activation bytes by _mm256_maddubs_epi16 (pairs of products as int16; no
// saturation at these ranges, and exact for activation quants of -128), then widened to int32 by
// _mm256_madd_epi16 with the sub-block scales. Offsets come from the activation block sums: the
// mins of Q2_K/Q4_K/Q5_K (m * bsum, scaled by dmin), and Q3_K's -4 of a weight whose high bit is
// clear (q = u - 4 with u = low bits | high bit << 2 in [0, 7]: sum sc * (u . x) - 4 sum sc *
// bsum). Every token sees the same operations in the same order whatever the batch size.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/decode_avx2.h"
#include "kernels/qdot.h"
#include "kernels/qdot_avx2.h"

namespace pipeinfer::kernels::avx2 {
namespace {

using gguf::TensorType;

inline __m256i LoadBsums(const int16_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// The int16 scale vector for a 32-weight chunk of two 16-weight sub-blocks s, s + 1, from 16
// signed (kSigned) or unsigned byte scales: lanes 0-7 sc[s], lanes 8-15 sc[s + 1].
template <bool kSigned>
inline __m256i PairScales(__m128i sc8, int s) {
  const __m128i pair = _mm_shuffle_epi8(sc8, ByteShuffle(s, s + 1));
  return kSigned ? _mm256_cvtepi8_epi16(pair) : _mm256_cvtepu8_epi16(pair);
}

// Q2_K: u8 scales[16] | u8 qs[64] | f16 d | f16 dmin.
struct KQ2_K {
  static constexpr int kBytes = 84;
  template <int NT>
  static inline void Row(const uint8_t* row, int64_t nb, const Tokens<NT>& tk, float* out) {
    __m256 acc[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    const __m128i low4 = _mm_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * kBytes;
      const __m128i raw = Load128(blk);
      const __m128i sc8 = _mm_and_si128(raw, low4);
      const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), low4));
      __m256i isum[NT];
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) isum[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m256i q = Load256(blk + 16 + 32 * h);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const __m256i u = Shr4Bits(q, 2 * j, 3);
          const __m256i scv = PairScales<false>(sc8, 8 * h + 2 * j);
#pragma GCC unroll 8
          for (int t = 0; t < NT; ++t) {
            const __m256i x = LoadX(tk.x[t] + 256 * b + 128 * h + 32 * j);
            isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), scv));
          }
        }
      }
      const __m256 dw = _mm256_set1_ps(HalfAt(blk + 80)), dmw = _mm256_set1_ps(HalfAt(blk + 82));
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const __m256 dx = _mm256_broadcast_ss(tk.d[t] + b);
        const __m256 summ =
            _mm256_cvtepi32_ps(_mm256_madd_epi16(LoadBsums(tk.bsums[t] + 16 * b), mins));
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(isum[t]), acc[t]);
        acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmw, dx), summ, acc[t]);
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) out[t] = HorizontalSum(acc[t]);
  }
};

// Q3_K: u8 hmask[32] | u8 qs[64] | u8 scales[12] | f16 d.
struct KQ3_K {
  static constexpr int kBytes = 110;
  // The 16 signed 6-bit scales (formats.h) as bytes: word k holds sub-blocks 4k..4k+3, low 4 bits
  // from the nibbles of the first 8 scale bytes, top 2 bits from the last 4.
  static inline __m128i Scales(const uint8_t* p) {
    uint32_t a0, a1, a2;
    std::memcpy(&a0, p, 4);
    std::memcpy(&a1, p + 4, 4);
    std::memcpy(&a2, p + 8, 4);
    const uint32_t k4 = 0x0f0f0f0fu, k2 = 0x03030303u;
    const __m128i v = _mm_setr_epi32(static_cast<int>((a0 & k4) | ((a2 & k2) << 4)),
                                     static_cast<int>((a1 & k4) | (((a2 >> 2) & k2) << 4)),
                                     static_cast<int>(((a0 >> 4) & k4) | (((a2 >> 4) & k2) << 4)),
                                     static_cast<int>(((a1 >> 4) & k4) | (((a2 >> 6) & k2) << 4)));
    return _mm_sub_epi8(v, _mm_set1_epi8(32));
  }
  template <int NT>
  static inline void Row(const uint8_t* row, int64_t nb, const Tokens<NT>& tk, float* out) {
    __m256 acc[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * kBytes;
      const __m128i sc8 = Scales(blk + 96);
      const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
      // Start each token's sum at -4 * sum_s sc_s * bsum_s.
      __m256i isum[NT];
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) isum[t] = MinusScaledBsums(tk.bsums[t] + 16 * b, sc16, 2);
      const __m256i hm = Load256(blk);
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m256i q = Load256(blk + 32 + 32 * h);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const __m256i hb = _mm256_slli_epi16(Shr4Bits(hm, 4 * h + j, 1), 2);
          const __m256i u = _mm256_or_si256(Shr4Bits(q, 2 * j, 3), hb);
          const __m256i scv = PairScales<true>(sc8, 8 * h + 2 * j);
#pragma GCC unroll 8
          for (int t = 0; t < NT; ++t) {
            const __m256i x = LoadX(tk.x[t] + 256 * b + 128 * h + 32 * j);
            isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), scv));
          }
        }
      }
      AddScaledSums<NT>(HalfAt(blk + 108), tk, b, isum, acc);
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) out[t] = HorizontalSum(acc[t]);
  }
};

// Q4_K (kQ5 false): f16 d | f16 dmin | u8 scales[12] | u8 qs[128]; Q5_K: the same with u8 qh[32]
// before qs.
template <bool kQ5>
struct KQ45_K {
  static constexpr int kBytes = kQ5 ? 176 : 144;
  template <int NT>
  static inline void Row(const uint8_t* row, int64_t nb, const Tokens<NT>& tk, float* out) {
    __m256 acc[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * kBytes;
      const uint8_t* qs = blk + (kQ5 ? 48 : 16);
      uint64_t sc, mn;
      ScalesMinsK4(blk + 4, &sc, &mn);
      // Each min twice (it applies to two 16-sums), as 16-bit lanes.
      const __m128i m8 = _mm_cvtsi64_si128(static_cast<long long>(mn));
      const __m256i mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
      // The 8 scales as 16-bit lanes, in both 128-bit halves (for the per-sub-block shuffles).
      const __m256i scales16 = _mm256_broadcastsi128_si256(
          _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<long long>(sc))));
      __m256i isum[NT];
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) isum[t] = _mm256_setzero_si256();
      __m256i qh = _mm256_setzero_si256();
      if (kQ5) qh = Load256(blk + 16);
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m256i q = Load256(qs + 32 * c);
        __m256i lo = _mm256_and_si256(q, low4);
        __m256i hi = Shr4Bits(q, 4, 0x0f);
        if (kQ5) {
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(Shr4Bits(qh, 2 * c, 1), 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(Shr4Bits(qh, 2 * c + 1, 1), 4));
        }
        const __m256i s0 = _mm256_shuffle_epi8(scales16, ScaleShuffle(2 * c, 2 * c));
        const __m256i s1 = _mm256_shuffle_epi8(scales16, ScaleShuffle(2 * c + 1, 2 * c + 1));
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
          const int8_t* x = tk.x[t] + 256 * b + 64 * c;
          const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, LoadX(x)), s0);
          const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, LoadX(x + 32)), s1);
          isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(p0, p1));
        }
      }
      const __m256 dw = _mm256_set1_ps(HalfAt(blk)), dmw = _mm256_set1_ps(HalfAt(blk + 2));
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const __m256i bs = LoadBsums(tk.bsums[t] + 16 * b);
        const __m256 dx = _mm256_broadcast_ss(tk.d[t] + b);
        const __m256 summ = _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mins));
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(isum[t]), acc[t]);
        acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmw, dx), summ, acc[t]);
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) out[t] = HorizontalSum(acc[t]);
  }
};

}  // namespace

bool KQuantMatMulRows(const Matrix& w, const internal::QuantActs& a, int64_t n_tokens, float* y,
                      int64_t y_stride, int64_t r0, int64_t r1) {
  switch (w.type) {
    case TensorType::kQ2_K:
      Rows<KQ2_K, 256>(w, a, n_tokens, y, y_stride, r0, r1);
      return true;
    case TensorType::kQ3_K:
      Rows<KQ3_K, 256>(w, a, n_tokens, y, y_stride, r0, r1);
      return true;
    case TensorType::kQ4_K:
      Rows<KQ45_K<false>, 256>(w, a, n_tokens, y, y_stride, r0, r1);
      return true;
    case TensorType::kQ5_K:
      Rows<KQ45_K<true>, 256>(w, a, n_tokens, y, y_stride, r0, r1);
      return true;
    default:
      return false;
  }
}

}  // namespace pipeinfer::kernels::avx2
