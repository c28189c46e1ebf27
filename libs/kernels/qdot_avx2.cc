// AVX2 row kernels of the integer MatMul path (qdot.h; compiled with -mavx2 -mfma -mf16c).
//
// Per row, each weight block is loaded and unpacked to bytes once and applied to up to kMaxNt
// tokens, whose accumulators stay in registers; larger batches take the row again (from L1/L2)
// for the next group of tokens. The integer products use _mm256_maddubs_epi16 (unsigned weight
// bytes times signed activation bytes, or |w| times x with w's sign moved onto x), widened with
// _mm256_madd_epi16 (which also applies K-quant sub-block scales), then scaled in float per block.
// Every token is computed with the same operations in the same order whatever the batch size or
// thread split, so results do not depend on them.
//
// As in matmul_avx2.cc: no std:: templates or shared inline functions; internal linkage only.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/decode_avx2.h"
#include "kernels/qdot.h"
#include "kernels/simd.h"

namespace pipeinfer::kernels::avx2 {
namespace {

using gguf::TensorType;
using internal::QuantActs;

constexpr int kMaxNt = 4;

inline __m256i LoadX(const int8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// Sum of signed-byte products as eight int32 lanes: sw holds the weights' signs (any int8),
// aw = |sw|.
inline __m256i DotSigned(__m256i aw, __m256i sw, __m256i x) {
  const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, sw));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

// Shuffle masks. ByteShuffle(a, b): bytes 0-7 take byte a, bytes 8-15 byte b. ScaleShuffle(a, b)
// (per 128-bit half, for a vector of 16-bit lanes): the low half repeats lane a, the high half b.
inline __m128i ByteShuffle(int a, int b) {
  return _mm_set_epi64x(static_cast<long long>(0x0101010101010101ull * static_cast<unsigned>(b)),
                        static_cast<long long>(0x0101010101010101ull * static_cast<unsigned>(a)));
}
inline __m256i ScaleShuffle(int a, int b) {
  const long long la = static_cast<long long>(0x0100010001000100ull + 0x0202020202020202ull * a);
  const long long lb = static_cast<long long>(0x0100010001000100ull + 0x0202020202020202ull * b);
  return _mm256_set_epi64x(lb, lb, la, la);
}

// Pointers of the NT tokens of a group.
template <int NT>
struct Tokens {
  const int8_t* x[NT];
  const float* d[NT];
  const int16_t* bsums[NT];
  const int8_t* xp[NT];  // Q4_0: QuantActs::qs_pairs
  const float* dp[NT];   // Q4_0: QuantActs::d_pairs
};

// Q4_0, blocks two at a time: the 16 bytes of each of blocks 2p and 2p+1 side by side in one
// register give the low nibbles of both (weights 0-15 of each) and the high nibbles (16-31), to be
// multiplied with the regrouped activations (qdot.h); the 32-bit sums of block 2p come out in the
// low four lanes and those of block 2p+1 in the high four, so one conversion and one FMA (with
// d_w * d_x per half) serve both blocks.
struct KQ4_0Pairs {
  static constexpr int kBytes = 18;
  template <int NT>
  static inline void Row(const uint8_t* row, int64_t nb, const Tokens<NT>& tk, float* out) {
    __m256 acc[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8);
    const int64_t np = nb / 2;
    for (int64_t p = 0; p < np; ++p) {
      const uint8_t* b0 = row + 2 * p * kBytes;
      const uint8_t* b1 = b0 + kBytes;
      const __m256i v =
          _mm256_inserti128_si256(_mm256_castsi128_si256(Load128(b0 + 2)), Load128(b1 + 2), 1);
      const __m256i lo = _mm256_sub_epi8(_mm256_and_si256(v, low4), eight);
      const __m256i hi = _mm256_sub_epi8(Shr4Bits(v, 4, 0x0f), eight);
      const __m256i alo = _mm256_sign_epi8(lo, lo), ahi = _mm256_sign_epi8(hi, hi);
      const __m256 dw = _mm256_set_m128(_mm_set1_ps(HalfAt(b1)), _mm_set1_ps(HalfAt(b0)));
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const int8_t* x = tk.xp[t] + 64 * p;
        const __m256i s =
            _mm256_add_epi32(DotSigned(alo, lo, LoadX(x)), DotSigned(ahi, hi, LoadX(x + 32)));
        const __m256 d = _mm256_mul_ps(dw, _mm256_loadu_ps(tk.dp[t] + 8 * p));
        acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[t]);
      }
    }
    if (nb % 2 != 0) {  // the last block, from the plain layout
      const int64_t b = nb - 1;
      const uint8_t* blk = row + b * kBytes;
      const __m128i q = Load128(blk + 2);
      const __m128i m = _mm_set1_epi8(0x0f);
      const __m256i w =
          _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m));
      const __m256i sw = _mm256_sub_epi8(w, eight);
      const __m256i aw = _mm256_sign_epi8(sw, sw);
      const __m256 dw = _mm256_set1_ps(HalfAt(blk));
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const __m256i s = DotSigned(aw, sw, LoadX(tk.x[t] + 32 * b));
        const __m256 d = _mm256_mul_ps(dw, _mm256_broadcast_ss(tk.d[t] + b));
        acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[t]);
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) out[t] = HorizontalSum(acc[t]);
  }
};

