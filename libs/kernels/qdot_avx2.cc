// AVX2 row kernels of the integer MatMul path (qdot.h; compiled with -mavx2 -mfma -mf16c) for
// Q4_0, Q8_0 and Q6_K, and the dispatch to the other types' kernels (qdot_legacy_avx2.cc,
// qdot_kquant_avx2.cc; the row driver is in qdot_avx2.h).
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
#include "kernels/qdot_avx2.h"
#include "kernels/simd.h"

namespace pipeinfer::kernels::avx2 {
namespace {

using gguf::TensorType;
using internal::QuantActs;

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

// Q4_0 and Q8_0 weights as signed bytes (KSigned32 in qdot_avx2.h).
struct WQ4_0 {
  static constexpr int kBytes = 18;
  static inline __m256i Weights(const uint8_t* blk) {
    const __m128i q = Load128(blk + 2);
    const __m128i m = _mm_set1_epi8(0x0f);
    const __m256i w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m));
    return _mm256_sub_epi8(w, _mm256_set1_epi8(8));
  }
};
struct WQ8_0 {
  static constexpr int kBytes = 34;
  static inline __m256i Weights(const uint8_t* blk) { return Load256(blk + 2); }
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
      for (int t = 0; t < NT; ++t) isum[t] = MinusScaledBsums(tk.bsums[t] + 16 * b, sc16, 5);
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
      AddScaledSums<NT>(HalfAt(blk + 208), tk, b, isum, acc);
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) out[t] = HorizontalSum(acc[t]);
  }
};

}  // namespace

bool QuantMatMulRows(const Matrix& w, const QuantActs& a, int64_t n_tokens, float* y,
                     int64_t y_stride, int64_t r0, int64_t r1) {
  switch (w.type) {
    case TensorType::kQ4_0:
      if (a.qs_pairs != nullptr) {
        Rows<KQ4_0Pairs, 32>(w, a, n_tokens, y, y_stride, r0, r1);
      } else {
        Rows<KSigned32<WQ4_0>, 32>(w, a, n_tokens, y, y_stride, r0, r1);
      }
      return true;
    case TensorType::kQ8_0:
      Rows<KSigned32<WQ8_0>, 32>(w, a, n_tokens, y, y_stride, r0, r1);
      return true;
    case TensorType::kQ6_K:
      Rows<KQ6_K, 256>(w, a, n_tokens, y, y_stride, r0, r1);
      return true;
    case TensorType::kQ4_1:
    case TensorType::kQ5_0:
    case TensorType::kQ5_1:
      return LegacyQuantMatMulRows(w, a, n_tokens, y, y_stride, r0, r1);
    case TensorType::kQ2_K:
    case TensorType::kQ3_K:
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
      return KQuantMatMulRows(w, a, n_tokens, y, y_stride, r0, r1);
    default:
      return false;
  }
}

}  // namespace pipeinfer::kernels::avx2
