// AVX2 row kernels of the integer MatMul path (qdot.h) for Q5_0 (with Q8_0 activations), Q4_1 and
// Q5_1 (with Q8_1 activations). Compiled with -mavx2 -mfma -mf16c.
//
// A block's 32 weights are unpacked to bytes in weight order once per row and applied to up to
// kMaxNt tokens. Q5_0's weights are signed (q - 16): |w| times x with w's sign moved onto x (the
// Q8_0 quants never reach -128). Q4_1/Q5_1's are unsigned (q), multiplied directly; their min m
// adds m * s_x per block, summed per token in float next to the vector accumulators. Blocks go in
// pairs into two accumulators per token, to hide the FMA latency.
#include <immintrin.h>

#include <cstdint>

#include "kernels/decode_avx2.h"
#include "kernels/qdot.h"
#include "kernels/qdot_avx2.h"

namespace pipeinfer::kernels::avx2 {
namespace {

using gguf::TensorType;

// Q5_0: f16 d | qh[4] | qs[16]; weights q - 16 as signed bytes (KSigned32 in qdot_avx2.h).
struct WQ5_0 {
  static constexpr int kBytes = 22;
  static inline __m256i Weights(const uint8_t* blk) {
    const __m256i fifth = _mm256_and_si256(FifthBitsSet(blk + 2), _mm256_set1_epi8(0x10));
    return _mm256_sub_epi8(_mm256_or_si256(Nibbles32(blk + 6), fifth), _mm256_set1_epi8(16));
  }
};

// Q4_1 (kQ5 false: f16 d | f16 m | qs[16]) and Q5_1 (f16 d | f16 m | qh[4] | qs[16]).
template <bool kQ5>
struct KAffine {
  static constexpr int kBytes = kQ5 ? 24 : 20;
  static inline __m256i Weights(const uint8_t* blk) {
    if (kQ5) {
      const __m256i fifth = _mm256_and_si256(FifthBitsSet(blk + 4), _mm256_set1_epi8(0x10));
      return _mm256_or_si256(Nibbles32(blk + 8), fifth);
    }
    return Nibbles32(blk + 4);
  }
  template <int NT>
  static inline void Block(const uint8_t* blk, int64_t b, const Tokens<NT>& tk, __m256* acc,
                           float* mins) {
    const __m256i w = Weights(blk);
    const __m256 dw = _mm256_set1_ps(HalfAt(blk));
    const float mw = HalfAt(blk + 2);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m256i s =
          _mm256_madd_epi16(_mm256_maddubs_epi16(w, LoadX(tk.x[t] + 32 * b)), _mm256_set1_epi16(1));
      const __m256 d = _mm256_mul_ps(dw, _mm256_broadcast_ss(tk.d[t] + b));
      acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[t]);
      mins[t] += mw * tk.s[t][b];
    }
  }
  template <int NT>
  static inline void Row(const uint8_t* row, int64_t nb, const Tokens<NT>& tk, float* out) {
    __m256 acc0[NT], acc1[NT];
    float mins[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      acc0[t] = acc1[t] = _mm256_setzero_ps();
      mins[t] = 0.0f;
    }
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      Block<NT>(row + b * kBytes, b, tk, acc0, mins);
      Block<NT>(row + (b + 1) * kBytes, b + 1, tk, acc1, mins);
    }
    if (b < nb) Block<NT>(row + b * kBytes, b, tk, acc0, mins);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) out[t] = HorizontalSum(_mm256_add_ps(acc0[t], acc1[t])) + mins[t];
  }
};

}  // namespace

bool LegacyQuantMatMulRows(const Matrix& w, const internal::QuantActs& a, int64_t n_tokens,
                           float* y, int64_t y_stride, int64_t r0, int64_t r1) {
  switch (w.type) {
    case TensorType::kQ5_0:
      Rows<KSigned32<WQ5_0>, 32>(w, a, n_tokens, y, y_stride, r0, r1);
      return true;
    case TensorType::kQ4_1:
      Rows<KAffine<false>, 32>(w, a, n_tokens, y, y_stride, r0, r1);
      return true;
    case TensorType::kQ5_1:
      Rows<KAffine<true>, 32>(w, a, n_tokens, y, y_stride, r0, r1);
      return true;
    default:
      return false;
  }
}

}  // namespace pipeinfer::kernels::avx2