// Q4_0 and Q8_0 (Q8_0 activations, blocks of 32). Blocks go in pairs, into two accumulators per
// token (even and odd blocks), to hide the FMA latency.
template <bool kQ4>
struct KQ32 {
  static constexpr int kBytes = kQ4 ? 18 : 34;
  // The block's weights as signed bytes.
  static inline __m256i Weights(const uint8_t* blk) {
    if (kQ4) {
      const __m128i q = Load128(blk + 2);
      const __m128i m = _mm_set1_epi8(0x0f);
      const __m256i w =
          _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m));
      return _mm256_sub_epi8(w, _mm256_set1_epi8(8));
    }
    return Load256(blk + 2);
  }
  template <int NT>
  static inline void Block(const uint8_t* blk, int64_t b, const Tokens<NT>& tk, __m256* acc) {
    const __m256 dw = _mm256_set1_ps(HalfAt(blk));
    const __m256i sw = Weights(blk);
    const __m256i aw = _mm256_sign_epi8(sw, sw);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m256i s = DotSigned(aw, sw, LoadX(tk.x[t] + 32 * b));
      const __m256 d = _mm256_mul_ps(dw, _mm256_broadcast_ss(tk.d[t] + b));
      acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[t]);
    }
  }
  template <int NT>
  static inline void Row(const uint8_t* row, int64_t nb, const Tokens<NT>& tk, float* out) {
    __m256 acc0[NT], acc1[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      Block<NT>(row + b * kBytes, b, tk, acc0);
      Block<NT>(row + (b + 1) * kBytes, b + 1, tk, acc1);
    }
    if (b < nb) Block<NT>(row + b * kBytes, b, tk, acc0);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) out[t] = HorizontalSum(_mm256_add_ps(acc0[t], acc1[t]));
  }
};

struct KQ4_K {
  static constexpr int kBytes = 144;
  template <int NT>
  static inline void Row(const uint8_t* row, int64_t nb, const Tokens<NT>& tk, float* out) {
    __m256 acc[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * kBytes;
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
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m256i q = Load256(blk + 16 + 32 * c);
        const __m256i lo = _mm256_and_si256(q, low4);
        const __m256i hi = Shr4Bits(q, 4, 0x0f);
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
        const __m256i bs =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tk.bsums[t] + 16 * b));
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

struct KQ6_K {
  static constexpr int kBytes = 210;
  template <int NT>
  static inline void Row(const uint8_t* row, int64_t nb, const Tokens<NT>& tk, float* out) {
    __m256 acc[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0f), three = _mm256_set1_epi8(3);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * kBytes;
      // The weights are q - 32: start each token's sum at -32 * sum_s sc_s * bsum_s.
      const __m128i sc8 = Load128(blk + 192);
      const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
      __m256i isum[NT];
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const __m256i bs =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tk.bsums[t] + 16 * b));
        isum[t] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                   _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5));
      }
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m256i ql0 = Load256(blk + 64 * h), ql1 = Load256(blk + 64 * h + 32);
        const __m256i qh = Load256(blk + 128 + 32 * h);
        const __m256i q[4] = {
            _mm256_or_si256(_mm256_and_si256(ql0, low4),
                            _mm256_slli_epi16(_mm256_and_si256(qh, three), 4)),
            _mm256_or_si256(_mm256_and_si256(ql1, low4), _mm256_slli_epi16(Shr4Bits(qh, 2, 3), 4)),
            _mm256_or_si256(Shr4Bits(ql0, 4, 0x0f), _mm256_slli_epi16(Shr4Bits(qh, 4, 3), 4)),
            _mm256_or_si256(Shr4Bits(ql1, 4, 0x0f), _mm256_slli_epi16(Shr4Bits(qh, 6, 3), 4)),
        };
#pragma GCC unroll 4
        for (int g = 0; g < 4; ++g) {
          const int s = 8 * h + 2 * g;
          const __m256i scv = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, ByteShuffle(s, s + 1)));
#pragma GCC unroll 8
          for (int t = 0; t < NT; ++t) {
            const __m256i x = LoadX(tk.x[t] + 256 * b + 128 * h + 32 * g);
            isum[t] =
                _mm256_add_epi32(isum[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q[g], x), scv));
          }
        }
      }
      const __m256 dw = _mm256_set1_ps(HalfAt(blk + 208));
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const __m256 d = _mm256_mul_ps(dw, _mm256_broadcast_ss(tk.d[t] + b));
        acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum[t]), acc[t]);
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) out[t] = HorizontalSum(acc[t]);
  }
};

template <class K, int NT>
void RowGroup(const uint8_t* row, int64_t nb, const QuantActs& a, int64_t ab, int64_t t0,
              float* out) {
  Tokens<NT> tk;
  const int64_t nbx = a.cols / ab;
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    tk.x[t] = a.qs + (t0 + t) * a.cols;
    tk.d[t] = a.d + (t0 + t) * nbx;
    tk.bsums[t] = a.bsums == nullptr ? nullptr : a.bsums + (t0 + t) * nbx * 16;
    tk.xp[t] = a.qs_pairs == nullptr ? nullptr : a.qs_pairs + (t0 + t) * a.cols;
    tk.dp[t] = a.d_pairs == nullptr ? nullptr : a.d_pairs + (t0 + t) * (a.cols / 64 * 8);
  }
  K::template Row<NT>(row, nb, tk, out);
}

template <class K, int kAb>
void Rows(const Matrix& w, const QuantActs& a, int64_t n_tokens, float* y, int64_t ys, int64_t r0,
          int64_t r1) {
  using GroupFn = void (*)(const uint8_t*, int64_t, const QuantActs&, int64_t, int64_t, float*);
  constexpr GroupFn kGroup[kMaxNt + 1] = {nullptr, RowGroup<K, 1>, RowGroup<K, 2>, RowGroup<K, 3>,
                                          RowGroup<K, 4>};
  const int64_t nb = w.cols / kAb;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kMaxNt) {
      const int64_t nt = n_tokens - t0 < kMaxNt ? n_tokens - t0 : kMaxNt;
      float out[kMaxNt];
      kGroup[nt](row, nb, a, kAb, t0, out);
      for (int64_t t = 0; t < nt; ++t) y[(t0 + t) * ys + r] = out[t];
    }
  }
}

}  // namespace

bool QuantMatMulRows(const Matrix& w, const QuantActs& a, int64_t n_tokens, float* y,
                     int64_t y_stride, int64_t r0, int64_t r1) {
  switch (w.type) {
    case TensorType::kQ4_0:
      if (a.qs_pairs != nullptr) {
        Rows<KQ4_0Pairs, 32>(w, a, n_tokens, y, y_stride, r0, r1);
      } else {
        Rows<KQ32<true>, 32>(w, a, n_tokens, y, y_stride, r0, r1);
      }
      return true;
    case TensorType::kQ8_0:
      Rows<KQ32<false>, 32>(w, a, n_tokens, y, y_stride, r0, r1);
      return true;
    case TensorType::kQ4_K:
      Rows<KQ4_K, 256>(w, a, n_tokens, y, y_stride, r0, r1);
      return true;
    case TensorType::kQ6_K:
      Rows<KQ6_K, 256>(w, a, n_tokens, y, y_stride, r0, r1);
      return true;
    default:
      return false;
  }
}

}  // namespace pipeinfer::kernels::avx2
